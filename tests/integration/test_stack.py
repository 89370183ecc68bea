"""The local stack itself: gateway, PostgREST, JWTs, bootstrap, migrations.

These tests talk to the stack exactly as a client of a hosted Supabase project
does: through ``SUPABASE_URL`` with an ``apikey`` header. A probe function
(created for this module in ``graphql_public``, an exposed schema outside
``public``, and dropped afterwards) reports the role and claims PostgREST runs
a request with, so each test can check who the request really was.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import psycopg
import pytest


class MakeUserToken(Protocol):
    """The ``make_user_token`` fixture of conftest.py (restated, not imported, so
    this module type-checks whether or not ``tests`` is a package)."""

    def __call__(
        self,
        sub: str,
        *,
        expires_in: int = ...,
        secret: str | None = ...,
        alg: str = ...,
        extra: Mapping[str, Any] | None = ...,
    ) -> str: ...


ROOT = Path(__file__).resolve().parents[2]
USER_ID = "6f1c1a9e-4a5e-4b1e-9d5c-2f5c3d9b8a01"
PROBE_SCHEMA = "graphql_public"

PROBE_DDL = """
create function graphql_public.ducto_stack_probe() returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'current_user', current_user,
        'uid', auth.uid(),
        'role', auth.role(),
        'jwt', auth.jwt()
    )
$$;
create function graphql_public.ducto_stack_echo(words text) returns setof text
language sql immutable
as $$ select unnest(string_to_array(words, ' ')) $$;
"""
PROBE_DROP = """
drop function if exists graphql_public.ducto_stack_probe();
drop function if exists graphql_public.ducto_stack_echo(text);
"""


@pytest.fixture(scope="module")
def gateway(supabase_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=supabase_url, timeout=10.0) as client:
        yield client


@pytest.fixture(scope="module")
def probe(database_url: str, gateway: httpx.Client, service_role_key: str) -> Iterator[None]:
    """Create the probe functions; the bootstrap's DDL trigger makes PostgREST see them."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(PROBE_DROP)
        conn.execute(PROBE_DDL)
    try:
        # PostgREST reloads its schema cache asynchronously: poll, up to 75 attempts
        for _ in range(75):
            response = call_probe(gateway, {"apikey": service_role_key})
            if response.status_code == 200:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"PostgREST did not pick up the new function: {response.text}")
        yield
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(PROBE_DROP)


