"""Stores over psycopg 3: a backend next to its database calls the functions directly."""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from ducto import _migrations
from ducto._messages import cut, one_line, shown
from ducto._rpc import RpcCall, TextArray
from ducto.errors import (
    DuctoError,
    InvalidInputError,
    StoreConnectionError,
    StoreError,
    error_from_sqlstate,
)
from ducto.models import SetupResult

#: Seconds a store waits for the database to accept a new connection.
DEFAULT_CONNECT_TIMEOUT = 5

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
#: admin_shutdown, crash_shutdown, cannot_connect_now: the server went away
_SHUTDOWN = frozenset({"57P01", "57P02", "57P03"})


def _dsn_connect_timeout(value: str | int | None) -> int:
    """A DSN's ``connect_timeout`` as libpq reads it (at least 2 s), else ducto's default."""
    if not value:
        return DEFAULT_CONNECT_TIMEOUT
    try:
        return max(int(value), 2)
    except ValueError:
        raise InvalidInputError(
            f"dsn has a connect_timeout that is not whole seconds: {shown(value)}", code="DC006"
        ) from None


class _Database:
    """Where a store's own pool connects: its DSN, connect timeout and a printable name."""

    def __init__(self, dsn: str, connect_timeout: int | None) -> None:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise InvalidInputError(
                f"dsn is not a PostgreSQL connection string: {cut(one_line(str(exc)))}",
                code="DC006",
            ) from exc
        if connect_timeout is None:
            connect_timeout = _dsn_connect_timeout(params.get("connect_timeout"))
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, int):
            raise InvalidInputError(
                f"connect_timeout must be whole seconds (int), got {shown(connect_timeout)}",
                code="DC006",
            )
        if connect_timeout < 2:  # libpq's minimum; 0 would mean wait forever
            raise InvalidInputError(
                f"connect_timeout must be at least 2 seconds, got {connect_timeout}", code="DC006"
            )
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        # never the password
        user = f"{params['user']}@" if params.get("user") else ""
        port = f":{params['port']}" if params.get("port") else ""
        self.name = (
            f"{user}{params.get('host') or 'the local socket'}{port}/{params.get('dbname', '')}"
        )

    def connect_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of every new connection."""
        # each RPC is one statement and its own transaction: autocommit saves the
        # BEGIN/COMMIT round trips
        return {"autocommit": True, "connect_timeout": self.connect_timeout}

    def unreachable(self, exc: psycopg.Error) -> StoreConnectionError:
        """The error for a connection attempt that failed with ``exc``."""
        reason = one_line(str(exc).removeprefix("connection failed: "))
        if "timeout expired" in reason:
            reason += f" (no answer within connect_timeout={self.connect_timeout} s)"
        return StoreConnectionError(
            f"cannot connect to the database {self.name}: {reason}", detail=reason
        )


@functools.lru_cache(maxsize=256)
def _query_text(function: str, names: tuple[str, ...], scalar: bool) -> str:
    """``select * from public.<fn>(name => %(name)s, ...)``, built once per call shape.

    Function and argument names come from ducto's own call builders, never from input.
    """
    assert all(_IDENTIFIER.match(name) for name in (function, *names))
    arguments = ", ".join(f"{name} => %({name})s" for name in names)
    if scalar:  # one row {"value": ...}, as the PostgREST store gives it
        return f"select public.{function}({arguments}) as value"
    return f"select * from public.{function}({arguments})"


def _query(call: RpcCall) -> tuple[str, dict[str, Any]]:
    """The SQL text and parameters of ``call``."""
    # a dict or list is a JSON argument; a TextArray a text[] (a scope, event types)
    params = {
        name: list(value)
        if isinstance(value, TextArray)
        else Jsonb(value)
        if isinstance(value, dict | list)
        else value
        for name, value in call.args.items()
    }
    return _query_text(call.function, tuple(call.args), call.returns_scalar), params


def _error(exc: psycopg.Error) -> DuctoError:
    """The ducto exception for a psycopg error (StoreError when it has no SQLSTATE)."""
    diag = exc.diag
    if exc.sqlstate is None:
        return StoreError(str(exc) or type(exc).__name__)
    return error_from_sqlstate(
        exc.sqlstate,
        diag.message_primary or str(exc),
        diag.message_detail,
        diag.message_hint,
    )


def _lost(exc: psycopg.Error) -> bool:
    """Whether ``exc`` is a lost connection (no SQLSTATE, class 08, or the server going
    away): the call may have been sent, and even committed, without an answer."""
    lost = exc.sqlstate is None or exc.sqlstate.startswith("08") or exc.sqlstate in _SHUTDOWN
    return isinstance(exc, psycopg.OperationalError) and lost


def _retryable(exc: psycopg.Error, call: RpcCall, attempt: int, attempts: int) -> bool:
    # only a lost connection, and only when a second send cannot have a second effect; a
    # timeout or any error the server answered is the caller's to see
    return _lost(exc) and call.retry_safe and (attempt + 1 < attempts)


def _outcome_unknown(call: RpcCall, reason: str, code: str | None = None) -> StoreError:
    """The error for a call whose last attempt, or an earlier one, got no answer."""
    return StoreError(
        f"{call.function}: {reason}; the call may or may not have taken effect", code=code
    )


# -- async source: scripts/unasync.py writes the sync flavour below from it --
class AsyncPostgresStore:
    """Calls ducto's functions over a psycopg connection pool.

    Pass a DSN (the store owns its pool), an existing ``AsyncConnectionPool``, or an
    ``AsyncConnection``: with a connection, every call runs inside the caller's current
    transaction and commits or rolls back with it (the store never commits it).

    With a DSN, ``connect_timeout`` is how many seconds (at least 2) a new connection may
    take; None takes the DSN's ``connect_timeout`` (2 at least, as libpq reads it), else
    :data:`DEFAULT_CONNECT_TIMEOUT`.
    The first call connects once before opening the pool, so a wrong DSN, a refused
    password or a server that does not answer raises ``StoreConnectionError`` with the
    reason within that time.

    ``read_dsn`` (with a DSN or a pool) is a read replica's DSN: the store opens a second
    pool there (same ``max_size`` and ``connect_timeout``) for the calls that read
    history (the analytics and the journal export, STABLE functions that cannot write),
    which then lag the primary by the replica's replay delay. Every other call (balances, charges,
    statements, setup, :meth:`transaction`) stays on the primary. When the replica cannot
    be reached those calls fail with ``StoreConnectionError``; they never fall back to the
    primary.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: AsyncConnectionPool | None = None,
        connection: psycopg.AsyncConnection[Any] | None = None,
        max_size: int = 10,
        attempts: int = 2,
        connect_timeout: int | None = None,
        read_dsn: str | None = None,
    ) -> None:
        if sum(x is not None for x in (dsn, pool, connection)) != 1:
            raise ValueError("pass exactly one of dsn, pool or connection")
        if read_dsn is not None and connection is not None:
            # the caller's transaction must see its own writes: every call goes into it
            raise ValueError("read_dsn needs a dsn or a pool, not a connection")
        self._connection = connection
        self._database = None if dsn is None else _Database(dsn, connect_timeout)
        self._pool = pool
        self._pool_opened = False
        if self._database is not None:
            # opened on first use, once a connection has succeeded
            self._pool = AsyncConnectionPool(
                self._database.dsn,
                min_size=1,
                max_size=max_size,
                kwargs=self._database.connect_kwargs(),
                open=False,
            )
        self._read_database: _Database | None = None
        self._read_pool: AsyncConnectionPool | None = None
        self._read_pool_opened = False
        if read_dsn is not None:
            self._read_database = _Database(read_dsn, connect_timeout)
            self._read_pool = AsyncConnectionPool(
                read_dsn,
                min_size=1,
                max_size=max_size,
                kwargs=self._read_database.connect_kwargs(),
                open=False,
            )
        self._attempts = attempts

    async def call(self, call: RpcCall) -> list[dict[str, Any]]:
        """Run ``call``: in the bound connection, or in a pooled one (retried when safe);
        a replica-safe read in the read replica's pool when the store has one."""
        if self._connection is not None:
            try:
                return await self._execute(self._connection, call)
            except psycopg.Error as exc:
                raise _error(exc) from exc
        if call.replica_safe and self._read_pool is not None:
            pool = await self._opened_read_pool()
            database = self._read_database
        else:
            pool = await self._opened_pool()
            database = self._database
        lost = False  # an attempt went out and its answer never came
        for attempt in range(self._attempts):
            try:
                async with pool.connection() as conn:
                    return await self._execute(conn, call)
            except PoolTimeout as exc:  # waiting again would not help
                if lost:
                    reason = f"connection lost, and none came free within {pool.timeout:g} s"
                    raise _outcome_unknown(call, reason) from exc
                raise await self._no_connection(pool, exc, database) from exc
            except psycopg.Error as exc:
                if not _retryable(exc, call, attempt, self._attempts):
                    if _lost(exc):
                        reason = one_line(str(exc)) or type(exc).__name__
                        raise _outcome_unknown(call, reason, exc.sqlstate) from exc
                    raise _error(exc) from exc
                lost = True
        raise AssertionError("unreachable")

    async def setup(self) -> SetupResult:
        """Apply the bundled migrations that the database lacks, one transaction each.

        Holds a session advisory lock meanwhile, so concurrent setups apply each migration
        once; skips versions recorded by an earlier setup() or by ``supabase db push``;
        makes PostgREST reload its schema cache afterwards.
        """
        if self._pool is None:
            raise StoreError("setup() needs a store with a pool, not a bound connection")
        pool = await self._opened_pool()
        try:
            async with pool.connection() as conn:
                return await self._setup(conn)
        except PoolTimeout as exc:
            raise await self._no_connection(pool, exc, self._database) from exc
        except psycopg.Error as exc:
            raise _error(exc) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncPostgresStore]:
        """A store bound to one pooled connection, in one transaction, for several calls."""
        pool = await self._opened_pool()
        async with pool.connection() as conn, conn.transaction():
            yield AsyncPostgresStore(connection=conn)

    async def close(self) -> None:
        """Close the pools the store created."""
        if self._database is not None and self._pool is not None:
            await self._pool.close()
        if self._read_pool is not None:
            await self._read_pool.close()

    async def _opened_pool(self) -> AsyncConnectionPool:
        assert self._pool is not None, "a store bound to a connection has no pool"
        if self._database is not None and not self._pool_opened:
            # a pool that cannot connect retries in the background, logging each failure,
            # and its caller learns only that no connection came: connect once first
            await self._check_connection(self._database)
            await self._pool.open()
            self._pool_opened = True
        return self._pool

    async def _opened_read_pool(self) -> AsyncConnectionPool:
        assert self._read_pool is not None and self._read_database is not None
        if not self._read_pool_opened:
            await self._check_connection(self._read_database)
            await self._read_pool.open()
            self._read_pool_opened = True
        return self._read_pool

    @staticmethod
    async def _check_connection(database: _Database) -> None:
        """Open and close one connection; raise StoreConnectionError with the reason."""
        try:
            conn = await psycopg.AsyncConnection.connect(database.dsn, **database.connect_kwargs())
        except psycopg.Error as exc:
            raise database.unreachable(exc) from exc
        await conn.close()

    @classmethod
    async def _no_connection(
        cls, pool: AsyncConnectionPool, exc: PoolTimeout, database: _Database | None
    ) -> DuctoError:
        """Why the pool gave no connection: its database is unreachable, or all are busy."""
        if database is not None:
            try:
                await cls._check_connection(database)
            except StoreConnectionError as unreachable:
                return unreachable
        return StoreError(
            f"no connection of the pool came free within {pool.timeout:g} s"
            f" (max_size={pool.max_size}): every one was busy"
        )

    @staticmethod
    async def _execute(conn: psycopg.AsyncConnection[Any], call: RpcCall) -> list[dict[str, Any]]:
        query, params = _query(call)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            return await cur.fetchall()

    @staticmethod
    async def _column(conn: psycopg.AsyncConnection[Any], query: str) -> list[Any]:
        """The first column of what ``query`` returns."""
        cur = await conn.execute(query)
        return [row[0] for row in await cur.fetchall()]

    @classmethod
    async def _setup(cls, conn: psycopg.AsyncConnection[Any]) -> SetupResult:
        await conn.commit()
        await conn.execute("select pg_advisory_lock(%s)", [_migrations.SETUP_LOCK_KEY])
        await conn.commit()  # the session lock outlives the transaction
        try:
            await conn.execute(_migrations.PREPARE_RECORD)
            done = set(await cls._column(conn, _migrations.APPLIED_BY_DUCTO))
            if await cls._column(conn, _migrations.HAS_CLI_HISTORY) == [True]:
                done |= set(await cls._column(conn, _migrations.APPLIED_BY_CLI))
            await conn.commit()
            applied, already = [], []
            for migration in _migrations.bundled():
                if migration.version in done:
                    already.append(migration.version)
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql.encode())
                    await conn.execute(_migrations.RECORD, (migration.version, migration.name))
                applied.append(migration.version)
            version = await cls._column(conn, "select public.credit_schema_version()")
            await conn.execute(_migrations.RELOAD_POSTGREST)
            await conn.commit()
        finally:
            await conn.rollback()
            await conn.execute("select pg_advisory_unlock(%s)", [_migrations.SETUP_LOCK_KEY])
            await conn.commit()
        return SetupResult(tuple(applied), tuple(already), str(version[0]) if version else "")


