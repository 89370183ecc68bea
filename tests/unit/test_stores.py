"""The stores without a server: what they send, and how an answer or a failure becomes rows
or a ducto exception.

- HTTP (both flavours, through ``httpx.MockTransport``): the URL, headers and JSON body of
  a call; PostgREST's answers as rows; its error bodies, the gateway's refusals and
  anything else mapped to exceptions; transport errors retried only when that is safe;
  ``setup()`` checking the installed version;
- psycopg (a fake connection and pool): the SQL of a call; psycopg errors, built as the
  driver builds them, mapped through the same registry; a lost connection retried only
  when that is safe.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import httpx
import psycopg
import pytest
from psycopg.pq import DiagnosticField
from psycopg.types.json import Jsonb

from ducto import (
    DuctoError,
    InsufficientCreditsError,
    InvalidInputError,
    PermissionDeniedError,
    SchemaError,
    SetupResult,
    StoreError,
)
from ducto._migrations import latest_version
from ducto._rpc import RpcCall
from ducto.errors import StoreConnectionError
from ducto.interface import AsyncHttpxSupabaseStore, HttpxSupabaseStore, PostgresStore

Rows = list[dict[str, Any]]
Handler = Callable[[httpx.Request], httpx.Response]
URL = "https://project.supabase.co"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJl"
BALANCE = RpcCall("credit_get_balance", {"p_user_id": "u"}, retry_safe=True)
UNSAFE = RpcCall("credit_add_credits", {"p_user_id": "u", "p_amount": 1})


class Http:
    """Runs a call through one HTTP store flavour whose requests go to ``handler``."""

    def __init__(self, flavour: str) -> None:
        self.flavour = flavour

    def call(self, handler: Handler, call: RpcCall, key: str = JWT, attempts: int = 3) -> Rows:
        return cast(Rows, self._run(handler, key, attempts, lambda store: store.call(call)))

    def setup(self, handler: Handler) -> SetupResult:
        return cast(SetupResult, self._run(handler, JWT, 1, lambda store: store.setup()))

    def _run(self, handler: Handler, key: str, attempts: int, use: Callable[[Any], Any]) -> Any:
        transport = httpx.MockTransport(handler)
        if self.flavour == "sync":
            with httpx.Client(transport=transport) as client:
                return use(HttpxSupabaseStore(URL, key, client=client, attempts=attempts))

        async def run() -> Any:
            async with httpx.AsyncClient(transport=transport) as client:
                return await use(
                    AsyncHttpxSupabaseStore(URL, key, client=client, attempts=attempts)
                )

        return asyncio.run(run())


@pytest.fixture(params=["sync", "async"])
def http(request: pytest.FixtureRequest) -> Http:
    return Http(request.param)


def answer(status: int, body: object) -> Handler:
    return lambda request: httpx.Response(status, json=body)


# ---------------------------------------------------------------- HTTP: requests and rows


@pytest.mark.parametrize(("key", "bearer"), [(JWT, f"Bearer {JWT}"), ("sb_secret_abc", None)])
def test_http_request(http: Http, key: str, bearer: str | None) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=[])

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    http.call(handler, RpcCall("credit_daily_spend", {"p_start": when, "p_n": None}), key=key)
    [request] = sent
    assert (request.method, str(request.url)) == ("POST", f"{URL}/rest/v1/rpc/credit_daily_spend")
    assert json.loads(request.content) == {"p_start": "2026-01-02T03:04:05+00:00", "p_n": None}
    assert request.headers["apikey"] == key
    assert request.headers.get("Authorization") == bearer
    assert request.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("body", "rows"),
    [
        ({"user_id": "u", "balance": 3}, [{"user_id": "u", "balance": 3}]),
        ([{"a": 1}, {"a": 2}], [{"a": 1}, {"a": 2}]),
        ("20261127000900", [{"value": "20261127000900"}]),
        (None, [{"value": None}]),
        ({"exact_cost": 1.25}, [{"exact_cost": Decimal("1.25")}]),
    ],
)
def test_http_answers_become_rows(http: Http, body: object, rows: Rows) -> None:
    assert http.call(answer(200, body), BALANCE) == rows


# ---------------------------------------------------------------- HTTP: errors


@pytest.mark.parametrize(
    ("status", "body", "error", "code", "message"),
    [
        (
            400,
            {"code": "DC010", "message": "insufficient credits", "details": None, "hint": None},
            InsufficientCreditsError,
            "DC010",
            "insufficient credits",
        ),
        (403, {"code": "42501", "message": "denied"}, PermissionDeniedError, "42501", "denied"),
        (404, {"code": "PGRST202", "message": "no function"}, SchemaError, "PGRST202", None),
        (400, {"code": "XX999", "message": "odd"}, StoreError, "XX999", "odd"),
        (400, {"code": "DC001", "message": ""}, InvalidInputError, "DC001", "HTTP 400"),
        # the gateway refused the key: no code, but a refusal all the same
        (401, {"message": "Invalid API key"}, PermissionDeniedError, "42501", None),
        (403, "forbidden", PermissionDeniedError, "42501", "HTTP 403: "),
        # something that is not PostgREST answered
        (502, "<html>bad gateway</html>", StoreError, None, "HTTP 502: <html>bad gateway"),
    ],
)
def test_http_errors_map_to_exceptions(
    http: Http,
    status: int,
    body: object,
    error: type[DuctoError],
    code: str | None,
    message: str | None,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    with pytest.raises(DuctoError) as caught:
        http.call(handler, BALANCE)
    assert type(caught.value) is error
    assert caught.value.code == code
    assert caught.value.message.startswith(message or "")


def test_http_error_keeps_detail_and_hint(http: Http) -> None:
    body = {
        "code": "DC010",
        "message": "insufficient credits (account=u, available=1, needed=6)",
        "details": '{"user_id": "u", "available": 1, "needed": 6}',
        "hint": "add credits or lower min_balance",
    }
    with pytest.raises(InsufficientCreditsError) as caught:
        http.call(answer(400, body), BALANCE)
    assert caught.value.details == {"user_id": "u", "available": 1, "needed": 6}
    assert caught.value.hint == "add credits or lower min_balance"
    assert str(caught.value) == body["message"]


@pytest.mark.parametrize(("call", "tries"), [(BALANCE, 3), (UNSAFE, 1)])
def test_http_transport_errors_are_retried_only_when_safe(
    http: Http, call: RpcCall, tries: int
) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(StoreConnectionError, match="connection refused") as caught:
        http.call(handler, call, attempts=3)
    assert len(sent) == tries
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_http_a_retry_that_gets_through_returns_its_rows(http: Http) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if len(sent) == 1:
            raise httpx.ReadError("connection reset", request=request)
        return httpx.Response(200, json={"balance": 1})

    assert http.call(handler, BALANCE) == [{"balance": 1}]
    assert len(sent) == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, "20200101000000"), (404, {"code": "PGRST202", "message": "no such function"})],
    ids=["older", "missing"],
)
def test_http_setup_names_the_command_when_the_schema_is_old_or_missing(
    http: Http, status: int, body: object
) -> None:
    with pytest.raises(SchemaError, match="supabase db push") as caught:
        http.setup(answer(status, body))
    assert caught.value.code == "DC100"


def test_http_setup_accepts_the_current_schema(http: Http) -> None:
    current = latest_version()
    assert http.setup(answer(200, current)) == SetupResult((), (), current)


# ---------------------------------------------------------------- psycopg


def server_error(
    code: str, message: str, detail: str | None = None, hint: str | None = None
) -> psycopg.Error:
    """An error as psycopg builds it from the server's answer (``info``: its fields)."""
    fields = {
        DiagnosticField.SQLSTATE: code,
        DiagnosticField.MESSAGE_PRIMARY: message,
        DiagnosticField.MESSAGE_DETAIL: detail,
        DiagnosticField.MESSAGE_HINT: hint,
    }
    info: dict[int, bytes | None] = {
        int(key): value.encode() for key, value in fields.items() if value is not None
    }
    cls = psycopg.OperationalError if code.startswith("57") else psycopg.DatabaseError
    return cls(f"ERROR: {message}", info=info)


