"""The journal's partitions (docs/operations.md, "Partitions"): ``credit_partitions()``
through PostgREST is the service role's alone; the sweep makes the partitions of its month
and the next three; and 16 clients charge, refund and replay keyed charges across a month
boundary while sweeps make new partitions, after which the ledger verifies, each key was
charged once and every row lies in the partition of its month.

The sweep and the concurrency test run on a fresh database of their own, whose clock they
move (``ducto.now``) to months that have no partition yet.
"""

from __future__ import annotations

import random
import re
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from conftest import MakeUserToken
from helpers_api import Api, expect_error, expect_rows, permission_denied
from helpers_process import ROOT
from test_cli import Cli
from test_concurrency import Ledger, connect

from ducto import CreditManager, PartitionRow

#: a secret the stack does not use: a token signed with it is forged
OTHER_SECRET = "not-the-stack-secret-" + "0123456789abcdef" * 4

#: journal rows and draws that do not lie in the partition of their created_at's month
MISPLACED = """
select 'journal' as what, t.id::text, t.tableoid::regclass::text as partition
from public.credit_transactions as t
where t.tableoid::regclass::text
    <> 'credit_private.credit_transactions_p' || to_char(t.created_at at time zone 'UTC', 'YYYY_MM')
union all
select 'draw', d.id::text, d.tableoid::regclass::text
from public.credit_grant_draws as d
join public.credit_transactions as t on t.account_id = d.account_id and t.id = d.transaction_id
where d.tableoid::regclass::text
    <> 'credit_private.credit_grant_draws_p' || to_char(t.created_at at time zone 'UTC', 'YYYY_MM')
"""


def months(ledger: Ledger) -> set[str]:
    """The month partitions of the journal, as YYYY_MM."""
    return {
        row["partition_name"].removeprefix("credit_transactions_p")
        for row in ledger.rows(
            "select partition_name from credit_partitions()"
            " where table_name = 'public.credit_transactions' and month is not null"
        )
    }


# ---------------------------------------------------------------- through PostgREST


def test_the_service_role_lists_the_partitions(service: Api) -> None:
    rows = expect_rows(service.rpc("credit_partitions"))
    assert {row["table_name"] for row in rows} == {
        "public.credit_transactions",
        "public.credit_grant_draws",
    }
    defaults = [row for row in rows if row["month"] is None]
    assert sorted(row["partition_name"] for row in defaults) == [
        "credit_grant_draws_default",
        "credit_transactions_default",
    ]
    assert all(isinstance(row["row_count"], int) for row in rows)
    # the current month has its partition (the migration made it, and the sweep keeps
    # making the months ahead)
    this_month = datetime.now(UTC).strftime("%Y_%m")
    assert {f"credit_transactions_p{this_month}", f"credit_grant_draws_p{this_month}"} <= {
        row["partition_name"] for row in rows
    }
    # each month's partition names its month
    for row in rows:
        if row["month"] is not None:
            month = datetime.fromisoformat(row["month"]).astimezone(UTC)
            assert row["partition_name"].endswith(month.strftime("_p%Y_%m")), row


def test_every_client_lists_them_typed(manager: CreditManager) -> None:
    rows = manager.partitions()
    assert rows and all(isinstance(row, PartitionRow) for row in rows)
    assert sorted(row.partition_name for row in rows if row.month is None) == [
        "credit_grant_draws_default",
        "credit_transactions_default",
    ]
    for row in rows:
        assert row.row_count >= 0
        if row.month is not None:
            assert row.month.tzinfo is not None
            assert row.partition_name.endswith(row.month.astimezone(UTC).strftime("_p%Y_%m"))


def test_no_one_else_lists_them(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken
) -> None:
    denied = permission_denied("function", "credit_partitions")
    anon = Api(gateway, anon_key)
    expect_error(anon.rpc("credit_partitions"), 401, "42501", message=denied)
    expect_error(anon.rpc_get("credit_partitions"), 401, "42501", message=denied)
    user = Api(gateway, anon_key, make_user_token(str(uuid.uuid4())))
    expect_error(user.rpc("credit_partitions"), 403, "42501", message=denied)
    # a token that claims the service role, signed with another key
    forged = make_user_token(str(uuid.uuid4()), secret=OTHER_SECRET, extra={"role": "service_role"})
    expect_error(
        Api(gateway, anon_key, forged).rpc("credit_partitions"),
        401,
        "PGRST301",
        message="JWSError JWSInvalidSignature",
    )


# ---------------------------------------------------------------- the sweep


