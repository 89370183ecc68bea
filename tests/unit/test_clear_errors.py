"""A caller's mistakes answered with a typed error that names the argument or the reason,
without a server.

- ids: a NUL byte anywhere, or a transaction, reservation or team id that is not a UUID, is
  refused before any call, naming the argument; ``uuid.UUID`` objects are taken and sent
  as their text;
- a long value is cut in the message that echoes it;
- refunding the result of a charge of 0 credits (no transaction) is a RefundError;
- the psycopg stores against a port where nothing listens, a server that never answers, or
  a DSN that is not one: ``StoreConnectionError`` with the reason at once (or after the
  connect timeout), and no pool log;
- the HTTP stores: a connect error or a timeout is one line with the URL and the reason.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import pytest
from psycopg_pool import PoolTimeout

from ducto import (
    AsyncCreditManager,
    CreditManager,
    DuctoError,
    InvalidInputError,
    PricingEngine,
    RefundError,
    StoreError,
    UsageMetrics,
)
from ducto._rpc import RpcCall
from ducto.errors import StoreConnectionError
from ducto.interface import (
    AsyncHttpxSupabaseStore,
    AsyncPostgresStore,
    HttpxSupabaseStore,
    PostgresStore,
)
from ducto.interface.supabase import DEFAULT_TIMEOUT

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ID = uuid.uuid4()
USAGE = UsageMetrics(model="m", input_tokens=10)
ENGINE = PricingEngine({"models": [{"model": "m", "input": 1000, "output": 1000}], "default": None})


class Sent(Exception):
    """Raised by the recording stores once a call was sent (its answer does not matter)."""


class Store:
    def __init__(self) -> None:
        self.calls: list[RpcCall] = []

    def call(self, call: RpcCall) -> list[dict[str, Any]]:
        self.calls.append(call)
        raise Sent


class AsyncStore(Store):
    async def call(self, call: RpcCall) -> list[dict[str, Any]]:  # type: ignore[override]
        return super().call(call)


class Manager:
    """A manager of one flavour over a recording store; async calls run to completion."""

    def __init__(self, flavour: str) -> None:
        self.store = Store() if flavour == "sync" else AsyncStore()
        cls = CreditManager if flavour == "sync" else AsyncCreditManager
        self.target = cls(cast(Any, self.store), ENGINE)

    def run(self, use: Callable[[Any], Any]) -> Any:
        result = use(self.target)
        return asyncio.run(result) if inspect.iscoroutine(result) else result

    def sent(self, use: Callable[[Any], Any]) -> RpcCall:
        """The one call ``use`` sent."""
        with pytest.raises(Sent):
            self.run(use)
        [call] = self.store.calls
        return call

    def refused(self, use: Callable[[Any], Any]) -> DuctoError:
        """The error ``use`` raised, after checking that nothing was sent."""
        with pytest.raises(DuctoError) as caught:
            self.run(use)
        assert self.store.calls == []
        return caught.value


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return cast(str, request.param)


Use = Callable[[Any], Any]

#: a mistake, the argument its error names, and the code
REFUSED: dict[str, tuple[Use, str, str]] = {
    "NUL in a user id": (lambda m: m.get_balance("alice\x00"), "user_id", "DC002"),
    "NUL in a key": (
        lambda m: m.add_credits("u", 1, idempotency_key="k\x00"),
        "idempotency_key",
        "DC004",
    ),
    "NUL in metadata": (
        lambda m: m.add_credits("u", 1, metadata={"a": ["\x00"]}),
        "metadata",
        "DC003",
    ),
    "NUL in a metadata key": (
        lambda m: m.add_credits("u", 1, metadata={"\x00": 1}),
        "metadata",
        "DC003",
    ),
    "NUL in tx_type": (lambda m: m.add_credits("u", 1, tx_type="grant\x00"), "tx_type", "DC006"),
    "tx_type not a string": (lambda m: m.add_credits("u", 1, tx_type=5), "tx_type", "DC006"),
    "NUL in a job": (lambda m: m.deduct_fixed("u", "report\x00"), "job_name", "DC006"),
    "NUL in a reason": (lambda m: m.refund_credits(ID, reason="x\x00"), "reason", "DC006"),
    "NUL in a feature": (lambda m: m.check_feature("u", "f\x00"), "feature", "DC006"),
    "NUL in a plan": (lambda m: m.upsert_plan("pro\x00", "Pro"), "plan_id", "DC006"),
    "NUL in a role": (lambda m: m.set_team_member(ID, "u", "member\x00"), "role", "DC006"),
    "transaction not a UUID": (lambda m: m.refund_credits("tx-17"), "transaction_id", "DC006"),
    "NUL in a transaction": (lambda m: m.refund_credits(f"{ID}\x00"), "transaction_id", "DC006"),
    "transaction an int": (lambda m: m.refund_credits(17), "transaction_id", "DC006"),
    "reservation not a UUID": (lambda m: m.settle_reservation("17", 1), "reservation_id", "DC006"),
    "release not a UUID": (lambda m: m.release_reservation("hold"), "reservation_id", "DC006"),
    "team not a UUID": (lambda m: m.upsert_team(b"team", "Team"), "team_id", "DC006"),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_argument_is_refused_by_name_before_any_call(
    flavour: str, case: tuple[Use, str, str]
) -> None:
    use, argument, code = case
    error = Manager(flavour).refused(use)
    assert isinstance(error, InvalidInputError)
    assert error.message.startswith(f"{argument} must ")
    assert error.code == code


#: a call given uuid.UUID objects (or a UUID in capitals), and the text it sends
TAKEN: dict[str, tuple[Use, str, str]] = {
    "refund": (lambda m: m.refund_credits(ID), "p_transaction_id", str(ID)),
    "refund in capitals": (
        lambda m: m.refund_credits(str(ID).upper()),
        "p_transaction_id",
        str(ID),
    ),
    "settle": (lambda m: m.settle_reservation(ID, 3), "p_reservation_id", str(ID)),
    "release": (lambda m: m.release_reservation(ID), "p_reservation_id", str(ID)),
    "team": (lambda m: m.upsert_team(ID, "Team"), "p_team_id", str(ID)),
    "team member": (lambda m: m.deduct_team(ID, ID, USAGE), "p_user_id", str(ID)),
    "user": (lambda m: m.get_balance(ID), "p_user_id", str(ID)),
}


@pytest.mark.parametrize("case", TAKEN.values(), ids=TAKEN.keys())
def test_uuid_objects_are_taken_where_an_id_is(flavour: str, case: tuple[Use, str, str]) -> None:
    use, argument, text = case
    call = Manager(flavour).sent(use)
    assert call.args[argument] == text


def test_refunding_a_charge_of_0_credits_says_there_is_nothing_to_refund(flavour: str) -> None:
    # a charge of 0 credits has no journal row: its result's transaction_id is None
    error = Manager(flavour).refused(lambda m: m.refund_credits(None))
    assert isinstance(error, RefundError) and error.code == "DC050"
    assert "nothing to refund" in error.message


@pytest.mark.parametrize(
    "use",
    [
        lambda m: m.get_balance(" " * 10_000),
        lambda m: m.refund_credits("x" * 10_000),
        lambda m: m.add_credits("u", 10**10_000),
        lambda m: m.top_users(10**10_000, NOW, NOW),
    ],
    ids=["blank user", "long transaction id", "huge amount", "huge limit"],
)
def test_a_long_value_is_cut_in_the_message(flavour: str, use: Use) -> None:
    error = Manager(flavour).refused(use)
    assert isinstance(error, InvalidInputError)
    assert len(error.message) < 200
    assert "…" in error.message or " bits" in error.message


# ---------------------------------------------------------------- psycopg: connecting


def closed_port() -> int:
    """A loopback port where nothing listens (connecting to it is refused)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return int(listener.getsockname()[1])


@contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield int(listener.getsockname()[1])


def first_call(flavour: str, dsn: str, **options: Any) -> StoreConnectionError:
    """The error of a first call through a PostgresStore of ``flavour`` on ``dsn``."""
    if flavour == "sync":
        store = PostgresStore(dsn, **options)
        with pytest.raises(StoreConnectionError) as caught:
            CreditManager(store).get_balance("alice")
        store.close()
        return caught.value

    async def run() -> StoreConnectionError:
        store = AsyncPostgresStore(dsn, **options)
        with pytest.raises(StoreConnectionError) as caught:
            await AsyncCreditManager(store).get_balance("alice")
        await store.close()
        return caught.value

    return asyncio.run(run())


def test_a_refused_connection_is_reported_at_once_with_the_reason(
    flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    with caplog.at_level(logging.INFO, logger="psycopg.pool"):
        error = first_call(flavour, f"postgresql://nobody:secret@127.0.0.1:{port}/x")
    assert isinstance(error, StoreError) and isinstance(error, ConnectionError)
    assert error.message.startswith(f"cannot connect to the database nobody@127.0.0.1:{port}/x: ")
    assert error.detail is not None and "Connection refused" in error.detail
    assert "secret" not in error.message
    # the pool never started: no line about its attempts
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_server_that_never_answers_is_given_connect_timeout_seconds(flavour: str) -> None:
    with silent_server() as port:
        # the argument wins over the DSN's own connect_timeout
        dsn = f"postgresql://nobody@127.0.0.1:{port}/x?connect_timeout=600"
        error = first_call(flavour, dsn, connect_timeout=2)
    assert "timeout expired (no answer within connect_timeout=2 s)" in error.message


def test_the_dsn_connect_timeout_applies_without_the_argument() -> None:
    with silent_server() as port:
        error = first_call("sync", f"postgresql://nobody@127.0.0.1:{port}/x?connect_timeout=2")
    assert "(no answer within connect_timeout=2 s)" in error.message


@pytest.mark.parametrize(
    ("dsn", "options", "argument"),
    [
        ("host=127.0.0.1 port", {}, "dsn"),
        ("postgresql://127.0.0.1/x", {"connect_timeout": 1}, "connect_timeout"),
        ("postgresql://127.0.0.1/x", {"connect_timeout": 2.5}, "connect_timeout"),
    ],
)
def test_a_store_refuses_a_bad_dsn_or_timeout_when_made(
    dsn: str, options: dict[str, Any], argument: str
) -> None:
    for cls in (PostgresStore, AsyncPostgresStore):
        with pytest.raises(InvalidInputError, match=f"^{argument} ") as caught:
            cls(dsn, **options)
        assert caught.value.code == "DC006"


class BusyPool:
    """A pool whose every connection stays busy: getting one times out."""

    timeout = 30.0
    max_size = 4

    def __init__(self) -> None:
        self.asked = 0

    @contextmanager
    def connection(self) -> Iterator[Any]:
        self.asked += 1
        raise PoolTimeout("couldn't get a connection after 30.00 sec")
        yield


def test_a_busy_pool_is_named_and_not_waited_for_twice() -> None:
    pool = BusyPool()
    store = PostgresStore(pool=cast(Any, pool))
    with pytest.raises(StoreError) as caught:
        store.call(RpcCall("credit_get_balance", {"p_user_id": "u"}, retry_safe=True))
    assert not isinstance(caught.value, StoreConnectionError)
    assert caught.value.message.startswith(
        "no connection of the pool came free within 30 s (max_size=4)"
    )
    assert pool.asked == 1


# ---------------------------------------------------------------- HTTP: connecting

BALANCE = RpcCall("credit_get_balance", {"p_user_id": "u"}, retry_safe=True)
UNSAFE = RpcCall("credit_add_credits", {"p_user_id": "u", "p_amount": 1})


def http_error(flavour: str, url: str, call: RpcCall, client: Any = None) -> DuctoError:
    """The error of ``call`` through an HTTP store of ``flavour`` on ``url``."""
    if flavour == "sync":
        store = HttpxSupabaseStore(url, "sb_secret_x", client=client)
        with pytest.raises(DuctoError) as caught:
            store.call(call)
        store.close()
        if client is not None:
            client.close()
        return caught.value

    async def run() -> DuctoError:
        store = AsyncHttpxSupabaseStore(url, "sb_secret_x", client=client)
        with pytest.raises(DuctoError) as caught:
            await store.call(call)
        await store.close()
        if client is not None:
            await client.aclose()
        return caught.value

    return asyncio.run(run())


def test_http_a_refused_connection_is_one_line_with_the_url(flavour: str) -> None:
    port = closed_port()
    error = http_error(flavour, f"http://user:secret@127.0.0.1:{port}/", BALANCE)
    assert isinstance(error, StoreConnectionError)
    url = f"http://127.0.0.1:{port}/rest/v1/rpc/credit_get_balance"
    assert error.message == f"cannot connect to {url}: [Errno 111] Connection refused"


def mock_client(flavour: str, error: type[httpx.TransportError]) -> Any:
    """An httpx client of ``flavour`` with the default timeouts whose requests fail."""

    def fail(request: httpx.Request) -> httpx.Response:
        raise error("", request=request)

    transport = httpx.MockTransport(fail)
    if flavour == "sync":
        return httpx.Client(transport=transport, timeout=DEFAULT_TIMEOUT)
    return httpx.AsyncClient(transport=transport, timeout=DEFAULT_TIMEOUT)


@pytest.mark.parametrize(
    ("error", "cls", "message"),
    [
        (
            httpx.ConnectTimeout,
            StoreConnectionError,
            "cannot connect to https://p.example/rest/v1/rpc/credit_add_credits:"
            " no connection within 5 s (the connect timeout)",
        ),
        (
            httpx.ReadTimeout,
            StoreError,
            "credit_add_credits: no answer within 10 s"
            " (https://p.example/rest/v1/rpc/credit_add_credits);"
            " the call may or may not have taken effect",
        ),
    ],
)
def test_http_a_timeout_says_which_and_how_long(
    flavour: str, error: type[httpx.TransportError], cls: type[DuctoError], message: str
) -> None:
    client = mock_client(flavour, error)
    caught = http_error(flavour, "https://p.example", UNSAFE, client)
    assert type(caught) is cls
    assert caught.message == message


@pytest.mark.parametrize("url", ["127.0.0.1:54321", "ftp://p.example", "https://", None])
def test_http_a_store_refuses_a_url_that_is_not_one(url: Any) -> None:
    for cls in (HttpxSupabaseStore, AsyncHttpxSupabaseStore):
        with pytest.raises(InvalidInputError, match=r"^url must be") as caught:
            cls(url, "sb_secret_x")
        assert caught.value.code == "DC006"
