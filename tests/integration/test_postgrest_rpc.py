"""The ledger RPCs as a trusted backend calls them: service-role key, through the gateway.

Every request goes to ``SUPABASE_URL/rest/v1/rpc/<function>`` with
``apikey: <service key>`` and ``Authorization: Bearer <service key>``, as an
edge function or a Python backend does. Results must be the JSON objects the
``credit_*_result`` types define; each error a caller can cause must arrive with
the HTTP status of its meaning (``helpers_api.status_of``: 402, 404, 409 or 422) and
the ducto SQLSTATE as ``code``, its numbers as JSON in ``details``; and malformed
input must never write anything, which is checked
through a superuser connection.

PostgREST 12.0.2 behaviour pinned here (what it really does, checked on the stack):

- a JSON string holding a number (``"12"``) is accepted for a ``numeric``
  argument: PostgREST hands the arguments to PostgreSQL as text, so the string
  is cast like a number;
- a duplicated key in the JSON object: the last one wins;
- ``GET`` on a volatile function is not refused up front: it runs in a READ
  ONLY transaction, so it answers 405 (``25006``) only when the function tries
  to lock or write, and whatever the function answers otherwise (a ducto
  error, or a result when there was nothing to write).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from helpers_api import (
    JSON,
    Api,
    error_details,
    expect_error,
    expect_ok,
    expect_rows,
    ledger_rows,
    new_user_id,
    row_count,
    status_of,
)

MAX_AMOUNT = 9007199254740991  # 2^53 - 1

ADD_FIELDS = {
    "transaction_id",
    "grant_id",
    "user_id",
    "amount",
    "tx_type",
    "category",
    "priority",
    "expires_at",
    "balance_after",
    "created_at",
    "is_replay",
}
RESERVE_FIELDS = {
    "reservation_id",
    "user_id",
    "amount",
    "operation_type",
    "expires_at",
    "available_after",
    "created_at",
    "is_replay",
}
DEDUCT_FIELDS = {
    "transaction_id",
    "reservation_id",
    "user_id",
    "amount",
    "overage",
    "balance_after",
    "available_after",
    "created_at",
    "is_replay",
    "pricing_version",
}
RELEASE_FIELDS = {"reservation_id", "user_id", "amount", "status", "available_after", "is_replay"}
REFUND_FIELDS = {
    "transaction_id",
    "refunded_transaction_id",
    "user_id",
    "amount",
    "total_refunded",
    "refundable_remaining",
    "balance_after",
    "created_at",
    "is_replay",
}
BALANCE_FIELDS = {"user_id", "balance", "held", "available", "scopes"}
SWEEP_FIELDS = {
    "dry_run",
    "accounts",
    "expired_grants",
    "expired_amount",
    "expired_holds",
    "expired_hold_amount",
}


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def funded(service: Api) -> JSON:
    """One account in a known state, shared by the error tests (which write nothing).

    add 100 (paid) -> usage 10 -> usage 3 with key ``k1`` (its journal row is the key's
    record) -> hold 20 (active) with key ``hold-1`` (recorded in credit_idempotency_keys)
    -> hold 7 released -> hold 5 settled with 5: balance 82, held 20, available 62.
    """
    user = new_user_id()
    add = expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 100}))
    usage = expect_ok(service.rpc("credit_deduct_credits", {"p_user_id": user, "p_amount": 10}))
    keyed = expect_ok(
        service.rpc(
            "credit_deduct_credits",
            {"p_user_id": user, "p_amount": 3, "p_idempotency_key": "k1"},
        )
    )
    active = expect_ok(
        service.rpc(
            "credit_reserve_credits",
            {"p_user_id": user, "p_amount": 20, "p_idempotency_key": "hold-1"},
        )
    )
    released = expect_ok(service.rpc("credit_reserve_credits", {"p_user_id": user, "p_amount": 7}))
    expect_ok(
        service.rpc("credit_release_reservation", {"p_reservation_id": released["reservation_id"]})
    )
    settled = expect_ok(service.rpc("credit_reserve_credits", {"p_user_id": user, "p_amount": 5}))
    expect_ok(
        service.rpc(
            "credit_settle_reservation",
            {"p_reservation_id": settled["reservation_id"], "p_actual_amount": 5},
        )
    )
    balance = expect_ok(service.rpc("credit_get_balance", {"p_user_id": user}))
    assert balance == {
        "user_id": user,
        "balance": 82,
        "held": 20,
        "available": 62,
        "scopes": [{"scope": None, "remaining": 82}],
    }
    return {
        "user_id": user,
        "add_tx": add["transaction_id"],
        "usage_tx": usage["transaction_id"],
        "keyed_tx": keyed["transaction_id"],
        "active_reservation": active["reservation_id"],
        "released_reservation": released["reservation_id"],
        "settled_reservation": settled["reservation_id"],
    }


def parse_time(value: Any) -> datetime:
    assert isinstance(value, str), value
    return datetime.fromisoformat(value)


def journal(db: psycopg.Connection[Any], user: str) -> list[tuple[Any, ...]]:
    """(seq, type, amount, balance_after) of a user's journal, in order."""
    return db.execute(
        """
        select seq, type, amount, balance_after
        from public.credit_transactions where user_id = %s order by seq
        """,
        (user,),
    ).fetchall()