def call_probe(client: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    return client.post(
        "/rest/v1/rpc/ducto_stack_probe",
        json={},
        headers={"Content-Profile": PROBE_SCHEMA, **headers},
    )


def probe_result(client: httpx.Client, headers: dict[str, str]) -> dict[str, Any]:
    response = call_probe(client, headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def gateway_refusal(response: httpx.Response) -> str:
    """The message of the gateway's 401, after checking it has PostgREST's error shape."""
    assert response.status_code == 401
    body = response.json()
    assert sorted(body) == ["code", "details", "hint", "message"]
    assert (body["code"], body["details"]) == ("42501", None)
    assert response.headers["access-control-allow-origin"] == "*"
    return str(body["message"])


# ---------------------------------------------------------------------------
# The gateway's API-key check, like Supabase's
# ---------------------------------------------------------------------------


def test_request_without_apikey_is_refused(gateway: httpx.Client) -> None:
    response = gateway.get("/rest/v1/")
    assert response.status_code == 401
    assert gateway_refusal(response) == "No API key found in request"


def test_request_with_unknown_apikey_is_refused(gateway: httpx.Client, anon_key: str) -> None:
    for wrong in ("not-a-key", anon_key[:-1], anon_key.swapcase()):
        response = gateway.get("/rest/v1/", headers={"apikey": wrong})
        assert response.status_code == 401, wrong
        assert gateway_refusal(response) == "Invalid API key"


def test_a_user_token_alone_is_not_an_api_key(
    gateway: httpx.Client, make_user_token: MakeUserToken
) -> None:
    token = make_user_token(USER_ID)
    response = gateway.get("/rest/v1/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert gateway_refusal(response) == "No API key found in request"


def test_anon_key_reaches_postgrest(gateway: httpx.Client, anon_key: str) -> None:
    for path in ("/rest/v1/", "/rest/v1"):
        response = gateway.get(path, headers={"apikey": anon_key})
        assert response.status_code == 200, path
        assert response.json()["swagger"] == "2.0"


def test_service_role_key_reaches_postgrest(gateway: httpx.Client, service_role_key: str) -> None:
    response = gateway.get("/rest/v1/", headers={"apikey": service_role_key})
    assert response.status_code == 200
    assert "paths" in response.json()


def test_other_paths_are_not_routed(gateway: httpx.Client, anon_key: str) -> None:
    for path in ("/rest/v2/", "/", "/auth/v1/user"):
        response = gateway.get(path, headers={"apikey": anon_key})
        assert response.status_code == 404
        assert response.json()["code"] == "route_not_found"


# ---------------------------------------------------------------------------
# Who a request runs as
# ---------------------------------------------------------------------------


@pytest.mark.usefixtures("probe")
def test_anon_key_runs_as_anon(gateway: httpx.Client, anon_key: str) -> None:
    result = probe_result(gateway, {"apikey": anon_key})
    assert result["current_user"] == "anon"
    assert result["role"] == "anon"
    assert result["uid"] is None


@pytest.mark.usefixtures("probe")
def test_service_role_key_runs_as_service_role(
    gateway: httpx.Client, service_role_key: str
) -> None:
    # No Authorization header: the gateway forwards `Bearer <apikey>`.
    result = probe_result(gateway, {"apikey": service_role_key})
    assert result["current_user"] == "service_role"
    assert result["jwt"]["role"] == "service_role"
    assert result["jwt"]["iss"] == "supabase-demo"


@pytest.mark.usefixtures("probe")
def test_publishable_key_runs_as_anon(gateway: httpx.Client, publishable_key: str) -> None:
    # not a JWT: the gateway sends the anon role's JWT upstream, as Supabase's does
    assert publishable_key.startswith("sb_publishable_")
    result = probe_result(gateway, {"apikey": publishable_key})
    assert result["current_user"] == "anon"
    assert result["jwt"]["role"] == "anon"
    assert result["uid"] is None


@pytest.mark.usefixtures("probe")
@pytest.mark.parametrize("repeated", [False, True], ids=["apikey", "apikey-and-bearer"])
def test_secret_key_runs_as_service_role(
    gateway: httpx.Client, secret_key: str, repeated: bool
) -> None:
    # clients send it in apikey alone, or (supabase-js, supabase-py) in both headers
    assert secret_key.startswith("sb_secret_")
    headers = {"apikey": secret_key}
    if repeated:
        headers["Authorization"] = f"Bearer {secret_key}"
    result = probe_result(gateway, headers)
    assert result["current_user"] == "service_role"
    assert result["jwt"]["role"] == "service_role"


@pytest.mark.usefixtures("probe")
def test_publishable_key_with_a_user_token_runs_as_that_user(
    gateway: httpx.Client, publishable_key: str, make_user_token: MakeUserToken
) -> None:
    token = make_user_token(USER_ID)
    result = probe_result(gateway, {"apikey": publishable_key, "Authorization": f"Bearer {token}"})
    assert result["current_user"] == "authenticated"
    assert result["uid"] == USER_ID


@pytest.mark.usefixtures("probe")
@pytest.mark.parametrize("key_name", ["publishable_key", "anon_key"])
def test_a_secret_key_in_authorization_does_not_lift_a_public_apikey(
    gateway: httpx.Client, secret_key: str, key_name: str, request: pytest.FixtureRequest
) -> None:
    # the attacker holds the public key and a guessed or leaked-elsewhere secret key
    # format: an sb_ key counts in Authorization only as the apikey itself
    public_key = request.getfixturevalue(key_name)
    response = call_probe(gateway, {"apikey": public_key, "Authorization": f"Bearer {secret_key}"})
    assert response.status_code == 401
    assert gateway_refusal(response) == "An sb_ key in Authorization must equal the apikey header"


def test_an_unknown_new_style_key_is_refused(gateway: httpx.Client, secret_key: str) -> None:
    for wrong in (secret_key[:-1], secret_key + "x", "sb_secret_", secret_key.upper()):
        response = gateway.get("/rest/v1/", headers={"apikey": wrong})
        assert response.status_code == 401, wrong
        assert gateway_refusal(response) == "Invalid API key"


@pytest.mark.usefixtures("probe")
def test_user_token_runs_as_that_user(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken
) -> None:
    token = make_user_token(USER_ID, extra={"email": "user@example.test"})
    result = probe_result(gateway, {"apikey": anon_key, "Authorization": f"Bearer {token}"})
    assert result["current_user"] == "authenticated"
    assert result["uid"] == USER_ID
    assert result["role"] == "authenticated"
    assert result["jwt"]["aud"] == "authenticated"
    assert result["jwt"]["email"] == "user@example.test"


@pytest.mark.usefixtures("probe")
def test_local_stack_token_command_signs_a_user_token(gateway: httpx.Client, anon_key: str) -> None:
    token = subprocess.run(
        [str(ROOT / "scripts" / "local-stack"), "token", USER_ID, "--expires-in", "120"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    result = probe_result(gateway, {"apikey": anon_key, "Authorization": f"Bearer {token}"})
    assert result["uid"] == USER_ID
    # the token's own claims, not the clock: it expires 120 s after it was issued
    assert result["jwt"]["exp"] - result["jwt"]["iat"] == 120


# ---------------------------------------------------------------------------
# Tokens PostgREST must refuse
# ---------------------------------------------------------------------------


@pytest.mark.usefixtures("probe")
def test_forged_signature_is_refused(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken
) -> None:
    token = make_user_token(USER_ID, secret="not-the-stack-secret-but-long-enough-0123456789")
    response = call_probe(gateway, {"apikey": anon_key, "Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["code"] == "PGRST301"


@pytest.mark.usefixtures("probe")
def test_unsigned_token_is_refused(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken
) -> None:
    token = make_user_token(USER_ID, alg="none", extra={"role": "service_role"})
    response = call_probe(gateway, {"apikey": anon_key, "Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["code"] == "PGRST301"


@pytest.mark.usefixtures("probe")
def test_expired_token_is_refused(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken
) -> None:
    # PostgREST tolerates 30 s of clock skew; this one expired 2 minutes ago.
    token = make_user_token(USER_ID, expires_in=-120)
    response = call_probe(gateway, {"apikey": anon_key, "Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json() == {
        "code": "PGRST301",
        "details": None,
        "hint": None,
        "message": "JWT expired",
    }


# ---------------------------------------------------------------------------
# The gateway passes requests through unchanged
# ---------------------------------------------------------------------------


@pytest.mark.usefixtures("probe")
def test_query_string_and_prefer_header_pass_through(
    gateway: httpx.Client, service_role_key: str
) -> None:
    response = gateway.get(
        "/rest/v1/rpc/ducto_stack_echo?words=caf%C3%A9%20%26%20more",
        headers={
            "apikey": service_role_key,
            "Accept-Profile": PROBE_SCHEMA,
            "Prefer": "count=exact",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == ["café", "&", "more"]
    assert response.headers["content-range"] == "0-2/3"


def test_profile_headers_reach_postgrest(gateway: httpx.Client, service_role_key: str) -> None:
    response = gateway.get(
        "/rest/v1/", headers={"apikey": service_role_key, "Accept-Profile": "auth"}
    )
    assert response.status_code == 406
    assert response.json()["code"] == "PGRST106"


# ---------------------------------------------------------------------------
# The bootstrap and the migrations
# ---------------------------------------------------------------------------


def test_bootstrap_roles_and_settings(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """
            select rolname, rolcanlogin, rolinherit, rolbypassrls,
                   coalesce(array_to_string(rolconfig, ','), '')
            from pg_roles
            where rolname in ('anon', 'authenticated', 'service_role', 'authenticator')
            order by rolname
            """
        ).fetchall()
        members = conn.execute(
            """
            select r.rolname, m.rolname
            from pg_auth_members a
            join pg_roles r on r.oid = a.roleid
            join pg_roles m on m.oid = a.member
            where m.rolname in ('authenticator', 'postgres')
              and r.rolname in ('anon', 'authenticated', 'service_role')
            """
        ).fetchall()
    assert rows == [
        ("anon", False, True, False, "statement_timeout=3s"),
        ("authenticated", False, True, False, "statement_timeout=8s"),
        ("authenticator", True, False, False, "statement_timeout=8s,lock_timeout=8s"),
        ("service_role", False, True, True, ""),
    ]
    assert len(set(members)) == 6


def _push(url: str) -> str:
    result = subprocess.run(
        [str(ROOT / "node_modules" / ".bin" / "supabase"), "db", "push", "--db-url", url, "--yes"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    return result.stdout + result.stderr


def test_db_push_applies_every_migration_once(database_url: str) -> None:
    assert os.environ.get("DUCTO_STACK_DIR"), "DUCTO_STACK_DIR is not set"
    local_stack = str(ROOT / "scripts" / "local-stack")
    url = subprocess.run(
        [local_stack, "db-create", "ducto_push_test", "--replace", "--no-migrations"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    files = sorted(p.name for p in (ROOT / "supabase" / "migrations").glob("*.sql"))
    versions = [m.group(1) for f in files if (m := re.match(r"^([0-9]+)_.*\.sql$", f))]
    try:
        first = _push(url)
        for name in files:
            assert f"Applying migration {name}" in first
        second = _push(url)
        assert "Applying migration" not in second
        assert "up to date" in second
        with psycopg.connect(url) as conn:
            applied = conn.execute(
                "select version from supabase_migrations.schema_migrations order by version"
                if versions
                else "select null limit 0"
            ).fetchall()
        assert [row[0] for row in applied] == versions
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("drop database if exists ducto_push_test with (force)")
