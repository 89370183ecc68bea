"""The events outbox (docs/events.md) on the real stack.

- every store flavour sets, lists and deletes alerts and endpoints, reads events, and gets
  typed errors; the emitter is fed from the outbox after a cursor;
- an event exists only if its change committed: a rolled-back or refused operation
  writes none;
- 50 concurrent debits crossing one threshold write exactly one ``balance.low``, and the
  ledger's invariants hold;
- delivery to a real HTTP receiver (``http.server`` in a thread): a receiver that fails
  (503, a timeout) and then recovers gets every event, each marked delivered once, with
  a signature that verifies; concurrent workers never deliver a claimed row twice;
- through PostgREST a user reads their own events, not another's; anon reads nothing.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
import pytest
from conftest import MakeUserToken, sibling_manager
from helpers_api import Api, expect_error, new_user_id

from ducto import (
    CreditEventEmitter,
    CreditEventType,
    CreditManager,
    InvalidInputError,
    NotFoundError,
    RefundError,
)
from ducto.events import CreditEvent
from ducto.interface import PostgresStore
from ducto.webhooks import verify_signature

SECRET = "whsec-outbox-test-secret"


# ---------------------------------------------------------------- a receiver


class Receiver:
    """A local HTTP endpoint: answers ``mode`` (``ok``, ``fail``: 503 with Retry-After: 0,
    ``slow``: 2 s before a 200), and records every request with its verified event."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.lock = threading.Lock()
        self.accepted: list[dict[str, Any]] = []  # events answered 2xx, signature verified
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                mode = receiver.mode
                if mode == "slow":
                    time.sleep(2)
                if mode == "fail":
                    with receiver.lock:
                        receiver.refused += 1
                    self.send_response(503)
                    self.send_header("retry-after", "0")
                    self.end_headers()
                    return
                event = verify_signature(SECRET, body, self.headers["ducto-signature"])
                assert self.headers["ducto-event-id"] == event["id"]
                with receiver.lock:
                    receiver.accepted.append(event)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/ducto"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    served = Receiver()
    yield served
    served.close()