def test_the_sweep_makes_the_months_ahead(fresh: str) -> None:
    with connect(fresh) as conn:
        ledger = Ledger(conn)
        ledger.set_clock(datetime(2031, 11, 20, tzinfo=UTC))
        assert not {"2031_11", "2031_12", "2032_01", "2032_02"} & months(ledger)
        ledger.sweep()
        assert {"2031_11", "2031_12", "2032_01", "2032_02"} <= months(ledger)
        assert "2032_03" not in months(ledger)
        # the rows of those months lie in them, not in the default partition
        ledger.set_clock(datetime(2032, 2, 29, 23, 59, 59, tzinfo=UTC))
        ledger.add("sweep-user", 10)
        charge = ledger.deduct("sweep-user", 5)
        assert ledger.one(
            "select tableoid::regclass::text as partition from credit_transactions where id = %s",
            (charge["transaction_id"],),
        ) == {"partition": "credit_private.credit_transactions_p2032_02"}
        # a sweep a month later adds the next month, and the dry run makes nothing
        ledger.set_clock(datetime(2031, 12, 1, tzinfo=UTC))
        before = months(ledger)
        ledger.sweep(dry_run=True)
        assert months(ledger) == before
        ledger.sweep()
        assert months(ledger) == before | {"2032_03"}
        assert (
            ledger.rows(
                "select partition_name, row_count from credit_partitions()"
                " where month is null and row_count <> 0"
            )
            == []
        )


def test_a_sweep_leaves_the_months_to_a_later_one_while_a_charge_runs(fresh: str) -> None:
    with connect(fresh) as conn, connect(fresh, "ducto-partitions-charge") as other:
        ledger = Ledger(conn)
        ledger.set_clock(datetime(2033, 5, 10, tzinfo=UTC))
        ledger.sweep()  # May to August
        ledger.add("busy", 100)
        ledger.add("expiring", 10, expires_at=datetime(2033, 6, 1, tzinfo=UTC))
        # a charge in flight: its transaction holds the journal's tables
        charging = Ledger(other)
        charging.set_clock(datetime(2033, 5, 10, 1, tzinfo=UTC))
        other.execute("begin")
        charging.deduct("busy", 1)
        # the sweep does its work and returns; the months wait for a later sweep
        ledger.set_clock(datetime(2033, 6, 2, tzinfo=UTC))
        result = ledger.sweep()
        assert (result["expired_grants"], result["expired_amount"]) == (1, 10)
        assert "2033_09" not in months(ledger)
        other.execute("commit")
        ledger.sweep()
        assert "2033_09" in months(ledger)
        assert ledger.verify() == []
        assert ledger.rows(MISPLACED) == []


# ---------------------------------------------------------------- moving rows out of the default


def documented_move() -> str:
    """The SQL of docs/operations.md that gives March 2040 its partitions."""
    page = (ROOT / "docs" / "operations.md").read_text("utf-8")
    section = page[page.index("### Partitions") :]
    [block] = [
        code
        for code in re.findall(r"```postgresql\n(.*?)```", section, re.S)
        if "session_replication_role" in code
    ]
    return str(block)


def test_the_documented_move_gives_a_month_its_partitions(fresh: str) -> None:
    with connect(fresh) as conn:
        ledger = Ledger(conn)
        # March 2040 and May 2040 have no partition: their rows land in the default ones
        ledger.set_clock(datetime(2040, 3, 3, tzinfo=UTC))
        ledger.add("mover", 1000)
        hold = ledger.reserve("mover", 50)
        ledger.settle(hold["reservation_id"], 40)
        charge = ledger.deduct("mover", 100)
        keyed = ledger.deduct("mover", 7, idempotency_key="mover-1")
        ledger.set_clock(datetime(2040, 3, 20, tzinfo=UTC))
        ledger.refund(charge["transaction_id"], 30)
        ledger.set_clock(datetime(2040, 5, 5, tzinfo=UTC))
        ledger.deduct("mover", 11)
        stray = {
            row["partition_name"]: row["row_count"]
            for row in ledger.rows("select * from credit_partitions() where month is null")
        }
        assert stray == {"credit_transactions_default": 6, "credit_grant_draws_default": 5}
        balance = ledger.balance("mover")

        conn.execute(documented_move().encode())

        # March's rows are in March's partitions, May's still in the default ones
        assert {"2040_03"} <= months(ledger) and "2040_05" not in months(ledger)
        assert ledger.rows(
            "select to_char(created_at at time zone 'UTC', 'YYYY_MM') as month, count(*) as n,"
            " tableoid::regclass::text as partition from credit_transactions"
            " group by 1, 3 order by 1"
        ) == [
            {
                "month": "2040_03",
                "n": 5,
                "partition": "credit_private.credit_transactions_p2040_03",
            },
            {"month": "2040_05", "n": 1, "partition": "credit_private.credit_transactions_default"},
        ]
        assert (
            ledger.one(
                "select count(*) as n from credit_grant_draws"
                " where tableoid = 'credit_private.credit_grant_draws_p2040_03'::regclass"
            )["n"]
            == 4
        )
        assert ledger.verify() == []
        assert ledger.balance("mover") == balance
        # the rows kept their ids: the charge refunds, the key replays
        ledger.set_clock(datetime(2040, 5, 6, tzinfo=UTC))
        assert ledger.refund(charge["transaction_id"], 70)["amount"] == 70
        with pytest.raises(psycopg.Error) as refunded:
            ledger.refund(charge["transaction_id"], 1)
        assert refunded.value.sqlstate == "DC050"
        replay = ledger.deduct("mover", 7, idempotency_key="mover-1")
        assert (replay["is_replay"], replay["transaction_id"]) == (True, keyed["transaction_id"])
        assert ledger.verify() == []


