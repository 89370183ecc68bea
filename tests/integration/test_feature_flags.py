"""The accounts' feature flags (``credit_accounts.features``, docs/ledger.md "What a debit
costs"): the debit probes balance alerts, limits, scoped credits and the auto top-up rule
only for an account whose flags say it uses them, so a flag missing where its feature
applies would silently switch the feature off.

- each feature, configured each way it can be (a user's alert, a plan's alert before or
  after the plan is assigned, the default plan's alert for users without a plan and for
  team pools, an alert set before the account exists, limits set then removed, scoped
  grants created then used up or expired, an auto top-up rule enabled and disabled), still
  fires, and the flags equal what ``credit_private.account_features`` computes from scratch;
- after a random mix of configuration changes and charges (hypothesis), every account's
  flags equal that computation;
- many workers changing configurations while others charge the same accounts: the flags
  still equal it, and the ledger verifies;
- ``credit_private.check_usage`` (whose normal form takes a short path) accepts, normalises
  and rejects every usage as the field-by-field checks alone do.

Every test works on fresh users and plans; a test that moves the default plan puts the
previous one back, and deletes the alerts of its plans.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, LiteralString

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from test_concurrency import Ledger, accounts_of, attempt, connect, run_workers

ALERTS, LIMITS, SCOPED, TOPUP = 1, 2, 4, 8


def wrong_flags(ledger: Ledger) -> list[DictRow]:
    """Every account whose flags differ from a computation from scratch (none, always)."""
    return ledger.rows(
        """
        select a.user_id, a.features, credit_private.account_features(a.id) as expected
        from credit_accounts as a
        where a.features <> credit_private.account_features(a.id)
        order by a.user_id
        """
    )


def flags(ledger: Ledger, user: str) -> int:
    row = ledger.one("select features from credit_accounts where user_id = %s", (user,))
    return int(row["features"])


def events(ledger: Ledger, user: str, type_: str) -> int:
    row = ledger.one(
        "select count(*) as n from credit_events where user_id = %s and type = %s", (user, type_)
    )
    return int(row["n"])


def fresh(name: str) -> str:
    return f"flags-{name}-{uuid.uuid4().hex[:10]}"


class Plans:
    """Plans made by a test: created with ``make``, made default with ``default``; on
    ``restore`` their alerts are deleted and the default plan is the one before."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.made: list[str] = []
        row = ledger.rows("select * from credit_plans where is_default")
        self.previous_default = dict(row[0]) if row else None
        self.default(None)  # the test's own plans only

    def make(self) -> str:
        plan = fresh("plan")
        self.ledger.call("credit_upsert_plan", plan_id=plan, name=plan)
        self.made.append(plan)
        return plan

    def default(self, plan: str | None) -> None:
        """Make ``plan`` the default plan (None: no default plan)."""
        if plan is None:
            for row in self.ledger.rows("select * from credit_plans where is_default"):
                self.ledger.call(
                    "credit_upsert_plan", plan_id=row["id"], name=row["name"],
                    features=Jsonb(row["features"]),
                )  # fmt: skip
        else:
            self.ledger.call("credit_upsert_plan", plan_id=plan, name=plan, is_default=True)

    def restore(self) -> None:
        for alert in self.ledger.rows(
            "select id from credit_balance_alerts where plan_id = any(%s)", (self.made,)
        ):
            self.ledger.call("credit_delete_alert", alert_id=alert["id"])
        old = self.previous_default
        if old is None:
            self.default(None)
        else:
            self.ledger.call(
                "credit_upsert_plan", plan_id=old["id"], name=old["name"],
                features=Jsonb(old["features"]), is_default=True,
            )  # fmt: skip


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    """A connection for setup and checks; after the test the flags are exact and the whole
    ledger verifies."""
    with connect(database_url, "ducto-flags-setup") as conn:
        ledger = Ledger(conn)
        yield ledger
        ledger.set_clock(None)
        assert wrong_flags(ledger) == []
        assert ledger.verify() == [], "credit_verify_ledger() reports broken invariants"


@pytest.fixture
def plans(ledger: Ledger) -> Iterator[Plans]:
    made = Plans(ledger)
    yield made
    made.restore()