@pytest.fixture
def endpoint(manager: CreditManager, receiver: Receiver, database_url: str) -> Iterator[str]:
    """An enabled endpoint for the receiver, the only enabled one; disabled afterwards."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("update credit_event_endpoints set enabled = false")
    created = manager.set_event_endpoint(receiver.url, SECRET)
    yield created.id
    manager.set_event_endpoint(receiver.url, SECRET, enabled=False, endpoint_id=created.id)


def _user_events(conn: psycopg.Connection[Any], user: str) -> list[tuple[str, str]]:
    return [
        (str(row[0]), row[1])
        for row in conn.execute(
            "select id, type from credit_events where user_id = %s order by id", (user,)
        )
    ]


# ---------------------------------------------------------------- every flavour


def test_alerts_endpoints_and_events_from_every_store(manager: CreditManager) -> None:
    user = new_user_id()
    absolute = manager.set_alert(user, threshold=50)
    assert manager.set_alert(user, threshold=50) == absolute, "setting it again returns it"
    percent = manager.set_alert(user, percent=Decimal("12.5"))
    assert (absolute.threshold, absolute.percent) == (50, None)
    assert (percent.threshold, percent.percent) == (None, Decimal("12.5"))
    assert {a.id for a in manager.list_alerts(user)} == {absolute.id, percent.id}

    manager.add_credits(user, 100, tx_type="purchase")  # 12.5 % of it: 12.5, rounded up 13
    # holds settled by amount: charges that need no pricing
    charged = manager.reserve_credits(user, 60, min_balance=0)
    manager.settle_reservation(charged.reservation_id, 60)  # 100 -> 40: crosses 50
    second = manager.reserve_credits(user, 30, min_balance=0)
    manager.settle_reservation(second.reservation_id, 30)  # 40 -> 10: crosses 13
    events = manager.list_events(user)
    assert [(e.type, e.payload["threshold"], e.payload["balance"]) for e in events] == [
        ("balance.low", 50, 40),
        ("balance.low", 13, 10),
    ]
    assert events[0].id < events[1].id, "ids are time-ordered"
    assert manager.list_events(user, after=events[0].id) == events[1:]
    assert manager.list_events(user, types=["balance.depleted"]) == []

    assert manager.delete_alert(absolute.id) is True
    assert manager.delete_alert(absolute.id) is False
    assert [a.id for a in manager.list_alerts(user)] == [percent.id]

    with pytest.raises(NotFoundError) as missing:
        manager.set_alert(plan_id="no-such-plan", threshold=5)
    assert missing.value.code == "DC080"
    with pytest.raises(InvalidInputError) as both:
        manager.set_alert(user, threshold=5, percent=5)
    assert both.value.code == "DC006"
    assert [a.id for a in manager.list_alerts(user)] == [percent.id], "refusals wrote nothing"

    created = manager.set_event_endpoint(
        "https://example.invalid/hook", SECRET, event_types=["balance.low"], enabled=False
    )
    listed = {e.id: e for e in manager.list_event_endpoints()}
    assert listed[created.id] == created
    assert created.event_types == ["balance.low"] and not created.enabled
    assert not hasattr(created, "secret")
    with pytest.raises(InvalidInputError):
        manager.set_event_endpoint("ftp://example.invalid", SECRET, enabled=False)
    assert manager.set_grant_expiring_days(3) == 3
    assert manager.emit_due_events() >= 0
    manager.set_grant_expiring_days(7)


def test_the_emitter_is_fed_from_the_outbox(manager: CreditManager) -> None:
    emitter = CreditEventEmitter()
    seen: list[CreditEvent] = []
    emitter.subscribe(CreditEventType.BALANCE_DEPLETED, seen.append)
    feeding = sibling_manager(manager, emitter=emitter)
    page = feeding.poll_events(limit=1000)  # start after what is there
    after = page[-1].id if page else None
    while len(page) == 1000:
        page = feeding.poll_events(after, limit=1000)
        after = page[-1].id if page else after

    user = new_user_id()
    manager.add_credits(user, 10)
    hold = manager.reserve_credits(user, 10, min_balance=0)
    manager.settle_reservation(hold.reservation_id, 10)  # written by another manager
    after = feeding.dispatch_events(after, limit=1000)
    mine = [e for e in seen if e.user_id == user]
    assert [(e.type, e.amount, e.balance) for e in mine] == [
        (CreditEventType.BALANCE_DEPLETED, 0, 0)
    ]
    seen.clear()
    assert feeding.dispatch_events(after) == after, "nothing new: the cursor stays"
    assert seen == []
    with pytest.raises(InvalidInputError):
        manager.dispatch_events()


# ---------------------------------------------------------------- committed or nothing


def test_a_poll_never_passes_an_event_still_to_commit(database_url: str) -> None:
    """An event written first but committed last is not skipped by a cursor reader: while
    its transaction is open a poll answers nothing, and afterwards it comes in id order."""
    store = PostgresStore(database_url, max_size=2)
    manager = CreditManager(store)
    early, late = new_user_id(), new_user_id()
    try:
        page = manager.poll_events(limit=1000)
        cursor = page[-1].id if page else None
        while len(page) == 1000:
            page = manager.poll_events(cursor, limit=1000)
            cursor = page[-1].id if page else cursor
        with psycopg.connect(database_url, autocommit=True) as conn:
            for user in (early, late):
                conn.execute("select credit_add_credits(%s, 1)", (user,))
        with psycopg.connect(database_url) as slow:  # writes the first event, commits last
            slow.execute("select credit_deduct_credits(%s, 1)", (early,))
            with psycopg.connect(database_url, autocommit=True) as fast:
                fast.execute("select credit_deduct_credits(%s, 1)", (late,))
            assert manager.poll_events(cursor) == [], "nothing while the first is open"
            assert [e.user_id for e in manager.list_events(after=cursor)] == [late]
            slow.commit()
        polled = [e for e in manager.poll_events(cursor) if e.user_id in (early, late)]
        assert [e.user_id for e in polled] == [early, late], "both, in id order"
    finally:
        store.close()


def test_a_rolled_back_or_refused_operation_emits_nothing(database_url: str) -> None:
    user = new_user_id()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select credit_set_alert(p_user_id => %s, p_threshold => 50)", (user,))
        conn.execute("select credit_add_credits(%s, 100)", (user,))
        with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
            conn.execute("select credit_deduct_credits(%s, 100)", (user,))
            assert len(_user_events(conn, user)) == 2, "low and depleted, inside the transaction"
            raise psycopg.errors.RaiseException("the caller's transaction fails")
        assert _user_events(conn, user) == []
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("select credit_deduct_credits(%s, 101)", (user,))
        assert refused.value.sqlstate == "DC010"
        assert _user_events(conn, user) == []
        conn.execute("select credit_deduct_credits(%s, 100)", (user,))
        assert [t for _, t in _user_events(conn, user)] == ["balance.low", "balance.depleted"]


def test_concurrent_debits_crossing_one_threshold_emit_one_event(database_url: str) -> None:
    user = new_user_id()
    store = PostgresStore(database_url, max_size=10)
    manager = CreditManager(store)
    try:
        manager.set_alert(user, threshold=75)
        manager.add_credits(user, 100)

        def debit(_: int) -> None:
            hold = manager.reserve_credits(user, 1, min_balance=0)
            manager.settle_reservation(hold.reservation_id, 1)

        with ThreadPoolExecutor(max_workers=10) as pool:
            list(pool.map(debit, range(50)))
        assert manager.get_balance(user).balance == 50
        with psycopg.connect(database_url) as conn:
            assert [t for _, t in _user_events(conn, user)] == ["balance.low"]
            (journal,) = conn.execute(
                "select sum(t.amount) from credit_transactions t where t.user_id = %s", (user,)
            ).fetchone() or (None,)
            assert journal == 50
            assert conn.execute("select * from credit_verify_ledger()").fetchall() == []
    finally:
        store.close()


# ---------------------------------------------------------------- delivery


def _emit(database_url: str, user: str, count: int) -> set[str]:
    """``count`` limit.reached events of a new account (written as the database owner, as
    the ledger's own functions write them); their ids."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select credit_add_credits(%s, 1)", (user,))
        rows = conn.execute(
            "select credit_private.emit(a.id, a.user_id, 'limit.reached',"
            " jsonb_build_object('n', n))"
            " from credit_accounts a, generate_series(1, %s) n where a.user_id = %s",
            (count, user),
        ).fetchall()
    return {str(row[0]) for row in rows}


def test_a_receiver_that_fails_then_recovers_gets_every_event_once(
    manager: CreditManager, receiver: Receiver, endpoint: str, database_url: str
) -> None:
    ids = _emit(database_url, new_user_id(), 5)

    receiver.mode = "fail"
    down = manager.deliver_events(batch_size=100)
    assert (down.claimed, down.delivered, down.failed) == (5, 0, 5)
    assert receiver.refused == 5 and receiver.accepted == []

    receiver.mode = "slow"  # answers after the worker's timeout: not delivered
    slow = manager.deliver_events(batch_size=100, timeout=0.5)
    assert (slow.claimed, slow.delivered, slow.failed) == (5, 0, 5)
    assert all("Timeout" in error for error in slow.errors)
    with psycopg.connect(database_url, autocommit=True) as conn:
        pending = conn.execute(
            "select count(*) from credit_events"
            " where id = any(%s::uuid[]) and delivery = 'pending'",
            (list(ids),),
        ).fetchone()
        assert pending == (5,)
        # the backoff after a timeout: make them due now rather than wait 40 s
        conn.execute(
            "update credit_event_deliveries set next_attempt_at = now() where endpoint_id = %s",
            (endpoint,),
        )
    time.sleep(2)  # the slow handler's answers are over
    receiver.accepted.clear()

    receiver.mode = "ok"
    up = manager.deliver_events(batch_size=100)
    assert (up.claimed, up.delivered, up.failed) == (5, 5, 0)
    assert Counter(e["id"] for e in receiver.accepted) == Counter(ids)
    assert {e["type"] for e in receiver.accepted} == {"limit.reached"}
    assert manager.deliver_events().claimed == 0, "delivered once: nothing is due"
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select e.delivery, d.attempts, d.last_error from credit_events e"
            " join credit_event_deliveries d on d.event_id = e.id where e.id = any(%s::uuid[])",
            (list(ids),),
        ).fetchall()
    assert {(delivery, attempts) for delivery, attempts, _ in rows} == {("delivered", 3)}
    assert {error.split(":")[0] for _, _, error in rows} == {"ReadTimeout"}