# ---------------------------------------------------------------- the CLI


def test_the_cli_lists_them_and_exits_1_for_rows_in_a_default_partition(fresh: str) -> None:
    cli = Cli(DATABASE_URL=fresh)
    listed = cli.json("partitions")
    assert {row["partition_name"] for row in listed} >= {
        "credit_transactions_default",
        "credit_grant_draws_default",
        f"credit_transactions_p{datetime.now(UTC):%Y_%m}",
    }
    assert "credit_transactions_default" in cli("partitions").stdout
    # a charge in a month without a partition: its rows wait in the default partitions
    with connect(fresh) as conn:
        ledger = Ledger(conn)
        ledger.set_clock(datetime(2040, 3, 3, tzinfo=UTC))
        ledger.add("cli-user", 10)
    refused = cli("partitions", code=1)
    assert refused.stderr.startswith("error: 1 row in a default partition")
    assert "credit_transactions_default" in refused.stdout
    # the JSON listing is printed too, with the rows counted
    defaults = {
        row["partition_name"]: row["row_count"]
        for row in cli.json("partitions", code=1)
        if row["month"] is None
    }
    # the credit's journal row (a credit draws from no grant)
    assert defaults == {"credit_transactions_default": 1, "credit_grant_draws_default": 0}


def test_the_cli_over_the_rest_api(supabase_url: str, service_role_key: str, db: Any) -> None:
    stray = db.execute(
        "select coalesce(sum(row_count), 0) from credit_partitions() where month is null"
    ).fetchone()[0]
    cli = Cli(SUPABASE_URL=supabase_url, SUPABASE_SERVICE_ROLE_KEY=service_role_key)
    listed = cli.json("partitions", code=1 if stray else 0)
    assert {row["table_name"] for row in listed} == {
        "public.credit_transactions",
        "public.credit_grant_draws",
    }


# ---------------------------------------------------------------- concurrency

WORKERS = 16
OPERATIONS = 30
USERS = [f"part-{i}" for i in range(4)]
KEYS = [f"part-key-{i}" for i in range(12)]
#: the boundary the workers' clocks straddle
BOUNDARY = datetime(2031, 2, 1, tzinfo=UTC)


def keyed_request(key: str) -> dict[str, Any]:
    """The one request a key names: the same user and amount whoever sends it."""
    index = KEYS.index(key)
    return {"user_id": USERS[index % len(USERS)], "amount": 1 + index, "idempotency_key": key}


