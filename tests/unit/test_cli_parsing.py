"""The ``ducto`` command's parsing, in process (typer's CliRunner), with no database: the
store the command would open is replaced by one that records the calls it is sent.

- a wrong command line exits 2 with one line naming what is wrong, and opens no store;
- what a command line says reaches the manager as the call's arguments.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from typer.testing import CliRunner

from ducto import AddCreditsResult, __version__
from ducto._rpc import RpcCall
from ducto.cli import _options, _session, app
from ducto.cli._session import Target

#: the variables that pick the database: unset in every run
CONNECTION = ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "DUCTO_DATA_DIR")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
ADDED = AddCreditsResult("t", "g", "alice", 5, "purchase", "paid", 50, None, 5, NOW, False)
LIMITS: dict[str, Any] = {
    "user_id": "alice",
    "windows": [],
    "max_active_holds": None,
    "active_holds": 0,
    "held": 0,
    "credit_line": 0,
    "credit_line_grace_seconds": None,
    "balance": 0,
    "below_zero_since": None,
    "credit_line_due_at": None,
}
ANSWERS: dict[str, list[dict[str, Any]]] = {
    "credit_add_credits": [dataclasses.asdict(ADDED)],
    "credit_top_users": [],
    "credit_daily_spend": [],
}


class Store:
    """Records the target it was opened for and every call; answers from ``ANSWERS``."""

    def __init__(self) -> None:
        self.targets: list[Target] = []
        self.calls: list[RpcCall] = []

    def open(self, target: Target, stack: object) -> Store:
        self.targets.append(target)
        return self

    def call(self, call: RpcCall) -> list[dict[str, Any]]:
        self.calls.append(call)
        return ANSWERS[call.function]


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Store:
    recording = Store()
    monkeypatch.setattr(_session, "_open_store", recording.open)
    return recording


def ducto(*args: str, code: int = 0, **settings: str) -> str:
    """Run ``ducto args`` with ``settings`` as the only connection variables; after checking
    its exit code, its stdout (its stderr when it failed)."""
    env: dict[str, str | None] = {name: None for name in CONNECTION}
    env.update(settings)
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == code, result.stdout + result.stderr
    return result.stderr if code else result.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["credits", "add", "u", "0"], "'AMOUNT': 0 is not a positive whole number"),
        (["credits", "add", "u", "-5"], "'AMOUNT': -5 is not a positive whole number"),
        (["credits", "add", "u", "-5", "--type", "grant"], "-5 is not a positive"),
        (["credits", "add", "u", "five"], "'AMOUNT': Input should be a valid"),
        (["credits", "add", "u", "5", "--bogus"], "No such option: --bogus"),
        (["credits", "add", "u", "5", "--priority", "101"], "'--priority'"),
        (["credits", "add", "u", "5", "--priority", "-1"], "'--priority'"),
        (["credits", "add", "u", "5", "--type", "gift"], "'--type': Value error, 'gift'"),
        (["credits", "add", "u", "5", "--category", "free"], "'--category'"),
        (["credits", "add", "u", "5", "--type", "[red]x"], "'[red]x' is not one of"),  # no markup
        (["credits", "reserve", "u", "-1"], "'AMOUNT': -1 is not a positive"),
        (["credits", "reserve", "u", "5", "--timeout", "0s"], "--timeout: '0s' is not between"),
        (["credits", "reserve", "u", "5", "--timeout", "8d"], "--timeout: '8d' is not between"),
        (["credits", "reserve", "u", "5", "--timeout", "soon"], "--timeout: 'soon' is not a"),
        (["credits", "settle", "r", "-3"], "'AMOUNT': -3 is not a whole number of credits, 0"),
        (["credits", "refund"], "Missing argument 'TRANSACTION'"),
        (["credits", "add", "u", "5", "--metadata", "[1]"], "must be a JSON object"),
        (["credits", "add", "u", "5", "--metadata", "{nope"], "not JSON"),
        (["credits", "add", "u", "5", "--expires-in", "soon"], "not a duration"),
        (["credits", "add", "u", "5", "--expires-at", "tomorrow"], "not an ISO 8601 time"),
        (
            ["credits", "add", "u", "5", "--expires-at", "2030-01-01", "--expires-in", "1d"],
            "not both",
        ),
        (
            ["credits", "add", "u", "5", "--expires-in", "1d", "--key", "k"],
            "--expires-at with --key",
        ),
        (["credits", "deduct", "u"], "say what to charge: --model M with its token counts"),
        (["credits", "deduct", "u", "--model", "m", "--job", "j"], "not both"),
        (["credits", "deduct", "u", "--model", "m", "--input-tokens", "-1"], "--input-tokens"),
        (["stats", "daily", "--limit", "3"], "only the top report takes a limit"),
        (["stats", "top", "--limit", "0"], "--limit"),
        (["stats", "--start", "2026-01-01", "--last", "1d"], "not both"),
        (["stats", "--start", "2026-01-02", "--end", "2026-01-01"], "is empty"),
        # every report has the same bound: 366 days
        (["stats", "daily", "--start", "0001-01-01"], "more than 366 days, the longest"),
        (["stats", "--start", "2025-01-01", "--end", "2026-01-02T00:00:01"], "366 days, 0:00:01"),
        (["stats", "users", "--last", "367d"], "--last: '367d' is more than 366 days"),
        (["stats", "top", "--last", "99999999999w"], "--last: '99999999999w' is too long"),
        (["stats", "models", "--end", "0001-01-02"], "before the year 1"),
        (["stats", "weekly"], "'weekly' is not one of"),
        (["credit", "add"], "No such command"),
        (["limits", "set", "u", "--window", "year:5"], "is not PERIOD:LIMIT[:MODEL_PATTERN]"),
        (["limits", "set", "u", "--window", "day:-5"], "is not PERIOD:LIMIT"),
        (["limits", "set", "u", "--window", "day"], "is not PERIOD:LIMIT"),
        (["limits", "set", "u", "--max-holds", "-1"], "'--max-holds'"),
        (["limits", "set", "u", "--credit-line", "-1"], "'--credit-line'"),
        (["limits", "set", "u", "--grace", "soon"], "--grace: 'soon' is not a duration"),
    ],
)
def test_a_wrong_command_line_exits_2_before_any_store_opens(
    store: Store, args: list[str], says: str
) -> None:
    said = ducto(*args, code=2, DATABASE_URL="postgresql://nowhere/db")
    assert says in said
    # one line, like every other failure, with where to read more
    assert said.startswith("error: ") and said.count("\n") == 1
    assert "(see: ducto " in said and said.endswith(" --help)\n")
    assert store.targets == []


@pytest.mark.parametrize("days", ["366d", "52w"])
def test_a_window_up_to_366_days_is_reported(store: Store, days: str) -> None:
    ducto("stats", "daily", "--last", days, "--end", "2026-01-01", "--json", DATABASE_URL="x")
    [call] = store.calls
    assert call.args["p_end"] - call.args["p_start"] == _options.duration(days, "--last")


def test_the_bounds_reach_the_store(store: Store) -> None:
    ducto(
        "credits", "add", "alice", "1", "--priority", "0", "--type", "grant", "--json",
        DATABASE_URL="postgresql://db/ledger",
    )  # fmt: skip
    ducto("credits", "add", "alice", "1", "--priority", "100", DATABASE_URL="x")
    assert [(c.args["p_priority"], c.args["p_tx_type"]) for c in store.calls] == [
        (0, "grant"),
        (100, "adjustment"),
    ]


def test_credits_add_sends_what_the_command_line_says(store: Store) -> None:
    out = ducto(
        "credits", "add", "alice", "5", "--type", "purchase", "--key", "order-17",
        "--metadata", '{"order": 17}', "--expires-at", "2030-01-01T12:00", "--json",
        DATABASE_URL="postgresql://db/ledger", SUPABASE_URL="https://ignored.example",
    )  # fmt: skip
    [target] = store.targets
    assert target.kind == "postgres"  # a database URL wins over a Supabase URL
    [call] = store.calls
    assert call.function == "credit_add_credits"
    assert {name: call.args[name] for name in call.args if name != "p_user_id"} == {
        "p_amount": 5,
        "p_tx_type": "purchase",
        "p_category": "paid",
        "p_priority": 50,
        "p_expires_at": datetime(2030, 1, 1, 12, tzinfo=UTC),  # no zone given: UTC
        "p_metadata": {"order": 17},
        "p_idempotency_key": "order-17",
    }
    assert json.loads(out)["transaction_id"] == ADDED.transaction_id


def test_stats_top_sends_its_window_and_limit(store: Store) -> None:
    out = ducto(
        "--supabase-url", "https://project.supabase.co", "--service-role-key", "key",
        "stats", "top", "--limit", "3", "--start", "2026-01-01", "--end", "2026-01-08", "--json",
    )  # fmt: skip
    [target] = store.targets
    assert target.kind == "supabase"
    [call] = store.calls
    assert (call.function, dict(call.args)) == (
        "credit_top_users",
        {"p_limit": 3, "p_start": NOW, "p_end": datetime(2026, 1, 8, tzinfo=UTC)},
    )
    assert json.loads(out) == []


def test_limits_set_sends_the_whole_configuration(store: Store) -> None:
    ANSWERS["credit_set_limits"] = [LIMITS]
    out = ducto(
        "limits", "set", "alice", "--window", "day:1000", "--window", "24h:50:gpt-image-*",
        "--max-holds", "4", "--credit-line", "500", "--grace", "7d", "--json",
        DATABASE_URL="x",
    )  # fmt: skip
    [call] = store.calls
    assert (call.function, dict(call.args)) == (
        "credit_set_limits",
        {
            "p_user_id": "alice",
            "p_windows": [
                {"period": "day", "spend_limit": 1000},
                {"period": "hours", "spend_limit": 50, "hours": 24, "model_pattern": "gpt-image-*"},
            ],
            "p_max_active_holds": 4,
            "p_credit_line": 500,
            "p_credit_line_grace_seconds": 7 * 86400,
        },
    )
    assert json.loads(out)["user_id"] == "alice"


def test_limits_set_without_options_sets_no_limits(store: Store) -> None:
    ANSWERS["credit_set_limits"] = [LIMITS]
    ducto("limits", "set", "alice", DATABASE_URL="x")
    [call] = store.calls
    assert dict(call.args) == {
        "p_user_id": "alice",
        "p_windows": [],
        "p_max_active_holds": None,
        "p_credit_line": None,
        "p_credit_line_grace_seconds": None,
    }


def test_version() -> None:
    assert ducto("--version") == f"ducto {__version__}\n"


def partition(name: str, month: datetime | None, rows: int) -> dict[str, Any]:
    table = name.rsplit("_p", 1)[0].removesuffix("_default")
    return {
        "table_name": f"public.{table}",
        "partition_name": name,
        "month": month,
        "row_count": rows,
    }


def test_partitions_exits_1_when_a_default_partition_has_rows(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = [
        partition("credit_transactions_default", None, 0),
        partition("credit_transactions_p2026_01", NOW, 120),
        partition("credit_grant_draws_default", None, 0),
        partition("credit_grant_draws_p2026_01", NOW, 80),
    ]
    monkeypatch.setitem(ANSWERS, "credit_partitions", clean)
    out = ducto("--db-url", "postgresql://h/db", "partitions")
    assert "4 partitions" in out and "credit_transactions_p2026_01" in out
    [call] = store.calls
    assert (call.function, dict(call.args)) == ("credit_partitions", {})
    listed = json.loads(ducto("--db-url", "postgresql://h/db", "partitions", "--json"))
    assert [row["partition_name"] for row in listed] == [row["partition_name"] for row in clean]

    stray = [partition("credit_transactions_default", None, 3), *clean[1:]]
    monkeypatch.setitem(ANSWERS, "credit_partitions", stray)
    said = ducto("--db-url", "postgresql://h/db", "partitions", code=1)
    assert said.startswith("error: 3 rows in a default partition")
    # the JSON listing is printed before the exit code says so
    result = CliRunner().invoke(
        app,
        ["--db-url", "postgresql://h/db", "partitions", "--json"],
        env=dict.fromkeys(CONNECTION),
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout)[0]["row_count"] == 3
