"""Lifecycle events (docs/events.md): the emitter, the managers' events on the real stack,
and how an app follows balance changes from the database itself.

- ``CreditEventEmitter`` on its own: subscribe and unsubscribe, one type or all, a
  failing subscriber logged and skipped;
- a manager with an emitter, over every store flavour: each operation emits its events,
  a replay emits none, a refusal emits ``insufficient_credits``, a low balance is told,
  and a subscriber that raises changes neither the result nor the ledger (nor rolls back
  the caller's transaction with a bound connection);
- the database as the source: every balance change is one UPDATE of the account row in
  the same transaction as its journal row, in the WAL that Supabase Realtime decodes
  (read here with test_decoding), and row-level security decides who may see it.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from helpers_api import Api, expect_ok, new_user_id

from ducto.events import CreditEvent, CreditEventEmitter, CreditEventType
from ducto.models import AddCreditsResult


def added(user_id: str = "u", amount: int = 5, *, is_replay: bool = False) -> AddCreditsResult:
    now = datetime.now(UTC)
    return AddCreditsResult(
        "t", "g", user_id, amount, "grant", "paid", 50, None, amount, now, is_replay
    )


# ---------------------------------------------------------------- the emitter on its own


def test_subscribers_get_their_events_until_they_unsubscribe() -> None:
    emitter = CreditEventEmitter()
    typed: list[CreditEvent] = []
    every: list[CreditEvent] = []
    stop = emitter.subscribe(CreditEventType.CREDITS_ADDED, typed.append)
    emitter.subscribe(None, every.append)
    emitter.subscribe(CreditEventType.CREDITS_REFUNDED, lambda e: pytest.fail("wrong type"))

    emitter.observe(added(amount=7))
    assert [(e.type, e.user_id, e.amount, e.balance) for e in typed] == [
        (CreditEventType.CREDITS_ADDED, "u", 7, 7)
    ]
    assert every == typed
    stop()
    emitter.observe(added())
    assert len(typed) == 1 and len(every) == 2


def test_a_replay_emits_nothing() -> None:
    emitter = CreditEventEmitter()
    seen: list[CreditEvent] = []
    emitter.subscribe(None, seen.append)
    emitter.observe(added(is_replay=True))
    assert seen == []


def test_a_failing_subscriber_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    emitter = CreditEventEmitter()
    seen: list[CreditEvent] = []

    def broken(event: CreditEvent) -> None:
        raise RuntimeError("subscriber bug")

    emitter.subscribe(None, broken)
    emitter.subscribe(None, seen.append)
    with caplog.at_level(logging.ERROR, logger="ducto.events"):
        emitter.observe(added())
    assert len(seen) == 1
    [record] = caplog.records
    assert record.name == "ducto.events" and "credits_added" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


# ---------------------------------------------------------------- the database as the source


@pytest.fixture
def logical_slot(db: psycopg.Connection[Any]) -> Iterator[str]:
    """A logical replication slot (test_decoding) that sees every change from now on."""
    slot = f"ducto_test_{uuid.uuid4().hex[:12]}"
    db.execute("select pg_create_logical_replication_slot(%s, 'test_decoding')", (slot,))
    try:
        yield slot
    finally:
        db.execute("select pg_drop_replication_slot(%s)", (slot,))


def decoded(db: psycopg.Connection[Any], slot: str) -> list[list[str]]:
    """The changes of the slot so far, one list of change lines per transaction."""
    transactions: list[list[str]] = []
    for (line,) in db.execute(
        "select data from pg_logical_slot_get_changes(%s, null, null)", (slot,)
    ).fetchall():
        if line.startswith("BEGIN"):
            transactions.append([])
        elif not line.startswith("COMMIT"):
            transactions[-1].append(line)
    return transactions


BALANCE = re.compile(r"balance\[bigint\]:(-?\d+)")


def test_every_balance_change_is_in_the_wal_with_its_journal_row(
    db: psycopg.Connection[Any], service: Api, logical_slot: str
) -> None:
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 100}))
    expect_ok(service.rpc("credit_deduct_credits", {"p_user_id": user, "p_amount": 30}))
    expect_ok(service.rpc("credit_reserve_credits", {"p_user_id": user, "p_amount": 5}))

    mine = [t for t in decoded(db, logical_slot) if any(f"'{user}'" in line for line in t)]
    account_changes = [
        [line for line in t if line.startswith("table public.credit_accounts:")] for t in mine
    ]
    # add: the account is created and credited (one INSERT, one UPDATE); deduct: one
    # UPDATE; the hold changes no balance (available = balance - holds, read on demand)
    assert [[BALANCE.findall(line)[0] for line in t] for t in account_changes] == [
        ["0", "100"],
        ["70"],
        [],
    ]
    # each balance UPDATE travels in the transaction that journals it
    for t, balance in zip(mine[:2], ["100", "70"], strict=True):
        journal = [line for line in t if line.startswith("table public.credit_transactions:")]
        assert len(journal) == 1
        assert f"balance_after[bigint]:{balance}" in journal[0]
    assert any(line.startswith("table public.credit_reservations: INSERT") for line in mine[2])


def test_row_level_security_decides_who_sees_a_balance_change(
    db: psycopg.Connection[Any], service: Api
) -> None:
    """What Realtime checks before it sends a change: can the subscriber select the row?"""
    owner, other = new_user_id(), new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": owner, "p_amount": 10}))
    row = db.execute("select id from credit_accounts where user_id = %s", (owner,)).fetchone()
    assert row is not None

    def visible_to(user: str) -> bool:
        with db.transaction(force_rollback=True):
            db.execute("set local role authenticated")
            db.execute(
                "select set_config('request.jwt.claims', %s, true)",
                (f'{{"sub": "{user}", "role": "authenticated"}}',),
            )
            found = db.execute("select balance from credit_accounts where id = %s", row).fetchone()
        return found is not None

    assert visible_to(owner)
    assert not visible_to(other)