def account_issues(service: Api, user: str) -> list[JSON]:
    """What credit_verify_ledger reports about one user (the ledger is shared)."""
    issues = expect_rows(service.rpc("credit_verify_ledger"))
    return [issue for issue in issues if issue.get("user_id") == user]


# ---------------------------------------------------------------------------
# Success paths: each RPC answers the documented JSON object
# ---------------------------------------------------------------------------


def test_add_credits(service: Api, db: psycopg.Connection[Any]) -> None:
    user = new_user_id()
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    result = expect_ok(
        service.rpc(
            "credit_add_credits",
            {
                "p_user_id": user,
                "p_amount": 150,
                "p_tx_type": "promotion",
                "p_category": "promotional",
                "p_priority": 10,
                "p_expires_at": expires.isoformat(),
                "p_metadata": {"campaign": "launch"},
            },
        )
    )
    assert set(result) == ADD_FIELDS
    assert result["user_id"] == user
    assert result["amount"] == 150
    assert result["tx_type"] == "promotion"
    assert result["category"] == "promotional"
    assert result["priority"] == 10
    assert parse_time(result["expires_at"]) == expires
    assert result["balance_after"] == 150
    assert result["is_replay"] is False
    parse_time(result["created_at"])
    assert journal(db, user) == [(1, "promotion", 150, 150)]
    grant = db.execute(
        "select id::text, remaining, category, priority from public.credit_grants"
        " where user_id = %s",
        (user,),
    ).fetchall()
    assert grant == [(result["grant_id"], 150, "promotional", 10)]


def test_add_credits_replay_returns_the_first_result(
    service: Api, db: psycopg.Connection[Any]
) -> None:
    user = new_user_id()
    args = {"p_user_id": user, "p_amount": 40, "p_idempotency_key": "purchase-1"}
    first = expect_ok(service.rpc("credit_add_credits", args))
    again = expect_ok(service.rpc("credit_add_credits", args))
    assert again == {**first, "is_replay": True}
    assert journal(db, user) == [(1, "adjustment", 40, 40)]


def test_deduct_credits(service: Api, db: psycopg.Connection[Any]) -> None:
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 100}))
    result = expect_ok(
        service.rpc(
            "credit_deduct_credits",
            {"p_user_id": user, "p_amount": 30, "p_min_balance": 5, "p_metadata": {"m": 1}},
        )
    )
    assert set(result) == DEDUCT_FIELDS
    assert result["user_id"] == user
    assert result["amount"] == 30
    assert result["overage"] == 0
    assert result["reservation_id"] is None
    assert result["balance_after"] == 70
    assert result["available_after"] == 70
    assert result["is_replay"] is False
    assert journal(db, user) == [(1, "adjustment", 100, 100), (2, "usage", -30, 70)]
    assert account_issues(service, user) == []


def test_reserve_and_settle_with_overage(service: Api, db: psycopg.Connection[Any]) -> None:
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 100}))
    hold = expect_ok(
        service.rpc(
            "credit_reserve_credits",
            {
                "p_user_id": user,
                "p_amount": 20,
                "p_operation_type": "chat",
                "p_timeout_seconds": 600,
            },
        )
    )
    assert set(hold) == RESERVE_FIELDS
    assert hold["user_id"] == user
    assert hold["amount"] == 20
    assert hold["operation_type"] == "chat"
    assert hold["available_after"] == 80
    assert hold["is_replay"] is False
    assert parse_time(hold["expires_at"]) - parse_time(hold["created_at"]) == timedelta(seconds=600)
    balance = expect_ok(service.rpc("credit_get_balance", {"p_user_id": user}))
    assert balance == {
        "user_id": user,
        "balance": 100,
        "held": 20,
        "available": 80,
        "scopes": [{"scope": None, "remaining": 100}],
    }

    settle_args = {"p_reservation_id": hold["reservation_id"], "p_actual_amount": 25}
    settled = expect_ok(service.rpc("credit_settle_reservation", settle_args))
    assert set(settled) == DEDUCT_FIELDS
    assert settled["reservation_id"] == hold["reservation_id"]
    assert settled["amount"] == 25
    assert settled["overage"] == 5
    assert settled["balance_after"] == 75
    assert settled["available_after"] == 75
    assert settled["is_replay"] is False

    # settling again with the same amount is a replay of the first result
    replay = expect_ok(service.rpc("credit_settle_reservation", settle_args))
    assert replay == {**settled, "is_replay": True}
    assert journal(db, user) == [(1, "adjustment", 100, 100), (2, "capture", -25, 75)]
    assert account_issues(service, user) == []


