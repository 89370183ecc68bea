"""Per-account checkpoints (docs/operations.md, "Checkpoints"): taken through every client,
their numbers against the full history, ``verify_ledger(since=...)`` against the full check
with a corruption after and before a checkpoint, the boundary's guard against a running
transaction, the CLI, and checkpoints taken while many clients charge, refund and hold
across the boundary.

Checkpoints cover every account of a database, so all but the input checks run on a fresh
database of their own, whose clock the tests move (``ducto.now``) to place rows in 2025.
"""

from __future__ import annotations

import random
import threading
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from test_cli import Cli
from test_concurrency import Ledger, connect

from ducto import CreditManager, InvalidInputError
from ducto.errors import LedgerInconsistentError
from ducto.interface import PostgresStore
from ducto.models import CheckpointResult

FEB = datetime(2025, 2, 1, tzinfo=UTC)
MAR = datetime(2025, 3, 1, tzinfo=UTC)

#: every checkpoint, and what the full history says it must be: the state after its row
#: last_seq (balance_after, the debt draws and each grant's amount less its draws up to it)
MISMATCHES = """
with expected as (
    select
        c.account_id, c.period_start, c.last_seq, c.balance, c.debt,
        coalesce(max(t.balance_after) filter (where t.seq = c.last_seq), 0) as balance_then,
        coalesce(sum(d.amount) filter (where d.grant_id is null and t.seq <= c.last_seq), 0)
            as debt_then
    from public.credit_checkpoints as c
    left join public.credit_transactions as t on t.account_id = c.account_id
    left join public.credit_grant_draws as d
        on d.account_id = t.account_id and d.transaction_id = t.id
    group by c.account_id, c.period_start, c.last_seq, c.balance, c.debt
),
grants_then as (
    select c.account_id, c.period_start, g.id as grant_id,
        g.amount - coalesce((
            select sum(d.amount) from public.credit_grant_draws as d
            join public.credit_transactions as t
                on t.account_id = d.account_id and t.id = d.transaction_id
            where d.account_id = g.account_id and d.grant_id = g.id and t.seq <= c.last_seq
        ), 0) as remaining
    from public.credit_checkpoints as c
    join public.credit_grants as g on g.account_id = c.account_id
    join public.credit_transactions as o on o.account_id = g.account_id and o.id = g.transaction_id
    where o.seq <= c.last_seq
)
select 'checkpoint' as what, account_id, period_start::text
from expected
where balance <> balance_then or debt <> debt_then
union all
(
    select 'grant', account_id, grant_id::text from grants_then where remaining > 0
    except
    select 'grant', account_id, grant_id::text from public.credit_checkpoint_grants
)
union all
select 'grant remaining', k.account_id, k.grant_id::text
from public.credit_checkpoint_grants as k
join grants_then as g using (account_id, period_start, grant_id)
where k.remaining <> g.remaining
"""

#: checkpoints whose last_seq is not the account's newest row created before the boundary
#: (taken while no transaction that began before it ran, so every such row had committed)
NOT_NEWEST = """
select c.account_id, c.period_start::text
from public.credit_checkpoints as c
where c.last_seq <> coalesce((
    select max(t.seq) from public.credit_transactions as t
    where t.account_id = c.account_id and t.created_at < c.period_start
), 0)
"""

#: credit_balance_at at instants around the boundaries, against the sum of the journal
BALANCE_AT_MISMATCHES = """
select a.user_id, w.at::text
from public.credit_accounts as a
cross join (
    select timestamptz '2025-01-31 23:59:00+00' + n * interval '5 seconds' as at
    from generate_series(0, 24) as n
    union all
    values (timestamptz '2025-02-10'), ('2025-03-01'), ('2025-03-05')
) as w
where (public.credit_balance_at(a.user_id, w.at)).balance
    <> coalesce((select sum(t.amount) from public.credit_transactions as t
        where t.account_id = a.id and t.created_at <= w.at), 0)
"""


def history(ledger: Ledger) -> dict[str, Any]:
    """January and February of two users: credits, charges, a hold, a refund in February of
    a January charge, an overage that leaves debt."""
    ledger.set_clock(datetime(2025, 1, 10, 9, tzinfo=UTC))
    paid = ledger.add("alice", 100)
    ledger.add("alice", 50, category="promotional", expires_at=datetime(2025, 2, 20, tzinfo=UTC))
    charge = ledger.deduct("alice", 30)
    ledger.add("bob", 40)
    hold = ledger.reserve("bob", 10)
    ledger.set_clock(datetime(2025, 1, 20, 9, tzinfo=UTC))
    ledger.settle(hold["reservation_id"], 70)  # beyond bob's credits: debt
    ledger.set_clock(datetime(2025, 2, 3, 9, tzinfo=UTC))
    ledger.refund(charge["transaction_id"], 10)
    ledger.add("bob", 25)
    feb_charge = ledger.deduct("alice", 60)
    return {"paid": paid, "charge": charge, "feb_charge": feb_charge}


