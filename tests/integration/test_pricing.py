"""Pricing: one definition of a cost, in SQL, mirrored exactly by the Python engine.

- The shared vectors (tests/pricing_vectors.json) priced by the SQL cost function and by
  the database through every store flavour (the Python engine alone: tests/unit).
- A property test: random valid configs and metrics, SQL and Python agree to the credit
  (and on the normalised config).
- Bad configs are refused by SQL, and the active version does not change.
- deduct(), deduct_fixed(), the floor, the journal's audit columns, versions, and the
  reference's example as written, on both stores.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from conftest import MakeUserToken
from helpers_api import Api, expect_error, ledger_rows, permission_denied
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pricing_vectors import BAD_CONFIGS, EXAMPLE, ROOT, VALID, VECTORS, vector_config, vector_id
from psycopg.types.json import Jsonb

from ducto import (
    CreditManager,
    DuctoError,
    InsufficientCreditsError,
    InvalidInputError,
    PricingConfigData,
    PricingConfigError,
    PricingEngine,
    PricingNotLoadedError,
    UnknownJobError,
    UnknownModelError,
    UsageMetrics,
)
from ducto.interface import HttpxSupabaseStore, PostgresStore


def new_user() -> str:
    return f"pricing-{uuid.uuid4()}"


def sql_cost(db: psycopg.Connection[Any], config: Any, metrics: Mapping[str, Any]) -> Any:
    """credit_private.cost over the config and metrics as the SQL checks normalise them."""
    return db.execute(
        "select (c).credits, (c).matched, (c).exact_cost from (select credit_private.cost("
        " credit_private.check_pricing_config(%s), credit_private.check_usage(%s)) as c) s",
        (Jsonb(config), Jsonb(metrics)),
    ).fetchone()


# ---------------------------------------------------------------- the shared vectors


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=vector_id)
def test_vectors_sql(db: psycopg.Connection[Any], vector: Mapping[str, Any]) -> None:
    config = vector_config(vector["config"])
    if "error" in vector:
        with pytest.raises(psycopg.Error) as caught:
            sql_cost(db, config, vector["metrics"])
        assert caught.value.sqlstate == vector["error"]
        return
    credits, matched, _ = sql_cost(db, config, vector["metrics"])
    assert (credits, matched) == (vector["credits"], vector["matched"])


@pytest.mark.parametrize("job", VECTORS["fixed_jobs"], ids=lambda job: job["job_name"])
def test_fixed_job_vectors(db: psycopg.Connection[Any], job: Mapping[str, Any]) -> None:
    config = vector_config(job["config"])
    engine = PricingEngine(config)
    if "error" in job:
        with pytest.raises(UnknownJobError):
            engine.fixed_cost(job["job_name"])
        return
    assert engine.fixed_cost(job["job_name"]) == job["credits"]
    stored = db.execute(
        "select (credit_private.check_pricing_config(%s) -> 'fixed_jobs' ->> %s)::bigint",
        (Jsonb(config), job["job_name"]),
    ).fetchone()
    assert stored == (job["credits"],)


def test_vectors_through_the_database(manager: CreditManager) -> None:
    # publish each config, then price every vector by the RPC: what every client sees
    for name in VECTORS["configs"]:
        manager.publish_pricing(
            PricingConfigData.parse(vector_config(name)), label=f"vectors {name}"
        )
        for vector in (v for v in VECTORS["vectors"] if v["config"] == name):
            metrics = UsageMetrics(**vector["metrics"])
            if "error" in vector:
                with pytest.raises(UnknownModelError):
                    manager.calculate_cost(metrics)
                continue
            cost = manager.calculate_cost(metrics)
            assert (cost.credits, cost.matched) == (vector["credits"], vector["matched"])
            assert manager.engine is not None
            assert manager.engine.price(metrics).exact_cost == cost.exact_cost


# ---------------------------------------------------------------- SQL = Python, always

_RATE = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)
_NAMES = st.sampled_from(["gpt-4o", "gpt-4o-mini", "o3", "claude-opus-4", "claude-3", "x_y"])
_PATTERNS = st.sampled_from(
    ["gpt-*", "*-mini", "claude-*", "claude-*-4", "*o*", "x_*", "o3*", "*3", "gpt-4o*"]
)


@st.composite
def rates(draw: st.DrawFn) -> dict[str, Any]:
    block: dict[str, Any] = {"input": draw(_RATE), "output": draw(_RATE)}
    for field in (
        "cached_input",
        "cache_creation",
        "cache_creation_1h",
        "reasoning",
        "tool_call",
        "request",
    ):
        if draw(st.booleans()):
            block[field] = draw(_RATE)
    return block


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.one_of(_NAMES, _PATTERNS), max_size=6, unique=True))
    config: dict[str, Any] = {
        "rounding": draw(st.sampled_from(["ceil", "half_up", "floor"])),
        "models": [{"model": name, **draw(rates())} for name in names],
        "default": draw(st.one_of(st.none(), rates())),
        "fixed_jobs": {"job": 1},
    }
    if draw(st.booleans()):
        config["unit"] = "usd"
        config["credits_per_usd"] = draw(
            st.decimals(min_value="0.000001", max_value=100000, places=6)
        )
        if draw(st.booleans()):
            config["markup"] = draw(st.decimals(min_value=0, max_value=3, places=6))
    return config


_COUNT = st.one_of(st.integers(0, 10_000), st.integers(0, 2**40))
metrics_strategy = st.builds(
    UsageMetrics,
    model=st.sampled_from(["gpt-4o", "GPT-4O-MINI", "o3", "claude-opus-4", "claude-x-4", "x_y"]),
    input_tokens=_COUNT,
    output_tokens=_COUNT,
    cached_input_tokens=_COUNT,
    cache_creation_tokens=_COUNT,
    cache_creation_1h_tokens=_COUNT,
    reasoning_tokens=_COUNT,
    tool_calls=st.integers(0, 50),
    requests=st.integers(0, 5),
)


def _plain(value: Any) -> Any:
    """Decimal-valued JSON, for comparing documents number by number."""
    return json.loads(json.dumps(value, default=str), parse_float=Decimal, parse_int=Decimal)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs(), metrics=metrics_strategy)
def test_sql_and_python_agree(
    db: psycopg.Connection[Any], config: dict[str, Any], metrics: UsageMetrics
) -> None:
    # as a client sends it: JSON numbers (a double holds every bounded rate exactly)
    sent = json.loads(json.dumps(config, default=float))
    engine = PricingEngine(sent)
    stored = db.execute(
        "select credit_private.check_pricing_config(%s)::text", (Jsonb(sent),)
    ).fetchone()
    assert stored is not None
    # the config the database stores is the config the engine uses
    assert _numbers(json.loads(stored[0])) == _numbers(engine.config.to_json())
    try:
        expected = engine.price(metrics)
    except DuctoError as exc:
        with pytest.raises(psycopg.Error) as caught:
            sql_cost(db, sent, metrics.to_json())
        assert caught.value.sqlstate == exc.code
        return
    credits, matched, exact = sql_cost(db, sent, metrics.to_json())
    assert (credits, matched, exact) == (expected.credits, expected.matched, expected.exact_cost)


def _numbers(document: Any) -> Any:
    """A JSON document with every number as a Decimal, to compare values, not spellings."""
    return json.loads(json.dumps(document), parse_float=Decimal, parse_int=Decimal)


# ---------------------------------------------------------------- bad configs, bad usage


@pytest.mark.parametrize(("case", "config"), BAD_CONFIGS, ids=[c for c, _ in BAD_CONFIGS])
def test_bad_config_refused_by_sql_and_nothing_changes(
    service: Api, db: psycopg.Connection[Any], case: str, config: dict[str, Any]
) -> None:
    before = db.execute("select count(*), max(version) from credit_pricing_config").fetchone()
    response = service.rpc("credit_publish_pricing", {"p_config": config, "p_label": case})
    body = expect_error(response, 422, "DC060")
    assert body["message"].startswith("invalid pricing config: ")
    after = db.execute("select count(*), max(version) from credit_pricing_config").fetchone()
    assert after == before


def test_bad_config_through_the_manager_changes_nothing(manager: CreditManager) -> None:
    manager.publish_pricing_from_dict(VALID)
    active = manager.get_pricing()
    with pytest.raises(PricingConfigError):
        manager.publish_pricing_from_dict({**VALID, "models": [{"model": "m", "input": -1}]})
    assert manager.get_pricing().version == active.version
    assert manager.engine is not None and manager.engine.version == active.version


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rates_are_refused_by_sql(
    rate: float, service: Api, db: psycopg.Connection[Any]
) -> None:
    # Python refuses them (tests/unit); JSON has no NaN or Infinity: a client that writes
    # them anyway sends invalid JSON
    before = db.execute("select count(*) from credit_pricing_config").fetchone()
    body = '{"p_config": {"default": null, "models": [{"model": "m", "input": %s, "output": 2}]}}'
    response = service.rpc_raw(
        "credit_publish_pricing", body % repr(rate).replace("inf", "Infinity")
    )
    assert response.status_code == 400
    assert db.execute("select count(*) from credit_pricing_config").fetchone() == before


@pytest.mark.parametrize(
    ("metrics", "field"),
    [
        ({"model": "m", "input_tokens": -1}, "input_tokens"),
        ({"model": "m", "input_tokens": 1.5}, "input_tokens"),
        ({"model": "m", "input_tokens": "10"}, "input_tokens"),
        ({"model": "m", "output_tokens": 2**53}, "output_tokens"),
        ({"model": "m", "tokens": 1}, "tokens"),
        ({"model": "bad model"}, "model"),
        ({"input_tokens": 1}, "model"),
    ],
)
def test_bad_usage_refused_before_anything_is_written(
    service: Api, db: psycopg.Connection[Any], metrics: dict[str, Any], field: str
) -> None:
    user = new_user()
    service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 100})
    before = ledger_rows(db, user)
    response = service.rpc("credit_deduct_usage", {"p_user_id": user, "p_metrics": metrics})
    body = expect_error(response, 422, "DC007")
    assert field in body["message"]
    assert ledger_rows(db, user) == before
    # and Python refuses the same before sending anything (a field it does not have, or
    # lacks, by the dataclass's own TypeError)
    with pytest.raises((InvalidInputError, TypeError)):
        UsageMetrics(**metrics)


# ---------------------------------------------------------------- charging by usage

CREDITS_CONFIG: dict[str, Any] = {
    "min_balance": 10,
    "models": [{"model": "gpt-4o", "input": 2000, "output": 8000, "cached_input": 1000}],
    "default": None,
    "fixed_jobs": {"report": 40},
}


def test_deduct_prices_records_and_reprices(
    manager: CreditManager, db: psycopg.Connection[Any]
) -> None:
    manager.publish_pricing_from_dict(CREDITS_CONFIG)
    user = new_user()
    manager.add_credits(user, 100)
    metrics = UsageMetrics(
        model="gpt-4o", input_tokens=1000, cached_input_tokens=4000, output_tokens=500
    )
    # (1000*2000 + 4000*1000 + 500*8000) / 1e6 = 10
    result = manager.deduct(user, metrics, idempotency_key="turn-1", metadata={"chat": 7})
    assert (result.amount, result.balance_after, result.is_replay) == (10, 90, False)
    assert manager.engine is not None
    assert result.pricing_version == manager.engine.version
    row = db.execute(
        "select type, amount, pricing_version, model, usage, metadata from credit_transactions"
        " where id = %s",
        (result.transaction_id,),
    ).fetchone()
    # the usage as stored: the counts not at their default (0; 1 request)
    stored = {
        "model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 500,
        "cached_input_tokens": 4000,
    }
    assert row == ("usage", -10, result.pricing_version, "gpt-4o", stored, {"chat": 7})
    # the audit: any usage row is re-priced by SQL from what the row records
    repriced = db.execute(
        "select (credit_calculate_cost(usage, pricing_version)).credits"
        " from credit_transactions where id = %s",
        (result.transaction_id,),
    ).fetchone()
    assert repriced == (10,)

    replay = manager.deduct(user, metrics, idempotency_key="turn-1", metadata={"chat": 7})
    assert replay.is_replay and replay.transaction_id == result.transaction_id
    assert manager.get_balance(user).balance == 90


def test_deduct_keeps_the_pricing_floor(manager: CreditManager) -> None:
    manager.publish_pricing_from_dict(CREDITS_CONFIG)
    user = new_user()
    manager.add_credits(user, 25)
    # 10 credits leave 15 >= 10; the next 10 would leave 5 < 10
    manager.deduct(user, UsageMetrics(model="gpt-4o", input_tokens=5000))
    with pytest.raises(InsufficientCreditsError) as caught:
        manager.deduct(user, UsageMetrics(model="gpt-4o", input_tokens=5000))
    assert caught.value.details == {
        "user_id": user,
        "available": 15,
        "needed": 10,
        "min_balance": 10,
    }
    assert manager.get_balance(user).balance == 15


def test_unknown_model_is_refused_and_nothing_written(
    manager: CreditManager, db: psycopg.Connection[Any]
) -> None:
    manager.publish_pricing_from_dict(CREDITS_CONFIG)
    user = new_user()
    manager.add_credits(user, 100)
    before = ledger_rows(db, user)
    with pytest.raises(UnknownModelError) as caught:
        manager.deduct(user, UsageMetrics(model="llama-3", input_tokens=10))
    assert caught.value.code == "DC061" and "llama-3" in str(caught.value)
    assert ledger_rows(db, user) == before


def test_zero_cost_usage_is_admitted_without_a_journal_row(manager: CreditManager) -> None:
    manager.publish_pricing_from_dict({**CREDITS_CONFIG, "min_balance": 0})
    user = new_user()
    manager.add_credits(user, 5)
    result = manager.deduct(user, UsageMetrics(model="gpt-4o"))
    assert (result.transaction_id, result.amount, result.balance_after) == (None, 0, 5)
    assert not manager.verify_ledger()


def test_deduct_fixed(manager: CreditManager, db: psycopg.Connection[Any]) -> None:
    manager.publish_pricing_from_dict(CREDITS_CONFIG)
    user = new_user()
    manager.add_credits(user, 100)
    result = manager.deduct_fixed(user, "report", idempotency_key="report-1")
    assert (result.amount, result.balance_after) == (40, 60)
    row = db.execute(
        "select type, job_name, pricing_version from credit_transactions where id = %s",
        (result.transaction_id,),
    ).fetchone()
    assert row == ("fixed_job", "report", result.pricing_version)
    assert manager.deduct_fixed(user, "report", idempotency_key="report-1").is_replay
    with pytest.raises(UnknownJobError):
        manager.deduct_fixed(user, "unknown")
    assert manager.get_balance(user).balance == 60


def test_pricing_must_be_loaded(bare_manager: CreditManager, db: psycopg.Connection[Any]) -> None:
    bare = bare_manager
    user = new_user()
    bare.add_credits(user, 100)
    before = ledger_rows(db, user)
    with pytest.raises(PricingNotLoadedError):
        bare.deduct(user, UsageMetrics(model="gpt-4o", input_tokens=1))
    with pytest.raises(PricingNotLoadedError):
        bare.deduct_fixed(user, "report")
    assert ledger_rows(db, user) == before
    assert bare.engine is None
    bare.load_pricing_from_store()
    assert bare.engine is not None


def test_reserve_floor_defaults_to_the_pricing(
    manager: CreditManager, bare_manager: CreditManager
) -> None:
    user = new_user()
    manager.add_credits(user, 20)
    bare = bare_manager
    # no engine: 5; 20 - 16 = 4 < 5
    with pytest.raises(InsufficientCreditsError) as caught:
        bare.reserve_credits(user, 16)
    assert caught.value.details["min_balance"] == 5
    manager.publish_pricing_from_dict({**CREDITS_CONFIG, "min_balance": 0})
    assert manager.reserve_credits(user, 20).available_after == 0


def test_versions_history(manager: CreditManager) -> None:
    manager.publish_pricing(PricingConfigData.parse(CREDITS_CONFIG), label="first")
    first = manager.get_pricing()
    manager.publish_pricing(PricingConfigData.parse(EXAMPLE), label="second")
    second = manager.get_pricing()
    assert second.version > first.version and second.is_active and second.label == "second"
    versions = manager.pricing_versions()
    assert [v.version for v in versions[:2]] == [second.version, first.version]
    assert [v.is_active for v in versions[:2]] == [True, False]
    old = manager.get_pricing(first.version)
    assert (old.is_active, old.config) == (False, PricingConfigData.parse(CREDITS_CONFIG))
    with pytest.raises(DuctoError) as caught:
        manager.get_pricing(10**12)
    assert caught.value.code == "DC064"


# ---------------------------------------------------------------- the reference's example


#: The API reference, where the project's checkout sits beside it (as in development and CI).
REFERENCE = ROOT.parent / "shared" / "reference" / "ducto-manager-api.txt"


def code_lines(text: str) -> list[str]:
    """The code of an example: stripped lines, without blank lines and leading comments."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return lines


