"""Stores over PostgREST with httpx: how a backend reaches a hosted Supabase project.

Both flavours call ``{url}/rest/v1/rpc/<function>`` with the headers Supabase's API
gateway expects: ``apikey`` always, and ``Authorization: Bearer`` when the key is a JWT
(legacy keys); the new ``sb_secret_...`` keys go in ``apikey`` alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from decimal import Decimal
from typing import Any

import httpx

from ducto import _migrations, _rpc
from ducto._messages import cut, one_line, shown
from ducto._rpc import RpcCall, json_default
from ducto.errors import (
    DuctoError,
    InvalidInputError,
    SchemaError,
    StoreConnectionError,
    StoreError,
    error_from_sqlstate,
)
from ducto.models import SetupResult

#: 10 s for an answer, 5 s to connect; pass ``timeout=`` to change them.
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def _base_url(url: object) -> str:
    """The project's URL without a trailing slash; anything but http(s)://host is refused."""
    try:
        parsed = httpx.URL(url) if isinstance(url, str) else None
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidInputError(
            f"url must be the project's http:// or https:// URL, got {shown(url)}",
            code="DC006",
        )
    return str(url).rstrip("/")


def _reason(exc: BaseException) -> str:
    """The innermost cause of a transport error, as the OS words it."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    if isinstance(exc, ConnectionError) and exc.errno:
        # the same words from the sync and the async transports (asyncio adds its own)
        return f"[Errno {exc.errno}] {os.strerror(exc.errno)}"
    return one_line(str(exc)) or type(exc).__name__


def _transport_error(
    exc: httpx.TransportError, url: httpx.URL, call: RpcCall, timeout: httpx.Timeout
) -> StoreError:
    """The ducto error for a request that got no HTTP answer (no credentials in it)."""
    where = str(url.copy_with(userinfo=b""))
    reason = _reason(exc)
    if isinstance(exc, httpx.ConnectTimeout):
        reason = f"no connection within {timeout.connect:g} s (the connect timeout)"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        # the request was never sent: the call had no effect
        return StoreConnectionError(f"cannot connect to {where}: {reason}", detail=reason)
    if isinstance(exc, httpx.TimeoutException):
        reason = f"no answer within {timeout.read:g} s"
    return StoreError(
        f"{call.function}: {reason} ({where}); the call may or may not have taken effect",
        detail=reason,
    )


#: Transport errors raised before the request went out
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


def _outcome_unknown(error: StoreError) -> StoreError:
    """``error`` for a call one of whose attempts went out and got no answer: that attempt
    may have taken effect, whatever the last one met."""
    return StoreError(
        f"{error.message}; an attempt got no answer, so the call may or may not have taken effect",
        detail=error.detail,
    )


#: The gateway lost PostgREST (502, 504) or PostgREST lost the database (503, PGRST00x):
#: the request may have run or not, so only a call that cannot take effect twice is retried
_UNREACHED = frozenset({502, 503, 504})


def _headers(key: str) -> dict[str, str]:
    headers = {"apikey": key, "Content-Type": "application/json", "Accept": "application/json"}
    if key.count(".") == 2:  # a JWT: header.payload.signature
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _request(call: RpcCall) -> tuple[str, bytes]:
    """The path and JSON body of ``call``."""
    body = json.dumps(dict(call.args), default=json_default, allow_nan=False)
    return f"/rest/v1/rpc/{call.function}", body.encode()


def _decoded(content: bytes) -> object:
    """A PostgREST body as JSON (None when it is not JSON).

    Numbers with a fraction become Decimal: a numeric result (a cost) stays exact.
    """
    try:
        return json.loads(content, parse_float=Decimal)
    except ValueError:
        return None


def _rows_of(body: object) -> list[dict[str, Any]]:
    """The rows of a successful RPC answer: one object, an array, or a scalar's value."""
    if isinstance(body, dict):
        return [body]
    if isinstance(body, list):
        return body
    return [{"value": body}]  # a scalar function


def _rows(response: httpx.Response) -> list[dict[str, Any]]:
    """The rows of a PostgREST answer, or the ducto exception its error body names."""
    body = _decoded(response.content)
    if response.is_success:
        return _rows_of(body)
    raise _error(response, body)


def _error(response: httpx.Response, body: object) -> DuctoError:
    if isinstance(body, dict) and "code" in body:
        return error_from_sqlstate(
            str(body["code"]),
            str(body.get("message") or f"HTTP {response.status_code}"),
            body.get("details"),
            body.get("hint"),
        )
    # the gateway refused the key, or something answered that is not PostgREST
    message = body.get("message") if isinstance(body, dict) else None
    if not message:
        text = one_line(response.text) if body is None else ""
        message = cut(text) or response.reason_phrase
    where = response.request.url.copy_with(userinfo=b"")
    return error_from_sqlstate(
        "42501" if response.status_code in (401, 403) else None,
        f"HTTP {response.status_code}: {message} ({response.request.method} {where})",
        hint="the url must be the project's URL, the one whose /rest/v1/ is its REST API"
        if response.status_code == 404
        else None,
    )