def test_a_receiver_not_listening_loses_nothing(database_url: str, receiver: Receiver) -> None:
    """While nothing listens at the endpoint's address every attempt fails and the events
    wait; once it answers, each is delivered."""
    store = PostgresStore(database_url, max_size=2)
    manager = CreditManager(store)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    down_url = f"http://127.0.0.1:{closed.getsockname()[1]}/hooks"
    closed.close()  # nothing listens there now
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("update credit_event_endpoints set enabled = false")
    endpoint = manager.set_event_endpoint(down_url, SECRET).id
    try:
        ids = _emit(database_url, new_user_id(), 3)
        down = manager.deliver_events(batch_size=100)
        assert (down.claimed, down.delivered, down.failed) == (3, 0, 3)
        assert all("ConnectError" in error for error in down.errors)
        assert manager.deliver_events().claimed == 0, "not due again before the backoff"
        with psycopg.connect(database_url, autocommit=True) as conn:
            waiting = conn.execute(
                "select count(*) from credit_event_deliveries where event_id = any(%s::uuid[])"
                " and delivered_at is null and attempts = 1 and last_error like 'ConnectError%%'"
                " and next_attempt_at > now() + interval '5 seconds'",
                (list(ids),),
            ).fetchone()
            assert waiting == (3,), "failed once, due again after the 10 s backoff"
            conn.execute(
                "update credit_event_deliveries set next_attempt_at = now() where endpoint_id = %s",
                (endpoint,),
            )
        manager.set_event_endpoint(receiver.url, SECRET, endpoint_id=endpoint)  # back up
        up = manager.deliver_events(batch_size=100)
        assert (up.claimed, up.delivered) == (3, 3)
        assert sorted(e["id"] for e in receiver.accepted) == sorted(ids)
    finally:
        manager.set_event_endpoint(receiver.url, SECRET, enabled=False, endpoint_id=endpoint)
        store.close()


