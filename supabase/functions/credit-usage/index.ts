// credit-usage: a trusted server charges one usage event.
//
//   POST /functions/v1/credit-usage
//   Authorization: Bearer <the service-role key>
//   {"user_id": "...", "metrics": {"model": "...", "input_tokens": 500, ...},
//    "metadata": {...}, "idempotency_key": "..."}          (the last two optional)
//
// The database prices the metrics under the active pricing and charges them in one
// transaction (credit_deduct_usage): the caller says what was used, never what it
// costs. The caller's token goes to PostgREST as is, so the database's grants decide
// who may charge: the service role may, a signed-in user or the anon key may not.
// Answers credit_deduct_result; a repeated idempotency key answers the first charge with
// is_replay = true.

import {
  allowMethod,
  bearerAuthorization,
  checkFields,
  json,
  jsonObject,
  serve,
  unwrap,
} from "../_shared/http.ts";
import type { Json } from "../_shared/database.types.ts";
import { callerClient } from "../_shared/supabase.ts";

async function chargeUsage(req: Request): Promise<Response> {
  allowMethod(req, "POST");
  const { header } = bearerAuthorization(req);
  const body = await jsonObject(req);
  checkFields(body, {
    user_id: "string",
    metrics: "object",
    "metadata?": "object",
    "idempotency_key?": "string",
  });
  const charged = unwrap(
    await callerClient(header).rpc("credit_deduct_usage", {
      p_user_id: body.user_id as string,
      p_metrics: body.metrics as Json,
      p_metadata: (body.metadata ?? {}) as Json,
      p_idempotency_key: body.idempotency_key as string | undefined,
    }),
  );
  return json(charged);
}

export default { fetch: serve(chargeUsage) } satisfies Deno.ServeDefaultExport;