# ---------------------------------------------------------------- every client


def test_input_checks_through_every_client(manager: CreditManager) -> None:
    with pytest.raises(InvalidInputError) as not_a_month:
        manager.take_checkpoints(datetime(2025, 2, 2, tzinfo=UTC))
    assert not_a_month.value.code == "DC006"
    with pytest.raises(InvalidInputError) as naive:
        manager.take_checkpoints(datetime(2025, 2, 1))
    assert naive.value.code == "DC006"
    with pytest.raises(InvalidInputError) as naive_since:
        manager.verify_ledger(since=datetime(2025, 2, 1))
    assert naive_since.value.code == "DC006"
    # next month's start is in the future: not closed
    now = datetime.now(UTC)
    future = (now.replace(day=28) + timedelta(days=4)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    with pytest.raises(InvalidInputError) as not_closed:
        manager.take_checkpoints(future)
    assert not_closed.value.code == "DC130"
    assert not_closed.value.details["period_start"]
    # no checkpoint is that old: each account is checked in full
    assert manager.verify_ledger(since=datetime(2000, 1, 1, tzinfo=UTC)) == []


# ---------------------------------------------------------------- numbers and verification


def test_checkpoints_equal_the_full_history_and_verify_from_them(fresh: str) -> None:
    with connect(fresh) as conn, closing(PostgresStore(fresh, max_size=2)) as store:
        ledger = Ledger(conn)
        made = history(ledger)
        manager = CreditManager(store)

        first = manager.take_checkpoints(FEB)
        assert (first.period_start, first.recorded, first.kept) == (FEB, 2, 0)
        assert (
            first.grants
            == ledger.one("select count(*) as n from public.credit_checkpoint_grants")["n"]
        )
        assert manager.take_checkpoints(FEB) == CheckpointResult(FEB, 0, 2, 0)
        assert ledger.rows(MISMATCHES) == []

        # March: the promotional grant expires, a refund of February's charge
        ledger.set_clock(datetime(2025, 2, 21, tzinfo=UTC))
        ledger.sweep()
        ledger.refund(made["feb_charge"]["transaction_id"], 5)
        ledger.set_clock(datetime(2025, 3, 2, tzinfo=UTC))
        ledger.deduct("alice", 3)
        assert manager.take_checkpoints(MAR).recorded == 2
        assert ledger.rows(MISMATCHES) == []
        assert ledger.rows(NOT_NEWEST) == []
        assert ledger.rows(BALANCE_AT_MISMATCHES) == []
        assert manager.verify_ledger(since=MAR) == []
        assert manager.verify_ledger(since=FEB + timedelta(days=3)) == []
        assert manager.verify_ledger() == []

        # a draw added after the March checkpoint: found as the full check finds it
        ledger.set_clock(None)
        conn.execute("begin")
        conn.execute(
            "alter table public.credit_grant_draws disable trigger credit_grant_draws_append_only"
        )
        conn.execute(
            "insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)"
            " select t.account_id, t.id, %s, 1 from public.credit_transactions as t"
            " join public.credit_accounts as a on a.id = t.account_id"
            " where a.user_id = 'alice' and t.created_at >= %s",
            (made["paid"]["grant_id"], MAR),
        )
        since = ledger.rows("select * from public.credit_verify_ledger(%s)", (MAR,))
        full = ledger.rows("select * from public.credit_verify_ledger()")
        conn.execute("rollback")
        assert since and sorted(map(str, since)) == sorted(map(str, full))

        # a draw added before it: the full check finds it, verify(since) trusts the checkpoint
        conn.execute("begin")
        conn.execute(
            "alter table public.credit_grant_draws disable trigger credit_grant_draws_append_only"
        )
        conn.execute(
            "insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)"
            " select account_id, id, %s, 1 from public.credit_transactions where id = %s",
            (made["paid"]["grant_id"], made["charge"]["transaction_id"]),
        )
        since = ledger.rows("select * from public.credit_verify_ledger(%s)", (MAR,))
        full = ledger.rows("select * from public.credit_verify_ledger()")
        conn.execute("rollback")
        assert full and since == []


def test_a_broken_month_is_not_checkpointed(fresh: str) -> None:
    with connect(fresh) as conn, closing(PostgresStore(fresh, max_size=2)) as store:
        ledger = Ledger(conn)
        made = history(ledger)
        manager = CreditManager(store)
        # a draw made up in February, committed (the trigger steps aside for it)
        conn.execute("begin")
        conn.execute(
            "alter table public.credit_grant_draws disable trigger credit_grant_draws_append_only"
        )
        conn.execute(
            "insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)"
            " select account_id, id, %s, 1 from public.credit_transactions where id = %s",
            (made["paid"]["grant_id"], made["feb_charge"]["transaction_id"]),
        )
        conn.execute(
            "alter table public.credit_grant_draws enable trigger credit_grant_draws_append_only"
        )
        conn.execute("commit")
        with pytest.raises(LedgerInconsistentError) as broken:
            manager.take_checkpoints(MAR)
        assert broken.value.code == "DC131" and broken.value.details["issues"] >= 1
        assert ledger.one("select count(*) as n from public.credit_checkpoints")["n"] == 0


def test_a_transaction_begun_before_the_boundary_holds_it_open(fresh: str) -> None:
    # the boundary is in the future of the real clock here: a transaction that began
    # before it (any, now) could still write rows created before it
    boundary = datetime(2400, 1, 1, tzinfo=UTC)
    with connect(fresh) as conn, connect(fresh) as other:
        ledger = Ledger(conn)
        ledger.set_clock(boundary + timedelta(days=3))
        ledger.add("carol", 10)
        other.execute("begin")
        other.execute("select 1")
        with pytest.raises(psycopg.Error) as running:
            ledger.call("credit_take_checkpoints", period_start=boundary)
        assert running.value.sqlstate == "DC130"
        other.execute("rollback")
        assert ledger.call("credit_take_checkpoints", period_start=boundary)["recorded"] == 0


def test_the_cli(fresh: str) -> None:
    with connect(fresh) as conn:
        history(Ledger(conn))
    cli = Cli(DATABASE_URL=fresh)
    taken = cli.json("checkpoint", "--month", "2025-02", "--json")
    assert (taken["recorded"], taken["kept"]) == (2, 0)
    assert "2 checkpoints recorded" in cli("checkpoint", "--month", "2025-03").stdout
    assert "0 checkpoints recorded" in cli("checkpoint", "--month", "2025-03").stdout
    assert cli.json("verify", "--since", "2025-03-01", "--json") == []
    cli("checkpoint", "--month", "2025-13", code=2)


# ---------------------------------------------------------------- concurrency

WORKERS = 8
OPERATIONS = 40


def test_checkpoints_taken_while_clients_charge_across_the_boundary(fresh: str) -> None:
    users = [f"conc-{i}" for i in range(4)]
    with connect(fresh) as conn:
        ledger = Ledger(conn)
        ledger.set_clock(datetime(2025, 1, 15, tzinfo=UTC))
        for user in users:
            ledger.add(user, 5_000)
            ledger.add(user, 300, category="promotional", priority=10)

    errors: list[BaseException] = []
    start = threading.Barrier(WORKERS + 1)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        charges: list[Any] = []
        try:
            with connect(fresh, f"ducto-checkpoints-{seed}") as c:
                worker = Ledger(c)
                start.wait()
                for _ in range(OPERATIONS):
                    # every instant within a minute of the boundary, on either side
                    worker.set_clock(FEB + timedelta(milliseconds=rng.randrange(-60_000, 60_000)))
                    user = rng.choice(users)
                    kind = rng.choice(["deduct", "deduct", "refund", "hold"])
                    if kind == "refund" and charges:
                        worker.refund(charges.pop(), 1)
                    elif kind == "hold":
                        hold = worker.reserve(user, 20)
                        worker.settle(hold["reservation_id"], rng.randrange(0, 25))
                    else:
                        charges.append(worker.deduct(user, rng.randrange(1, 10))["transaction_id"])
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(WORKERS)]
    for thread in threads:
        thread.start()
    taken: list[int] = []
    with connect(fresh, "ducto-checkpoints-taker") as conn:
        ledger = Ledger(conn)
        ledger.set_clock(FEB + timedelta(days=2))
        start.wait()
        while any(thread.is_alive() for thread in threads):
            taken.append(ledger.call("credit_take_checkpoints", period_start=FEB)["recorded"])
        for thread in threads:
            thread.join()
        assert errors == []
        # taken while they ran, each boundary once
        assert sum(taken) == len(users)
        assert ledger.rows(MISMATCHES) == []
        ledger.set_clock(MAR + timedelta(days=2))
        assert ledger.call("credit_take_checkpoints", period_start=MAR)["recorded"] == len(users)
        assert ledger.rows(MISMATCHES) == []
        assert ledger.rows("select * from public.credit_verify_ledger(%s)", (FEB,)) == []
        assert ledger.rows("select * from public.credit_verify_ledger(%s)", (MAR,)) == []
        assert ledger.verify() == []
        # both boundaries taken, each account's rows after March's: exact from either
        assert ledger.rows(BALANCE_AT_MISMATCHES) == []
        balances = ledger.rows(
            "select a.balance, (select sum(t.amount) from public.credit_transactions as t"
            " where t.account_id = a.id) as total from public.credit_accounts as a"
        )
        assert all(row["balance"] == row["total"] for row in balances)
