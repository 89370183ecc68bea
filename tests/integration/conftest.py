"""Fixtures for tests against the local Supabase-like stack.

The stack's settings come from the environment, as printed by
``scripts/local-stack up`` (``make test`` sets them)::

    eval "$(scripts/local-stack up)"
    .venv/bin/python -m pytest tests/integration

A test that asks for one of these fixtures fails with a clear message when the
variable is missing.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, cast

import httpx
import jwt
import psycopg
import pytest
from helpers_api import Api
from helpers_crash import COUNTS
from helpers_process import install_test_clock, run
from psycopg import sql
from supabase import acreate_client, create_client

from ducto import AsyncCreditManager, CreditEventEmitter, CreditManager, PricingEngine
from ducto.interface import (
    AsyncHttpxSupabaseStore,
    AsyncPostgresStore,
    AsyncSupabaseStore,
    HttpxSupabaseStore,
    PostgresStore,
    SupabaseStore,
)


def stack_env(name: str) -> str:
    """The value of one of the stack's environment variables, or fail the test."""
    value = os.environ.get(name, "")
    if not value:
        pytest.fail(
            f"{name} is not set. Run the tests with `make test`, or start the stack first: "
            '`eval "$(scripts/local-stack up)"`.',
            pytrace=False,
        )
    return value


def make_user_token(
    sub: str,
    *,
    expires_in: int = 3600,
    secret: str | None = None,
    alg: str = "HS256",
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A Supabase-style user access token: ``role`` and ``aud`` ``authenticated``.

    Signed with the stack's secret unless ``secret`` is given (a forged
    signature). ``expires_in`` may be negative (an expired token; PostgREST
    allows 30 s of clock skew). ``alg="none"`` makes an unsigned token.
    ``extra`` claims are added last and may override the defaults.
    """
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "role": "authenticated",
        "aud": "authenticated",
        "iat": now,
        "exp": now + expires_in,
    }
    if extra:
        claims.update(extra)
    if alg == "none":
        return jwt.encode(claims, "", algorithm="none")  # "none" takes no key
    key = secret if secret is not None else stack_env("SUPABASE_JWT_SECRET")
    return jwt.encode(claims, key, algorithm=alg)


class MakeUserToken(Protocol):
    """The type of the ``make_user_token`` fixture (see :func:`make_user_token`)."""

    def __call__(
        self,
        sub: str,
        *,
        expires_in: int = ...,
        secret: str | None = ...,
        alg: str = ...,
        extra: Mapping[str, Any] | None = ...,
    ) -> str: ...


@pytest.fixture(scope="session")
def database_url() -> str:
    """The superuser URL of the stack's database (``DATABASE_URL``)."""
    return stack_env("DATABASE_URL")


@pytest.fixture(scope="session")
def supabase_url() -> str:
    """The gateway, Supabase's URL layout (``SUPABASE_URL``, e.g. ``.../rest/v1/``)."""
    return stack_env("SUPABASE_URL").rstrip("/")


@pytest.fixture(scope="session")
def anon_key() -> str:
    """The legacy-style anon key (``SUPABASE_ANON_KEY``)."""
    return stack_env("SUPABASE_ANON_KEY")


@pytest.fixture(scope="session")
def service_role_key() -> str:
    """The legacy-style service-role key (``SUPABASE_SERVICE_ROLE_KEY``)."""
    return stack_env("SUPABASE_SERVICE_ROLE_KEY")


@pytest.fixture(scope="session")
def publishable_key() -> str:
    """The new-style publishable key (``SUPABASE_PUBLISHABLE_KEY``, ``sb_publishable_...``)."""
    return stack_env("SUPABASE_PUBLISHABLE_KEY")


@pytest.fixture(scope="session")
def secret_key() -> str:
    """The new-style secret key (``SUPABASE_SECRET_KEY``, ``sb_secret_...``)."""
    return stack_env("SUPABASE_SECRET_KEY")


@pytest.fixture(scope="session")
def jwt_secret() -> str:
    """The stack's HS256 secret (``SUPABASE_JWT_SECRET``)."""
    return stack_env("SUPABASE_JWT_SECRET")


@pytest.fixture(name="make_user_token", scope="session")
def make_user_token_fixture(jwt_secret: str) -> MakeUserToken:
    """:func:`make_user_token`, after checking that the stack's secret is set."""
    return make_user_token


@pytest.fixture(scope="module")
def gateway(supabase_url: str) -> Iterator[httpx.Client]:
    """An HTTP client on the gateway (Supabase's URL layout)."""
    with httpx.Client(base_url=supabase_url, timeout=15.0) as client:
        yield client