def reference_example() -> str:
    """examples/reference_example.py: the reference's example, checked against the reference."""
    example = (ROOT / "examples" / "reference_example.py").read_text()
    if REFERENCE.exists():
        text = REFERENCE.read_text()
        written = text.split("Example:", 1)[1].split("class ducto.manager.CreditManager", 1)[0]
        assert code_lines(example) == code_lines(written), "the example drifted from the reference"
    return example


@pytest.mark.parametrize("store_kind", ["http", "postgres"])
def test_reference_example_runs_as_written(
    store_kind: str,
    database_url: str,
    supabase_url: str,
    service_role_key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = reference_example()
    assert "store = HttpxSupabaseStore(url=supabase_url, key=service_role_key)" in code
    if store_kind == "postgres":
        code = code.replace(
            "store = HttpxSupabaseStore(url=supabase_url, key=service_role_key)",
            "store = PostgresStore(database_url)",
        )
    admin_store = PostgresStore(database_url)
    admin = CreditManager(admin_store)
    admin.publish_pricing_from_dict(EXAMPLE)
    if admin.get_balance("user_abc").balance == 0:
        admin.add_credits("user_abc", 1000)
    admin_store.close()
    namespace = {
        "supabase_url": supabase_url,
        "service_role_key": service_role_key,
        "database_url": database_url,
        "PostgresStore": PostgresStore,
    }
    exec(compile(code, "examples/reference_example.py", "exec"), namespace)
    out = capsys.readouterr().out
    # (500*15 + 200*75) / 1e6 USD * 1000 credits/USD * 1.2 markup = 27; the key makes the
    # second run a replay of the first
    assert re.fullmatch(r"Deducted 27 credits, balance: 973\n", out)
    store = namespace["store"]
    assert isinstance(store, HttpxSupabaseStore | PostgresStore)
    store.close()


# ---------------------------------------------------------------- from the attacker's side


@pytest.mark.parametrize("caller", ["anon", "user"])
def test_only_the_service_role_prices_or_publishes(
    gateway: Any,
    anon_key: str,
    make_user_token: MakeUserToken,
    service: Api,
    db: psycopg.Connection[Any],
    caller: str,
) -> None:
    user = str(uuid.uuid4())
    service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 100})
    bearer = anon_key if caller == "anon" else make_user_token(user)
    api = Api(gateway, anon_key, bearer)
    status = 401 if caller == "anon" else 403
    before = db.execute("select count(*), max(version) from credit_pricing_config").fetchone()
    ledger_before = ledger_rows(db, user)
    cheap = {"models": [], "default": {"input": 0, "output": 0}}
    attempts: dict[str, dict[str, Any]] = {
        "credit_publish_pricing": {"p_config": cheap},
        "credit_get_pricing": {},
        "credit_list_pricing_versions": {},
        "credit_calculate_cost": {"p_metrics": {"model": "m"}},
        # a user charging herself by her own word about her usage
        "credit_deduct_usage": {"p_user_id": user, "p_metrics": {"model": "m"}},
        "credit_deduct_fixed": {"p_user_id": user, "p_job_name": "report"},
    }
    for function, args in attempts.items():
        expect_error(
            api.rpc(function, args),
            status,
            "42501",
            message=permission_denied("function", function),
        )
    # the table itself: not readable, not writable
    for method, body in (("GET", None), ("POST", {"config": cheap, "created_at": "now()"})):
        response = api.request(method, "credit_pricing_config", json_body=body)
        expect_error(
            response, status, "42501", message=permission_denied("table", "credit_pricing_config")
        )
    after = db.execute("select count(*), max(version) from credit_pricing_config").fetchone()
    assert after == before and ledger_rows(db, user) == ledger_before


def test_the_service_role_cannot_rewrite_pricing_history(
    service: Api, db: psycopg.Connection[Any]
) -> None:
    service.rpc("credit_publish_pricing", {"p_config": VALID})
    before = db.execute("select version, config from credit_pricing_config").fetchall()
    for method in ("PATCH", "DELETE"):
        response = service.request(
            method, "credit_pricing_config", params={"version": "gt.0"}, json_body={"config": {}}
        )
        expect_error(
            response, 403, "42501", message=permission_denied("table", "credit_pricing_config")
        )
    assert db.execute("select version, config from credit_pricing_config").fetchall() == before
