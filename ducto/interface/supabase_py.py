"""Stores over the application's own supabase-py client (``pip install 'ducto[supabase]'``).

A Python app on Supabase already holds a client, ``create_client(url, key)`` or
``await acreate_client(url, key)``. These stores send ducto's calls through that client's
``.rpc()`` (postgrest-py), so they carry whatever the client carries: the service-role
key of a backend, or the access token of a signed-in user, whom row-level security and
the functions' grants then treat as that user (their own balance and plan; every admin
call refused with :class:`~ducto.errors.PermissionDeniedError`).

The client builds and sends each request; the store reads the answer as
:class:`~ducto.interface.HttpxSupabaseStore` does (numbers with a fraction as Decimal, so
a cost stays exact) and maps an error, the ``APIError`` postgrest-py makes of it, through
the same SQLSTATE table as every store (:func:`error_from_api`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from postgrest.base_request_builder import RequestConfig
from postgrest.exceptions import APIError, APIErrorFromJSON, generate_default_error_message
from pydantic import ValidationError
from supabase import AsyncClient, Client

from ducto import _migrations, _rpc
from ducto._rpc import RpcCall
from ducto.errors import DuctoError, SchemaError, StoreError, error_from_sqlstate
from ducto.interface.supabase import _decoded, _rows_of
from ducto.models import SetupResult

#: Status codes of a refusal by the API gateway (a missing or unknown key)
_REFUSED = frozenset({401, 403})


def api_error(response: httpx.Response) -> APIError:
    """The ``APIError`` postgrest-py's ``execute()`` raises for an error answer."""
    try:
        return APIError(dict(APIErrorFromJSON.model_validate_json(response.content)))
    except ValidationError:  # not JSON: postgrest-py names the HTTP status instead
        return APIError(generate_default_error_message(response))


def error_from_api(error: APIError, status: int | None = None) -> DuctoError:
    """The ducto exception for postgrest-py's ``APIError``, through ``SQLSTATE_ERRORS``.

    ``code`` is the SQLSTATE and ``details`` the ledger's JSON detail, kept as they came.
    An error without a PostgREST code is the gateway's: a refusal (HTTP 401 or 403, as
    ``status`` or as the code postgrest-py puts in its place) is a
    :class:`~ducto.errors.PermissionDeniedError`; anything else a
    :class:`~ducto.errors.StoreError`. Also usable on the app's own postgrest-py calls
    (``supabase.table("credit_transactions")...``)::

        try:
            supabase.table("credit_transactions").select("*").execute()
        except APIError as exc:
            raise error_from_api(exc) from exc
    """
    details = error.details
    detail = details if isinstance(details, str) or details is None else json.dumps(details)
    message = error.message or (f"HTTP {status}" if status else "no message")
    code = error.code
    # a SQLSTATE has five characters (PostgREST's own codes: PGRSTxxx); three digits are
    # the HTTP status postgrest-py puts in place of a code that was not there
    if code and not (len(code) == 3 and code.isdigit()):
        return error_from_sqlstate(code, message, detail, error.hint)
    refused = status in _REFUSED or code in {str(s) for s in _REFUSED}
    shown = f"HTTP {status or code}: {message}"
    return error_from_sqlstate("42501" if refused else None, shown, detail, error.hint)


def _answer(response: httpx.Response) -> list[dict[str, Any]]:
    """The rows of an RPC answer, or the ducto exception for its error."""
    if response.is_success:
        return _rows_of(_decoded(response.content))
    error = api_error(response)
    raise error_from_api(error, response.status_code) from error


