"""``ducto archive`` (docs/operations.md, "Archive"): three months of activity, the first
months exported, checked and detached with the CLI; afterwards the export holds exactly the
archived rows, balances and grants are unchanged, recent refunds and replays work, archived
ones are ``ArchivedError`` (410 through PostgREST), verification and balances after the
horizon stay exact; a tampered export and a month without its closing checkpoints are
refused with nothing detached; an archive while clients charge and refund keeps every
invariant.

Archiving changes a whole database, so every test runs on a fresh one of its own, whose
clock the tests move (``ducto.now``) to place rows in 2025.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, LiteralString

import httpx
import psycopg
import pytest
from conftest import stack_env
from helpers_replica import POSTGREST_BIN, _free_port, wait_until
from psycopg import sql
from test_cli import Cli
from test_concurrency import Ledger, connect

from ducto import ArchivedError, CreditManager
from ducto.errors import error_from_sqlstate
from ducto.interface import PostgresStore

JAN = datetime(2025, 1, 1, tzinfo=UTC)
FEB = datetime(2025, 2, 1, tzinfo=UTC)
MAR = datetime(2025, 3, 1, tzinfo=UTC)
APR = datetime(2025, 4, 1, tzinfo=UTC)

#: a month's journal rows and draws as the export writes them, from the parent tables
MONTH_ROWS = """
select row_to_json(t)::text as line from public.credit_transactions as t
where t.id >= credit_private.uuid_floor(%(start)s) and t.id < credit_private.uuid_floor(%(end)s)
order by t.account_id, t.seq
"""
MONTH_DRAWS = """
select row_to_json(d)::text as line from public.credit_grant_draws as d
where d.transaction_id >= credit_private.uuid_floor(%(start)s)
    and d.transaction_id < credit_private.uuid_floor(%(end)s)
order by d.account_id, d.transaction_id, d.id
"""
#: what must not change: every account's state and every grant's remaining
ACCOUNTS = "select id, user_id, balance, debt, version from public.credit_accounts order by id"
GRANTS = "select id, account_id, remaining from public.credit_grants order by id"
#: the journal's balance at instants after the horizon, summed over the rows
BALANCES_AT = """
select a.user_id, w.at, coalesce((select sum(t.amount) from public.credit_transactions as t
    where t.account_id = a.id and t.created_at <= w.at), 0)::bigint as balance
from public.credit_accounts as a
cross join (values (timestamptz '2025-03-01'), ('2025-03-07 09:00:01'), ('2025-04-02'))
    as w (at)
