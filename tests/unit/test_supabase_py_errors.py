"""The supabase-py stores without a server: postgrest-py's ``APIError`` mapped through the
same SQLSTATE table as every store, and the stores refusing what is not a client of theirs.
"""

from __future__ import annotations

import asyncio

import pytest
from postgrest.exceptions import APIError
from supabase import AsyncClient, Client, acreate_client, create_client

from ducto import (
    DuctoError,
    InsufficientCreditsError,
    NotFoundError,
    PermissionDeniedError,
    SchemaError,
    StoreError,
)
from ducto.interface import AsyncSupabaseStore, SupabaseStore
from ducto.interface.supabase_py import error_from_api

URL = "http://127.0.0.1:9"  # never called
KEY = "sb_secret_unit"


@pytest.mark.parametrize(
    ("error", "status", "expected", "code", "message"),
    [
        (
            {"code": "DC010", "message": "insufficient credits", "details": None, "hint": None},
            400,
            InsufficientCreditsError,
            "DC010",
            "insufficient credits",
        ),
        ({"code": "DC031", "message": "no reservation"}, 400, NotFoundError, "DC031", None),
        ({"code": "42501", "message": "denied"}, 403, PermissionDeniedError, "42501", "denied"),
        ({"code": "PGRST202", "message": "no function"}, 404, SchemaError, "PGRST202", None),
        ({"code": "XX999", "message": "odd"}, 400, StoreError, "XX999", "odd"),
        # the gateway refused the key: no code (the status tells), or the status as code
        ({"message": "Invalid API key"}, 401, PermissionDeniedError, "42501", "HTTP 401"),
        ({"code": "403", "message": "Forbidden"}, None, PermissionDeniedError, "42501", None),
        # something that is not PostgREST answered
        ({"code": "502", "message": "Bad Gateway"}, 502, StoreError, None, "HTTP 502: Bad"),
    ],
)
def test_api_errors_map_through_the_sqlstate_table(
    error: dict[str, str | None],
    status: int | None,
    expected: type[DuctoError],
    code: str | None,
    message: str | None,
) -> None:
    mapped = error_from_api(APIError(error), status)
    assert type(mapped) is expected
    assert mapped.code == code
    assert mapped.message.startswith(message or "")


def test_an_api_error_keeps_detail_and_hint() -> None:
    mapped = error_from_api(
        APIError(
            {
                "code": "DC010",
                "message": "insufficient credits (account=u, available=1, needed=6)",
                "details": '{"user_id": "u", "available": 1, "needed": 6}',
                "hint": "add credits or lower min_balance",
            }
        )
    )
    assert isinstance(mapped, InsufficientCreditsError)
    assert mapped.details == {"user_id": "u", "available": 1, "needed": 6}
    assert mapped.hint == "add credits or lower min_balance"


def test_structured_details_are_kept_as_json_text() -> None:
    mapped = error_from_api(APIError({"code": "DC030", "message": "m", "details": {"id": "t"}}))
    assert mapped.details == {"id": "t"}


def test_each_store_takes_only_its_own_client() -> None:
    sync_client = create_client(URL, KEY)
    async_client = asyncio.run(acreate_client(URL, KEY))
    assert isinstance(sync_client, Client) and isinstance(async_client, AsyncClient)
    assert SupabaseStore(sync_client).client is sync_client
    assert AsyncSupabaseStore(async_client).client is async_client
    with pytest.raises(TypeError, match="AsyncClient"):
        AsyncSupabaseStore(sync_client)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a supabase Client"):
        SupabaseStore(async_client)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got str"):
        SupabaseStore("https://project.supabase.co")  # type: ignore[arg-type]
    for attempts in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="attempts"):
            SupabaseStore(sync_client, attempts=attempts)  # type: ignore[arg-type]


def test_a_read_client_is_a_client_of_the_same_flavour() -> None:
    sync_client = create_client(URL, KEY)
    async_client = asyncio.run(acreate_client(URL, KEY))
    SupabaseStore(sync_client, read_client=create_client(URL, KEY))
    AsyncSupabaseStore(async_client, read_client=asyncio.run(acreate_client(URL, KEY)))
    with pytest.raises(TypeError, match="as read_client, got AsyncClient"):
        SupabaseStore(sync_client, read_client=async_client)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="as read_client, got str"):
        AsyncSupabaseStore(async_client, read_client="https://rr.supabase.co")  # type: ignore[arg-type]