# -- sync flavour: generated from the async source above by scripts/unasync.py; do not edit --
class PostgresStore:
    """Calls ducto's functions over a psycopg connection pool.

    Pass a DSN (the store owns its pool), an existing ``ConnectionPool``, or a
    ``Connection``: with a connection, every call runs inside the caller's current
    transaction and commits or rolls back with it (the store never commits it).

    With a DSN, ``connect_timeout`` is how many seconds (at least 2) a new connection may
    take; None takes the DSN's ``connect_timeout`` (2 at least, as libpq reads it), else
    :data:`DEFAULT_CONNECT_TIMEOUT`.
    The first call connects once before opening the pool, so a wrong DSN, a refused
    password or a server that does not answer raises ``StoreConnectionError`` with the
    reason within that time.

    ``read_dsn`` (with a DSN or a pool) is a read replica's DSN: the store opens a second
    pool there (same ``max_size`` and ``connect_timeout``) for the calls that read
    history (the analytics and the journal export, STABLE functions that cannot write),
    which then lag the primary by the replica's replay delay. Every other call (balances, charges,
    statements, setup, :meth:`transaction`) stays on the primary. When the replica cannot
    be reached those calls fail with ``StoreConnectionError``; they never fall back to the
    primary.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: ConnectionPool | None = None,
        connection: psycopg.Connection[Any] | None = None,
        max_size: int = 10,
        attempts: int = 2,
        connect_timeout: int | None = None,
        read_dsn: str | None = None,
    ) -> None:
        if sum(x is not None for x in (dsn, pool, connection)) != 1:
            raise ValueError("pass exactly one of dsn, pool or connection")
        if read_dsn is not None and connection is not None:
            # the caller's transaction must see its own writes: every call goes into it
            raise ValueError("read_dsn needs a dsn or a pool, not a connection")
        self._connection = connection
        self._database = None if dsn is None else _Database(dsn, connect_timeout)
        self._pool = pool
        self._pool_opened = False
        if self._database is not None:
            # opened on first use, once a connection has succeeded
            self._pool = ConnectionPool(
                self._database.dsn,
                min_size=1,
                max_size=max_size,
                kwargs=self._database.connect_kwargs(),
                open=False,
            )
        self._read_database: _Database | None = None
        self._read_pool: ConnectionPool | None = None
        self._read_pool_opened = False
        if read_dsn is not None:
            self._read_database = _Database(read_dsn, connect_timeout)
            self._read_pool = ConnectionPool(
                read_dsn,
                min_size=1,
                max_size=max_size,
                kwargs=self._read_database.connect_kwargs(),
                open=False,
            )
        self._attempts = attempts

    def call(self, call: RpcCall) -> list[dict[str, Any]]:
        """Run ``call``: in the bound connection, or in a pooled one (retried when safe);
        a replica-safe read in the read replica's pool when the store has one."""
        if self._connection is not None:
            try:
                return self._execute(self._connection, call)
            except psycopg.Error as exc:
                raise _error(exc) from exc
        if call.replica_safe and self._read_pool is not None:
            pool = self._opened_read_pool()
            database = self._read_database
        else:
            pool = self._opened_pool()
            database = self._database
        lost = False  # an attempt went out and its answer never came
        for attempt in range(self._attempts):
            try:
                with pool.connection() as conn:
                    return self._execute(conn, call)
            except PoolTimeout as exc:  # waiting again would not help
                if lost:
                    reason = f"connection lost, and none came free within {pool.timeout:g} s"
                    raise _outcome_unknown(call, reason) from exc
                raise self._no_connection(pool, exc, database) from exc
            except psycopg.Error as exc:
                if not _retryable(exc, call, attempt, self._attempts):
                    if _lost(exc):
                        reason = one_line(str(exc)) or type(exc).__name__
                        raise _outcome_unknown(call, reason, exc.sqlstate) from exc
                    raise _error(exc) from exc
                lost = True
        raise AssertionError("unreachable")

    def setup(self) -> SetupResult:
        """Apply the bundled migrations that the database lacks, one transaction each.

        Holds a session advisory lock meanwhile, so concurrent setups apply each migration
        once; skips versions recorded by an earlier setup() or by ``supabase db push``;
        makes PostgREST reload its schema cache afterwards.
        """
        if self._pool is None:
            raise StoreError("setup() needs a store with a pool, not a bound connection")
        pool = self._opened_pool()
        try:
            with pool.connection() as conn:
                return self._setup(conn)
        except PoolTimeout as exc:
            raise self._no_connection(pool, exc, self._database) from exc
        except psycopg.Error as exc:
            raise _error(exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[PostgresStore]:
        """A store bound to one pooled connection, in one transaction, for several calls."""
        pool = self._opened_pool()
        with pool.connection() as conn, conn.transaction():
            yield PostgresStore(connection=conn)

    def close(self) -> None:
        """Close the pools the store created."""
        if self._database is not None and self._pool is not None:
            self._pool.close()
        if self._read_pool is not None:
            self._read_pool.close()

    def _opened_pool(self) -> ConnectionPool:
        assert self._pool is not None, "a store bound to a connection has no pool"
        if self._database is not None and not self._pool_opened:
            # a pool that cannot connect retries in the background, logging each failure,
            # and its caller learns only that no connection came: connect once first
            self._check_connection(self._database)
            self._pool.open()
            self._pool_opened = True
        return self._pool

    def _opened_read_pool(self) -> ConnectionPool:
        assert self._read_pool is not None and self._read_database is not None
        if not self._read_pool_opened:
            self._check_connection(self._read_database)
            self._read_pool.open()
            self._read_pool_opened = True
        return self._read_pool

    @staticmethod
    def _check_connection(database: _Database) -> None:
        """Open and close one connection; raise StoreConnectionError with the reason."""
        try:
            conn = psycopg.Connection.connect(database.dsn, **database.connect_kwargs())
        except psycopg.Error as exc:
            raise database.unreachable(exc) from exc
        conn.close()

    @classmethod
    def _no_connection(
        cls, pool: ConnectionPool, exc: PoolTimeout, database: _Database | None
    ) -> DuctoError:
        """Why the pool gave no connection: its database is unreachable, or all are busy."""
        if database is not None:
            try:
                cls._check_connection(database)
            except StoreConnectionError as unreachable:
                return unreachable
        return StoreError(
            f"no connection of the pool came free within {pool.timeout:g} s"
            f" (max_size={pool.max_size}): every one was busy"
        )

    @staticmethod
    def _execute(conn: psycopg.Connection[Any], call: RpcCall) -> list[dict[str, Any]]:
        query, params = _query(call)
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    @staticmethod
    def _column(conn: psycopg.Connection[Any], query: str) -> list[Any]:
        """The first column of what ``query`` returns."""
        cur = conn.execute(query)
        return [row[0] for row in cur.fetchall()]

    @classmethod
    def _setup(cls, conn: psycopg.Connection[Any]) -> SetupResult:
        conn.commit()
        conn.execute("select pg_advisory_lock(%s)", [_migrations.SETUP_LOCK_KEY])
        conn.commit()  # the session lock outlives the transaction
        try:
            conn.execute(_migrations.PREPARE_RECORD)
            done = set(cls._column(conn, _migrations.APPLIED_BY_DUCTO))
            if cls._column(conn, _migrations.HAS_CLI_HISTORY) == [True]:
                done |= set(cls._column(conn, _migrations.APPLIED_BY_CLI))
            conn.commit()
            applied, already = [], []
            for migration in _migrations.bundled():
                if migration.version in done:
                    already.append(migration.version)
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(_migrations.RECORD, (migration.version, migration.name))
                applied.append(migration.version)
            version = cls._column(conn, "select public.credit_schema_version()")
            conn.execute(_migrations.RELOAD_POSTGREST)
            conn.commit()
        finally:
            conn.rollback()
            conn.execute("select pg_advisory_unlock(%s)", [_migrations.SETUP_LOCK_KEY])
            conn.commit()
        return SetupResult(tuple(applied), tuple(already), str(version[0]) if version else "")
