"""Helpers for the tests that attack the ledger through the gateway and PostgREST.

A test speaks HTTP to ``SUPABASE_URL/rest/v1`` exactly as a client of a hosted
project does (an ``apikey`` header, plus ``Authorization: Bearer <JWT>``), and
checks what really happened through a superuser connection to the database:
:func:`ledger_rows` takes a picture of every ledger row of some users, so a
test can assert that a refused request wrote nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import psycopg

JSON = dict[str, Any]

# The six ledger tables (docs/ledger.md, "Objects").
LEDGER_TABLES = (
    "credit_accounts",
    "credit_transactions",
    "credit_grants",
    "credit_grant_draws",
    "credit_reservations",
    "credit_idempotency_keys",
)

# The body PostgREST answers for every error.
ERROR_KEYS = {"code", "message", "details", "hint"}

# The HTTP status of each ledger refusal through PostgREST, by meaning (docs/ledger.md,
# "Errors"): the account cannot pay, not a member, not found, a conflict with the ledger's
# state, too many holds at once; every other ducto code is a refused argument.
LEDGER_STATUS = {
    **dict.fromkeys(("DC010", "DC083", "DC084", "DC085", "DC087"), 402),
    "DC082": 403,
    **dict.fromkeys(("DC030", "DC031", "DC064", "DC080", "DC081", "DC110", "DC120", "DC122"), 404),
    **dict.fromkeys(
        (
            *("DC020", "DC040", "DC041", "DC050", "DC051", "DC063", "DC111", "DC121"),
            *("DC130", "DC131", "DC133", "DC134", "DC135"),
        ),
        409,
    ),
    "DC086": 429,
    "DC132": 410,
}


def status_of(code: str) -> int:
    """The HTTP status PostgREST answers with for an error ``code``: a ducto code's by its
    meaning (422 for a refused argument), PostgreSQL's own input errors 400."""
    return LEDGER_STATUS.get(code, 422) if code.startswith("DC") else 400


def new_user_id() -> str:
    """A fresh user id (a uuid, as Supabase Auth's ``sub``), unused by any other test."""
    return str(uuid.uuid4())


class Api:
    """One caller of ``/rest/v1``: fixed ``apikey`` and, optionally, a bearer token.

    ``apikey=None`` sends no ``apikey`` header; ``bearer=None`` sends no
    ``Authorization`` header (the gateway then forwards ``Bearer <apikey>``).
    """

    def __init__(self, client: httpx.Client, apikey: str | None, bearer: str | None = None):
        self.client = client
        self.headers: dict[str, str] = {}
        if apikey is not None:
            self.headers["apikey"] = apikey
        if bearer is not None:
            self.headers["Authorization"] = f"Bearer {bearer}"

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        return {**self.headers, **(extra or {})}

    def rpc(
        self,
        function: str,
        args: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """``POST /rest/v1/rpc/<function>`` with the named arguments as a JSON object."""
        return self.client.post(
            f"/rest/v1/rpc/{function}", json=dict(args or {}), headers=self._headers(headers)
        )

    def rpc_raw(self, function: str, body: str) -> httpx.Response:
        """``POST /rest/v1/rpc/<function>`` with a body sent byte for byte (any JSON text)."""
        return self.client.post(
            f"/rest/v1/rpc/{function}",
            content=body.encode(),
            headers=self._headers({"Content-Type": "application/json"}),
        )

    def rpc_get(self, function: str, params: Mapping[str, str] | None = None) -> httpx.Response:
        """``GET /rest/v1/rpc/<function>?<params>``."""
        return self.client.get(
            f"/rest/v1/rpc/{function}", params=dict(params or {}), headers=self._headers(None)
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Any request on ``/rest/v1/<path>`` (tables: GET, POST, PATCH, DELETE)."""
        return self.client.request(
            method,
            f"/rest/v1/{path}",
            params=dict(params or {}),
            json=json_body,
            headers=self._headers(headers),
        )

    def select(self, table: str, params: Mapping[str, str] | None = None) -> httpx.Response:
        """``GET /rest/v1/<table>?<params>``."""
        return self.request("GET", table, params=params)


def expect_ok(response: httpx.Response) -> JSON:
    """The JSON object of a 200 answer (an RPC returning one composite row)."""
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    body = response.json()
    assert isinstance(body, dict), body
    return body


def expect_rows(response: httpx.Response) -> list[JSON]:
    """The JSON array of a 200 answer (a table read or a set-returning RPC)."""
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    body = response.json()
    assert isinstance(body, list), body
    return body


def expect_error(
    response: httpx.Response,
    status: int,
    code: str,
    *,
    message: str | None = None,
    message_contains: Iterable[str] = (),
) -> JSON:
    """Assert an error answer: HTTP ``status``, PostgREST's four fields, ``code``.

    ``message`` must match exactly when given; every string of
    ``message_contains`` must appear in it. Returns the body.
    """
    assert response.status_code == status, (
        f"expected {status} {code}, got {response.status_code}: {response.text}"
    )
    body = response.json()
    assert isinstance(body, dict), body
    assert set(body) == ERROR_KEYS, body
    assert body["code"] == code, body
    if message is not None:
        assert body["message"] == message, body
    for part in message_contains:
        assert part in body["message"], (part, body)
    return body


def error_details(body: Mapping[str, Any]) -> JSON:
    """The ``details`` of a ducto error, which is a JSON object serialised as a string."""
    details = body["details"]
    assert isinstance(details, str), body
    parsed = json.loads(details)
    assert isinstance(parsed, dict), body
    return parsed


def permission_denied(kind: str, name: str) -> str:
    """PostgreSQL's message for a missing privilege (42501)."""
    return f"permission denied for {kind} {name}"


# Every ledger row of some users, one query per table, so that a test can compare
# the picture before and after a request. Rows are compared as their text form.
_ROWS_SQL = {
    "credit_accounts": """
        select x::text from public.credit_accounts as x
        where x.user_id = any(%(users)s) order by 1""",
    "credit_transactions": """
        select x::text from public.credit_transactions as x
        where x.user_id = any(%(users)s) order by 1""",
    "credit_grants": """
        select x::text from public.credit_grants as x
        where x.user_id = any(%(users)s) order by 1""",
    "credit_grant_draws": """
        select x::text from public.credit_grant_draws as x
        join public.credit_transactions as t on t.id = x.transaction_id
        where t.user_id = any(%(users)s) order by 1""",
    "credit_reservations": """
        select x::text from public.credit_reservations as x
        where x.user_id = any(%(users)s) order by 1""",
    "credit_idempotency_keys": """
        select x::text from public.credit_idempotency_keys as x
        join public.credit_accounts as a on a.id = x.account_id
        where a.user_id = any(%(users)s) order by 1""",
}


def ledger_rows(conn: psycopg.Connection[Any], *user_ids: str) -> dict[str, list[str]]:
    """Every ledger row that belongs to one of ``user_ids``, per table, as text."""
    assert user_ids
    picture: dict[str, list[str]] = {}
    for table, sql in _ROWS_SQL.items():
        rows = conn.execute(sql, {"users": list(user_ids)}).fetchall()
        picture[table] = [row[0] for row in rows]
    return picture


def row_count(picture: Mapping[str, list[str]]) -> int:
    """How many rows a :func:`ledger_rows` picture holds."""
    return sum(len(rows) for rows in picture.values())