class FakeConnection:
    """Answers every statement with ``rows``, or raises ``error``; records what it ran."""

    def __init__(self, rows: Rows | None = None, error: psycopg.Error | None = None) -> None:
        self.rows = rows or []
        self.error = error
        self.executed: list[tuple[str, dict[str, Any]]] = []

    @contextmanager
    def cursor(self, row_factory: Any = None) -> Iterator[FakeConnection]:
        yield self

    def execute(self, query: str, params: dict[str, Any]) -> None:
        self.executed.append((query, params))
        if self.error is not None:
            raise self.error

    def fetchall(self) -> Rows:
        return self.rows


class FakePool:
    """Hands out a connection per attempt: the first ``failures`` raise ``error``."""

    def __init__(self, error: psycopg.Error, failures: int) -> None:
        self.connections = [FakeConnection(error=error) for _ in range(failures)]
        self.connections.append(FakeConnection([{"value": 1}]))
        self.handed = 0

    @contextmanager
    def connection(self) -> Iterator[FakeConnection]:
        self.handed += 1
        yield self.connections[self.handed - 1]


def test_psycopg_sql_of_a_call() -> None:
    conn = FakeConnection([{"user_id": "u"}])
    store = PostgresStore(connection=cast(Any, conn))
    call = RpcCall("credit_add_credits", {"p_user_id": "u", "p_metadata": {"a": 1}})
    assert store.call(call) == [{"user_id": "u"}]
    store.call(RpcCall("credit_schema_version", returns_scalar=True))
    [(query, params), (scalar, no_params)] = conn.executed
    assert query == (
        "select * from public.credit_add_credits("
        "p_user_id => %(p_user_id)s, p_metadata => %(p_metadata)s)"
    )
    assert params["p_user_id"] == "u"
    assert isinstance(params["p_metadata"], Jsonb) and params["p_metadata"].obj == {"a": 1}
    assert (scalar, no_params) == ("select public.credit_schema_version() as value", {})