def set_rule(ledger: Ledger, user: str, *, enabled: bool = True) -> None:
    """An auto top-up rule: below 500 buy 1000 credits at 2 minor units each."""
    ledger.call(
        "credit_set_auto_topup", user_id=user, threshold=500, amount=1000,
        unit_price_minor=2, currency="usd", stripe_customer_id="cus_flags",
        stripe_payment_method_id="pm_flags", cooldown_seconds=0, enabled=enabled,
    )  # fmt: skip


# ---------------------------------------------------------------- each feature, each way


def test_a_users_alert_set_before_the_account_exists_fires(ledger: Ledger) -> None:
    user = fresh("early")
    ledger.call("credit_set_alert", user_id=user, threshold=100)
    ledger.add(user, 150)  # the account is created after its alert
    assert flags(ledger, user) == ALERTS
    ledger.deduct(user, 60)
    assert events(ledger, user, "balance.low") == 1
    alert = ledger.one("select id from credit_balance_alerts where user_id = %s", (user,))
    assert ledger.call("credit_delete_alert", alert_id=alert["id"]) == {"credit_delete_alert": True}
    assert flags(ledger, user) == 0
    assert wrong_flags(ledger) == []


def test_a_plans_alert_fires_whichever_comes_first_alert_or_assignment(
    ledger: Ledger, plans: Plans
) -> None:
    plan = plans.make()
    before, after = fresh("assigned-before"), fresh("assigned-after")
    for user in (before, after):
        ledger.add(user, 1000)
    ledger.call("credit_assign_plan", user_id=before, plan_id=plan)
    ledger.call("credit_set_alert", plan_id=plan, threshold=500)
    assert flags(ledger, before) == ALERTS
    assert flags(ledger, after) == 0
    ledger.call("credit_assign_plan", user_id=after, plan_id=plan)
    assert flags(ledger, after) == ALERTS
    for user in (before, after):
        ledger.deduct(user, 600)
        assert events(ledger, user, "balance.low") == 1
    # off the plan: no plan alert applies any more, and none fires
    ledger.call("credit_assign_plan", user_id=after, plan_id=None)
    assert flags(ledger, after) == 0
    ledger.add(after, 1000)
    ledger.deduct(after, 1000)
    assert events(ledger, after, "balance.low") == 1
    assert wrong_flags(ledger) == []


def test_the_default_plans_alert_reaches_users_without_a_plan_and_team_pools(
    ledger: Ledger, plans: Plans
) -> None:
    plain, team = fresh("no-plan"), uuid.uuid4()
    pool = f"team:{team}"
    ledger.add(plain, 1000)
    ledger.call("credit_upsert_team", team_id=team, name="flags")
    ledger.add(pool, 1000)
    default = plans.make()
    ledger.call("credit_set_alert", plan_id=default, threshold=500)
    assert flags(ledger, plain) == 0  # not the default plan yet
    plans.default(default)
    assert flags(ledger, plain) == ALERTS
    assert flags(ledger, pool) == ALERTS
    for user in (plain, pool):
        ledger.deduct(user, 600)
        assert events(ledger, user, "balance.low") == 1
    # a user created now starts on the default plan, with its flag
    late = fresh("late")
    ledger.add(late, 1000)
    assert flags(ledger, late) == ALERTS
    ledger.deduct(late, 600)
    assert events(ledger, late, "balance.low") == 1
    # another default plan without alerts: the flags go
    plans.default(plans.make())
    assert flags(ledger, plain) == 0
    assert flags(ledger, pool) == 0
    assert wrong_flags(ledger) == []


def test_deleting_a_plans_alert_clears_its_users_flags(ledger: Ledger, plans: Plans) -> None:
    plan = plans.make()
    user = fresh("plan-alert")
    ledger.add(user, 1000)
    ledger.call("credit_assign_plan", user_id=user, plan_id=plan)
    first = ledger.call("credit_set_alert", plan_id=plan, threshold=500)
    second = ledger.call("credit_set_alert", plan_id=plan, percent=10)
    ledger.call("credit_delete_alert", alert_id=first["id"])
    assert flags(ledger, user) == ALERTS  # the plan still has one
    ledger.call("credit_delete_alert", alert_id=second["id"])
    assert flags(ledger, user) == 0
    assert wrong_flags(ledger) == []


