"""Stores over PostgREST with httpx: how a backend reaches a hosted Supabase project.

Both flavours call ``{url}/rest/v1/rpc/<function>`` with the headers Supabase's API
gateway expects: ``apikey`` always, and ``Authorization: Bearer`` when the key is a JWT
(legacy keys); the new ``sb_secret_...`` keys go in ``apikey`` alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from typing import Any

import httpx

from ducto import _migrations, _rpc
from ducto._rpc import RpcCall, json_default
from ducto.errors import DuctoError, SchemaError, StoreError, error_from_sqlstate
from ducto.models import SetupResult

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


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
    message = body.get("message") if isinstance(body, dict) else None
    # the gateway refused the key, or something answered that is not PostgREST
    return error_from_sqlstate(
        "42501" if response.status_code in (401, 403) else None,
        f"HTTP {response.status_code}: {message or response.text[:200]}",
    )


# -- async source: scripts/unasync.py writes the sync flavour below from it --
class AsyncHttpxSupabaseStore:
    """Calls ducto's RPCs through Supabase's REST API (PostgREST) with httpx.

    Transport errors are retried only for calls that cannot take effect twice (read-only,
    idempotent by nature, or carrying an idempotency key).
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        attempts: int = 3,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._base = url.rstrip("/")
        self._headers = _headers(key)
        self._attempts = attempts

    async def call(self, call: RpcCall) -> list[dict[str, Any]]:
        """POST ``call`` to ``/rest/v1/rpc/<function>`` and return its rows."""
        path, body = _request(call)
        for attempt in range(self._attempts):
            try:
                response = await self._client.post(
                    self._base + path, content=body, headers=self._headers
                )
            except httpx.TransportError as exc:
                if not call.retry_safe or attempt + 1 == self._attempts:
                    raise StoreError(f"{call.function}: {exc!r}") from exc
                await asyncio.sleep(0.05 * 2**attempt)
                continue
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

    Transport errors are retried only for calls that cannot take effect twice (read-only,
    idempotent by nature, or carrying an idempotency key).
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        attempts: int = 3,
        client: httpx.Client | None = None,
    ) -> None:
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=timeout)
        self._base = url.rstrip("/")
        self._headers = _headers(key)
        self._attempts = attempts

    def call(self, call: RpcCall) -> list[dict[str, Any]]:
        """POST ``call`` to ``/rest/v1/rpc/<function>`` and return its rows."""
        path, body = _request(call)
        for attempt in range(self._attempts):
            try:
                response = self._client.post(self._base + path, content=body, headers=self._headers)
            except httpx.TransportError as exc:
                if not call.retry_safe or attempt + 1 == self._attempts:
                    raise StoreError(f"{call.function}: {exc!r}") from exc
                time.sleep(0.05 * 2**attempt)
                continue
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