@pytest.mark.parametrize(
    ("error", "expected", "code", "message"),
    [
        (
            server_error("DC010", "insufficient credits", '{"available": 1}', "top up"),
            InsufficientCreditsError,
            "DC010",
            "insufficient credits",
        ),
        (server_error("22P02", "invalid input syntax"), InvalidInputError, "22P02", None),
        (server_error("42883", "function does not exist"), SchemaError, "42883", None),
        (server_error("40001", "could not serialize"), StoreError, "40001", None),
        (
            psycopg.errors.InsufficientPrivilege("permission denied"),
            PermissionDeniedError,
            "42501",
            None,
        ),
        (psycopg.OperationalError("server closed the connection"), StoreError, None, None),
    ],
)
def test_psycopg_errors_map_to_exceptions(
    error: psycopg.Error, expected: type[DuctoError], code: str | None, message: str | None
) -> None:
    store = PostgresStore(connection=cast(Any, FakeConnection(error=error)))
    with pytest.raises(DuctoError) as caught:
        store.call(BALANCE)
    assert type(caught.value) is expected
    assert caught.value.code == code
    assert caught.value.message == (message or error.diag.message_primary or str(error))
    assert caught.value.__cause__ is error


def test_psycopg_error_keeps_detail_and_hint() -> None:
    error = server_error("DC010", "insufficient credits", '{"available": 1}', "top up")
    store = PostgresStore(connection=cast(Any, FakeConnection(error=error)))
    with pytest.raises(InsufficientCreditsError) as caught:
        store.call(BALANCE)
    assert (caught.value.details, caught.value.hint) == ({"available": 1}, "top up")


@pytest.mark.parametrize(
    ("error", "call", "handed"),
    [
        # a lost connection: the call is sent again when that cannot charge twice
        (psycopg.OperationalError("server closed the connection"), BALANCE, 2),
        (server_error("57P01", "terminating connection"), BALANCE, 2),
        (psycopg.OperationalError("server closed the connection"), UNSAFE, 1),
        # an answer from the server is the caller's to see
        (server_error("40001", "could not serialize"), BALANCE, 1),
    ],
)
def test_psycopg_retries_only_a_lost_connection_and_only_when_safe(
    error: psycopg.Error, call: RpcCall, handed: int
) -> None:
    pool = FakePool(error, failures=1)
    store = PostgresStore(pool=cast(Any, pool))
    if handed == 2:
        assert store.call(call) == [{"value": 1}]
    else:
        with pytest.raises(DuctoError):
            store.call(call)
    assert pool.handed == handed