def test_limits_set_then_removed(ledger: Ledger) -> None:
    user = fresh("limits")
    ledger.add(user, 1000)
    ledger.call("credit_set_limits", user_id=user, windows=Jsonb([
        {"period": "day", "spend_limit": 100}
    ]))  # fmt: skip
    assert flags(ledger, user) == LIMITS
    ledger.deduct(user, 80)
    outcome = attempt(lambda: ledger.deduct(user, 30), frozenset({"DC085"}))
    assert outcome.code == "DC085"
    ledger.call("credit_set_limits", user_id=user)  # no limits at all
    assert flags(ledger, user) == 0
    ledger.deduct(user, 30)
    # a credit line alone is a limit too: the account's charges may go below zero
    ledger.call("credit_set_limits", user_id=user, credit_line=5000)
    assert flags(ledger, user) == LIMITS
    ledger.deduct(user, 2000)
    assert ledger.balance(user)["balance"] == 1000 - 80 - 30 - 2000
    ledger.add(user, 2000)  # pays the debt back
    assert wrong_flags(ledger) == []


def test_scoped_grants_created_used_up_and_expired(ledger: Ledger) -> None:
    user = fresh("scoped")
    ledger.add(user, 100, scope=["feature:export"])
    assert flags(ledger, user) == SCOPED
    # scoped credits outside the charge's scope are not admitted
    assert attempt(lambda: ledger.deduct(user, 50), frozenset({"DC010"})).code == "DC010"
    charge = ledger.deduct(user, 100, metadata=Jsonb({"feature": "export"}))
    assert charge["balance_after"] == 0
    # used up: the flag stays (a refund may give the grant its credits back)
    ledger.refund(charge["transaction_id"], 40)
    assert flags(ledger, user) == SCOPED
    assert attempt(lambda: ledger.deduct(user, 40), frozenset({"DC010"})).code == "DC010"
    # expired
    expiring = fresh("scoped-expiring")
    ledger.add(expiring, 100, scope=["feature:export"],
               expires_at=datetime.now(UTC) + timedelta(hours=1))  # fmt: skip
    ledger.add(expiring, 10)
    ledger.set_clock(datetime.now(UTC) + timedelta(hours=2))
    ledger.deduct(expiring, 10)
    assert flags(ledger, expiring) == SCOPED
    assert ledger.balance(expiring)["balance"] == 0
    ledger.set_clock(None)
    assert wrong_flags(ledger) == []


def test_an_auto_top_up_rule_enabled_disabled_and_enabled_again(ledger: Ledger) -> None:
    user = fresh("topup")
    ledger.add(user, 2000)
    set_rule(ledger, user, enabled=False)
    assert flags(ledger, user) == TOPUP
    ledger.deduct(user, 1600)  # below 500 with the rule disabled: no request
    assert events(ledger, user, "topup.requested") == 0
    set_rule(ledger, user)  # enabled while below: requested at once
    assert events(ledger, user, "topup.requested") == 1
    other = fresh("topup-charge")
    ledger.add(other, 2000)
    set_rule(ledger, other)
    ledger.deduct(other, 1600)  # the debit requests it
    assert events(ledger, other, "topup.requested") == 1
    assert flags(ledger, other) == TOPUP
    assert wrong_flags(ledger) == []


# ---------------------------------------------------------------- random changes

OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from([
            "user_alert", "plan_alert", "delete_alert", "assign", "unassign", "default",
            "no_default", "limits", "no_limits", "add", "add_scoped", "deduct", "scoped_deduct",
            "rule", "rule_off", "team_alert", "pool_deduct", "expire",
        ]),
        st.integers(0, 2),  # which user
        st.integers(0, 1),  # which plan
        st.integers(1, 400),  # an amount
    ),
    min_size=10,
    max_size=40,
)  # fmt: skip


@pytest.fixture(scope="module")
def module_ledger(database_url: str) -> Iterator[Ledger]:
    with connect(database_url, "ducto-flags-random") as conn:
        yield Ledger(conn)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=OPERATIONS)