@pytest.fixture(scope="module")
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection, to see what a request really wrote."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def service(gateway: httpx.Client, service_role_key: str) -> Api:
    """The gateway as the service role (apikey and bearer: the service-role key)."""
    return Api(gateway, service_role_key, service_role_key)


# ---------------------------------------------------------------- the client, six ways

FLAVOURS = [
    "postgres",
    "postgres-async",
    "http",
    "http-async",
    "supabase-py",
    "supabase-py-async",
]


class _Awaited:
    """A sync view of an async manager (or store): each call runs to completion on one loop."""

    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        self._manager = target
        self._runner = runner

    @property
    def store(self) -> Any:
        return _Awaited(self._manager.store, self._runner)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._manager, name)
        if not callable(value):  # a property such as `engine`
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            return self._runner.run(result) if inspect.iscoroutine(result) else result

        return call

    def sibling(self, **options: Any) -> _Awaited:
        """Another manager over the same store, with ``options`` (no engine by default)."""
        return _Awaited(AsyncCreditManager(self._manager.store, **options), self._runner)


@pytest.fixture(params=FLAVOURS)
def manager(
    request: pytest.FixtureRequest, database_url: str, supabase_url: str, service_role_key: str
) -> Iterator[CreditManager]:
    """A CreditManager (or a sync view of an AsyncCreditManager) over one store flavour."""
    flavour: str = request.param
    if flavour == "postgres":
        store = PostgresStore(database_url, max_size=2)
        yield CreditManager(store)
        store.close()
    elif flavour == "http":
        http = HttpxSupabaseStore(supabase_url, service_role_key)
        yield CreditManager(http)
        http.close()
    elif flavour == "supabase-py":
        # the app's own client, as create_client() makes it, with the service-role key
        client = create_client(supabase_url, service_role_key)
        yield CreditManager(SupabaseStore(client))
        client.postgrest.aclose()  # the app closes its own client (postgrest-py's name)
    else:
        with asyncio.Runner() as runner:
            if flavour == "postgres-async":
                astore: AsyncPostgresStore | AsyncHttpxSupabaseStore | AsyncSupabaseStore = (
                    AsyncPostgresStore(database_url, max_size=2)
                )
            elif flavour == "http-async":
                astore = AsyncHttpxSupabaseStore(supabase_url, service_role_key)
            else:
                aclient = runner.run(acreate_client(supabase_url, service_role_key))
                astore = AsyncSupabaseStore(aclient)
            yield cast(CreditManager, _Awaited(AsyncCreditManager(astore), runner))
            if isinstance(astore, AsyncSupabaseStore):  # the app closes its own client
                runner.run(astore.client.postgrest.aclose())
            else:
                runner.run(astore.close())


def sibling_manager(
    manager: CreditManager,
    *,
    engine: PricingEngine | None = None,
    emitter: CreditEventEmitter | None = None,
) -> CreditManager:
    """Another manager of the same flavour over the same store, with its own options."""
    if isinstance(manager, _Awaited):
        return cast(CreditManager, manager.sibling(engine=engine, emitter=emitter))
    return CreditManager(manager.store, engine, emitter)


@pytest.fixture
def bare_manager(manager: CreditManager) -> CreditManager:
    """A second manager of the same flavour over the same store, with no pricing loaded."""
    return sibling_manager(manager)


@pytest.fixture
def new_database(database_url: str) -> Iterator[Callable[..., str]]:
    """Makes fresh databases in the stack's cluster with the Supabase bootstrap and returns
    their URLs (``migrated=True``: ducto's migrations pushed by the CLI too;
    ``revoked_defaults=True``: with Supabase's default privileges on public revoked); drops
    them afterwards."""
    made: list[str] = []

    def make(*, migrated: bool = False, revoked_defaults: bool = False) -> str:
        name = f"ducto_test_{uuid.uuid4().hex[:10]}"
        made.append(name)
        flags = [] if migrated else ["--no-migrations"]
        if revoked_defaults:
            flags.append("--revoked-defaults")
        return run(["scripts/local-stack", "db-create", name, *flags]).strip()

    yield make
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in made:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The counts of every crash and fault test, after the run (pytest keeps a passing
    test's output to itself)."""
    if COUNTS:
        terminalreporter.section("crashes and faults: what the clients saw and the journal holds")
        for line in COUNTS:
            terminalreporter.line(line)


@pytest.fixture
def fresh(database_url: str) -> Iterator[str]:
    """A fresh database with ducto's migrations and the test clock; dropped afterwards."""
    name = f"ducto_test_{uuid.uuid4().hex[:10]}"
    url = run(["scripts/local-stack", "db-create", name, "--test-clock"]).strip()
    install_test_clock(url)
    yield url
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )
