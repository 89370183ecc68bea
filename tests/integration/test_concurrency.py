"""Concurrency tests of the credit ledger, on real connections: one per worker.

The ledger promises (docs/ledger.md, "Concurrency") that every operation locks exactly
one account row before it touches that account, so concurrent calls serialise per
account, never deadlock and never fail with a serialization error at READ COMMITTED.
These tests hammer that promise with threads, each on its own psycopg connection:

- hot account (C1): many workers deduct from one account until it is empty;
- mixed operations (C2): every RPC at once, on one hot and many cold accounts, with
  idempotency keys replayed by two workers at the same moment;
- one key from every worker at once (ID3), including the first add of a new account;
- sweeps racing deducts on grants that expire while they run (C5);
- refunds of one transaction from every worker at once;
- usage deducts while pricing is republished: each charge uses one version's price and floor.

Random single-threaded sequences against the reference model are in
``test_state_machine.py``.

Each test uses user ids with a fresh prefix, so tests do not interfere on a shared
database; ``credit_verify_ledger()`` checks the whole ledger after each of them.
The database is conftest's ``database_url`` (``DATABASE_URL``, the ledger's owner).
"""

from __future__ import annotations

import functools
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString, TypeVar

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[DictRow]
T = TypeVar("T")

# 2 cores: 16 client threads keep every backend busy without measuring the scheduler
WORKERS = 16
BARRIER_TIMEOUT = 60.0


# ---------------------------------------------------------------- plumbing


def connect(dsn: str, application: str = "ducto-concurrency") -> Conn:
    """One connection in autocommit: every RPC is its own transaction, as in PostgREST."""
    return psycopg.connect(
        dsn, autocommit=True, row_factory=dict_row, application_name=application[:63]
    )


def new_prefix(name: str) -> str:
    return f"conc-{name}-{uuid.uuid4().hex[:12]}"


class Ledger:
    """The ledger's RPCs on one connection; arguments by name, without the ``p_``."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def call(self, function: str, **args: Any) -> DictRow:
        query = sql.SQL("select * from {}({})").format(
            sql.Identifier(function),
            sql.SQL(", ").join(
                sql.SQL("{} => {}").format(sql.Identifier(f"p_{name}"), sql.Placeholder(name))
                for name in args
            ),
        )
        row = self.conn.execute(query, args).fetchone()
        assert row is not None
        return row

    def rows(self, query: LiteralString, params: Sequence[Any] = ()) -> list[DictRow]:
        return self.conn.execute(query, params).fetchall()

    def one(self, query: LiteralString, params: Sequence[Any] = ()) -> DictRow:
        row = self.conn.execute(query, params).fetchone()
        assert row is not None
        return row

    def add(self, user_id: str, amount: int, **args: Any) -> DictRow:
        return self.call("credit_add_credits", user_id=user_id, amount=amount, **args)

    def deduct(self, user_id: str, amount: int, **args: Any) -> DictRow:
        return self.call("credit_deduct_credits", user_id=user_id, amount=amount, **args)

    def reserve(self, user_id: str, amount: int, **args: Any) -> DictRow:
        return self.call("credit_reserve_credits", user_id=user_id, amount=amount, **args)

    def settle(self, reservation_id: Any, actual_amount: int, **args: Any) -> DictRow:
        return self.call(
            "credit_settle_reservation",
            reservation_id=reservation_id,
            actual_amount=actual_amount,
            **args,
        )

    def release(self, reservation_id: Any) -> DictRow:
        return self.call("credit_release_reservation", reservation_id=reservation_id)

    def refund(self, transaction_id: Any, amount: int | None = None, **args: Any) -> DictRow:
        return self.call(
            "credit_refund_transaction", transaction_id=transaction_id, amount=amount, **args
        )

    def sweep(self, dry_run: bool = False) -> DictRow:
        return self.call("credit_sweep_expired", dry_run=dry_run)

    def balance(self, user_id: str) -> DictRow:
        return self.call("credit_get_balance", user_id=user_id)

    def verify(self) -> list[DictRow]:
        return self.rows("select * from credit_verify_ledger()")

    def set_clock(self, at: datetime | None) -> None:
        """Move this session's ledger clock (``ducto.now``); None gives it back to now()."""
        value = "" if at is None else at.isoformat()
        self.conn.execute("select set_config('ducto.now', %s, false)", (value,))


@dataclass(frozen=True)
class Outcome:
    """What one call answered: a result row, or the SQLSTATE of an expected error."""

    reply: DictRow | None = None
    code: str | None = None

    def __str__(self) -> str:
        return f"error {self.code}" if self.reply is None else f"reply {self.reply}"


def attempt(call: Callable[[], DictRow], allowed: frozenset[str]) -> Outcome:
    """Run a call; an error whose SQLSTATE is not in ``allowed`` fails the test."""
    try:
        return Outcome(reply=call())
    except psycopg.Error as exc:
        if exc.sqlstate in allowed:
            return Outcome(code=exc.sqlstate)
        raise