def test_reserve_and_release(service: Api, db: psycopg.Connection[Any]) -> None:
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 50}))
    hold = expect_ok(service.rpc("credit_reserve_credits", {"p_user_id": user, "p_amount": 15}))
    released = expect_ok(
        service.rpc("credit_release_reservation", {"p_reservation_id": hold["reservation_id"]})
    )
    assert set(released) == RELEASE_FIELDS
    assert released == {
        "reservation_id": hold["reservation_id"],
        "user_id": user,
        "amount": 15,
        "status": "released",
        "available_after": 50,
        "is_replay": False,
    }
    again = expect_ok(
        service.rpc("credit_release_reservation", {"p_reservation_id": hold["reservation_id"]})
    )
    assert again == {**released, "is_replay": True}
    assert journal(db, user) == [(1, "adjustment", 50, 50)]


def test_refund_partial_then_rest(service: Api, db: psycopg.Connection[Any]) -> None:
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 100}))
    usage = expect_ok(service.rpc("credit_deduct_credits", {"p_user_id": user, "p_amount": 30}))
    part = expect_ok(
        service.rpc(
            "credit_refund_transaction",
            {
                "p_transaction_id": usage["transaction_id"],
                "p_amount": 10,
                "p_reason": "bad answer",
            },
        )
    )
    assert set(part) == REFUND_FIELDS
    assert part["refunded_transaction_id"] == usage["transaction_id"]
    assert part["user_id"] == user
    assert part["amount"] == 10
    assert part["total_refunded"] == 10
    assert part["refundable_remaining"] == 20
    assert part["balance_after"] == 80
    assert part["is_replay"] is False

    rest = expect_ok(
        service.rpc("credit_refund_transaction", {"p_transaction_id": usage["transaction_id"]})
    )
    assert rest["amount"] == 20
    assert rest["total_refunded"] == 30
    assert rest["refundable_remaining"] == 0
    assert rest["balance_after"] == 100
    assert journal(db, user) == [
        (1, "adjustment", 100, 100),
        (2, "usage", -30, 70),
        (3, "refund", 10, 80),
        (4, "refund", 20, 100),
    ]
    assert account_issues(service, user) == []


def test_get_balance_by_post_and_by_get(service: Api) -> None:
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 12}))
    expect_ok(service.rpc("credit_reserve_credits", {"p_user_id": user, "p_amount": 2}))
    expected = {
        "user_id": user,
        "balance": 12,
        "held": 2,
        "available": 10,
        "scopes": [{"scope": None, "remaining": 12}],
    }
    by_post = expect_ok(service.rpc("credit_get_balance", {"p_user_id": user}))
    assert set(by_post) == BALANCE_FIELDS
    assert by_post == expected
    # credit_get_balance is STABLE: PostgREST lets GET call it, with the arguments in the query
    assert expect_ok(service.rpc_get("credit_get_balance", {"p_user_id": user})) == expected
    # an account that does not exist yet reads as zeros
    stranger = new_user_id()
    assert expect_ok(service.rpc_get("credit_get_balance", {"p_user_id": stranger})) == {
        "user_id": stranger,
        "balance": 0,
        "held": 0,
        "available": 0,
        "scopes": [],
    }


def test_verify_ledger_by_post_and_by_get(service: Api) -> None:
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 5}))
    for response in (service.rpc("credit_verify_ledger"), service.rpc_get("credit_verify_ledger")):
        issues = expect_rows(response)
        for issue in issues:
            assert set(issue) == {"account_id", "user_id", "check_name", "expected", "actual"}
        assert [issue for issue in issues if issue["user_id"] == user] == []


