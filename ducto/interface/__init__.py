"""Stores: adapters that send ducto's RPC calls to a database (psycopg) or to PostgREST.

``SupabaseStore`` and ``AsyncSupabaseStore`` (over an app's supabase-py client) need the
``supabase`` extra, ``pip install 'ducto[supabase]'``; they are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ducto.interface.base import AsyncCreditStore, CreditStore
from ducto.interface.postgres import AsyncPostgresStore, PostgresStore
from ducto.interface.supabase import AsyncHttpxSupabaseStore, HttpxSupabaseStore

if TYPE_CHECKING:
    from ducto.interface.supabase_py import AsyncSupabaseStore, SupabaseStore

__all__ = [
    "AsyncCreditStore",
    "AsyncHttpxSupabaseStore",
    "AsyncPostgresStore",
    "AsyncSupabaseStore",
    "CreditStore",
    "HttpxSupabaseStore",
    "PostgresStore",
    "SupabaseStore",
]

_NEEDS_SUPABASE = frozenset({"AsyncSupabaseStore", "SupabaseStore"})


def __getattr__(name: str) -> Any:
    # the supabase-py stores load supabase-py, which the base install does not have
    if name not in _NEEDS_SUPABASE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from ducto.interface import supabase_py
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"{name} needs supabase-py: pip install 'ducto[supabase]' ({exc})"
        ) from exc
    return getattr(supabase_py, name)