def test_concurrent_workers_never_deliver_a_claimed_row_twice(
    database_url: str, receiver: Receiver
) -> None:
    store = PostgresStore(database_url, max_size=8)
    manager = CreditManager(store)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("update credit_event_endpoints set enabled = false")
    created = manager.set_event_endpoint(receiver.url, SECRET)
    try:
        ids = _emit(database_url, new_user_id(), 120)
        with ThreadPoolExecutor(max_workers=4) as pool:
            reports = list(pool.map(lambda _: manager.deliver_events(batch_size=7), range(4)))
        assert sum(r.delivered for r in reports) == 120
        assert sum(r.failed for r in reports) == 0
        assert Counter(e["id"] for e in receiver.accepted) == Counter(ids), "each once"
    finally:
        manager.set_event_endpoint(receiver.url, SECRET, enabled=False, endpoint_id=created.id)
        store.close()


# ---------------------------------------------------------------- who reads what


def test_users_read_their_own_events_through_postgrest(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken, database_url: str
) -> None:
    owner, stranger = new_user_id(), new_user_id()
    with psycopg.connect(database_url, autocommit=True) as conn:
        for user in (owner, stranger):
            conn.execute("select credit_add_credits(%s, 5)", (user,))
            conn.execute("select credit_deduct_credits(%s, 5)", (user,))
    as_owner = Api(gateway, anon_key, make_user_token(owner))
    rows = as_owner.select("credit_events", {"select": "user_id,type"})
    assert rows.status_code == 200, rows.text
    assert rows.json() == [{"user_id": owner, "type": "balance.depleted"}]
    listed = as_owner.rpc("credit_list_events", {})
    assert [(e["user_id"], e["type"]) for e in listed.json()] == [(owner, "balance.depleted")]
    expect_error(as_owner.rpc("credit_list_events", {"p_user_id": stranger}), 403, "42501")
    expect_error(
        as_owner.rpc("credit_set_alert", {"p_user_id": owner, "p_threshold": 1}), 403, "42501"
    )
    anon = Api(gateway, anon_key)
    expect_error(anon.select("credit_events"), 401, "42501")
    expect_error(anon.rpc("credit_list_events", {}), 401, "42501")
    assert json.loads(as_owner.select("credit_event_endpoints").text)["code"] == "42501"


# ---------------------------------------------------------------- the CLI