def test_sweep_expires_grants_and_holds(service: Api, db: psycopg.Connection[Any]) -> None:
    """Real time (PostgREST cannot move the ledger's clock): a grant and a hold of 1 s."""
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 10}))
    expires = datetime.now(UTC) + timedelta(seconds=1)
    promo = expect_ok(
        service.rpc(
            "credit_add_credits",
            {
                "p_user_id": user,
                "p_amount": 5,
                "p_category": "promotional",
                "p_expires_at": expires.isoformat(),
            },
        )
    )
    hold = expect_ok(
        service.rpc(
            "credit_reserve_credits",
            {"p_user_id": user, "p_amount": 3, "p_timeout_seconds": 1},
        )
    )
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.3)

    # not swept yet: the balance already leaves out the expired grant and the timed-out hold
    assert expect_ok(service.rpc("credit_get_balance", {"p_user_id": user})) == {
        "user_id": user,
        "balance": 10,
        "held": 0,
        "available": 10,
        "scopes": [{"scope": None, "remaining": 10}],
    }
    before = ledger_rows(db, user)

    # GET runs in a read-only transaction: the sweep cannot lock, PostgREST answers 405
    expect_error(service.rpc_get("credit_sweep_expired"), 405, "25006")
    assert ledger_rows(db, user) == before

    dry = expect_ok(service.rpc("credit_sweep_expired", {"p_dry_run": True}))
    assert set(dry) == SWEEP_FIELDS
    assert dry["dry_run"] is True
    assert dry["accounts"] >= 1
    assert dry["expired_grants"] >= 1
    assert dry["expired_amount"] >= 5
    assert dry["expired_holds"] >= 1
    assert dry["expired_hold_amount"] >= 3
    assert ledger_rows(db, user) == before
    # a dry run through GET is read-only and allowed
    assert expect_ok(service.rpc_get("credit_sweep_expired", {"p_dry_run": "true"}))["dry_run"]

    swept = expect_ok(service.rpc("credit_sweep_expired", {}))
    assert set(swept) == SWEEP_FIELDS
    assert swept["dry_run"] is False
    assert swept["expired_grants"] >= 1
    assert swept["expired_amount"] >= 5
    assert swept["expired_holds"] >= 1
    assert journal(db, user) == [
        (1, "adjustment", 10, 10),
        (2, "adjustment", 5, 15),
        (3, "expiry", -5, 10),
    ]
    status = db.execute(
        "select status from public.credit_reservations where id = %s", (hold["reservation_id"],)
    ).fetchone()
    assert status == ("expired",)
    remaining = db.execute(
        "select remaining from public.credit_grants where id = %s", (promo["grant_id"],)
    ).fetchone()
    assert remaining == (0,)
    assert account_issues(service, user) == []


# ---------------------------------------------------------------------------
# Each ducto error: its status, code = the SQLSTATE, numbers as JSON in details
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorCase:
    """One error a caller can cause. ``<name>`` placeholders come from ``funded``."""

    name: str
    function: str
    args: dict[str, Any]
    code: str
    # the JSON details: exactly (input checks: at least these keys and values)
    details: dict[str, Any]
    message_parts: tuple[str, ...]

    @property
    def exact(self) -> bool:
        return not self.code.startswith("DC00")


