"""The ``ducto`` command, run as an operator runs it, on a fresh PostgreSQL database,
through the Supabase REST API, and on the embedded PostgreSQL (there as the installed
console script in subprocesses, which also shows that each process stops the server)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from helpers_process import ROOT, SUPABASE, install_test_clock, run
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner

from ducto import PricingConfigData, PricingEngine, UsageMetrics, __version__
from ducto._migrations import bundled, latest_version
from ducto.cli import app

DUCTO = Path(sys.executable).parent / "ducto"
PRICING = ROOT / "examples" / "pricing.json"
#: what picks the database; each test sets its own
CONNECTION = (
    "DATABASE_URL",
    "SUPABASE_URL",
    "SUPABASE_SERVICE_ROLE_KEY",
    "DUCTO_DATA_DIR",
    "DUCTO_READ_DATABASE_URL",
    "DUCTO_READ_SUPABASE_URL",
)


@dataclass(frozen=True)
class Result:
    """What a run of ``ducto`` printed, and its exit code."""

    code: int
    stdout: str
    stderr: str


class Cli:
    """Runs ``ducto`` with one connection's environment: in-process through click's test
    runner, or as the installed console script in a subprocess (``subprocess=True``)."""

    def __init__(self, *, subprocess: bool = False, **env: str) -> None:
        self.subprocess = subprocess
        self.env: dict[str, str | None] = {name: None for name in CONNECTION} | env

    def __call__(self, *args: str, code: int = 0) -> Result:
        """Run ``ducto args``; check its exit code, and that a failure, a wrong command line
        too, says one line on stderr (stdout carries only a result or a report)."""
        result = self._run(args)
        assert result.code == code, result.stdout + result.stderr
        if code != 0:
            assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        return result

    def _run(self, args: tuple[str, ...]) -> Result:
        if not self.subprocess:
            ran = CliRunner().invoke(app, list(args), env=self.env)
            crash = "" if isinstance(ran.exception, SystemExit | None) else repr(ran.exception)
            return Result(ran.exit_code, ran.stdout, ran.stderr + crash)
        env = {k: v for k, v in os.environ.items() if k not in CONNECTION}
        env |= {k: v for k, v in self.env.items() if v is not None}
        done = subprocess.run(
            [str(DUCTO), *args],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def json(self, *args: str, code: int = 0) -> Any:
        """Run ``ducto args --json``; its parsed output."""
        return json.loads(self(*args, "--json", code=code).stdout)


def test_operator_lifecycle_on_postgres(new_database: Callable[..., str]) -> None:
    url = new_database()
    cli = Cli(DATABASE_URL=url)

    assert "not installed" in cli("status", code=4).stdout
    assert "ducto setup" in cli("stats", "summary", code=4).stderr
    assert cli.json("setup")["applied"] == [m.version for m in bundled()]
    status = cli.json("status")
    assert status["schema"] == {
        "installed": latest_version(),
        "expected": latest_version(),
        "state": "current",
    }
    assert status["ducto_version"] == __version__
    assert status["database"]["kind"] == "postgres"
    assert "postgres:postgres" not in cli("status").stdout  # never the password

    assert "[DC063]" in cli("pricing", "show", code=4).stderr  # nothing published yet
    published = cli.json("pricing", "publish", str(PRICING), "--label", "sample")
    assert (published["version"], published["label"], published["is_active"]) == (1, "sample", True)
    assert published["config"] == PricingConfigData.parse(PRICING.read_text()).to_json()
    assert [v["version"] for v in cli.json("pricing", "history")] == [1]
    assert cli.json("status")["pricing"]["version"] == 1

    purchase = ["credits", "add", "alice", "1000", "--type", "purchase", "--key", "order-1"]
    first = cli.json(*purchase)
    assert (first["balance_after"], first["is_replay"]) == (1000, False)
    assert cli(*purchase).stdout.startswith("Replayed (nothing changed)")
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    promo = cli.json(
        "credits", "add", "alice", "200", "--type", "promotion", "--category", "promotional",
        "--expires-at", expires.isoformat(), "--metadata", '{"campaign": "launch"}',
    )  # fmt: skip
    assert datetime.fromisoformat(promo["expires_at"]) == expires

    hold = cli.json("credits", "reserve", "alice", "50")
    settled = cli.json("credits", "settle", hold["reservation_id"], "62")
    assert (settled["amount"], settled["overage"]) == (62, 12)
    refund = cli.json(
        "credits", "refund", settled["transaction_id"], "--amount", "10", "--reason", "retry"
    )
    assert refund["refundable_remaining"] == 52
    assert cli.json("credits", "balance", "alice") == {
        "user_id": "alice",
        "balance": 1148,
        "held": 0,
        "available": 1148,
        "scopes": [{"scope": None, "remaining": 1148}],
    }

    turn = ["credits", "deduct", "alice", "--model", "claude-opus-4", "--input-tokens", "500"]
    charged = cli.json(*turn, "--output-tokens", "200", "--key", "chat_42_turn_7")
    engine = PricingEngine(PRICING.read_text())
    expected = engine.cost(UsageMetrics("claude-opus-4", input_tokens=500, output_tokens=200))
    assert (charged["amount"], charged["pricing_version"]) == (expected, 1)
    job = cli.json("credits", "deduct", "alice", "--job", "roadmap_generation")
    assert job["amount"] == engine.fixed_cost("roadmap_generation")
    cli("credits", "deduct", "alice", code=2)  # neither --model nor --job
    balance = 1000 + 200 - 62 + 10 - charged["amount"] - job["amount"]
    assert cli.json("credits", "balance", "alice")["balance"] == balance

    refused = cli("credits", "reserve", "alice", "100000", code=1)
    assert refused.stdout == ""
    assert "insufficient credits" in refused.stderr and "[DC010]" in refused.stderr
    assert "[DC040]" in cli("credits", "release", hold["reservation_id"], code=1).stderr
    cli("credits", "settle", "not-a-reservation-id", "1", code=1)
    assert cli.json("sweep", "--dry-run")["dry_run"] is True
    assert cli.json("verify") == []

    # a balance changed behind the ledger's back: verify names it and exits 5
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("update public.credit_accounts set balance = balance + 1")
    issues = cli.json("verify", code=5)
    assert issues and {issue["user_id"] for issue in issues} == {"alice"}


def test_stats_after_charges_on_two_days(new_database: Callable[..., str]) -> None:
    url = new_database()
    cli = Cli(DATABASE_URL=url)
    cli("setup")
    install_test_clock(url)
    cli("pricing", "publish", str(PRICING))
    cli("credits", "add", "ann", "1000")
    cli("credits", "add", "ben", "1000")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day1, day2 = today - timedelta(days=3), today - timedelta(days=1)

    def on(day: datetime) -> Cli:
        """The CLI on connections whose ledger clock (docs/ledger.md) reads 10:00 on day."""
        clock = f"-c ducto.now={(day + timedelta(hours=10)).isoformat()}"
        return Cli(DATABASE_URL=make_conninfo(url, options=clock))

    tokens = ("--input-tokens", "5000", "--output-tokens", "2000")
    opus = on(day1).json("credits", "deduct", "ann", "--model", "claude-opus-4", *tokens)
    job = on(day1).json("credits", "deduct", "ben", "--job", "roadmap_generation")
    gpt = on(day2).json("credits", "deduct", "ann", "--model", "gpt-4o", *tokens)
    assert (opus["amount"], job["amount"], gpt["amount"]) == (270, 50, 39)  # pricing.json
    # a refund counts on its own day, for the model of the charge it gives back
    on(day2)("credits", "refund", opus["transaction_id"], "--amount", "100")

    window = ("--start", day1.isoformat(), "--end", (today + timedelta(days=1)).isoformat())
    assert cli.json("stats", "daily", *window) == [
        {"day": str(day1.date()), "spent": 320, "refunded": 0, "net_spent": 320,
         "charges": 2, "users": 2},
        {"day": str(day1.date() + timedelta(days=1)), "spent": 0, "refunded": 0,
         "net_spent": 0, "charges": 0, "users": 0},
        {"day": str(day2.date()), "spent": 39, "refunded": 100, "net_spent": -61,
         "charges": 1, "users": 1},
        {"day": str(today.date()), "spent": 0, "refunded": 0, "net_spent": 0, "charges": 0,
         "users": 0},
    ]  # fmt: skip
    # the picture: the largest day fills the bar column, a negative day is drawn to scale
    rows = {line[2:12]: line for line in cli("stats", "daily", *window).stdout.splitlines()}
    width = rows[str(day1.date())].count("█")
    assert width >= 6 and "▏" not in rows[str(day1.date())]
    full, eighths = divmod(round(8 * width * 61 / 320), 8)
    assert f" {'█' * full}{' ▏▎▍▌▋▊▉'[eighths].strip()} " in rows[str(day2.date())]
    assert "█" not in rows[str(today.date())]

    assert cli.json("stats", "models", *window) == [
        {"model": "claude-opus-4", "spent": 270, "refunded": 100, "net_spent": 170,
         "charges": 1, "users": 1},
        {"model": None, "spent": 50, "refunded": 0, "net_spent": 50, "charges": 1, "users": 1},
        {"model": "gpt-4o", "spent": 39, "refunded": 0, "net_spent": 39, "charges": 1,
         "users": 1},
    ]  # fmt: skip
    models = cli("stats", "models", *window).stdout
    assert "claude-opus-4" in models and "fixed-cost jobs" in models
    assert cli.json("stats", "users", *window) == [
        {"user_id": "ann", "spent": 309, "refunded": 100, "net_spent": 209, "charges": 2},
        {"user_id": "ben", "spent": 50, "refunded": 0, "net_spent": 50, "charges": 1},
    ]
    assert cli.json("stats", "top", "--limit", "1", *window) == [
        {"rank": 1, "user_id": "ann", "net_spent": 209, "spent": 309, "refunded": 100,
         "charges": 2},
    ]  # fmt: skip
    summary = cli.json("stats", "summary", *window)
    assert (summary["window_start"], summary["window_end"]) == (window[1], window[3])
    assert (summary["spent"], summary["refunded"], summary["credited"]) == (359, 100, 2000)
    assert (summary["charges"], summary["refunds"], summary["users"]) == (3, 1, 2)
    assert "259 credits by 2 users" in cli("stats", "summary", *window).stdout

    # the default report and window (30 days to now) hold both days; --last 2d only day2
    default = cli.json("stats")
    assert (default["net_spent"], default["credited"]) == (259, 2000)
    since, until = (datetime.fromisoformat(default[f"window_{e}"]) for e in ("start", "end"))
    assert until - since == timedelta(days=30)
    assert cli.json("stats", "summary", "--last", "2d")["net_spent"] == -61
    assert cli.json("stats", "summary", "--start", str(day2.date()))["spent"] == 39
    cli("stats", "summary", "--start", str(today.date()), "--last", "1d", code=2)
    cli("stats", "daily", "--start", str(today.date()), "--end", str(day1.date()), code=2)
    cli("stats", "users", "--last", "3 days", code=2)
    cli("stats", "top", "--limit", "0", code=2)
    cli("stats", "daily", "--limit", "3", code=2)


def test_supabase_rest_api(supabase_url: str, service_role_key: str) -> None:
    cli = Cli(SUPABASE_URL=supabase_url, SUPABASE_SERVICE_ROLE_KEY=service_role_key)
    status = cli.json("status")
    assert (status["database"]["kind"], status["schema"]["state"]) == ("supabase", "current")
    assert cli("setup").stdout.startswith("Nothing to apply.")
    assert isinstance(cli.json("pricing", "history"), list)
    user = f"cli-http-{uuid.uuid4()}"
    cli("credits", "add", user, "30")
    hold = cli.json("credits", "reserve", user, "20")
    cli("credits", "settle", hold["reservation_id"], "12")
    assert cli.json("credits", "balance", user)["balance"] == 18
    # other tests charge in the same database at the same time: only this user's row is known
    mine = [row for row in cli.json("stats", "users", "--last", "1h") if row["user_id"] == user]
    assert mine == [{"user_id": user, "spent": 12, "refunded": 0, "net_spent": 12, "charges": 1}]
    assert cli.json("stats", "summary", "--last", "1h")["spent"] >= 12

    forged = Cli(SUPABASE_URL=supabase_url, SUPABASE_SERVICE_ROLE_KEY="not-the-key")
    forged("credits", "balance", user, code=3)
    forged("stats", "top", code=3)
    Cli(SUPABASE_URL=supabase_url)("status", code=3)  # the key is missing


def test_usage_and_connection_errors() -> None:
    unreachable = Cli(DATABASE_URL="postgresql://postgres@127.0.0.1:1/postgres")
    assert "cannot connect" in unreachable("credits", "balance", "u", code=3).stderr
    unreachable("credits", "add", "u", "0", code=2)  # refused before connecting
    unreachable("credits", "add", "u", "5", "--metadata", "[1]", code=2)
    # the values the ledger would refuse are usage errors naming the option, before connecting
    for option, value in (("--priority", "500"), ("--type", "gift"), ("--category", "x")):
        said = unreachable("credits", "add", "u", "5", option, value, code=2).stderr
        assert f"'{option}'" in said
    for timeout in ("0s", "8d"):
        said = unreachable("credits", "reserve", "u", "5", "--timeout", timeout, code=2).stderr
        assert "--timeout" in said
    negative = unreachable("credits", "add", "alice", "-5", code=2).stderr
    assert "'AMOUNT': -5 is not a positive whole number of credits" in negative
    neither = unreachable("credits", "deduct", "alice", code=2).stderr
    assert "--model" in neither and "--job" in neither and "not both" not in neither
    long = unreachable("stats", "daily", "--start", "0001-01-01", "--json", code=2)
    assert "more than 366 days" in long.stderr and long.stdout == ""
    assert Cli(subprocess=True)("--version").stdout == f"ducto {__version__}\n"


def test_embedded_database_by_default(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    cli = Cli(subprocess=True, DUCTO_DATA_DIR=str(data_dir))
    # the first command on a fresh folder, status too, finds the schema brought up to date
    status = cli.json("status")
    assert (status["database"]["kind"], status["schema"]["state"]) == ("embedded", "current")
    cli("credits", "add", "bob", "5")
    # a second process finds the same data, and each one stops the server it started
    assert cli.json("credits", "balance", "bob")["balance"] == 5
    assert not (data_dir / "postmaster.pid").exists()


def test_sql_export_deploys_with_supabase_db_push(
    new_database: Callable[..., str], tmp_path: Path
) -> None:
    project = tmp_path / "app"
    (project / "supabase" / "migrations").mkdir(parents=True)
    shutil.copy(ROOT / "supabase" / "config.toml", project / "supabase" / "config.toml")
    (project / "supabase" / "migrations" / "20270101000000_orders.sql").write_text(
        "create table public.orders (id bigint primary key);\n"
    )
    cli = Cli()
    cli("sql", "export", str(project))
    url = new_database()
    run([str(SUPABASE), "db", "push", "--db-url", url, "--yes"], cwd=project)
    assert Cli(DATABASE_URL=url).json("status")["schema"]["state"] == "current"

    assert "0 written" in cli("sql", "export", str(project)).stdout
    first = sorted((project / "supabase" / "migrations").glob("2026*.sql"))[0]
    first.write_text(first.read_text() + "-- changed\n")
    cli("sql", "export", str(project), code=1)
    cli("sql", "export", str(tmp_path), code=2)  # not a Supabase project

    # a conflict on the newest file stops the export before it writes any file
    fresh = tmp_path / "fresh"
    (fresh / "supabase" / "migrations").mkdir(parents=True)
    last = sorted((project / "supabase" / "migrations").glob("2026*.sql"))[-1].name
    (fresh / "supabase" / "migrations" / last).write_text("-- someone else's file\n")
    cli("sql", "export", str(fresh), code=1)
    assert [p.name for p in (fresh / "supabase" / "migrations").iterdir()] == [last]


# ---------------------------------------------------------------- export journal

#: The journal's columns an export carries, in its order (docs/cli.md).
EXPORT_COLUMNS = (
    "id", "account_id", "seq", "user_id", "type", "amount", "balance_after", "grant_id",
    "reservation_id", "refund_of", "idempotency_key", "metadata", "created_at",
    "pricing_version", "usage", "model", "job_name", "attributed_user_id",
)  # fmt: skip


def journal_rows(url: str, user: str | None = None) -> list[dict[str, Any]]:
    """The journal as the database holds it, in the export's order, values as JSON has them
    (ids as text), ``created_at`` a datetime."""
    where = "" if user is None else "where user_id = %s"
    with psycopg.connect(url) as conn:
        cur = conn.execute(
            f"select {', '.join(EXPORT_COLUMNS)} from public.credit_transactions {where}"
            " order by account_id, seq",
            [] if user is None else [user],
        )
        names = [c.name for c in cur.description or ()]
        return [
            {n: str(v) if isinstance(v, uuid.UUID) else v for n, v in zip(names, row, strict=True)}
            for row in cur
        ]


def from_jsonl(out: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in out.splitlines()]
    for row in rows:
        row["created_at"] = datetime.fromisoformat(row["created_at"])
    return rows


def from_csv(out: str) -> list[dict[str, Any]]:
    """CSV rows typed back: empty is null, metadata and usage JSON text, numbers numbers."""
    reader = csv.DictReader(io.StringIO(out, newline=""))
    assert tuple(reader.fieldnames or ()) == EXPORT_COLUMNS
    rows = []
    for raw in reader:
        row: dict[str, Any] = {k: (v if v != "" else None) for k, v in raw.items()}
        for name in ("account_id", "seq", "amount", "balance_after", "pricing_version"):
            row[name] = None if row[name] is None else int(row[name])
        for name in ("metadata", "usage"):
            row[name] = None if row[name] is None else json.loads(row[name])
        row["created_at"] = datetime.fromisoformat(row["created_at"])
        rows.append(row)
    return rows


def fill_journal(url: str, users: list[str], rows: int) -> None:
    """``rows`` journal rows spread over ``users``: credits, then charges, each with
    metadata that CSV must quote (a comma, a quote, a line break, non-ASCII)."""
    note = "jsonb_build_object('note', format('a, \"b\"%%s€ %%s', chr(10), i))"
    with psycopg.connect(url, autocommit=True) as conn:
        for function in ("credit_add_credits", "credit_deduct_credits"):
            conn.execute(
                f"select public.{function}((%s::text[])[1 + i %% %s], 1, p_metadata => {note})"
                " from generate_series(1, %s) as i",
                [users, len(users), rows // 2],
            )


def test_export_journal_on_postgres(new_database: Callable[..., str], tmp_path: Path) -> None:
    url = new_database()
    cli = Cli(DATABASE_URL=url)
    cli("setup")
    fill_journal(url, [f"user-{n}" for n in range(7)], 3000)
    journal = journal_rows(url)
    assert len(journal) == 3000  # three full pages of 1000 and an empty one
    now = datetime.now(UTC)
    window = ("--start", (now - timedelta(hours=1)).isoformat(), "--end", now.isoformat())

    exported = cli("export", "journal", "--format", "jsonl", *window)
    assert exported.stderr == ""  # no progress line: stderr is not a terminal
    assert from_jsonl(exported.stdout) == journal
    assert from_csv(cli("export", "journal", "--format", "csv", *window).stdout) == journal

    for fmt, parse in (("csv", from_csv), ("jsonl", from_jsonl)):
        path = tmp_path / f"journal.{fmt}"
        written = cli("export", "journal", "--format", fmt, *window, "-o", str(path))
        assert (written.stdout, written.stderr) == ("", "")
        assert parse(path.read_text(encoding="utf-8")) == journal
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.csv", "journal.jsonl"]

    mine = cli("export", "journal", "--format", "jsonl", *window, "--user", "user-3").stdout
    assert from_jsonl(mine) == journal_rows(url, "user-3") != []
    # an earlier window: a CSV of the header only, and JSON lines of nothing
    before = ("--start", "2020-01-01", "--end", "2020-02-01")
    assert cli("export", "journal", "--format", "csv", *before).stdout == (
        ",".join(EXPORT_COLUMNS) + "\n"
    )
    assert cli("export", "journal", "--format", "jsonl", *before).stdout == ""
    # an export is not a report: no 366-day bound
    assert (
        from_jsonl(
            cli(
                "export",
                "journal",
                "--format",
                "jsonl",
                "--start",
                "2000-01-01",
                "--end",
                "2100-01-01",
            ).stdout
        )
        == journal
    )

    # a refused export writes no file and nothing on stdout
    bad = cli(
        "export",
        "journal",
        "--format",
        "csv",
        *window,
        "--user",
        " ",
        "-o",
        str(tmp_path / "x"),
        code=1,
    )
    assert "[DC002]" in bad.stderr and bad.stdout == ""
    assert not (tmp_path / "x").exists() and len(list(tmp_path.iterdir())) == 2
    assert (
        "empty"
        in cli(
            "export",
            "journal",
            "--format",
            "csv",
            "--start",
            now.isoformat(),
            "--end",
            now.isoformat(),
            code=2,
        ).stderr
    )
    cli("export", "journal", "--format", "xml", *window, code=2)
    cli("export", "journal", "--format", "csv", "--start", now.isoformat(), code=2)  # no --end


def test_export_journal_through_the_rest_api(
    supabase_url: str, service_role_key: str, database_url: str
) -> None:
    # the stack's own database: one new user's rows, found with --user
    user = f"export-{uuid.uuid4()}"
    fill_journal(database_url, [user], 2400)
    journal = journal_rows(database_url, user)
    assert len(journal) == 2400
    cli = Cli(SUPABASE_URL=supabase_url, SUPABASE_SERVICE_ROLE_KEY=service_role_key)
    now = datetime.now(UTC)
    window = ("--start", (now - timedelta(hours=1)).isoformat(), "--end", now.isoformat())
    args = ("export", "journal", *window, "--user", user)
    assert from_jsonl(cli(*args, "--format", "jsonl").stdout) == journal
    assert from_csv(cli(*args, "--format", "csv").stdout) == journal