def run_workers(
    dsn: str,
    count: int,
    work: Callable[[int, Ledger], T],
    *,
    application: str,
    barriers: Sequence[threading.Barrier] = (),
) -> list[T]:
    """Run ``work(index, ledger)`` in ``count`` threads, each on its own connection.

    All workers connect first and start together. If one fails, every barrier it may
    leave others waiting on is broken, so the run ends with its error.
    """
    start = threading.Barrier(count, timeout=BARRIER_TIMEOUT)

    def run(index: int) -> T:
        try:
            with connect(dsn, application) as conn:
                ledger = Ledger(conn)
                start.wait()
                return work(index, ledger)
        except BaseException:
            for barrier in (start, *barriers):
                barrier.abort()
            raise

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(run, index) for index in range(count)]
        return [future.result() for future in futures]


def deadlocks(ledger: Ledger, application: str | None = None) -> int:
    """``pg_stat_database.deadlocks`` of this database, once the named workers are gone.

    A backend flushes its statistics when it exits, so wait for the workers' backends
    to disappear before reading the counter.
    """
    deadline = time.monotonic() + 10
    while application is not None and time.monotonic() < deadline:
        left = ledger.one(
            "select count(*) as n from pg_stat_activity where application_name = %s",
            (application[:63],),
        )
        if left["n"] == 0:
            break
        time.sleep(0.05)
    ledger.conn.execute("select pg_stat_clear_snapshot()")
    row = ledger.one("select deadlocks from pg_stat_database where datname = current_database()")
    return int(row["deadlocks"])


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    """A connection for setting up and checking a test; checks the whole ledger after it."""
    with connect(database_url, "ducto-concurrency-setup") as conn:
        ledger = Ledger(conn)
        yield ledger
        ledger.set_clock(None)
        assert ledger.verify() == [], "credit_verify_ledger() reports broken invariants"


def accounts_of(ledger: Ledger, prefix: str) -> list[DictRow]:
    """Each account of a test with its journal total and its grants' remaining credits."""
    return ledger.rows(
        """
        select
            a.user_id, a.balance, a.debt, a.version,
            (select coalesce(sum(t.amount), 0) from credit_transactions as t
             where t.account_id = a.id) as journal,
            (select coalesce(sum(g.remaining), 0) from credit_grants as g
             where g.account_id = a.id) as remaining
        from credit_accounts as a
        where a.user_id like %s || '%%'
        order by a.user_id
        """,
        (prefix,),
    )


def duplicate_keys(ledger: Ledger, prefix: str) -> list[DictRow]:
    """Idempotency keys that appear on more than one journal row of an account."""
    return ledger.rows(
        """
        select account_id, idempotency_key, count(*) as n
        from credit_transactions
        where idempotency_key is not null and user_id like %s || '%%'
        group by 1, 2
        having count(*) > 1
        """,
        (prefix,),
    )


# ---------------------------------------------------------------- C1 hot account


def test_hot_account_deducts_exactly_its_balance(database_url: str, ledger: Ledger) -> None:
    """16 workers x 250 deducts of 1 from a balance of 2,000: 2,000 pass, 2,000 are DC010."""
    user = new_prefix("hot")
    application = f"ducto-{user}"
    ledger.add(user, 2000)
    deadlocks_before = deadlocks(ledger)

    def work(index: int, worker: Ledger) -> list[Outcome]:
        return [
            attempt(lambda: worker.deduct(user, 1, min_balance=0), frozenset({"DC010"}))
            for _ in range(250)
        ]

    outcomes = [
        o
        for batch in run_workers(database_url, WORKERS, work, application=application)
        for o in batch
    ]
    replies = [o.reply for o in outcomes if o.reply is not None]
    assert len(replies) == 2000
    assert Counter(o.code for o in outcomes if o.reply is None) == {"DC010": 2000}
    # each success saw the account one step further down: balances 1999..0, each once
    assert sorted(r["balance_after"] for r in replies) == list(range(2000))

    balance = ledger.balance(user)
    assert (balance["balance"], balance["held"], balance["available"]) == (0, 0, 0)
    [account] = accounts_of(ledger, user)
    assert account["balance"] == account["journal"] == 0
    assert account["version"] == 2001
    assert deadlocks(ledger, application) == deadlocks_before


# ---------------------------------------------------------------- ID3 one key, all workers