ERROR_CASES: list[ErrorCase] = [
    ErrorCase(
        "DC001 fractional amount",
        "credit_add_credits",
        {"p_user_id": "<user_id>", "p_amount": 1.5},
        "DC001",
        {"argument": "amount", "value": "1.5", "minimum": 1},
        ("amount", "1.5"),
    ),
    ErrorCase(
        "DC001 negative actual amount",
        "credit_settle_reservation",
        {"p_reservation_id": "<active_reservation>", "p_actual_amount": -1},
        "DC001",
        {"argument": "actual_amount", "value": "-1", "minimum": 0},
        ("actual_amount", "-1"),
    ),
    ErrorCase(
        "DC001 negative min_balance",
        "credit_deduct_credits",
        {"p_user_id": "<user_id>", "p_amount": 1, "p_min_balance": -1},
        "DC001",
        {"argument": "min_balance", "value": "-1", "minimum": 0},
        ("min_balance",),
    ),
    ErrorCase(
        "DC002 empty user id",
        "credit_add_credits",
        {"p_user_id": "", "p_amount": 1},
        "DC002",
        {"argument": "user_id"},
        ("user_id",),
    ),
    ErrorCase(
        "DC002 control character in user id",
        "credit_deduct_credits",
        {"p_user_id": "a\u0001b", "p_amount": 1},
        "DC002",
        {"argument": "user_id"},
        ("user_id",),
    ),
    ErrorCase(
        "DC002 user id of 256 characters",
        "credit_reserve_credits",
        {"p_user_id": "u" * 256, "p_amount": 1},
        "DC002",
        {"argument": "user_id"},
        ("user_id",),
    ),
    ErrorCase(
        "DC003 metadata not an object",
        "credit_deduct_credits",
        {"p_user_id": "<user_id>", "p_amount": 1, "p_metadata": [1, 2]},
        "DC003",
        {"argument": "metadata"},
        ("metadata", "array"),
    ),
    ErrorCase(
        "DC003 metadata over 16 KiB",
        "credit_add_credits",
        {"p_user_id": "<user_id>", "p_amount": 1, "p_metadata": {"blob": "x" * 17000}},
        "DC003",
        {"argument": "metadata", "limit": 16384},
        ("metadata", "16384"),
    ),
    ErrorCase(
        "DC004 empty idempotency key",
        "credit_deduct_credits",
        {"p_user_id": "<user_id>", "p_amount": 1, "p_idempotency_key": ""},
        "DC004",
        {"argument": "idempotency_key"},
        ("idempotency_key",),
    ),
    ErrorCase(
        "DC004 idempotency key of 256 characters",
        "credit_add_credits",
        {"p_user_id": "<user_id>", "p_amount": 1, "p_idempotency_key": "k" * 256},
        "DC004",
        {"argument": "idempotency_key"},
        ("idempotency_key", "256"),
    ),
    ErrorCase(
        "DC005 expiry in the past",
        "credit_add_credits",
        {"p_user_id": "<user_id>", "p_amount": 1, "p_expires_at": "2001-01-01T00:00:00Z"},
        "DC005",
        {"argument": "expires_at"},
        ("expires_at",),
    ),
    ErrorCase(
        "DC005 infinite expiry",
        "credit_add_credits",
        {"p_user_id": "<user_id>", "p_amount": 1, "p_expires_at": "infinity"},
        "DC005",
        {"argument": "expires_at"},
        ("expires_at",),
    ),
    ErrorCase(
        "DC005 timeout of 0 s",
        "credit_reserve_credits",
        {"p_user_id": "<user_id>", "p_amount": 1, "p_timeout_seconds": 0},
        "DC005",
        {"argument": "timeout_seconds"},
        ("timeout_seconds", "604800"),
    ),
    ErrorCase(
        "DC006 unknown tx_type",
        "credit_add_credits",
        {"p_user_id": "<user_id>", "p_amount": 1, "p_tx_type": "usage"},
        "DC006",
        {
            "argument": "tx_type",
            "allowed": ["grant", "purchase", "adjustment", "promotion"],
        },
        ("tx_type", "'usage'"),
    ),
    ErrorCase(
        "DC006 unknown category",
        "credit_add_credits",
        {"p_user_id": "<user_id>", "p_amount": 1, "p_category": "free"},
        "DC006",
        {"argument": "category", "allowed": ["paid", "promotional"]},
        ("category", "'free'"),
    ),
    ErrorCase(
        "DC006 priority out of range",
        "credit_add_credits",
        {"p_user_id": "<user_id>", "p_amount": 1, "p_priority": 101},
        "DC006",
        {"argument": "priority"},
        ("priority", "101"),
    ),
    ErrorCase(
        "DC010 deduct more than available",
        "credit_deduct_credits",
        {"p_user_id": "<user_id>", "p_amount": 1000},
        "DC010",
        {"user_id": "<user_id>", "available": 62, "needed": 1000, "min_balance": 0},
        ("insufficient credits", "<user_id>", "62", "1000"),
    ),
    ErrorCase(
        "DC010 reserve below the floor",
        "credit_reserve_credits",
        {"p_user_id": "<user_id>", "p_amount": 20, "p_min_balance": 50},
        "DC010",
        {"user_id": "<user_id>", "available": 62, "needed": 20, "min_balance": 50},
        ("insufficient credits", "62", "20", "50"),
    ),
    ErrorCase(
        "DC020 idempotency key reused with another amount",
        "credit_deduct_credits",
        {"p_user_id": "<user_id>", "p_amount": 4, "p_idempotency_key": "k1"},
        "DC020",
        {
            "idempotency_key": "k1",
            "operation": "usage",
            "request": {"amount": 4, "min_balance": 0, "metadata": {}},
        },
        ("'k1'",),
    ),
    ErrorCase(
        "DC020 idempotency key reused for another operation",
        "credit_add_credits",
        {"p_user_id": "<user_id>", "p_amount": 3, "p_idempotency_key": "k1"},
        "DC020",
        {
            "idempotency_key": "k1",
            "operation": "usage",
            "request": {
                "amount": 3,
                "tx_type": "adjustment",
                "category": "paid",
                "priority": 50,
                "expires_at": None,
                "metadata": {},
            },
        },
        ("'k1'",),
    ),
    ErrorCase(
        "DC030 refund of an unknown transaction",
        "credit_refund_transaction",
        {"p_transaction_id": "00000000-0000-4000-8000-000000000000"},
        "DC030",
        {"transaction_id": "00000000-0000-4000-8000-000000000000"},
        ("00000000-0000-4000-8000-000000000000",),
    ),
    ErrorCase(
        "DC031 settle of an unknown reservation",
        "credit_settle_reservation",
        {"p_reservation_id": "00000000-0000-4000-8000-000000000000", "p_actual_amount": 1},
        "DC031",
        {"reservation_id": "00000000-0000-4000-8000-000000000000"},
        ("00000000-0000-4000-8000-000000000000",),
    ),
    ErrorCase(
        "DC031 release of an unknown reservation",
        "credit_release_reservation",
        {"p_reservation_id": "00000000-0000-4000-8000-000000000000"},
        "DC031",
        {"reservation_id": "00000000-0000-4000-8000-000000000000"},
        ("00000000-0000-4000-8000-000000000000",),
    ),
    ErrorCase(
        "DC040 settle of a released reservation",
        "credit_settle_reservation",
        {"p_reservation_id": "<released_reservation>", "p_actual_amount": 1},
        "DC040",
        {"reservation_id": "<released_reservation>", "status": "released"},
        ("<released_reservation>", "released"),
    ),
    ErrorCase(
        "DC040 release of a settled reservation",
        "credit_release_reservation",
        {"p_reservation_id": "<settled_reservation>"},
        "DC040",
        {"reservation_id": "<settled_reservation>", "status": "settled"},
        ("<settled_reservation>", "settled"),
    ),
    ErrorCase(
        "DC041 settle again with another amount",
        "credit_settle_reservation",
        {"p_reservation_id": "<settled_reservation>", "p_actual_amount": 6},
        "DC041",
        {"reservation_id": "<settled_reservation>", "settled_amount": 5, "actual_amount": 6},
        ("<settled_reservation>", "5", "6"),
    ),
    ErrorCase(
        "DC050 refund of more than was charged",
        "credit_refund_transaction",
        {"p_transaction_id": "<usage_tx>", "p_amount": 11},
        "DC050",
        {
            "transaction_id": "<usage_tx>",
            "requested": 11,
            "refundable": 10,
            "charged": 10,
            "refunded": 0,
        },
        ("11", "10"),
    ),
    ErrorCase(
        "DC051 refund of a credit",
        "credit_refund_transaction",
        {"p_transaction_id": "<add_tx>"},
        "DC051",
        {"transaction_id": "<add_tx>", "type": "adjustment"},
        ("<add_tx>", "adjustment"),
    ),
]