def test_the_cli_configures_lists_and_delivers(database_url: str, receiver: Receiver) -> None:
    from test_cli import Cli

    cli = Cli(DATABASE_URL=database_url)
    user = new_user_id()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("update credit_event_endpoints set enabled = false")
    alert = cli.json("events", "alert", "set", "--user", user, "--threshold", "10")
    assert (alert["user_id"], alert["threshold"], alert["percent"]) == (user, 10, None)
    assert [a["id"] for a in cli.json("events", "alert", "list", "--user", user)] == [alert["id"]]
    saved = cli.json(
        "events", "endpoint", "set", receiver.url, "--secret", SECRET, "--type", "balance.low"
    )
    assert saved["event_types"] == ["balance.low"] and "secret" not in saved
    try:
        cli("credits", "add", user, "20")
        with psycopg.connect(database_url, autocommit=True) as conn:  # a charge by amount
            conn.execute("select credit_deduct_credits(%s, 20)", (user,))  # low and depleted
        listed = cli.json("events", "list", "--user", user)
        assert [e["type"] for e in listed] == ["balance.low", "balance.depleted"]
        report = cli.json("events", "deliver")
        # the endpoint wants balance.low only
        assert (report["claimed"], report["delivered"], report["failed"]) == (1, 1, 0)
        assert [e["id"] for e in receiver.accepted] == [listed[0]["id"]]
        assert cli.json("events", "deliver")["claimed"] == 0
        assert cli.json("events", "alert", "delete", alert["id"]) == {"deleted": True}
        assert "did not exist" in cli("events", "alert", "delete", alert["id"]).stdout
        assert "[DC006]" in cli("events", "alert", "set", "--user", user, code=1).stderr
    finally:
        cli("events", "endpoint", "set", receiver.url, "--secret", SECRET, "--disabled",
            "--id", saved["id"])  # fmt: skip


# ---------------------------------------------------------------- every write path, at once


def test_concurrent_writers_write_each_event_once(database_url: str) -> None:
    """Concurrent alerts set alike, refunds of one charge, sweeps and due-event runs: one
    alert, one charge.refunded per refund, one grant.expiring and one grant.expired per
    grant; the ledger stays consistent."""
    store = PostgresStore(database_url, max_size=8)
    manager = CreditManager(store)
    user = new_user_id()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            alerts = list(pool.map(lambda _: manager.set_alert(user, threshold=7), range(16)))
        assert {a.id for a in alerts} == {alerts[0].id}
        assert len(manager.list_alerts(user)) == 1

        manager.add_credits(user, 100)
        hold = manager.reserve_credits(user, 40, min_balance=0)
        charge = manager.settle_reservation(hold.reservation_id, 40)
        assert charge.transaction_id is not None

        def refund(_: int) -> int:
            try:
                return manager.refund_credits(charge.transaction_id or "", 3).amount
            except RefundError:
                return 0

        with ThreadPoolExecutor(max_workers=8) as pool:
            refunded = sum(pool.map(refund, range(16)))
        assert refunded == 39  # 13 refunds of 3 fit in 40

        with psycopg.connect(database_url, autocommit=True) as conn:
            # a grant expiring within the notice, and one about to expire
            conn.execute(
                "select credit_add_credits(%s, 5, p_expires_at => now() + interval '2 days')",
                (user,),
            )
            conn.execute(
                "select credit_add_credits(%s, 5, p_expires_at => now() + interval '1 second')",
                (user,),
            )
        time.sleep(1.2)

        def due(i: int) -> None:
            if i % 2:
                manager.sweep_expired_credits()
            else:
                manager.emit_due_events()

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(due, range(16)))
        with psycopg.connect(database_url) as conn:
            kinds = Counter(t for _, t in _user_events(conn, user))
            amounts = conn.execute(
                "select sum((payload ->> 'amount')::bigint) from credit_events"
                " where user_id = %s and type = 'charge.refunded'",
                (user,),
            ).fetchone()
            assert conn.execute("select * from credit_verify_ledger()").fetchall() == []
        assert kinds["charge.refunded"] == 13 and amounts == (39,)
        assert kinds["grant.expired"] == 1, "the expired grant, once"
        assert kinds["grant.expiring"] == 1, "the grant expiring in 2 days, once"
    finally:
        store.close()