def test_flags_equal_a_computation_from_scratch_after_random_changes(
    module_ledger: Ledger, steps: list[tuple[str, int, int, int]]
) -> None:
    ledger = module_ledger
    plans = Plans(ledger)
    users = [fresh(f"random-{i}") for i in range(3)]
    team = uuid.uuid4()
    pool = f"team:{team}"
    made = [plans.make(), plans.make()]
    ledger.call("credit_upsert_team", team_id=team, name="flags")
    for user in users[:2]:  # two accounts from the start, the third made by the steps
        ledger.add(user, 500)
    expected_errors = frozenset({"DC010", "DC085"})
    try:
        for operation, u, p, amount in steps:
            user, plan = users[u], made[p]
            if operation == "user_alert":
                ledger.call("credit_set_alert", user_id=user, threshold=amount)
            elif operation == "team_alert":
                ledger.call("credit_set_alert", user_id=pool, threshold=amount)
            elif operation == "plan_alert":
                ledger.call("credit_set_alert", plan_id=plan, threshold=amount)
            elif operation == "delete_alert":
                mine = ledger.rows(
                    """select id from credit_balance_alerts
                    where user_id = any(%s) or plan_id = any(%s) order by id""",
                    ([*users, pool], made),
                )
                if mine:
                    ledger.call("credit_delete_alert", alert_id=mine[amount % len(mine)]["id"])
            elif operation == "assign":
                ledger.call("credit_assign_plan", user_id=user, plan_id=plan)
            elif operation == "unassign":
                ledger.call("credit_assign_plan", user_id=user, plan_id=None)
            elif operation == "default":
                plans.default(plan)
            elif operation == "no_default":
                plans.default(None)
            elif operation == "limits":
                ledger.call("credit_set_limits", user_id=user, windows=Jsonb([
                    {"period": "hours", "hours": 1, "spend_limit": amount * 3}
                ]))  # fmt: skip
            elif operation == "no_limits":
                ledger.call("credit_set_limits", user_id=user)
            elif operation == "add":
                ledger.add(user, amount)
            elif operation == "add_scoped":
                ledger.add(user, amount, scope=["feature:f"],
                           expires_at=datetime.now(UTC) + timedelta(minutes=amount))  # fmt: skip
            elif operation == "deduct":
                attempt(partial(ledger.deduct, user, amount), expected_errors)
            elif operation == "scoped_deduct":
                scoped = partial(ledger.deduct, user, amount, metadata=Jsonb({"feature": "f"}))
                attempt(scoped, expected_errors)
            elif operation == "pool_deduct":
                ledger.add(pool, amount)
                attempt(partial(ledger.deduct, pool, amount), expected_errors)
            elif operation == "rule":
                set_rule(ledger, user)
            elif operation == "rule_off":
                set_rule(ledger, user, enabled=False)
            elif operation == "expire":
                # later than every scoped grant's expiry: the next write expires them
                ledger.set_clock(datetime.now(UTC) + timedelta(minutes=401))
                attempt(partial(ledger.deduct, user, 1), expected_errors)
                ledger.set_clock(None)
            assert wrong_flags(ledger) == [], f"after {operation}"
    finally:
        ledger.set_clock(None)
        plans.restore()
    assert wrong_flags(ledger) == []


# ---------------------------------------------------------------- concurrency

WORKERS = 16
STEPS = 25


