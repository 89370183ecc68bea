"""Lifecycle events (docs/events.md): ``CreditEventEmitter`` on its own: subscribe and
unsubscribe, one type or all, a replay told to nobody, a failing subscriber logged and
skipped (the managers' events on the real stack: tests/integration/test_events.py).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from ducto.events import CreditEvent, CreditEventEmitter, CreditEventType
from ducto.models import AddCreditsResult


def added(user_id: str = "u", amount: int = 5, *, is_replay: bool = False) -> AddCreditsResult:
    now = datetime.now(UTC)
    return AddCreditsResult(
        "t", "g", user_id, amount, "grant", "paid", 50, None, amount, now, is_replay
    )


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
