// credit-topup-webhook: the endpoint of earlier releases for paid checkouts, kept for the
// endpoints already configured with it. It is the same webhook as credit-stripe-webhook
// (docs/stripe.md): a Stripe Checkout Session with `client_reference_id` = the user id
// and `metadata.credits` adds the credits as a `purchase`, keyed by the session id, once
// paid; every other event ducto handles is applied as there.
//
//   POST /functions/v1/credit-topup-webhook        (no JWT: verify_jwt = false)
//   Stripe-Signature: t=...,v1=...                  signed with STRIPE_WEBHOOK_SECRET

import { serve } from "../_shared/http.ts";
import { stripeWebhook } from "../_shared/stripe-webhook.ts";

export default { fetch: serve("POST", stripeWebhook) } satisfies Deno.ServeDefaultExport;