def test_concurrent_setters_and_debits_keep_flags_exact(
    database_url: str, ledger: Ledger, plans: Plans
) -> None:
    """16 workers on 4 users, a team pool and 2 plans: half change configurations (alerts
    of users and plans, plan assignments, the default plan, limits, scoped grants, auto
    top-up rules), half charge; then every account's flags equal a computation from
    scratch, no worker met a deadlock, and the ledger verifies."""
    prefix = fresh("conc")
    users = [f"{prefix}-{i}" for i in range(4)]
    team = uuid.uuid4()
    pool = f"team:{team}"
    made = [plans.make(), plans.make()]
    ledger.call("credit_upsert_team", team_id=team, name="flags")
    for user in [*users, pool]:
        ledger.add(user, 10_000)
    allowed = frozenset({"DC010", "DC085"})
    done = threading.Barrier(WORKERS)

    def configure(rng: random.Random, worker: Ledger) -> None:
        user, plan = rng.choice([*users, pool]), rng.choice(made)
        choice = rng.randrange(10)
        if choice == 0:
            worker.call("credit_set_alert", user_id=user, threshold=rng.randint(1, 20_000))
        elif choice == 1:
            worker.call("credit_set_alert", plan_id=plan, threshold=rng.randint(1, 20_000))
        elif choice == 2:
            mine = worker.rows(
                "select id from credit_balance_alerts where user_id like %s || '%%'"
                " or user_id = %s or plan_id = any(%s)",
                (prefix, pool, made),
            )
            if mine:
                worker.call("credit_delete_alert", alert_id=rng.choice(mine)["id"])
        elif choice == 3:
            worker.call("credit_assign_plan", user_id=user, plan_id=rng.choice([plan, None]))
        elif choice == 4:
            worker.call("credit_upsert_plan", plan_id=plan, name=plan,
                        is_default=rng.random() < 0.5)  # fmt: skip
        elif choice == 5:
            worker.call("credit_set_limits", user_id=user, windows=Jsonb([
                {"period": "day", "spend_limit": rng.randint(1000, 100_000)}
            ]))  # fmt: skip
        elif choice == 6:
            worker.call("credit_set_limits", user_id=user)
        elif choice == 7:
            worker.add(user, rng.randint(1, 500), scope=["feature:f"])
        elif choice == 8:
            set_rule(worker, user, enabled=rng.random() < 0.5)
        else:
            worker.add(f"{prefix}-new-{uuid.uuid4().hex[:8]}", 10)  # a new account

    def charge(rng: random.Random, worker: Ledger) -> None:
        user = rng.choice([*users, pool])
        metadata = {"feature": "f"} if rng.random() < 0.3 else {}
        attempt(lambda: worker.deduct(user, rng.randint(1, 300), metadata=Jsonb(metadata)),
                allowed)  # fmt: skip

    def work(index: int, worker: Ledger) -> int:
        rng = random.Random(index)
        deadlocked = 0
        for _ in range(STEPS):
            try:
                (configure if index % 2 == 0 else charge)(rng, worker)
            except psycopg.errors.DeadlockDetected:
                deadlocked += 1
        done.wait()
        return deadlocked

    deadlocked = run_workers(database_url, WORKERS, work, application="ducto-flags-conc")
    assert sum(deadlocked) == 0
    assert wrong_flags(ledger) == []
    for account in accounts_of(ledger, prefix):
        assert account["balance"] == account["journal"], account["user_id"]
        assert account["remaining"] - account["debt"] == account["balance"], account["user_id"]
    pool_row = ledger.one(
        "select balance, (select sum(amount) from credit_transactions t"
        " where t.account_id = a.id) as journal from credit_accounts a where user_id = %s",
        (pool,),
    )
    assert pool_row["balance"] == pool_row["journal"]


# ---------------------------------------------------------------- check_usage

# The field-by-field checks of credit_private.check_usage as they were before its short
# path for usage in normal form: the reference it must agree with on every input.
REFERENCE_CHECK_USAGE = """
create function pg_temp.reference_check_usage(p_metrics jsonb)
returns jsonb
language plpgsql
as $$
declare
    v_counts constant text[] := array[
        'input_tokens', 'output_tokens', 'cached_input_tokens', 'cache_creation_tokens',
        'cache_creation_1h_tokens', 'reasoning_tokens', 'tool_calls', 'requests'
    ];
    v_unknown jsonb;
    v_field text;
    v_count jsonb;
    v_whole numeric;
    v_usage jsonb;
begin
    if jsonb_typeof(p_metrics) is distinct from 'object' then
        perform credit_private.fail('DC007', 'usage metrics must be a JSON object',
            jsonb_build_object('argument', 'metrics'));
    end if;
    v_unknown := p_metrics - 'model' - v_counts;
    if v_unknown <> '{}'::jsonb then
        v_field := (select k from jsonb_object_keys(v_unknown) as k limit 1);
        perform credit_private.fail('DC007',
            format('usage metrics: %s is not a known field', to_jsonb(v_field)),
            jsonb_build_object('argument', 'metrics', 'field', v_field));
    end if;
    if jsonb_typeof(p_metrics -> 'model') is distinct from 'string'
        or p_metrics ->> 'model' !~ '^[A-Za-z0-9._:/@+-]{1,200}$' then
        perform credit_private.fail('DC007',
            format('usage metrics: model must be a model name (1 to 200 of A-Z a-z 0-9 . _ : / @'
                || ' + -), got %s', coalesce(left((p_metrics -> 'model')::text, 100), 'null')),
            jsonb_build_object('argument', 'metrics', 'field', 'model'));
    end if;
    v_usage := jsonb_build_object('model', p_metrics -> 'model');
    foreach v_field in array v_counts loop
        v_count := p_metrics -> v_field;
        continue when v_count is null;
        if jsonb_typeof(v_count) = 'number' then
            v_whole := v_count::numeric;
        else
            v_whole := -1;
        end if;
        if v_whole <> trunc(v_whole) or v_whole not between 0 and 9007199254740991 then
            perform credit_private.fail('DC007',
                format('usage metrics: %s must be a whole number from 0 to 2^53 - 1, got %s',
                    v_field, v_count),
                jsonb_build_object('argument', 'metrics', 'field', v_field));
        end if;
        if v_whole <> (case when v_field = 'requests' then 1 else 0 end) then
            v_usage := v_usage || jsonb_build_object(v_field, v_whole::bigint);
        end if;
    end loop;
    return v_usage;
end;
$$;
"""

