"""Signed event deliveries (ducto.webhooks), and the checks of the events' arguments, with
no service: a signature made by ``sign`` verifies, and any change of body, secret or time
is refused; an answer's status decides delivered or retried."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from ducto import _rpc
from ducto.errors import InvalidInputError, WebhookSignatureError
from ducto.models import EventDeliveryClaim
from ducto.webhooks import delivery_outcome, delivery_request, sign, verify_signature

SECRET = "whsec-test-0123456789"
BODY = json.dumps({"id": "0190f1d2-0000-7000-8000-000000000001", "type": "balance.low"})


def test_the_header_is_stripes_scheme() -> None:
    header = sign(SECRET, BODY, 1_800_000_000)
    expected = hmac.new(SECRET.encode(), f"1800000000.{BODY}".encode(), hashlib.sha256).hexdigest()
    assert header == f"t=1800000000,v1={expected}"


def test_a_signature_verifies_and_returns_the_event() -> None:
    header = sign(SECRET, BODY, 1_800_000_000)
    event = verify_signature(SECRET, BODY.encode(), header, now=1_800_000_100)
    assert event["type"] == "balance.low"
    # one of several v1 entries (a rotated secret) is enough
    rotated = f"{header},v1={'0' * 64}"
    assert verify_signature(SECRET, BODY, rotated, now=1_800_000_000)["id"]


@pytest.mark.parametrize(
    ("secret", "body", "now", "message"),
    [
        ("another-secret-0123", BODY, 1_800_000_000, "no signature"),
        (SECRET, BODY.replace("low", "lov"), 1_800_000_000, "no signature"),
        (SECRET, BODY, 1_800_000_301, "more than 300 s"),
        (SECRET, BODY, 1_799_999_699, "more than 300 s"),
    ],
)
def test_a_changed_body_secret_or_time_is_refused(
    secret: str, body: str, now: int, message: str
) -> None:
    header = sign(SECRET, BODY, 1_800_000_000)
    with pytest.raises(WebhookSignatureError, match=message):
        verify_signature(secret, body, header, now=now)


@pytest.mark.parametrize("header", [None, "", "v1=abc", "t=12", "t=x,v1=ab"])
def test_a_missing_or_malformed_header_is_refused(header: str | None) -> None:
    with pytest.raises(WebhookSignatureError):
        verify_signature(SECRET, BODY, header, now=12)


def test_a_delivery_request_signs_the_claims_exact_body() -> None:
    claim = EventDeliveryClaim("c", "e", "p", 3, "http://x/hook", SECRET, BODY)
    headers, body = delivery_request(claim, 1_800_000_000)
    assert body == BODY.encode()
    assert headers["ducto-signature"] == sign(SECRET, BODY, 1_800_000_000)
    assert headers["ducto-event-id"] == "e"
    assert headers["ducto-delivery-attempt"] == "3"


def test_only_a_2xx_answer_is_delivered() -> None:
    assert delivery_outcome(200, {}).delivered
    assert delivery_outcome(204, {}).delivered
    refused = delivery_outcome(503, {"retry-after": "7"})
    assert (refused.delivered, refused.error, refused.retry_after) == (False, "HTTP 503", 7)
    assert delivery_outcome(302, {}).retry_after is None
    assert not delivery_outcome(302, {}).delivered
    # an HTTP-date Retry-After is not understood: the ledger's backoff applies
    assert delivery_outcome(429, {"retry-after": "Wed, 21 Oct 2015"}).retry_after is None


@pytest.mark.parametrize(
    "build",
    [
        lambda: _rpc.set_alert(None, None, 5, None),
        lambda: _rpc.set_alert("u", "plan", 5, None),
        lambda: _rpc.set_alert("u", None, 5, 10),
        lambda: _rpc.set_alert("u", None, None, 0),
        lambda: _rpc.set_alert("u", None, None, 101),
        lambda: _rpc.set_alert("u", None, None, float("nan")),
        lambda: _rpc.list_events(None, None, ["balance.lo"], 10),
        lambda: _rpc.list_events(None, None, "balance.low", 10),
        lambda: _rpc.list_events(None, "not-a-uuid", None, 10),
        lambda: _rpc.list_events(None, None, None, 1001),
        lambda: _rpc.set_event_endpoint("http://x", "s" * 16, ["nope"], True, None),
        lambda: _rpc.finish_event_delivery("00000000-0000-4000-8000-000000000000", True, None, -1),
        lambda: _rpc.claim_event_deliveries(0, 60),
    ],
)
def test_bad_event_arguments_are_refused_before_a_call(build: object) -> None:
    with pytest.raises(InvalidInputError) as caught:
        build()  # type: ignore[operator]
    assert caught.value.code == "DC006"


def test_a_threshold_is_a_whole_number_of_credits() -> None:
    with pytest.raises(InvalidInputError) as caught:
        _rpc.set_alert("u", None, 0, None)
    assert caught.value.code == "DC001"
