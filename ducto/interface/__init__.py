"""Stores: adapters that send ducto's RPC calls to a database (psycopg) or to PostgREST."""

from ducto.interface.base import AsyncCreditStore, CreditStore
from ducto.interface.postgres import AsyncPostgresStore, PostgresStore
from ducto.interface.supabase import AsyncHttpxSupabaseStore, HttpxSupabaseStore

__all__ = [
    "AsyncCreditStore",
    "AsyncHttpxSupabaseStore",
    "AsyncPostgresStore",
    "CreditStore",
    "HttpxSupabaseStore",
    "PostgresStore",
]
