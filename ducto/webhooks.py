"""Signed event deliveries (docs/events.md, "Signatures").

Each POST of an event carries the header::

    ducto-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

over the exact bytes of the body. A receiver checks it with :func:`verify_signature`,
refuses a timestamp older than its tolerance (a replayed request), and drops an event
whose ``id`` it has already handled (deliveries are at least once)::

    from ducto.webhooks import verify_signature

    event = verify_signature(secret, request.body, request.headers["ducto-signature"])

The rest of this module is what a delivery worker needs, with no I/O: the request of a
claimed delivery (:func:`delivery_request`) and what an answer means
(:func:`delivery_outcome`). ``CreditManager.deliver_events``, ``ducto events deliver``
and the edge function ``credit-events-deliver`` send the same bytes and headers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ducto.errors import WebhookSignatureError
from ducto.models import EventDeliveryClaim

__all__ = [
    "SIGNATURE_HEADER",
    "DeliveryOutcome",
    "delivery_outcome",
    "delivery_request",
    "sign",
    "verify_signature",
]

#: The header that carries the signature.
SIGNATURE_HEADER = "ducto-signature"

#: A signature older (or further in the future) than this many seconds is refused.
DEFAULT_TOLERANCE = 300


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: str | bytes, timestamp: int | None = None) -> str:
    """The ``ducto-signature`` header value of ``body`` at ``timestamp`` (default: now)."""
    at = int(time.time()) if timestamp is None else timestamp
    data = body.encode() if isinstance(body, str) else body
    return f"t={at},v1={_digest(secret, at, data)}"


def verify_signature(
    secret: str,
    body: str | bytes,
    header: str | None,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: int | None = None,
) -> dict[str, Any]:
    """Check a delivery's ``ducto-signature`` header and return its event (the JSON body).

    Any ``v1`` entry may match (a header may carry several while a secret is rotated).

    Raises:
        WebhookSignatureError: the header is missing or malformed, its timestamp is
            outside ``tolerance`` seconds of ``now``, or no signature matches.
    """
    if not header:
        raise WebhookSignatureError(f"the {SIGNATURE_HEADER} header is missing")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookSignatureError(
            f"the {SIGNATURE_HEADER} header must read t=<unix time>,v1=<hex>, got {header[:100]!r}"
        )
    current = int(time.time()) if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookSignatureError(
            f"the signature's timestamp {timestamp} is more than {tolerance} s from now ({current})"
        )
    data = body.encode() if isinstance(body, str) else body
    expected = _digest(secret, timestamp, data)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise WebhookSignatureError("no signature of the header matches the body")
    event: dict[str, Any] = json.loads(data)
    return event


def delivery_request(
    claim: EventDeliveryClaim, timestamp: int | None = None
) -> tuple[dict[str, str], bytes]:
    """The headers and body to POST for a claimed delivery."""
    body = claim.body.encode()
    headers = {
        "content-type": "application/json",
        SIGNATURE_HEADER: sign(claim.secret, body, timestamp),
        "ducto-event-id": claim.event_id,
        "ducto-delivery-attempt": str(claim.attempt),
        "user-agent": "ducto-events",
    }
    return headers, body


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What an attempt came to: delivered, or the error and when to retry (None: the
    ledger's backoff)."""

    delivered: bool
    error: str | None = None
    retry_after: int | None = None


def delivery_outcome(status: int, headers: Mapping[str, str]) -> DeliveryOutcome:
    """A 2xx answer is delivered; anything else fails, retried after the receiver's
    ``Retry-After`` (in seconds) when it gives one."""
    if 200 <= status < 300:
        return DeliveryOutcome(True)
    retry = headers.get("retry-after", "").strip()
    retry_after = min(int(retry), 86400) if retry.isdigit() else None
    return DeliveryOutcome(False, f"HTTP {status}", retry_after)