def fill(value: Any, funded: JSON) -> Any:
    """Replace ``<name>`` placeholders (whole values or parts of strings) from ``funded``."""
    if isinstance(value, str):
        for name, real in funded.items():
            value = value.replace(f"<{name}>", str(real))
        return value
    if isinstance(value, dict):
        return {key: fill(item, funded) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, funded) for item in value]
    return value


@pytest.mark.parametrize("case", ERROR_CASES, ids=[case.name for case in ERROR_CASES])
def test_ducto_error_arrives_with_its_status_and_json_details(
    service: Api, db: psycopg.Connection[Any], funded: JSON, case: ErrorCase
) -> None:
    user = funded["user_id"]
    before = ledger_rows(db, user)
    body = expect_error(
        service.rpc(case.function, fill(case.args, funded)),
        status_of(case.code),
        case.code,
        message_contains=fill(list(case.message_parts), funded),
    )
    details = error_details(body)
    expected = fill(case.details, funded)
    if case.exact:
        assert details == expected
    else:
        assert {key: details.get(key) for key in expected} == expected, details
    assert ledger_rows(db, user) == before


def test_insufficient_credits_does_not_consume_the_key(
    service: Api, db: psycopg.Connection[Any]
) -> None:
    """A refused keyed deduct writes nothing, so the same key works after a top-up."""
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 5}))
    args = {"p_user_id": user, "p_amount": 8, "p_idempotency_key": "retry-me"}
    body = expect_error(service.rpc("credit_deduct_credits", args), 402, "DC010")
    assert error_details(body) == {"user_id": user, "available": 5, "needed": 8, "min_balance": 0}
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 5}))
    result = expect_ok(service.rpc("credit_deduct_credits", args))
    assert (result["amount"], result["balance_after"], result["is_replay"]) == (8, 2, False)
    # one key record: the debit's journal row (a one-call debit keeps none elsewhere)
    records = db.execute(
        "select (select count(*) from public.credit_transactions t"
        "        where t.account_id = a.id and t.request_hash is not null),"
        "       (select count(*) from public.credit_idempotency_keys k where k.account_id = a.id)"
        " from public.credit_accounts a where a.user_id = %s",
        (user,),
    ).fetchone()
    assert records == (1, 0)


# ---------------------------------------------------------------------------
# Malformed JSON input: refused with a ducto or PostgreSQL code, never a write
# ---------------------------------------------------------------------------

# (raw JSON value, SQLSTATE or PostgREST code, HTTP status)
BAD_AMOUNTS: list[tuple[str, str, int]] = [
    ("1.5", "DC001", 422),
    ("0.0000001", "DC001", 422),
    ('"NaN"', "DC001", 422),
    ('"Infinity"', "DC001", 422),
    ('"-Infinity"', "DC001", 422),
    ("-1", "DC001", 422),
    ("1e400", "DC001", 422),
    (str(MAX_AMOUNT + 1), "DC001", 422),
    ("9223372036854775808", "DC001", 422),
    ("null", "DC001", 422),
    ("true", "22P02", 400),
    ("false", "22P02", 400),
    ('"abc"', "22P02", 400),
    ('""', "22P02", 400),
    ("[1]", "22P02", 400),
    ('{"amount": 1}', "22P02", 400),
    # not JSON at all: PostgREST refuses the body before PostgreSQL sees it
    ("NaN", "PGRST102", 400),
    ("Infinity", "PGRST102", 400),
]

