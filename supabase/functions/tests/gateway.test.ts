// The local stack's /functions/v1/ route, as Supabase's: no apikey needed (the runtime
// checks the JWT where verify_jwt is on), and only folders with an index.ts are functions.

import assert from "node:assert/strict";
import { callFunction, expectStatus } from "./helpers.ts";

Deno.test("unknown names, _shared and tests are not functions", async () => {
  for (const name of ["no-such-function", "_shared", "tests", "_shared/http.ts"]) {
    const body = await expectStatus(await callFunction(name), 404);
    assert.deepEqual(body, { message: "Function not found" });
  }
});

Deno.test("a function without verify_jwt is reached without any key or token", async () => {
  const response = await callFunction("credit-topup-webhook", { method: "POST", body: "{}" });
  // the function itself answered: it wants a signature
  assert.equal((await expectStatus(response, 400)).code, "invalid_signature");
});