@pytest.mark.parametrize("operation", ["deduct", "first-add"])
def test_same_key_from_every_worker_has_one_effect(
    database_url: str, ledger: Ledger, operation: str
) -> None:
    """16 workers send one keyed call at the same moment: one journal row, one answer."""
    user = new_prefix("key")
    key = f"same-{uuid.uuid4()}"
    if operation == "deduct":
        ledger.add(user, 100)
    # operation == "first-add": the account does not exist yet, so every worker races
    # to create it too
    moment = threading.Barrier(WORKERS, timeout=BARRIER_TIMEOUT)

    def work(index: int, worker: Ledger) -> DictRow:
        moment.wait()
        if operation == "deduct":
            return worker.deduct(user, 7, idempotency_key=key)
        return worker.add(user, 7, idempotency_key=key)

    replies = run_workers(
        database_url, WORKERS, work, application=f"ducto-{user}", barriers=[moment]
    )
    assert len({r["transaction_id"] for r in replies}) == 1
    assert sum(not r["is_replay"] for r in replies) == 1
    journal = ledger.rows(
        "select id from credit_transactions where user_id = %s and idempotency_key = %s",
        (user, key),
    )
    assert [row["id"] for row in journal] == [replies[0]["transaction_id"]]
    expected = 93 if operation == "deduct" else 7
    assert ledger.balance(user)["balance"] == expected
    assert len(accounts_of(ledger, user)) == 1