# (function, the argument under test, minimum, other arguments with placeholders)
AMOUNT_ARGUMENTS: list[tuple[str, str, int, dict[str, Any]]] = [
    ("credit_add_credits", "p_amount", 1, {"p_user_id": "<user_id>"}),
    ("credit_deduct_credits", "p_amount", 1, {"p_user_id": "<user_id>"}),
    ("credit_deduct_credits", "p_min_balance", 0, {"p_user_id": "<user_id>", "p_amount": 1}),
    ("credit_reserve_credits", "p_amount", 1, {"p_user_id": "<user_id>"}),
    (
        "credit_settle_reservation",
        "p_actual_amount",
        0,
        {"p_reservation_id": "<active_reservation>"},
    ),
    ("credit_refund_transaction", "p_amount", 1, {"p_transaction_id": "<usage_tx>"}),
]

# zero is refused where the minimum is 1
BAD_INPUT_CASES = [
    pytest.param(function, argument, raw, code, status, others, id=f"{function}.{argument}={raw}")
    for function, argument, minimum, others in AMOUNT_ARGUMENTS
    for raw, code, status in [*BAD_AMOUNTS, *([("0", "DC001", 422)] if minimum else [])]
    # a null refund amount means "all of it"; a null min_balance is checked like the others
    if not (function == "credit_refund_transaction" and raw == "null")
]


@pytest.mark.parametrize(
    ("function", "argument", "raw", "code", "status", "others"), BAD_INPUT_CASES
)
def test_bad_amount_is_refused_without_a_write(
    service: Api,
    db: psycopg.Connection[Any],
    funded: JSON,
    function: str,
    argument: str,
    raw: str,
    code: str,
    status: int,
    others: dict[str, Any],
) -> None:
    user = funded["user_id"]
    before = ledger_rows(db, user)
    fields = [
        f"{json.dumps(key)}: {json.dumps(value)}" for key, value in fill(others, funded).items()
    ]
    body_text = "{" + ", ".join([*fields, f"{json.dumps(argument)}: {raw}"]) + "}"
    body = expect_error(service.rpc_raw(function, body_text), status, code)
    if code == "DC001":
        assert error_details(body)["argument"] == argument.removeprefix("p_")
    elif code == "22P02":
        assert body["message"].startswith("invalid input syntax for type numeric"), body
    else:
        assert body["message"] == "Empty or invalid json", body
    assert ledger_rows(db, user) == before


def test_json_string_holding_a_number_is_coerced(service: Api, db: psycopg.Connection[Any]) -> None:
    """PostgREST passes the arguments as text: ``"12"`` is the number 12 (documented)."""
    user = new_user_id()
    added = expect_ok(
        service.rpc_raw("credit_add_credits", f'{{"p_user_id": "{user}", "p_amount": "12"}}')
    )
    assert added["amount"] == 12
    taken = expect_ok(
        service.rpc_raw("credit_deduct_credits", f'{{"p_user_id": "{user}", "p_amount": "5"}}')
    )
    assert taken["amount"] == 5
    assert journal(db, user) == [(1, "adjustment", 12, 12), (2, "usage", -5, 7)]


def test_duplicate_json_key_last_one_wins(service: Api, db: psycopg.Connection[Any]) -> None:
    """A duplicated argument is not an error in PostgREST 12.0.2: the last value is used."""
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 10}))
    result = expect_ok(
        service.rpc_raw(
            "credit_deduct_credits", f'{{"p_user_id": "{user}", "p_amount": 1, "p_amount": 2}}'
        )
    )
    assert result["amount"] == 2
    assert journal(db, user)[-1] == (2, "usage", -2, 8)


@pytest.mark.parametrize(
    ("argument", "raw", "code", "message_start"),
    [
        ("p_priority", "1.5", "22P02", "invalid input syntax for type integer"),
        ("p_priority", "true", "22P02", "invalid input syntax for type integer"),
        ("p_priority", "null", "DC006", "priority must be from 0"),
        ("p_expires_at", '"tomorrow-ish"', "22007", "invalid input syntax for type timestamp"),
        ("p_metadata", '"text"', "DC003", "metadata must be a JSON object"),
        ("p_metadata", "42", "DC003", "metadata must be a JSON object"),
        ("p_tx_type", "null", "DC006", "tx_type must be one of"),
        ("p_category", "true", "DC006", "category must be one of"),
    ],
)
def test_other_bad_arguments_are_refused_without_a_write(
    service: Api,
    db: psycopg.Connection[Any],
    funded: JSON,
    argument: str,
    raw: str,
    code: str,
    message_start: str,
) -> None:
    user = funded["user_id"]
    before = ledger_rows(db, user)
    body_text = f'{{"p_user_id": "{user}", "p_amount": 1, "{argument}": {raw}}}'
    body = expect_error(service.rpc_raw("credit_add_credits", body_text), status_of(code), code)
    assert body["message"].startswith(message_start), body
    assert ledger_rows(db, user) == before


