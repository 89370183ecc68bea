"""Stripe auto top-up payments (docs/stripe.md).

:class:`StripeTopupPayer` charges one claimed top-up request with Stripe's official
``stripe`` package: a confirmed, off-session PaymentIntent of the request's amount on the
rule's customer and saved payment method, whose idempotency key is the request id (a
worker that dies after Stripe charged and runs the request again gets the same intent, not
a second payment) and whose ``metadata.ducto_topup_request_id`` lets the Stripe webhook
report it too. ``CreditManager.run_topups`` claims due requests, pays them with a payer and
reports each outcome to the ledger (``credit_complete_topup``), which grants once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

from ducto.models import TopupRequest

#: Stripe's API base URL unless ``STRIPE_API_BASE`` says otherwise (tests: localstripe).
DEFAULT_API_BASE = "https://api.stripe.com"


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    """What Stripe said about a request's payment.

    ``status`` is the PaymentIntent's (``succeeded``, ``requires_action``, ``processing``,
    ``requires_payment_method``, ``canceled``) or ``failed`` when Stripe refused it; None
    when Stripe could not be reached (nothing is reported: the request's lease runs out and
    a later run tries it again with the same idempotency key).
    """

    payment_intent_id: str | None
    status: str | None
    error: str | None = None


class TopupPayer(Protocol):
    """Pays one claimed top-up request (``run_topups`` calls it; tests may wrap it)."""

    def pay(self, request: TopupRequest) -> PaymentOutcome: ...


class StripeTopupPayer:
    """Pays top-up requests with Stripe (``api_key``: a secret or restricted key that may
    create and read PaymentIntents and read Charges)."""

    def __init__(self, api_key: str | None = None, *, api_base: str | None = None) -> None:
        import stripe  # the package is needed only by the worker

        key = api_key or os.environ.get("STRIPE_SECRET_KEY")
        if not key:
            raise ValueError("a Stripe API key is needed (api_key or STRIPE_SECRET_KEY)")
        base = api_base or os.environ.get("STRIPE_API_BASE") or DEFAULT_API_BASE
        self._stripe = stripe
        self.client = stripe.StripeClient(key, base_addresses={"api": base})

    def pay(self, request: TopupRequest) -> PaymentOutcome:
        """Create (or, once recorded, read back) the request's PaymentIntent."""
        stripe = self._stripe
        try:
            if request.payment_intent_id is not None:
                intent = self.client.v1.payment_intents.retrieve(request.payment_intent_id)
            else:
                intent = self.client.v1.payment_intents.create(
                    params={
                        "amount": request.amount_minor,
                        "currency": request.currency,
                        "customer": request.stripe_customer_id,
                        "payment_method": request.stripe_payment_method_id,
                        "off_session": True,
                        "confirm": True,
                        "metadata": {
                            "ducto_topup_request_id": request.id,
                            "ducto_user_id": request.user_id,
                            "ducto_credits": str(request.credits),
                        },
                    },
                    options={"idempotency_key": request.id},
                )
        except stripe.CardError as exc:
            # declined: Stripe names the intent it made (or its charge does)
            return PaymentOutcome(self._intent_of(exc), "failed", _reason(exc))
        except (stripe.APIConnectionError, stripe.RateLimitError):
            return PaymentOutcome(None, None, None)
        except stripe.StripeError as exc:
            return PaymentOutcome(self._intent_of(exc), "failed", _reason(exc))
        status = str(intent.status)
        error = None
        last_error = intent.last_payment_error
        if status != "succeeded" and last_error is not None:
            error = str(last_error.code or status)
        return PaymentOutcome(str(intent.id), status, error)

    def _intent_of(self, exc: Any) -> str | None:
        error = getattr(exc, "error", None)
        intent = getattr(error, "payment_intent", None) if error is not None else None
        if intent is not None:
            return str(intent["id"])
        charge = getattr(error, "charge", None) if error is not None else None
        if charge:
            try:
                found = self.client.v1.charges.retrieve(str(charge)).payment_intent
            except self._stripe.StripeError:
                return None
            return (found if isinstance(found, str) else found.id) if found else None
        return None


def _reason(exc: Any) -> str:
    code = getattr(exc, "code", None)
    message = getattr(exc, "user_message", None) or str(exc)
    return f"{code}: {message}"[:1000] if code else message[:1000]