def test_one_key_across_both_key_records_has_one_effect(database_url: str, ledger: Ledger) -> None:
    """16 workers send one key at the same moment, half to a deduct (whose journal row is
    its key record) and half to a hold (recorded in credit_idempotency_keys): whichever
    came first happened once, its repeats are replays, and the other operation is DC020."""
    user = new_prefix("both")
    key = f"both-{uuid.uuid4()}"
    ledger.add(user, 100)
    moment = threading.Barrier(WORKERS, timeout=BARRIER_TIMEOUT)

    def work(index: int, worker: Ledger) -> tuple[str, Outcome]:
        refused = frozenset({"DC020"})
        moment.wait()
        if index % 2:
            return "reserve", attempt(lambda: worker.reserve(user, 9, idempotency_key=key), refused)
        return "deduct", attempt(lambda: worker.deduct(user, 7, idempotency_key=key), refused)

    outcomes = run_workers(
        database_url, WORKERS, work, application=f"ducto-{user}", barriers=[moment]
    )
    winners = {operation for operation, outcome in outcomes if outcome.reply is not None}
    assert len(winners) == 1, outcomes
    [winner] = winners
    assert all(
        (o.reply is not None) == (operation == winner) and (o.code is None) == (o.reply is not None)
        for operation, o in outcomes
    )
    replies = [o.reply for _, o in outcomes if o.reply is not None]
    assert sum(not r["is_replay"] for r in replies) == 1
    assert Counter(o.code for _, o in outcomes if o.reply is None) == {"DC020": WORKERS // 2}
    held = ledger.balance(user)
    deducted = ledger.one(
        """select count(*) as n from credit_transactions
           where user_id = %s and idempotency_key = %s and request_hash is not null""",
        (user, key),
    )["n"]
    holds = ledger.one("select count(*) as n from credit_reservations where user_id = %s", (user,))[
        "n"
    ]
    if winner == "deduct":
        assert (deducted, holds, held["balance"], held["held"]) == (1, 0, 93, 0)
    else:
        assert (deducted, holds, held["balance"], held["held"]) == (0, 1, 100, 9)


# ---------------------------------------------------------------- concurrent refunds


def test_concurrent_refunds_never_exceed_the_charge(database_url: str, ledger: Ledger) -> None:
    """16 workers each refund 1 credit of a 10-credit usage: 10 pass, 6 are DC050."""
    user = new_prefix("refund")
    ledger.add(user, 100)
    usage = ledger.deduct(user, 10)["transaction_id"]
    moment = threading.Barrier(WORKERS, timeout=BARRIER_TIMEOUT)

    def work(index: int, worker: Ledger) -> Outcome:
        moment.wait()
        return attempt(lambda: worker.refund(usage, 1), frozenset({"DC050"}))

    outcomes = run_workers(
        database_url, WORKERS, work, application=f"ducto-{user}", barriers=[moment]
    )
    replies = [o.reply for o in outcomes if o.reply is not None]
    assert len(replies) == 10
    assert Counter(o.code for o in outcomes if o.reply is None) == {"DC050": 6}
    # each refund saw the ones before it
    assert sorted(r["total_refunded"] for r in replies) == list(range(1, 11))
    refunded = ledger.one(
        "select coalesce(sum(amount), 0) as total from credit_transactions where refund_of = %s",
        (usage,),
    )
    assert refunded["total"] == 10
    assert ledger.balance(user)["balance"] == 100


# ---------------------------------------------------------------- C2 mixed operations

DEDUCT_ERRORS = frozenset({"DC010"})
# DC042: an overage beyond the default bound (9 times the hold); the hold stays active
SETTLE_ERRORS = frozenset({"DC040", "DC041", "DC042"})
RELEASE_ERRORS = frozenset({"DC040"})
REFUND_ERRORS = frozenset({"DC050"})
NO_ERRORS: frozenset[str] = frozenset()
FLOORS = (0, 0, 0, 5, 50)
# cumulative shares of the operations that take arguments; then settle, release, sweep, read
OPERATION_MIX = ((0.30, "deduct"), (0.40, "add"), (0.52, "reserve"), (0.62, "refund"))
PAIR_EVERY = 12  # every 12th operation of a worker is a keyed call shared with its partner


@dataclass(frozen=True)
class KeyedCall:
    """A keyed operation that two workers send at the same moment."""

    key: str
    operation: str  # deduct | add | reserve | refund
    args: dict[str, Any]
    # the partner's arguments when the key is reused with other parameters on purpose
    conflicting_args: dict[str, Any] | None = None


@dataclass(frozen=True)
class KeyedOutcome:
    call: KeyedCall
    conflicting: bool
    outcome: Outcome


class MixedWorkload:
    """Random operations on one hot account and many others, shared by all workers."""

    def __init__(self, users: list[str], hot: str, workers: int, steps: int, seed: int) -> None:
        self.users = users
        self.hot = hot
        self.steps = steps
        self.seed = seed
        self.lock = threading.Lock()
        self.charges: list[Any] = []  # refundable transaction ids (usage, capture)
        self.holds: list[tuple[Any, int]] = []  # (reservation id, amount)
        self.keyed: defaultdict[str, list[KeyedOutcome]] = defaultdict(list)
        # (user id, key) -> the transaction ids that keyed calls were answered with
        self.key_answers: defaultdict[tuple[str, str], set[Any]] = defaultdict(set)
        self.counts: Counter[str] = Counter()
        self.pairs = [threading.Barrier(2, timeout=BARRIER_TIMEOUT) for _ in range(workers // 2)]
        self.slots: dict[tuple[int, int], KeyedCall] = {}

    # -- choices

    def user(self, rng: random.Random) -> str:
        return self.hot if rng.random() < 0.4 else rng.choice(self.users)

    @staticmethod
    def expiry(rng: random.Random) -> datetime | None:
        # a few seconds: grants expire while the run goes on
        if rng.random() < 0.7:
            return None
        return datetime.now(UTC) + timedelta(seconds=rng.uniform(1.5, 5))

    def record(self, operation: str, outcome: Outcome) -> None:
        with self.lock:
            if outcome.reply is None:
                self.counts[f"{operation}:{outcome.code}"] += 1
            elif outcome.reply.get("is_replay"):
                self.counts[f"{operation}:replay"] += 1
            else:
                self.counts[f"{operation}:ok"] += 1

    def remember_key(self, key: str | None, outcome: Outcome) -> None:
        if key is not None and outcome.reply is not None and "transaction_id" in outcome.reply:
            with self.lock:
                self.key_answers[(outcome.reply["user_id"], key)].add(
                    outcome.reply["transaction_id"]
                )

    # -- operations

    def deduct(self, ledger: Ledger, args: dict[str, Any], extra: frozenset[str]) -> Outcome:
        outcome = attempt(lambda: ledger.deduct(**args), DEDUCT_ERRORS | extra)
        self.record("deduct", outcome)
        if outcome.reply is not None:
            # admitted only if the floor holds after it
            assert outcome.reply["available_after"] >= args["min_balance"], outcome
            if not outcome.reply["is_replay"]:
                with self.lock:
                    self.charges.append(outcome.reply["transaction_id"])
        self.remember_key(args.get("idempotency_key"), outcome)
        return outcome

    def add(self, ledger: Ledger, args: dict[str, Any], extra: frozenset[str]) -> Outcome:
        outcome = attempt(lambda: ledger.add(**args), NO_ERRORS | extra)
        self.record("add", outcome)
        self.remember_key(args.get("idempotency_key"), outcome)
        return outcome

    def reserve(self, ledger: Ledger, args: dict[str, Any], extra: frozenset[str]) -> Outcome:
        outcome = attempt(lambda: ledger.reserve(**args), DEDUCT_ERRORS | extra)
        self.record("reserve", outcome)
        if outcome.reply is not None:
            assert outcome.reply["available_after"] >= args["min_balance"], outcome
            if not outcome.reply["is_replay"]:
                with self.lock:
                    self.holds.append((outcome.reply["reservation_id"], args["amount"]))
        return outcome

    def refund(self, ledger: Ledger, args: dict[str, Any], extra: frozenset[str]) -> Outcome:
        outcome = attempt(lambda: ledger.refund(**args), REFUND_ERRORS | extra)
        self.record("refund", outcome)
        if outcome.reply is not None:
            assert outcome.reply["refundable_remaining"] >= 0, outcome
        self.remember_key(args.get("idempotency_key"), outcome)
        return outcome

    def pick_hold(self, rng: random.Random) -> tuple[Any, int] | None:
        with self.lock:
            if not self.holds:
                return None
            index = rng.randrange(len(self.holds))
            # mostly take it; sometimes leave it for another worker to race on
            return self.holds.pop(index) if rng.random() < 0.75 else self.holds[index]

    def settle(self, ledger: Ledger, rng: random.Random) -> None:
        picked = self.pick_hold(rng)
        if picked is None:
            return
        reservation, held = picked
        actual = rng.choice(
            [0, rng.randint(1, held), held, held + rng.randint(1, held + 20)]
        )  # nothing, below, exactly, above the hold (overage)
        outcome = attempt(lambda: ledger.settle(reservation, actual), SETTLE_ERRORS)
        self.record("settle", outcome)
        if outcome.reply is not None:
            assert outcome.reply["overage"] == max(actual - held, 0), outcome
            if outcome.reply["transaction_id"] is not None and not outcome.reply["is_replay"]:
                with self.lock:
                    self.charges.append(outcome.reply["transaction_id"])

    def release(self, ledger: Ledger, rng: random.Random) -> None:
        picked = self.pick_hold(rng)
        if picked is not None:
            self.record("release", attempt(lambda: ledger.release(picked[0]), RELEASE_ERRORS))

    def random_args(self, operation: str, rng: random.Random) -> dict[str, Any] | None:
        if operation == "deduct":
            return {
                "user_id": self.user(rng),
                "amount": rng.randint(1, 15),
                "min_balance": rng.choice(FLOORS),
            }
        if operation == "add":
            promotional = rng.random() < 0.4
            return {
                "user_id": self.hot if rng.random() < 0.3 else rng.choice(self.users),
                "amount": rng.randint(10, 200),
                "tx_type": "promotion" if promotional else rng.choice(["purchase", "grant"]),
                "category": "promotional" if promotional else "paid",
                "priority": rng.choice([0, 10, 50, 90]) if promotional else 50,
                "expires_at": self.expiry(rng),
            }
        if operation == "reserve":
            return {
                "user_id": self.user(rng),
                "amount": rng.randint(1, 30),
                "min_balance": rng.choice(FLOORS),
                # some holds time out during the run
                "timeout_seconds": rng.choice([1, 2, 900, 900]),
            }
        with self.lock:
            if not self.charges:
                return None
            charge = rng.choice(self.charges)
        return {
            "transaction_id": charge,
            "amount": None if rng.random() < 0.3 else rng.randint(1, 5),
        }

    def run_operation(
        self, ledger: Ledger, operation: str, args: dict[str, Any], extra: frozenset[str]
    ) -> Outcome:
        run = {
            "deduct": self.deduct,
            "add": self.add,
            "reserve": self.reserve,
            "refund": self.refund,
        }[operation]
        return run(ledger, args, extra)

    def random_operation(self, ledger: Ledger, rng: random.Random) -> None:
        roll = rng.random()
        if roll < 0.62:
            operation = next(name for limit, name in OPERATION_MIX if roll < limit)
            args = self.random_args(operation, rng)
            if args is None:
                return
            if operation != "reserve" and rng.random() < 0.15:
                args["idempotency_key"] = f"single-{uuid.uuid4()}"
            self.run_operation(ledger, operation, args, NO_ERRORS)
        elif roll < 0.76:
            self.settle(ledger, rng)
        elif roll < 0.85:
            self.release(ledger, rng)
        elif roll < 0.87:
            result = ledger.sweep(dry_run=rng.random() < 0.2)
            self.record("sweep", Outcome(reply=result))
        else:
            balance = ledger.balance(self.user(rng))
            assert balance["held"] >= 0
            assert balance["available"] == balance["balance"] - balance["held"]
            self.record("balance", Outcome(reply=balance))

    def keyed_call(self, rng: random.Random) -> KeyedCall:
        operation = rng.choice(["deduct", "deduct", "add", "reserve", "refund"])
        args = self.random_args(operation, rng)
        if args is None:
            operation, args = "deduct", self.random_args("deduct", rng)
            assert args is not None
        if operation == "refund" and args["amount"] is None:
            args["amount"] = 1
        key = f"pair-{uuid.uuid4()}"
        args["idempotency_key"] = key
        conflicting = None
        if rng.random() < 0.2:
            # the same key with another amount: one of the two must get DC020 (or DC010)
            conflicting = {**args, "amount": args["amount"] + 1}
        return KeyedCall(key, operation, args, conflicting)

    def paired(self, index: int, step: int, ledger: Ledger, rng: random.Random) -> None:
        pair = index // 2
        if index % 2 == 0:
            self.slots[(pair, step)] = self.keyed_call(rng)
        self.pairs[pair].wait()  # the call is ready, and both send it now
        call = self.slots[(pair, step)]
        conflicting = index % 2 == 1 and call.conflicting_args is not None
        args = call.conflicting_args if conflicting and call.conflicting_args else call.args
        outcome = self.run_operation(ledger, call.operation, dict(args), frozenset({"DC020"}))
        with self.lock:
            self.keyed[call.key].append(KeyedOutcome(call, conflicting, outcome))

    def work(self, index: int, ledger: Ledger) -> None:
        rng = random.Random(self.seed * 1000 + index)
        for step in range(self.steps):
            if step % PAIR_EVERY == PAIR_EVERY - 1 and index // 2 < len(self.pairs):
                self.paired(index, step, ledger, rng)
            else:
                self.random_operation(ledger, rng)


def check_keyed_pairs(workload: MixedWorkload) -> None:
    """Each pair of same-key calls had exactly one effect, and both callers agree on it."""
    for key, entries in workload.keyed.items():
        operation = entries[0].call.operation
        id_field = "reservation_id" if operation == "reserve" else "transaction_id"
        replies = [e.outcome.reply for e in entries if e.outcome.reply is not None]
        codes = [e.outcome.code for e in entries if e.outcome.reply is None]
        if any(e.conflicting for e in entries):
            # same key, other parameters: never two effects
            assert len(replies) <= 1, (key, entries)
            continue
        assert "DC020" not in codes, (key, entries)
        assert len({r[id_field] for r in replies}) <= 1, (key, entries)
        if replies:
            assert sum(not r["is_replay"] for r in replies) == 1, (key, entries)


def test_mixed_operations_keep_every_invariant(database_url: str, ledger: Ledger) -> None:
    """16 workers x 300 random operations on one hot and 50 other accounts (C2)."""
    prefix = new_prefix("mixed")
    hot = f"{prefix}-hot"
    users = [f"{prefix}-u{i:02}" for i in range(50)]
    soon = datetime.now(UTC) + timedelta(seconds=2)
    # little enough that floors refuse some calls and overages run into debt
    ledger.add(hot, 800, tx_type="purchase")
    ledger.add(hot, 400, tx_type="promotion", category="promotional", priority=10, expires_at=soon)
    ledger.add(hot, 300, tx_type="promotion", category="promotional", priority=90)
    for number, user in enumerate(users):
        ledger.add(user, 60, tx_type="purchase")
        if number % 2 == 0:
            ledger.add(
                user,
                40,
                tx_type="promotion",
                category="promotional",
                priority=number % 100,
                expires_at=soon + timedelta(seconds=number % 4),
            )
    application = f"ducto-{prefix}"
    deadlocks_before = deadlocks(ledger)
    workload = MixedWorkload(users, hot, WORKERS, steps=300, seed=random.randrange(10**6))

    run_workers(
        database_url, WORKERS, workload.work, application=application, barriers=workload.pairs
    )
    print(f"C2: {sum(workload.counts.values())} operations: {workload.counts}")

    # every kind of operation happened, and so did replays and refusals
    for name in ["deduct:ok", "add:ok", "reserve:ok", "settle:ok", "release:ok", "refund:ok"]:
        assert workload.counts[name] > 0, (name, workload.counts)
    assert workload.counts["deduct:replay"] + workload.counts["add:replay"] > 0
    assert workload.counts["deduct:DC010"] + workload.counts["reserve:DC010"] > 0
    assert ledger.verify() == []

    for account in accounts_of(ledger, prefix):
        assert account["balance"] == account["journal"], account
        assert account["balance"] == account["remaining"] - account["debt"], account
        # below zero only by debt, which only a settle overage makes
        assert account["balance"] >= -account["debt"], account
        if account["balance"] < 0:
            assert account["debt"] > 0, account
    debt_not_from_overage = ledger.rows(
        """
        select t.id, t.type
        from credit_grant_draws as d
        inner join credit_transactions as t on d.transaction_id = t.id
        where d.grant_id is null and d.amount > 0 and t.type <> 'capture'
            and t.user_id like %s || '%%'
        """,
        (prefix,),
    )
    assert debt_not_from_overage == []
    debts = ledger.one(
        """
        select count(*) as n from credit_grant_draws as d
        inner join credit_transactions as t on d.transaction_id = t.id
        where d.grant_id is null and d.amount > 0 and t.user_id like %s || '%%'
        """,
        (prefix,),
    )
    print(f"C2: {debts['n']} captures ran into debt")

    # idempotency: one journal row per key, and it is the one the callers were told
    assert duplicate_keys(ledger, prefix) == []
    check_keyed_pairs(workload)
    journal_keys = {
        (row["user_id"], row["idempotency_key"]): row["id"]
        for row in ledger.rows(
            """
            select user_id, idempotency_key, id from credit_transactions
            where idempotency_key is not null and user_id like %s || '%%'
            """,
            (prefix,),
        )
    }
    for user_and_key, answers in workload.key_answers.items():
        assert answers == {journal_keys[user_and_key]}, (user_and_key, answers)
    unmatched_keys = ledger.rows(
        """
        select k.idempotency_key, k.operation, count(t.id) as n
        from credit_idempotency_keys as k
        inner join credit_accounts as a on k.account_id = a.id
        left join credit_transactions as t
            on k.account_id = t.account_id and k.idempotency_key = t.idempotency_key
        where a.user_id like %s || '%%'
        group by 1, 2
        having count(t.id) <> case k.operation when 'reserve_credits' then 0 else 1 end
        """,
        (prefix,),
    )
    assert unmatched_keys == []
    assert deadlocks(ledger, application) == deadlocks_before


# ---------------------------------------------------------------- C5 sweep race


def test_sweep_race_never_spends_an_expired_grant(database_url: str, ledger: Ledger) -> None:
    """Deducts, settles and sweeps run while grants reach their expiry (C5, I7)."""
    prefix = new_prefix("sweep")
    users = [f"{prefix}-u{i}" for i in range(8)]
    expires_at = ledger.one("select now() + interval '2 seconds' as t")["t"]
    for user in users:
        # spent first (priority 0) and far from used up when it expires
        ledger.add(user, 5000, category="promotional", priority=0, expires_at=expires_at)
        ledger.add(user, 10**6)
    left = expires_at - ledger.one("select now() as t")["t"]
    stop = time.monotonic() + left.total_seconds() + 1.5
    application = f"ducto-{prefix}"
    deadlocks_before = deadlocks(ledger)
    sweepers = 2

    def work(index: int, worker: Ledger) -> int:
        rng = random.Random(index)
        done = 0
        if index < sweepers:
            while time.monotonic() < stop:
                worker.sweep()
                done += 1
                time.sleep(0.01)
            return done
        holds: list[Any] = []
        while time.monotonic() < stop:
            user = rng.choice(users)
            if done % 10 == 0:
                holds.append(worker.reserve(user, 3, timeout_seconds=60)["reservation_id"])
            elif done % 10 == 5 and len(holds) > 1:
                # captures draw at settle time, across the expiry
                worker.settle(holds.pop(0), rng.randint(1, 6))
            else:
                worker.deduct(user, rng.randint(1, 3))
            done += 1
        for hold in holds:
            worker.settle(hold, 2)
        return done

    done = run_workers(database_url, WORKERS, work, application=application)
    print(f"C5: {sum(done[sweepers:])} operations, {sum(done[:sweepers])} sweeps")

    spent_after_expiry = ledger.rows(
        """
        select d.id, t.type, t.created_at, g.expires_at
        from credit_grant_draws as d
        inner join credit_transactions as t on d.transaction_id = t.id
        inner join credit_grants as g on d.grant_id = g.id
        where g.user_id like %s || '%%' and d.amount > 0
            and t.type in ('usage', 'fixed_job', 'capture') and t.created_at >= g.expires_at
        """,
        (prefix,),
    )
    assert spent_after_expiry == []
    # the race was real: the expiring grants were drawn on, and expired with credits left
    expiries = ledger.rows(
        """
        select t.grant_id, count(*) as n, min(t.created_at) as at, sum(t.amount) as amount
        from credit_transactions as t
        where t.type = 'expiry' and t.user_id like %s || '%%'
        group by t.grant_id
        """,
        (prefix,),
    )
    assert len(expiries) == len(users)
    for expiry in expiries:
        assert expiry["n"] == 1 and expiry["at"] >= expires_at and expiry["amount"] < 0, expiry
    drawn = ledger.one(
        """
        select count(*) as n from credit_grant_draws as d
        inner join credit_grants as g on d.grant_id = g.id
        where g.user_id like %s || '%%' and g.expires_at is not null and d.amount > 0
        """,
        (prefix,),
    )
    assert drawn["n"] > len(users)

    # with the clock held still, a second sweep finds nothing left to do
    ledger.set_clock(ledger.one("select now() as t")["t"])
    ledger.sweep()
    again = ledger.sweep()
    assert (again["accounts"], again["expired_grants"], again["expired_holds"]) == (0, 0, 0)
    dry = ledger.sweep(dry_run=True)
    assert (dry["accounts"], dry["expired_grants"], dry["expired_holds"]) == (0, 0, 0)
    assert ledger.verify() == []
    assert deadlocks(ledger, application) == deadlocks_before


# ---------------------------------------------------------------- regressions the model checks too
#
# Deterministic cases of three rules the state machine explores at random; the first
# versions of the migrations broke each of them.


def test_refund_after_paid_debt_refills_the_drawn_grant(ledger: Ledger) -> None:
    """docs: a refund gives credits back where they came from, the last drawn first."""
    user = new_prefix("refund-debt")
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    promo = ledger.add(user, 3, category="promotional", priority=10, expires_at=tomorrow)
    hold = ledger.reserve(user, 1)["reservation_id"]
    capture = ledger.settle(hold, 13, max_overage=12)  # 3 from the promotional grant, 10 of debt
    assert capture["balance_after"] == -10
    ledger.add(user, 6)  # pays 6 of the debt
    first = ledger.refund(capture["transaction_id"], 10)  # the debt part: 4 forgiven, 6 back
    assert first["balance_after"] == 6
    ledger.refund(capture["transaction_id"], 3)  # the part the promotional grant paid
    grants = ledger.rows(
        """
        select g.transaction_id, g.category, g.amount, g.remaining
        from credit_grants as g
        where g.user_id = %s
        order by g.created_at
        """,
        (user,),
    )
    refilled = [g for g in grants if g["transaction_id"] == promo["transaction_id"]]
    assert refilled[0]["remaining"] == 3, grants
    assert [g["amount"] for g in grants] == [3, 6, 6], grants


def test_release_reports_available_net_of_expired_grants(ledger: Ledger) -> None:
    """docs: available = balance - active holds, and a grant past expires_at is no credit."""
    user = new_prefix("release")
    start = datetime.now(UTC) + timedelta(days=1)
    ledger.set_clock(start)
    ledger.add(user, 10, expires_at=start + timedelta(hours=1))
    ledger.add(user, 5)
    hold = ledger.reserve(user, 2)["reservation_id"]
    ledger.set_clock(start + timedelta(hours=2))
    released = ledger.release(hold)
    balance = ledger.balance(user)
    assert balance["available"] == 5
    assert released["available_after"] == balance["available"]


def test_add_replayed_after_its_expiry_returns_the_original(ledger: Ledger) -> None:
    """docs: a replay is recognised before checks that depend on the time."""
    user = new_prefix("replay-expiry")
    start = datetime.now(UTC) + timedelta(days=1)
    ledger.set_clock(start)
    args: dict[str, Any] = {"expires_at": start + timedelta(hours=1), "idempotency_key": "k"}
    first = ledger.add(user, 10, **args)
    ledger.set_clock(start + timedelta(hours=2))
    again = ledger.add(user, 10, **args)
    assert again["is_replay"] is True
    assert {**again, "is_replay": False} == first


# ---------------------------------------------------------------- pricing republished


def test_usage_deducts_use_one_pricing_version_each(database_url: str, ledger: Ledger) -> None:
    """Usage deducts race a publisher that switches between two prices and two floors.

    Version A charges 1 credit with floor 0, version B 3 credits with floor 7. Every
    journal row must carry one version's price *and* have respected that version's floor;
    keyed calls sent twice at once are charged once; the journal still equals balances.
    """
    prefix = new_prefix("pricing")
    users = [f"{prefix}-{n}" for n in range(4)]
    for user in users:
        ledger.add(user, 60)
    cheap = {"models": [{"model": "m", "input": 1000, "output": 0}], "default": None}
    dear = {**cheap, "models": [{"model": "m", "input": 3000, "output": 0}], "min_balance": 7}
    ledger.call("credit_publish_pricing", config=Jsonb(cheap), label="A")
    metrics = Jsonb({"model": "m", "input_tokens": 1000})
    spenders = 11
    done = threading.Barrier(spenders + 1, timeout=BARRIER_TIMEOUT)

    def work(index: int, worker: Ledger) -> list[Outcome]:
        if index == 0:  # the publisher: switches prices until every spender is done
            n = 0
            while done.n_waiting < spenders:
                worker.call("credit_publish_pricing", config=Jsonb(dear if n % 2 == 0 else cheap))
                n += 1
            done.wait()
            return []
        outcomes = []
        for n in range(40):
            user = users[(index + n) % len(users)]
            # workers 1 and 2 send the same keys at about the same time
            key = f"k-{n}" if index in (1, 2) else None
            outcomes.append(
                attempt(
                    functools.partial(
                        worker.call,
                        "credit_deduct_usage",
                        user_id=user,
                        metrics=metrics,
                        idempotency_key=key,
                    ),
                    frozenset({"DC010"}),
                )
            )
        done.wait()
        return outcomes

    application = f"ducto-{prefix}"
    deadlocks_before = deadlocks(ledger)
    run_workers(database_url, spenders + 1, work, application=application, barriers=[done])

    rows = ledger.rows(
        """
        select t.amount, t.balance_after, c.config ->> 'min_balance' as floor,
            (credit_calculate_cost(t.usage, t.pricing_version)).credits as repriced,
            (c.config -> 'models' -> 0 ->> 'input')::numeric / 1000 as price
        from credit_transactions as t
        join credit_pricing_config as c on c.version = t.pricing_version
        where t.user_id like %s || '%%' and t.type = 'usage'
        """,
        (prefix,),
    )
    assert {row["price"] for row in rows} == {1, 3}, "both versions charged some deducts"
    for row in rows:
        assert -row["amount"] == row["price"] == row["repriced"]
        assert row["balance_after"] >= int(row["floor"])
    for account in accounts_of(ledger, prefix):
        assert account["balance"] == account["journal"] == account["remaining"]
    assert duplicate_keys(ledger, prefix) == []
    assert deadlocks(ledger, application) == deadlocks_before