COUNT_FIELDS = [
    "input_tokens", "output_tokens", "cached_input_tokens", "cache_creation_tokens",
    "cache_creation_1h_tokens", "reasoning_tokens", "tool_calls", "requests",
]  # fmt: skip
# counts written as JSON text: whole, with a decimal point or an exponent, out of range
COUNT_TEXT = st.one_of(
    st.integers(-3, 3).map(str),
    st.integers(0, 2**53 + 2).map(str),
    st.sampled_from([
        "1.0", "0.0", "2.50", "1e3", "1E+2", "5e-1", "-0", "9007199254740991",
        "9007199254740992", "1.5", '"7"', "null", "true", "[1]", "{}", "12.000",
    ]),
)  # fmt: skip
MODEL_TEXT = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9._:/@+-]{1,12}\Z"),
    st.sampled_from(['""', "1", "null", "[]", '"a b"', '"gpt-4o"', '"x' + "y" * 200 + '"']),
    st.text(max_size=8).map(lambda s: '"' + s.replace("\\", "").replace('"', "") + '"'),
)


@st.composite
def metrics_text(draw: st.DrawFn) -> str:
    """Usage metrics as JSON text, mostly valid, often not."""
    if draw(st.integers(0, 20)) == 0:
        return draw(st.sampled_from(["[]", "null", '"x"', "3"]))
    fields = draw(st.lists(st.sampled_from(COUNT_FIELDS), unique=True, max_size=5))
    parts = [f'"{field}": {draw(COUNT_TEXT)}' for field in fields]
    if draw(st.integers(0, 10)) > 0:
        parts.append(f'"model": {draw(MODEL_TEXT)}')
    if draw(st.integers(0, 15)) == 0:
        parts.append(f'"{draw(st.sampled_from(["foo", "Model", "input"]))}": 1')
    draw(st.randoms()).shuffle(parts)
    return "{" + ", ".join(parts) + "}"


CHECKS: dict[str, LiteralString] = {
    "ours": "select credit_private.check_usage(%s::jsonb)",
    "reference": "select pg_temp.reference_check_usage(%s::jsonb)",
}


def checked(conn: psycopg.Connection[Any], check: str, text: str) -> tuple[Any, ...]:
    """What one check answers for ``text``: the usage, or the error's code, message and
    detail."""
    try:
        with conn.transaction():
            row = conn.execute(CHECKS[check], (text,)).fetchone()
    except psycopg.Error as exc:
        return ("error", exc.sqlstate, exc.diag.message_primary, exc.diag.message_detail)
    assert row is not None
    return ("usage", row[0], None if row[0] is None else str(row[0]))


@pytest.fixture(scope="module")
def reference(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(REFERENCE_CHECK_USAGE)
        yield conn


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=metrics_text())
def test_check_usage_accepts_and_rejects_as_the_field_by_field_checks(
    reference: psycopg.Connection[Any], text: str
) -> None:
    assert checked(reference, "ours", text) == checked(reference, "reference", text), text


@pytest.mark.parametrize(
    "text",
    [
        '{"model": "gpt-4o", "input_tokens": 500, "output_tokens": 200}',
        '{"model": "gpt-4o", "input_tokens": 500.0}',
        '{"model": "gpt-4o", "input_tokens": 0, "requests": 1}',
        '{"model": "gpt-4o", "requests": 2, "tool_calls": 1e2}',
        '{"model": "' + "m" * 200 + '", "input_tokens": 1}',
        '{"model": "' + "m" * 201 + '", "input_tokens": 1}',
        '{"model": "gpt-4o", "input_tokens": 9007199254740992}',
        '{"model": "gpt-4o", "input_tokens": "5"}',
        '{"model": "gpt-4o", "input_tokens": -1}',
        '{"model": "gpt-4o", "unknown": 1}',
        '{"input_tokens": 1}',
    ],
)
def test_check_usage_agrees_on_the_edges(reference: psycopg.Connection[Any], text: str) -> None:
    assert checked(reference, "ours", text) == checked(reference, "reference", text)