def test_charges_refunds_and_keys_across_a_boundary_while_sweeps_make_partitions(
    fresh: str,
) -> None:
    with connect(fresh) as conn:
        ledger = Ledger(conn)
        ledger.set_clock(BOUNDARY - timedelta(days=10))
        ledger.sweep()  # January 2031 to April
        for user in USERS:
            ledger.add(user, 100_000)
            # promotional credits that expire at the boundary, for the sweeps to expire
            ledger.add(user, 50, category="promotional", priority=10, expires_at=BOUNDARY)

    errors: list[BaseException] = []
    codes: list[str] = []
    replies: dict[str, set[str]] = {key: set() for key in KEYS}
    lock = threading.Lock()
    start = threading.Barrier(WORKERS + 1, timeout=60)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        charges: list[Any] = []
        try:
            with connect(fresh, f"ducto-partitions-{seed}") as c:
                worker = Ledger(c)
                start.wait()
                for _ in range(OPERATIONS):
                    # within a minute of the boundary, on either side
                    worker.set_clock(
                        BOUNDARY + timedelta(milliseconds=rng.randrange(-60_000, 60_000))
                    )
                    kind = rng.choice(["deduct", "deduct", "refund", "keyed"])
                    try:
                        if kind == "refund" and charges:
                            worker.refund(charges.pop(), rng.randrange(1, 3))
                        elif kind == "keyed":
                            key = rng.choice(KEYS)
                            reply = worker.deduct(**keyed_request(key))
                            with lock:
                                replies[key].add(str(reply["transaction_id"]))
                        else:
                            user = rng.choice(USERS)
                            reply = worker.deduct(user, rng.randrange(1, 10))
                            charges.append(reply["transaction_id"])
                    except psycopg.Error as exc:
                        # the one refusal expected: a refund of more than is left
                        if exc.sqlstate != "DC050":
                            raise
                        with lock:
                            codes.append(exc.sqlstate)
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(WORKERS)]
    for thread in threads:
        thread.start()
    swept = 0
    with connect(fresh, "ducto-partitions-sweeper") as conn:
        sweeper = Ledger(conn)
        start.wait()
        # each sweep a month later than the last once the last made its months: each makes
        # a new month's partitions while the workers write. A sweep writes rows (expiries
        # of credits that refunds gave back) in its own month, which a busy moment may have
        # left to a later sweep: it moves on only once the months ahead are made.
        month = 0
        while any(thread.is_alive() for thread in threads):
            at = BOUNDARY + timedelta(days=31 * month + 1)
            sweeper.set_clock(at)
            sweeper.sweep()
            swept += 1
            next_month = sweeper.one(
                "select count(*) as n from credit_partitions()"
                " where month = date_trunc('month', %s::timestamptz + interval '1 month', 'UTC')",
                (at,),
            )
            if next_month["n"] == 2:
                month += 1
        for thread in threads:
            thread.join()
        assert errors == []
        assert swept >= 1

        ledger = Ledger(conn)
        ledger.set_clock(None)
        assert ledger.verify() == []
        assert (
            ledger.rows(
                """select a.user_id from credit_accounts as a
                   where a.balance <> (select coalesce(sum(t.amount), 0)
                       from credit_transactions as t where t.account_id = a.id)
                      or a.balance < 0"""
            )
            == []
        )
        # every key charged once, every caller of it answered with that one charge
        charged = ledger.rows(
            """select idempotency_key, count(*) as n, array_agg(id::text) as ids
               from credit_transactions
               where idempotency_key like 'part-key-%%' and request_hash is not null
               group by idempotency_key"""
        )
        assert all(row["n"] == 1 for row in charged), charged
        for row in charged:
            assert replies[row["idempotency_key"]] == set(row["ids"])
        assert {key for key, ids in replies.items() if ids} == {
            row["idempotency_key"] for row in charged
        }
        # every row in the partition of its month, none in the default partitions
        assert ledger.rows(MISPLACED) == []
        assert (
            ledger.rows(
                "select partition_name from credit_partitions()"
                " where month is null and row_count <> 0"
            )
            == []
        )
        # the rows straddle the boundary
        assert {
            row["month"]
            for row in ledger.rows(
                "select distinct to_char(created_at at time zone 'UTC', 'YYYY_MM') as month"
                " from credit_transactions where type = 'usage'"
            )
        } == {"2031_01", "2031_02"}
        # the promotional credits expired (by a sweep or a charge; a refund that gives back
        # to an expired grant journals its expiry again)
        assert ledger.one(
            "select count(*) as n from credit_grants where expires_at <= %s and remaining > 0",
            (BOUNDARY,),
        ) == {"n": 0}
        assert ledger.one("select count(*) as n from credit_transactions where type = 'expiry'")[
            "n"
        ] >= len(USERS)
        # a sweep makes the months ahead when their locks are free: during the run some may
        # have been left to a later sweep; one alone makes them all
        made = months(ledger)
        last = BOUNDARY + timedelta(days=31 * (swept - 1) + 1)
        sweeper.set_clock(last)
        sweeper.sweep()
        ahead = {(last + timedelta(days=days)).strftime("%Y_%m") for days in (0, 31, 62, 92)}
        assert ahead <= months(ledger)
        print(f"{swept} sweeps during the run; months made by them: {sorted(made)}")
