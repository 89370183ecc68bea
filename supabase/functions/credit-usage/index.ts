// credit-usage: a trusted server charges one usage event.
//
//   POST /functions/v1/credit-usage                 (verify_jwt = false: see below)
//   apikey: <a secret key, sb_secret_...>           or
//   Authorization: Bearer <the legacy service-role key>
//   {"user_id": "...", "metrics": {"model": "...", "input_tokens": 500, ...},
//    "metadata": {...}, "idempotency_key": "..."}          (the last two optional)
//
// The database prices the metrics under the active pricing and charges them in one
// transaction (credit_deduct_usage): the caller says what was used, never what it
// costs. The caller's credential goes on to the project's API as is: the gateway runs a
// secret key as the service role and refuses a key it never issued, PostgREST verifies a
// JWT, and the database's grants decide who may charge: the service role may, a
// signed-in user, the anon or a publishable key may not. The runtime's verify_jwt would
// refuse a secret key (not a JWT) before the function runs, so it is off: nothing is
// charged without the API's own check of the credential.
// Answers credit_deduct_result; a repeated idempotency key answers the first charge with
// is_replay = true.

import { callerCredential, checkFields, json, jsonObject, serve, unwrap } from "../_shared/http.ts";
import type { Json } from "../_shared/database.types.ts";
import { credentialClient } from "../_shared/supabase.ts";

async function chargeUsage(req: Request): Promise<Response> {
  const credential = callerCredential(req);
  const body = await jsonObject(req);
  checkFields(body, {
    user_id: "string",
    metrics: "object",
    "metadata?": "object",
    "idempotency_key?": "string",
  });
  const charged = unwrap(
    await credentialClient(credential).rpc("credit_deduct_usage", {
      p_user_id: body.user_id as string,
      p_metrics: body.metrics as Json,
      p_metadata: (body.metadata ?? {}) as Json,
      p_idempotency_key: body.idempotency_key as string | undefined,
    }),
  );
  return json(charged);
}

export default { fetch: serve("POST", chargeUsage) } satisfies Deno.ServeDefaultExport;