def test_uuid_arguments_must_be_uuids(
    service: Api, db: psycopg.Connection[Any], funded: JSON
) -> None:
    before = ledger_rows(db, funded["user_id"])
    calls: list[tuple[str, dict[str, Any]]] = [
        ("credit_release_reservation", {"p_reservation_id": "not-a-uuid"}),
        ("credit_settle_reservation", {"p_reservation_id": "1", "p_actual_amount": 1}),
        ("credit_refund_transaction", {"p_transaction_id": "'; drop table x; --"}),
    ]
    for function, args in calls:
        body = expect_error(service.rpc(function, args), 400, "22P02")
        assert body["message"].startswith("invalid input syntax for type uuid"), body
    assert ledger_rows(db, funded["user_id"]) == before


# ---------------------------------------------------------------------------
# Calls PostgREST cannot match, and methods it refuses
# ---------------------------------------------------------------------------


def test_missing_required_argument_matches_no_function(
    service: Api, db: psycopg.Connection[Any], funded: JSON
) -> None:
    user = funded["user_id"]
    before = ledger_rows(db, user)
    body = expect_error(
        service.rpc("credit_deduct_credits", {"p_user_id": user}),
        404,
        "PGRST202",
        message="Could not find the function public.credit_deduct_credits(p_user_id)"
        " in the schema cache",
    )
    assert body["details"].startswith("Searched for the function public.credit_deduct_credits")
    expect_error(service.rpc("credit_settle_reservation", {}), 404, "PGRST202")
    assert ledger_rows(db, user) == before


def test_unknown_argument_matches_no_function(
    service: Api, db: psycopg.Connection[Any], funded: JSON
) -> None:
    user = funded["user_id"]
    before = ledger_rows(db, user)
    body = expect_error(
        service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 5, "p_balance": 1e6}),
        404,
        "PGRST202",
        message_contains=["public.credit_add_credits(p_amount, p_balance, p_user_id)"],
    )
    assert body["details"] == (
        "Searched for the function public.credit_add_credits with parameters p_amount,"
        " p_balance, p_user_id or with a single unnamed json/jsonb parameter, but no matches"
        " were found in the schema cache."
    )
    # a misspelt argument name is just as unknown
    expect_error(
        service.rpc("credit_deduct_credits", {"user_id": user, "amount": 5}), 404, "PGRST202"
    )
    assert ledger_rows(db, user) == before


def test_unknown_function_is_404(service: Api) -> None:
    expect_error(service.rpc("credit_steal_credits", {"p_user_id": "x"}), 404, "PGRST202")


@pytest.mark.parametrize(
    ("function", "params"),
    [
        ("credit_add_credits", {"p_user_id": "<user_id>", "p_amount": "5"}),
        ("credit_deduct_credits", {"p_user_id": "<user_id>", "p_amount": "5"}),
        ("credit_reserve_credits", {"p_user_id": "<user_id>", "p_amount": "5"}),
        (
            "credit_settle_reservation",
            {"p_reservation_id": "<active_reservation>", "p_actual_amount": "5"},
        ),
        ("credit_release_reservation", {"p_reservation_id": "<active_reservation>"}),
        ("credit_refund_transaction", {"p_transaction_id": "<usage_tx>", "p_amount": "1"}),
    ],
)
def test_get_on_a_write_rpc_is_405_and_writes_nothing(
    service: Api, db: psycopg.Connection[Any], funded: JSON, function: str, params: dict[str, str]
) -> None:
    user = funded["user_id"]
    before = ledger_rows(db, user)
    body = expect_error(service.rpc_get(function, fill(params, funded)), 405, "25006")
    assert "read-only transaction" in body["message"], body
    assert ledger_rows(db, user) == before


def test_get_on_a_write_rpc_that_fails_first_answers_its_error(service: Api) -> None:
    """PostgREST 12.0.2 does not refuse GET by volatility; the function runs read-only."""
    missing = "00000000-0000-4000-8000-000000000000"
    expect_error(
        service.rpc_get("credit_release_reservation", {"p_reservation_id": missing}),
        404,
        "DC031",
    )


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_other_methods_on_rpc_are_405(
    service: Api, db: psycopg.Connection[Any], funded: JSON, method: str
) -> None:
    user = funded["user_id"]
    before = ledger_rows(db, user)
    response = service.request(
        method, "rpc/credit_add_credits", json_body={"p_user_id": user, "p_amount": 5}
    )
    expect_error(response, 405, "PGRST101", message=f"Cannot use the {method} method on RPC")
    assert ledger_rows(db, user) == before


def test_row_count_helper_sees_the_funded_account(
    db: psycopg.Connection[Any], funded: JSON
) -> None:
    """Guards the no-write checks above: the picture of the funded account is not empty."""
    picture = ledger_rows(db, funded["user_id"])
    assert all(picture.values()), picture
    assert row_count(picture) == 13
