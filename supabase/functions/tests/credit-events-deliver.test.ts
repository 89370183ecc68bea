// credit-events-deliver against the stack: the service role's run POSTs every due event to
// a real receiver (Deno.serve in this test), signed; a receiver that fails then recovers
// gets each event once it answers 2xx, and the ledger marks it delivered; a user or anon
// cannot make it deliver.

import assert from "node:assert/strict";
import { signature } from "../credit-events-deliver/index.ts";
import {
  ANON_KEY,
  callFunction,
  expectStatus,
  newUserId,
  SECRET_KEY,
  SERVICE_KEY,
  serviceRpc,
  serviceSelect,
  userToken,
} from "./helpers.ts";

const SECRET = "deno-events-test-secret";

type Report = { claimed: number; delivered: number; failed: number; errors: string[] };

function runDelivery(credentials: Record<string, string>): Promise<Response> {
  return callFunction("credit-events-deliver", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...credentials },
    body: JSON.stringify({ batch_size: 100, timeout_ms: 5000 }),
  });
}

Deno.test("a failing then recovering receiver gets every event once, signed", async () => {
  let failing = true;
  const accepted: Record<string, unknown>[] = [];
  const receiver = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const body = await req.text();
    if (failing) return new Response(null, { status: 503, headers: { "retry-after": "0" } });
    const header = req.headers.get("ducto-signature") ?? "";
    const t = Number(/t=(\d+)/.exec(header)?.[1]);
    assert.equal(header, await signature(SECRET, body, t), "the signature verifies");
    accepted.push(JSON.parse(body));
    return new Response(null, { status: 204 });
  });
  const url = `http://127.0.0.1:${receiver.addr.port}/hook`;
  // this test's endpoint alone is enabled while it runs
  const before = await serviceRpc("credit_list_event_endpoints");
  for (const endpoint of before.filter((e) => e.enabled)) {
    await serviceRpc("credit_set_event_endpoint", {
      p_id: endpoint.id,
      p_url: endpoint.url,
      p_secret: SECRET,
      p_enabled: false,
    });
  }
  const endpoint = await serviceRpc("credit_set_event_endpoint", { p_url: url, p_secret: SECRET });
  try {
    const user = newUserId();
    await serviceRpc("credit_set_alert", { p_user_id: user, p_threshold: 5 });
    await serviceRpc("credit_add_credits", { p_user_id: user, p_amount: 10 });
    await serviceRpc("credit_deduct_credits", { p_user_id: user, p_amount: 10 });
    const events = await serviceRpc("credit_list_events", { p_user_id: user });
    assert.deepEqual(events.map((e) => e.type), ["balance.low", "balance.depleted"]);

    const down = await expectStatus<Report>(await runDelivery({ apikey: SECRET_KEY }), 200);
    assert.deepEqual([down.claimed, down.delivered, down.failed], [2, 0, 2]);

    failing = false;
    const up = await expectStatus<Report>(
      await runDelivery({ Authorization: `Bearer ${SERVICE_KEY}` }),
      200,
    );
    assert.deepEqual([up.claimed, up.delivered, up.failed], [2, 2, 0]);
    assert.deepEqual(accepted.map((e) => e.id).sort(), events.map((e) => e.id).sort());
    const rows = await serviceSelect<{ delivery: string }>(
      "credit_events",
      `user_id=eq.${user}&select=delivery`,
    );
    assert.deepEqual(rows.map((r) => r.delivery), ["delivered", "delivered"]);
    const again = await expectStatus<Report>(await runDelivery({ apikey: SECRET_KEY }), 200);
    assert.equal(again.claimed, 0, "delivered once: nothing is due");
  } finally {
    await serviceRpc("credit_set_event_endpoint", {
      p_id: endpoint.id,
      p_url: url,
      p_secret: SECRET,
      p_enabled: false,
    });
    await receiver.shutdown();
  }
});

Deno.test("a user or anon cannot make it deliver", async () => {
  const user = await userToken(newUserId());
  const asUser = await runDelivery({ apikey: ANON_KEY, Authorization: `Bearer ${user}` });
  assert.equal((await expectStatus(asUser, 403)).code, "42501");
  const asAnon = await runDelivery({ apikey: ANON_KEY });
  assert.equal((await expectStatus(asAnon, 401)).code, "42501");
});
