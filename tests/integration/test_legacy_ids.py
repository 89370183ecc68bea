"""Journal ids from before the partitioned journal: a ledger written by the schema as it was
before 20261205001400 (whose ids do not carry their row's month), upgraded by the remaining
migrations (20261205001600_credit_partitions gives every such row an id that carries its
month and keeps the old one in ``credit_private.legacy_transaction_ids``).

After the upgrade every journal row lies in the partition of its month; the refund, the
grants, the draws and the hold point to the new ids; the old id of a charge still refunds
it; a keyed one-call debit's key replays; the ledger verifies.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from helpers_process import install_test_clock
from test_partitions import MISPLACED
from test_upgrade import one, rows, setup

from ducto._migrations import PREPARE_RECORD, RECORD, bundled

#: the last schema whose journal ids did not carry their row's created_at
BEFORE = "20261205001300"
T0 = "2030-01-10 09:00:00+00"
T1 = "2030-02-03 09:00:00+00"


def install_up_to(url: str, version: str) -> None:
    """The database as setup() left it at ``version``: the migrations up to it, recorded."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(PREPARE_RECORD)
        for migration in bundled():
            if migration.version > version:
                break
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(RECORD, (migration.version, migration.name))


def test_ids_from_before_the_partitions_follow_their_rows(new_database: Callable[..., str]) -> None:
    url = new_database()
    install_up_to(url, BEFORE)
    install_test_clock(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select set_config('ducto.now', %s, false)", (T0,))
        grant = rows(conn, "select * from credit_add_credits('lena', 1000)")[0]
        conn.execute("select credit_add_credits('lena', 50, 'grant', 'promotional', 10)")
        charge = rows(conn, "select * from credit_deduct_credits('lena', 120)")[0]
        keyed = rows(conn, "select * from credit_deduct_credits('lena', 7, 0, '{}', 'legacy-1')")[0]
        hold = one(conn, "select reservation_id from credit_reserve_credits('lena', 40)")
        conn.execute("select credit_settle_reservation(%s, 30)", (hold,))
        conn.execute("select set_config('ducto.now', %s, false)", (T1,))
        refund = rows(
            conn, "select * from credit_refund_transaction(%s, 20)", charge["transaction_id"]
        )[0]
        before = {
            "balance": one(conn, "select balance from credit_accounts where user_id = 'lena'"),
            "journal": rows(
                conn,
                "select seq, type, amount, balance_after, created_at from credit_transactions"
                " order by seq",
            ),
        }
        old_ids = {str(row["id"]) for row in rows(conn, "select id from credit_transactions")}
        assert rows(conn, "select * from credit_verify_ledger()") == []

    setup(url)
    install_test_clock(url)

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select set_config('ducto.now', %s, false)", (T1,))
        # the same rows, balances and times
        assert (
            one(conn, "select balance from credit_accounts where user_id = 'lena'")
            == before["balance"]
        )
        assert (
            rows(
                conn,
                "select seq, type, amount, balance_after, created_at from credit_transactions"
                " order by seq",
            )
            == before["journal"]
        )
        # every row has a new id that carries its month, and the old one is kept
        legacy = {
            str(row["legacy_id"]): str(row["id"])
            for row in rows(conn, "select legacy_id, id from credit_private.legacy_transaction_ids")
        }
        assert set(legacy) == old_ids
        assert not old_ids & {
            str(row["id"]) for row in rows(conn, "select id from credit_transactions")
        }
        assert (
            rows(
                conn,
                """select id from credit_transactions
                   where date_trunc('month', credit_private.uuid_time(id))
                         <> date_trunc('month', created_at)""",
            )
            == []
        )
        assert rows(conn, MISPLACED) == []

        # what pointed to a row points to its new id
        new_charge = legacy[str(charge["transaction_id"])]
        assert (
            one(conn, "select refund_of::text from credit_transactions where id = %s",
                legacy[str(refund["transaction_id"])])
            == new_charge
        )  # fmt: skip
        assert (
            one(conn, "select transaction_id::text from credit_grants where id = %s",
                grant["grant_id"])
            == legacy[str(grant["transaction_id"])]
        )  # fmt: skip
        assert one(
            conn, "select transaction_id::text from credit_reservations where id = %s", hold
        ) in set(legacy.values())
        for name, query in {
            "grants": "select transaction_id from credit_grants",
            "reservations": "select transaction_id from credit_reservations"
            " where transaction_id is not null",
            "draws": "select transaction_id from credit_grant_draws",
            "refunds": "select refund_of as transaction_id from credit_transactions"
            " where refund_of is not null",
        }.items():
            pointed = {str(row["transaction_id"]) for row in rows(conn, query)}
            assert pointed, name
            assert pointed <= set(legacy.values()), name
        assert rows(conn, "select * from credit_verify_ledger()") == []

        # the old id of the charge still refunds it, up to what is left of it
        again = rows(
            conn, "select * from credit_refund_transaction(%s, 30)", charge["transaction_id"]
        )[0]
        assert again["amount"] == 30
        assert (
            one(conn, "select refund_of::text from credit_transactions where id = %s",
                again["transaction_id"])
            == new_charge
        )  # fmt: skip
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("select credit_refund_transaction(%s, 100)", (charge["transaction_id"],))
        # 120 charged, 50 refunded: 70 left
        assert refused.value.sqlstate == "DC050"
        assert "refundable of transaction" in str(refused.value) and ": 70 (charged 120" in str(
            refused.value
        )

        # the keyed debit's key replays, with the row's new id
        replay = rows(conn, "select * from credit_deduct_credits('lena', 7, 0, '{}', 'legacy-1')")[
            0
        ]
        assert replay["is_replay"] is True
        assert str(replay["transaction_id"]) == legacy[str(keyed["transaction_id"])]
        assert replay["balance_after"] == keyed["balance_after"]
        assert rows(conn, "select * from credit_verify_ledger()") == []
        assert rows(conn, MISPLACED) == []