order by 1, 2
"""


@pytest.fixture
def fresh(fresh: str) -> str:
    """conftest's fresh database with the test clock, with the partitions of January to
    April 2025."""
    with psycopg.connect(fresh, autocommit=True) as conn:
        conn.execute("select credit_private.create_partitions(%s, %s)", (JAN, APR))
    return fresh


def three_months(ledger: Ledger, checkpoints: tuple[datetime, ...] = (FEB, MAR)) -> dict[str, Any]:
    """January to March of three users: credits, keyed and plain charges, a hold, refunds
    in the month and in the next; then the checkpoints at the given boundaries."""
    ledger.set_clock(datetime(2025, 1, 10, 9, tzinfo=UTC))
    ledger.add("alice", 1_000)
    ledger.add("bob", 300, category="promotional", expires_at=datetime(2025, 6, 1, tzinfo=UTC))
    made: dict[str, Any] = {
        "jan_keyed": ledger.deduct("alice", 40, idempotency_key="jan-key"),
        "jan_charge": ledger.deduct("alice", 25),
    }
    ledger.refund(made["jan_charge"]["transaction_id"], 5)
    hold = ledger.reserve("bob", 50)
    ledger.set_clock(datetime(2025, 1, 20, 9, tzinfo=UTC))
    ledger.settle(hold["reservation_id"], 30)
    ledger.set_clock(datetime(2025, 2, 5, 9, tzinfo=UTC))
    made["feb_keyed"] = ledger.deduct("bob", 20, idempotency_key="feb-key")
    # a keyed refund of a January charge
    made["feb_refund"] = ledger.refund(
        made["jan_charge"]["transaction_id"], 5, idempotency_key="feb-refund"
    )
    ledger.add("carol", 70)  # an account whose rows start in February
    ledger.set_clock(datetime(2025, 3, 7, 9, tzinfo=UTC))
    made["mar_keyed"] = ledger.deduct("alice", 15, idempotency_key="mar-key")
    made["mar_charge"] = ledger.deduct("carol", 10)
    ledger.set_clock(APR + timedelta(days=2))
    for boundary in checkpoints:
        ledger.call("credit_take_checkpoints", period_start=boundary)
    return made


def lines(ledger: Ledger, query: LiteralString, start: datetime, end: datetime) -> list[Any]:
    rows = ledger.conn.execute(query, {"start": start, "end": end}).fetchall()
    return [json.loads(r["line"]) for r in rows]


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def attached(ledger: Ledger) -> set[str]:
    return {r["partition_name"] for r in ledger.rows("select * from public.credit_partitions()")}


@contextmanager
def postgrest_on(database: str) -> Iterator[str]:
    """The stack's PostgREST settings, serving another database of the stack; its URL."""
    conf = (Path(stack_env("DUCTO_STACK_DIR")) / "postgrest.conf").read_text("utf-8")
    port, admin = _free_port(), _free_port()
    conf = re.sub(r'(db-uri = "[^"]*/)[^/?"]+', rf"\g<1>{database}", conf)
    conf = re.sub(r"(?m)^server-port = \d+$", f"server-port = {port}", conf)
    conf = re.sub(r"(?m)^admin-server-port = \d+$", f"admin-server-port = {admin}", conf)
    path = Path(stack_env("DUCTO_STACK_DIR")) / f"postgrest-{database}.conf"
    path.write_text(conf, "utf-8")
    process = subprocess.Popen(
        [str(POSTGREST_BIN), str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=1).is_success
            except httpx.TransportError:
                return False

        wait_until("PostgREST on the archived database is ready", ready)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        path.unlink()


# ---------------------------------------------------------------- the archive and after


def test_archive_exports_checks_and_detaches_closed_months(fresh: str, tmp_path: Path) -> None:
    out = tmp_path / "archive"
    with connect(fresh) as conn, closing(PostgresStore(fresh, max_size=2)) as store:
        ledger = Ledger(conn)
        made = three_months(ledger)
        manager = CreditManager(store)
        months = {
            name: (lines(ledger, MONTH_ROWS, start, end), lines(ledger, MONTH_DRAWS, start, end))
            for name, start, end in (("2025_01", JAN, FEB), ("2025_02", FEB, MAR))
        }
        accounts, grants = ledger.rows(ACCOUNTS), ledger.rows(GRANTS)
        balances_at = ledger.rows(BALANCES_AT)
        statements = {u: manager.statement(u, MAR, APR) for u in ("alice", "bob", "carol")}
        assert all(rows and draws for rows, draws in months.values())

        done = Cli(DATABASE_URL=fresh).json("archive", "--before", "2025-03", "-o", str(out))
        assert [d["month"][:7] for d in done] == ["2025-01", "2025-02"]
        for item, (rows, draws) in zip(done, months.values(), strict=True):
            assert (item["transactions"], item["draws"]) == (len(rows), len(draws))
            assert item["amount"] == sum(r["amount"] for r in rows)

        # the export holds exactly the archived rows, and the manifest their sums
        manifest = json.loads((out / "manifest.json").read_text("utf-8"))
        for name, (rows, draws) in months.items():
            for table, expected in (("credit_transactions", rows), ("credit_grant_draws", draws)):
                path = out / f"{table}_{name}.jsonl"
                assert read_jsonl(path) == expected
            entry = manifest["months"][name]
            for key, table in (
                ("transactions", "credit_transactions"),
                ("draws", "credit_grant_draws"),
            ):
                data = (out / f"{table}_{name}.jsonl").read_bytes()
                assert entry[key]["sha256"] == hashlib.sha256(data).hexdigest()
                assert entry[key]["rows"] == data.count(b"\n")

        # detached, kept in credit_private for the operator, without foreign keys
        names = attached(ledger)
        for name in months:
            assert f"credit_transactions_p{name}" not in names
            assert f"credit_grant_draws_p{name}" not in names
            kept = ledger.conn.execute(
                sql.SQL("select count(*) as n from credit_private.{}").format(
                    sql.Identifier(f"credit_transactions_p{name}")
                )
            ).fetchone()
            assert kept is not None and kept["n"] == len(months[name][0])
        assert {"credit_transactions_p2025_03", "credit_grant_draws_p2025_03"} <= names
        assert (
            ledger.rows(
                "select conname from pg_constraint where contype = 'f' and conrelid in ("
                "'credit_private.credit_transactions_p2025_01'::regclass,"
                " 'credit_private.credit_grant_draws_p2025_01'::regclass)"
            )
            == []
        )

        # what stays exact
        assert ledger.rows(ACCOUNTS) == accounts
        assert ledger.rows(GRANTS) == grants
        assert ledger.verify() == []
        assert ledger.rows("select * from public.credit_verify_ledger(%s)", (JAN,)) == []
        for row in balances_at:
            assert manager.balance_at(row["user_id"], row["at"]).balance == row["balance"]
        assert manager.get_balance("alice").balance == accounts[0]["balance"]
        for user, statement in statements.items():
            assert manager.statement(user, MAR, APR) == statement
        with pytest.raises(ArchivedError):
            manager.statement("alice", FEB, APR)

        # a recent charge refunds; an archived one is ArchivedError
        ledger.set_clock(None)
        assert manager.refund_credits(made["mar_charge"]["transaction_id"], 3).amount == 3
        with pytest.raises(ArchivedError) as archived:
            manager.refund_credits(made["jan_charge"]["transaction_id"], 1)
        assert archived.value.code == "DC132"
        # a refund's key replays forever, its charge archived or not
        replayed = manager.refund_credits(
            made["jan_charge"]["transaction_id"], 5, idempotency_key="feb-refund"
        )
        assert replayed.is_replay
        assert replayed.transaction_id == str(made["feb_refund"]["transaction_id"])
        assert archived.value.archived_month is not None
        assert archived.value.archived_month.startswith("2025-01")
        with pytest.raises(ArchivedError):
            manager.balance_at("alice", FEB - timedelta(days=3))

        # an archived key is refused, a recent one replays
        with pytest.raises(psycopg.Error) as replay:
            ledger.deduct("alice", 40, idempotency_key="jan-key")
        error = error_from_sqlstate(replay.value.sqlstate, str(replay.value))
        assert isinstance(error, ArchivedError)
        again = ledger.deduct("alice", 15, idempotency_key="mar-key")
        assert again["transaction_id"] == made["mar_keyed"]["transaction_id"]
        assert again["is_replay"] is True
        # a key from February (archived) with other parameters: a conflict, as ever
        with pytest.raises(psycopg.Error) as conflict:
            ledger.deduct("bob", 21, idempotency_key="feb-key")
        assert conflict.value.sqlstate == "DC020"
        assert ledger.verify() == []

        # through PostgREST: 410 Gone, with ducto's code
        with postgrest_on(fresh.rsplit("/", 1)[1].split("?")[0]) as url:
            answer = httpx.post(
                f"{url}/rpc/credit_refund_transaction",
                json={"p_transaction_id": str(made["jan_charge"]["transaction_id"])},
                headers={"Authorization": f"Bearer {stack_env('SUPABASE_SERVICE_ROLE_KEY')}"},
                timeout=30,
            )
        assert answer.status_code == 410, answer.text
        assert answer.json()["code"] == "DC132"

        # nothing older is left to archive
        assert Cli(DATABASE_URL=fresh).json("archive", "--before", "2025-03", "-o", str(out)) == []


# ---------------------------------------------------------------- refusals


def test_a_tampered_export_is_refused_and_nothing_detached(fresh: str, tmp_path: Path) -> None:
    out = tmp_path / "archive"
    cli = Cli(DATABASE_URL=fresh)
    with connect(fresh) as conn:
        ledger = Ledger(conn)
        three_months(ledger)
        exported = cli.json("archive", "--before", "2025-02", "-o", str(out), "--export-only")
        assert [e["month"][:7] for e in exported] == ["2025-01"]
        assert "credit_transactions_p2025_01" in attached(ledger)

        # one line edited: the file is not the one exported
        path = out / "credit_transactions_2025_01.jsonl"
        rows = read_jsonl(path)
        rows[0]["amount"] += 1
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
        refused = cli("archive", "--before", "2025-02", "-o", str(out), code=5)
        assert "sha256" in refused.stderr and "nothing was detached" in refused.stderr

        # the manifest edited to match: the checkpoints still tell
        manifest_path = out / "manifest.json"
        manifest = json.loads(manifest_path.read_text("utf-8"))
        entry = manifest["months"]["2025_01"]
        entry["transactions"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        entry["amount"] += 1
        manifest_path.write_text(json.dumps(manifest), "utf-8")
        refused = cli("archive", "--before", "2025-02", "-o", str(out), code=5)
        assert "differs from the checkpoints" in refused.stderr

        assert {"credit_transactions_p2025_01", "credit_grant_draws_p2025_01"} <= attached(ledger)
        assert ledger.one("select count(*) as n from credit_private.archived_months")["n"] == 0

        # a new export archives it
        for file in out.iterdir():
            file.unlink()
        assert "2025-01: archived" in cli("archive", "--before", "2025-02", "-o", str(out)).stdout
        assert "credit_transactions_p2025_01" not in attached(ledger)


def test_a_month_without_its_closing_checkpoints_is_refused(fresh: str, tmp_path: Path) -> None:
    out = tmp_path / "archive"
    cli = Cli(DATABASE_URL=fresh)
    with connect(fresh) as conn:
        ledger = Ledger(conn)
        three_months(ledger, checkpoints=(FEB,))
        # January is archived; February has no checkpoints at its end: refused, unexported
        refused = cli("archive", "--before", "2025-03", "-o", str(out), code=1)
        assert "DC134" in refused.stderr and "ducto checkpoint --month 2025-03" in refused.stderr
        names = attached(ledger)
        assert "credit_transactions_p2025_01" not in names
        assert {"credit_transactions_p2025_02", "credit_grant_draws_p2025_02"} <= names
        assert not (out / "credit_transactions_2025_02.jsonl").exists()
        # not the oldest month: DC133, through the SQL as well
        with pytest.raises(psycopg.Error) as not_oldest:
            ledger.rows("select credit_private.archive_month(%s, 0, 0)", (MAR,))
        assert not_oldest.value.sqlstate == "DC133"
    # over the REST API there is no archive
    cli = Cli(SUPABASE_URL="http://127.0.0.1:1", SUPABASE_SERVICE_ROLE_KEY="x")
    assert "direct PostgreSQL" in cli("archive", "--before", "2025-03", code=2).stderr


# ---------------------------------------------------------------- concurrency

WORKERS = 6
OPERATIONS = 40


def test_archive_while_clients_charge_and_refund(fresh: str, tmp_path: Path) -> None:
    users = [f"arch-{i}" for i in range(4)]
    with connect(fresh) as conn:
        ledger = Ledger(conn)
        ledger.set_clock(datetime(2025, 1, 12, tzinfo=UTC))
        january: list[dict[str, Any]] = []
        for user in users:
            ledger.add(user, 5_000)
            for n in range(3):
                key = f"jan-{user}-{n}"
                charge = ledger.deduct(user, 7, idempotency_key=key)
                january.append({"user": user, "key": key, "id": charge["transaction_id"]})
        ledger.set_clock(datetime(2025, 2, 12, tzinfo=UTC))
        ledger.call("credit_take_checkpoints", period_start=FEB)

    errors: list[BaseException] = []
    keys: list[str] = []
    start = threading.Barrier(WORKERS + 1)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        charges: list[Any] = []
        try:
            with connect(fresh, f"ducto-archive-{seed}") as c:
                worker = Ledger(c)
                worker.set_clock(datetime(2025, 2, 20, tzinfo=UTC))
                start.wait()
                for step in range(OPERATIONS):
                    user = rng.choice(users)
                    kind = rng.choice(["deduct", "deduct", "refund", "hold", "old"])
                    if kind == "refund" and charges:
                        worker.refund(charges.pop(), 1)
                    elif kind == "hold":
                        hold = worker.reserve(user, 20)
                        worker.settle(hold["reservation_id"], rng.randrange(0, 21))
                    elif kind == "old":
                        # January's rows: refunded or replayed until the archive, then 410
                        old = rng.choice(january)
                        try:
                            if rng.random() < 0.5:
                                worker.refund(old["id"], 1)
                            else:
                                replay = worker.deduct(old["user"], 7, idempotency_key=old["key"])
                                assert replay["transaction_id"] == old["id"]
                        except psycopg.Error as exc:
                            if exc.sqlstate not in ("DC132", "DC050"):
                                raise
                    else:
                        key = f"w{seed}-{step}"
                        charge = worker.deduct(user, rng.randrange(1, 10), idempotency_key=key)
                        keys.append(key)
                        charges.append(charge["transaction_id"])
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(WORKERS)]
    for thread in threads:
        thread.start()
    start.wait()
    out = tmp_path / "archive"
    done = Cli(DATABASE_URL=fresh).json("archive", "--before", "2025-02", "-o", str(out))
    for thread in threads:
        thread.join()
    assert errors == []
    assert [d["month"][:7] for d in done] == ["2025-01"]

    with connect(fresh) as conn:
        ledger = Ledger(conn)
        assert ledger.verify() == []
        # every balance is what its archived rows and its attached rows add up to
        exported: dict[int, int] = {}
        for row in read_jsonl(out / "credit_transactions_2025_01.jsonl"):
            exported[row["account_id"]] = exported.get(row["account_id"], 0) + row["amount"]
        for account in ledger.rows(
            "select a.id, a.balance, coalesce(sum(t.amount), 0) as attached"
            " from public.credit_accounts as a"
            " left join public.credit_transactions as t on t.account_id = a.id"
            " group by a.id, a.balance"
        ):
            assert account["balance"] == exported.get(account["id"], 0) + account["attached"]
            assert account["balance"] >= 0  # the floor of a plain account
        # each key charged once
        charged = ledger.rows(
            "select idempotency_key, count(*) as n from public.credit_transactions"
            " where request_hash is not null and idempotency_key like 'w%%'"
            " group by idempotency_key"
        )
        assert sorted(r["idempotency_key"] for r in charged) == sorted(keys)
        assert all(r["n"] == 1 for r in charged)
        # January's keys: charged once each, in the export, never again since
        archived_keys = sorted(
            row["idempotency_key"]
            for row in read_jsonl(out / "credit_transactions_2025_01.jsonl")
            if row["request_hash"] is not None
        )
        assert archived_keys == sorted(old["key"] for old in january)
        assert (
            ledger.rows(
                "select id from public.credit_transactions where idempotency_key like 'jan-%%'"
                " and request_hash is not null"
            )
            == []
        )
        assert "credit_transactions_p2025_01" not in attached(ledger)
