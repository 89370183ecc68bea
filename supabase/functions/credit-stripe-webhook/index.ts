// credit-stripe-webhook: every Stripe event ducto handles (docs/stripe.md): paid
// checkouts add credits, refunds and disputes claw them back, subscriptions assign plans
// and their paid invoices grant allowances, and automatic top-ups complete.
//
//   POST /functions/v1/credit-stripe-webhook       (no JWT: verify_jwt = false)
//   Stripe-Signature: t=...,v1=...                  signed with STRIPE_WEBHOOK_SECRET

import { serve } from "../_shared/http.ts";
import { stripeWebhook } from "../_shared/stripe-webhook.ts";

export default { fetch: serve("POST", stripeWebhook) } satisfies Deno.ServeDefaultExport;