# -- async source: scripts/unasync.py writes the sync flavour below from it --
class AsyncHttpxSupabaseStore:
    """Calls ducto's RPCs through Supabase's REST API (PostgREST) with httpx.

    Transport errors, and the gateway or PostgREST answering 502, 503 or 504 (restarting,
    or cut off from the database), are retried only for calls that cannot take effect
    twice (read-only, idempotent by nature, or carrying an idempotency key).

    ``read_url`` is the URL of a read replica's API (a Supabase read replica's, or a
    PostgREST in front of a hot standby, with the same ``/rest/v1/rpc/`` paths and the
    same key): the calls that read history (the analytics and the journal export) go
    there, and lag the primary by the replica's replay delay; every other call (balances,
    charges, statements) goes to ``url``. When the replica cannot be reached those calls
    fail; they never fall back to the primary.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        attempts: int = 3,
        client: httpx.AsyncClient | None = None,
        read_url: str | None = None,
    ) -> None:
        self._base = _base_url(url)
        self._read_base = self._base if read_url is None else _base_url(read_url)
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._headers = _headers(key)
        self._attempts = attempts

    async def call(self, call: RpcCall) -> list[dict[str, Any]]:
        """POST ``call`` to ``/rest/v1/rpc/<function>`` and return its rows (of the read
        replica's API for a replica-safe read, when the store has one)."""
        path, body = _request(call)
        base = self._read_base if call.replica_safe else self._base
        unanswered = False  # an attempt went out and its answer never came
        for attempt in range(self._attempts):
            try:
                response = await self._client.post(base + path, content=body, headers=self._headers)
            except httpx.TransportError as exc:
                if not call.retry_safe or attempt + 1 == self._attempts:
                    url = httpx.URL(base + path)
                    error = _transport_error(exc, url, call, self._client.timeout)
                    if unanswered and isinstance(error, StoreConnectionError):
                        error = _outcome_unknown(error)
                    raise error from exc
                unanswered = unanswered or not isinstance(exc, _NOT_SENT)
                await asyncio.sleep(0.05 * 2**attempt)
                continue
            if response.status_code in _UNREACHED:
                # a 503 is PostgREST's own: it did not reach the database
                unanswered = unanswered or response.status_code != 503
                if call.retry_safe and attempt + 1 < self._attempts:
                    await asyncio.sleep(0.05 * 2**attempt)
                    continue
                if unanswered:
                    try:
                        _rows(response)
                    except StoreError as error:
                        raise _outcome_unknown(error) from error
            return _rows(response)
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

    async def close(self) -> None:
        """Close the HTTP client if the store created it."""
        if self._owns_client:
            await self._client.aclose()


# -- sync flavour: generated from the async source above by scripts/unasync.py; do not edit --
class HttpxSupabaseStore:
    """Calls ducto's RPCs through Supabase's REST API (PostgREST) with httpx.

    Transport errors, and the gateway or PostgREST answering 502, 503 or 504 (restarting,
    or cut off from the database), are retried only for calls that cannot take effect
    twice (read-only, idempotent by nature, or carrying an idempotency key).

    ``read_url`` is the URL of a read replica's API (a Supabase read replica's, or a
    PostgREST in front of a hot standby, with the same ``/rest/v1/rpc/`` paths and the
    same key): the calls that read history (the analytics and the journal export) go
    there, and lag the primary by the replica's replay delay; every other call (balances,
    charges, statements) goes to ``url``. When the replica cannot be reached those calls
    fail; they never fall back to the primary.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        attempts: int = 3,
        client: httpx.Client | None = None,
        read_url: str | None = None,
    ) -> None:
        self._base = _base_url(url)
        self._read_base = self._base if read_url is None else _base_url(read_url)
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=timeout)
        self._headers = _headers(key)
        self._attempts = attempts

    def call(self, call: RpcCall) -> list[dict[str, Any]]:
        """POST ``call`` to ``/rest/v1/rpc/<function>`` and return its rows (of the read
        replica's API for a replica-safe read, when the store has one)."""
        path, body = _request(call)
        base = self._read_base if call.replica_safe else self._base
        unanswered = False  # an attempt went out and its answer never came
        for attempt in range(self._attempts):
            try:
                response = self._client.post(base + path, content=body, headers=self._headers)
            except httpx.TransportError as exc:
                if not call.retry_safe or attempt + 1 == self._attempts:
                    url = httpx.URL(base + path)
                    error = _transport_error(exc, url, call, self._client.timeout)
                    if unanswered and isinstance(error, StoreConnectionError):
                        error = _outcome_unknown(error)
                    raise error from exc
                unanswered = unanswered or not isinstance(exc, _NOT_SENT)
                time.sleep(0.05 * 2**attempt)
                continue
            if response.status_code in _UNREACHED:
                # a 503 is PostgREST's own: it did not reach the database
                unanswered = unanswered or response.status_code != 503
                if call.retry_safe and attempt + 1 < self._attempts:
                    time.sleep(0.05 * 2**attempt)
                    continue
                if unanswered:
                    try:
                        _rows(response)
                    except StoreError as error:
                        raise _outcome_unknown(error) from error
            return _rows(response)
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

    def close(self) -> None:
        """Close the HTTP client if the store created it."""
        if self._owns_client:
            self._client.close()
