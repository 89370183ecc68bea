"""A caller's mistakes against the real stack, through every store: each is answered with
a typed error that names the argument or carries the server's reason, and leaves the
ledger as it was.

- ids: ``uuid.UUID`` objects work wherever an id is taken; a NUL byte or a transaction or
  reservation id that is not a UUID is refused naming the argument, nothing written;
- a charge's ``transaction_id`` refunds it as it is; a charge of 0 credits has nothing to
  refund;
- a wrong database URL (password, database) fails at once with the server's reason, and
  without a line of pool log.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from ducto import (
    AsyncCreditManager,
    CreditManager,
    InvalidInputError,
    RefundError,
)
from ducto.errors import StoreConnectionError
from ducto.interface import AsyncPostgresStore, PostgresStore


def journal_rows(db: psycopg.Connection[Any], user_id: str) -> int:
    row = db.execute(
        "select count(*) from public.credit_transactions where user_id = %s", [user_id]
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_uuid_objects_are_ids_everywhere(manager: CreditManager) -> None:
    user = uuid.uuid4()  # a Supabase user's id
    manager.add_credits(user, 100)
    hold = manager.reserve_credits(user, 10)
    settled = manager.settle_reservation(uuid.UUID(hold.reservation_id), 8)
    assert settled.transaction_id is not None
    refund = manager.refund_credits(uuid.UUID(settled.transaction_id), 3)
    released = manager.release_reservation(
        uuid.UUID(manager.reserve_credits(user, 5).reservation_id)
    )
    assert (refund.refunded_transaction_id, released.status) == (settled.transaction_id, "released")
    # the account is the one of the user id's text
    balance = manager.get_balance(str(user))
    assert (balance.user_id, balance.balance, balance.held) == (str(user), 95, 0)
    team = uuid.uuid4()
    assert manager.upsert_team(team, "Team").team_id == str(team)
    assert manager.set_team_member(team, user).user_id == str(user)


def test_a_charge_is_refunded_by_its_transaction_id_as_it_is(
    manager: CreditManager, db: psycopg.Connection[Any]
) -> None:
    user = f"mistake-{uuid.uuid4()}"
    manager.add_credits(user, 50)
    charged = manager.settle_reservation(manager.reserve_credits(user, 10).reservation_id, 7)
    refund = manager.refund_credits(charged.transaction_id)
    assert (refund.refunded_transaction_id, refund.amount) == (charged.transaction_id, 7)
    free = manager.settle_reservation(manager.reserve_credits(user, 10).reservation_id, 0)
    assert free.transaction_id is None  # 0 credits: no journal row
    before = journal_rows(db, user)
    with pytest.raises(RefundError, match="nothing to refund"):
        manager.refund_credits(free.transaction_id)
    assert journal_rows(db, user) == before


#: a mistake on the account of ``user`` with its hold ``hold``, and the argument named
MISTAKES: dict[str, tuple[Callable[[CreditManager, str, str], object], str]] = {
    "NUL in a user id": (lambda m, user, hold: m.add_credits(f"{user}\x00", 5), "user_id"),
    "NUL in a key": (
        lambda m, user, hold: m.add_credits(user, 5, idempotency_key="order\x0017"),
        "idempotency_key",
    ),
    "NUL in metadata": (
        lambda m, user, hold: m.add_credits(user, 5, metadata={"note": "a\x00b"}),
        "metadata",
    ),
    "transaction not a UUID": (
        lambda m, user, hold: m.refund_credits("tx_17"),
        "transaction_id",
    ),
    "long reservation id": (
        lambda m, user, hold: m.settle_reservation("r" * 10_000, 5),
        "reservation_id",
    ),
    "NUL in a reservation id": (
        lambda m, user, hold: m.release_reservation(f"{hold}\x00"),
        "reservation_id",
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES.values(), ids=MISTAKES.keys())
def test_a_bad_id_or_text_is_refused_by_name(
    manager: CreditManager,
    db: psycopg.Connection[Any],
    mistake: tuple[Callable[[CreditManager, str, str], object], str],
) -> None:
    use, argument = mistake
    user = f"mistake-{uuid.uuid4()}"
    manager.add_credits(user, 20)
    hold = manager.reserve_credits(user, 5).reservation_id
    with pytest.raises(InvalidInputError) as caught:
        use(manager, user, hold)
    assert caught.value.message.startswith(f"{argument} must ")
    assert len(caught.value.message) < 200
    # nothing written: the grant and the hold only
    assert journal_rows(db, user) == 1
    balance = manager.get_balance(user)
    assert (balance.balance, balance.held) == (20, 5)


def with_url(database_url: str, *, password: str | None = None, dbname: str | None = None) -> str:
    parts = urlsplit(database_url)
    netloc = parts.netloc
    if password is not None:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}:{password}@{host}"
    path = f"/{dbname}" if dbname is not None else parts.path
    return urlunsplit(parts._replace(netloc=netloc, path=path))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"password": "not-the-password"}, "password authentication failed"),
        ({"dbname": "no_such_database"}, 'database "no_such_database" does not exist'),
    ],
    ids=["password", "database"],
)
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_wrong_database_url_fails_at_once_with_the_servers_reason(
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    flavour: str,
    change: dict[str, str],
    reason: str,
) -> None:
    dsn = with_url(database_url, **change)

    async def first_async_call() -> None:
        store = AsyncPostgresStore(dsn)
        try:
            await AsyncCreditManager(store).get_balance("alice")
        finally:
            await store.close()

    with (
        caplog.at_level(logging.INFO, logger="psycopg.pool"),
        pytest.raises(StoreConnectionError) as caught,
    ):
        if flavour == "sync":
            store = PostgresStore(dsn)
            try:
                CreditManager(store).get_balance("alice")
            finally:
                store.close()
        else:
            asyncio.run(first_async_call())
    assert reason in caught.value.message
    assert "not-the-password" not in caught.value.message
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