# -- async source: scripts/unasync.py writes the sync flavour below from it --
class AsyncSupabaseStore:
    """Calls ducto's RPCs through an AsyncClient's ``.rpc()``.

    Every call goes out with the client's current headers: its key, or the access token of
    the session signed in on it. Transport errors are retried only for calls that cannot
    take effect twice (read-only, idempotent by nature, or carrying an idempotency key).
    The client stays the caller's: the store never closes it.

    ``read_client`` is a second client, on a read replica's API URL (a Supabase read
    replica has its own): the calls that read history (the analytics and the journal
    export) go through it, and lag the primary by the replica's replay delay; every other
    call goes through ``client``.
    """

    def __init__(
        self, client: AsyncClient, *, attempts: int = 3, read_client: AsyncClient | None = None
    ) -> None:
        for name, value in (("client", client), ("read_client", read_client or client)):
            if not isinstance(value, AsyncClient):
                raise TypeError(
                    "AsyncSupabaseStore needs a supabase AsyncClient (from acreate_client)"
                    f" as {name}, got {type(value).__name__}"
                )
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts must be an int of at least 1, got {attempts!r}")
        self._client = client
        self._read_client = read_client or client
        self._attempts = attempts

    @property
    def client(self) -> AsyncClient:
        """The supabase-py client the store calls through."""
        return self._client

    async def call(self, call: RpcCall) -> list[dict[str, Any]]:
        """Send ``call`` through ``client.rpc()`` (``read_client.rpc()`` for a read of
        history) and return its rows."""
        client = self._read_client if call.replica_safe else self._client
        # built by postgrest-py from the client as it is now (a refreshed session included)
        request: RequestConfig[httpx.AsyncClient] = client.rpc(
            call.function, dict(call.args)
        ).request
        for attempt in range(self._attempts):
            try:
                response = await request.send(httpx.Headers())
            except httpx.TransportError as exc:
                if not call.retry_safe or attempt + 1 == self._attempts:
                    raise StoreError(f"{call.function}: {exc!r}") from exc
                await asyncio.sleep(0.05 * 2**attempt)
                continue
            return _answer(response)
        raise AssertionError("unreachable")

    async def setup(self) -> SetupResult:
        """Check that the schema is installed and current; DDL cannot go through PostgREST.

        Raises:
            SchemaError: naming the command that installs or upgrades the schema.
        """
        try:
            rows = await self.call(_rpc.schema_version())
        except SchemaError:
            return _migrations.check_installed(None)
        return _migrations.check_installed(str(rows[0]["value"]))


# -- sync flavour: generated from the async source above by scripts/unasync.py; do not edit --
class SupabaseStore:
    """Calls ducto's RPCs through a Client's ``.rpc()``.

    Every call goes out with the client's current headers: its key, or the access token of
    the session signed in on it. Transport errors are retried only for calls that cannot
    take effect twice (read-only, idempotent by nature, or carrying an idempotency key).
    The client stays the caller's: the store never closes it.

    ``read_client`` is a second client, on a read replica's API URL (a Supabase read
    replica has its own): the calls that read history (the analytics and the journal
    export) go through it, and lag the primary by the replica's replay delay; every other
    call goes through ``client``.
    """

    def __init__(
        self, client: Client, *, attempts: int = 3, read_client: Client | None = None
    ) -> None:
        for name, value in (("client", client), ("read_client", read_client or client)):
            if not isinstance(value, Client):
                raise TypeError(
                    "SupabaseStore needs a supabase Client (from create_client)"
                    f" as {name}, got {type(value).__name__}"
                )
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts must be an int of at least 1, got {attempts!r}")
        self._client = client
        self._read_client = read_client or client
        self._attempts = attempts

    @property
    def client(self) -> Client:
        """The supabase-py client the store calls through."""
        return self._client

    def call(self, call: RpcCall) -> list[dict[str, Any]]:
        """Send ``call`` through ``client.rpc()`` (``read_client.rpc()`` for a read of
        history) and return its rows."""
        client = self._read_client if call.replica_safe else self._client
        # built by postgrest-py from the client as it is now (a refreshed session included)
        request: RequestConfig[httpx.Client] = client.rpc(call.function, dict(call.args)).request
        for attempt in range(self._attempts):
            try:
                response = request.send(httpx.Headers())
            except httpx.TransportError as exc:
                if not call.retry_safe or attempt + 1 == self._attempts:
                    raise StoreError(f"{call.function}: {exc!r}") from exc
                time.sleep(0.05 * 2**attempt)
                continue
            return _answer(response)
        raise AssertionError("unreachable")

    def setup(self) -> SetupResult:
        """Check that the schema is installed and current; DDL cannot go through PostgREST.

        Raises:
            SchemaError: naming the command that installs or upgrades the schema.
        """
        try:
            rows = self.call(_rpc.schema_version())
        except SchemaError:
            return _migrations.check_installed(None)
        return _migrations.check_installed(str(rows[0]["value"]))
