// The local stack's gateway and edge runtime, as a client sees them: /functions/v1/ needs
// no apikey (the runtime checks the JWT where verify_jwt is on), only folders with an
// index.ts are functions, every error the stack makes itself has PostgREST's body, and
// browsers get their CORS answers.

import assert from "node:assert/strict";
import {
  ANON_KEY,
  callFunction,
  expectStatus,
  newUserId,
  PUBLISHABLE_KEY,
  SECRET_KEY,
  SERVICE_KEY,
  SUPABASE_URL,
  userToken,
} from "./helpers.ts";

const ORIGIN = "http://localhost:8000";

/**
 * Asserts that `response` is an error of `status` and `code` in PostgREST's shape, as JSON
 * a browser on another origin may read, and answers its body.
 */
async function expectError(
  response: Response,
  status: number,
  code: string,
): Promise<{ code: string; message: string; details: unknown; hint: unknown }> {
  const body = await expectStatus<Record<string, unknown>>(response, status);
  assert.deepEqual(Object.keys(body).sort(), ["code", "details", "hint", "message"]);
  assert.equal(body.code, code, JSON.stringify(body));
  assert.equal(typeof body.message, "string");
  assert.match(response.headers.get("content-type") ?? "", /^application\/json/);
  assert.equal(response.headers.get("access-control-allow-origin"), "*");
  return body as { code: string; message: string; details: unknown; hint: unknown };
}

function rest(path: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${SUPABASE_URL}/rest/v1/${path}`, init);
}

/** A browser's preflight for a request with `method` and supabase-js's headers. */
function preflight(url: string, method: string): Promise<Response> {
  return fetch(url, {
    method: "OPTIONS",
    headers: {
      Origin: ORIGIN,
      "Access-Control-Request-Method": method,
      "Access-Control-Request-Headers": "apikey, authorization, x-client-info, x-region",
    },
  });
}

Deno.test("unknown names, _shared and tests are not functions", async () => {
  for (const name of ["no-such-function", "_shared", "tests", "_shared/http.ts"]) {
    const error = await expectError(await callFunction(name), 404, "NOT_FOUND");
    assert.equal(error.message, "Requested function was not found");
  }
});

Deno.test("a function without verify_jwt is reached without any key or token", async () => {
  const response = await callFunction("credit-topup-webhook", { method: "POST", body: "{}" });
  // the function itself answered: it wants a signature
  await expectError(response, 400, "invalid_signature");
});

Deno.test("the gateway's apikey refusals have PostgREST's shape", async () => {
  const refusals: [Record<string, string>, string][] = [
    [{}, "No API key found in request"],
    [{ Authorization: `Bearer ${SERVICE_KEY}` }, "No API key found in request"],
    [{ apikey: "not-a-key" }, "Invalid API key"],
    [{ apikey: `${ANON_KEY}x` }, "Invalid API key"],
    [
      { apikey: PUBLISHABLE_KEY, Authorization: `Bearer ${SECRET_KEY}` },
      "An sb_ key in Authorization must equal the apikey header",
    ],
  ];
  for (const [headers, message] of refusals) {
    for (const path of ["", "rpc/credit_get_balance", "credit_transactions"]) {
      const error = await expectError(await rest(path, { headers }), 401, "42501");
      assert.equal(error.message, message);
      assert.equal(error.details, null);
      assert.match(String(error.hint), /\S/);
    }
  }
});

Deno.test("a path the gateway does not route is a 404 in PostgREST's shape", async () => {
  for (const path of ["/", "/auth/v1/user", "/rest/v2/", "/functions/v2/credit-balance"]) {
    const response = await fetch(`${SUPABASE_URL}${path}`, { headers: { apikey: ANON_KEY } });
    const error = await expectError(response, 404, "route_not_found");
    assert.match(String(error.hint), /\/rest\/v1\//);
  }
});

Deno.test("a body over 16 MB is a 413 in PostgREST's shape, on both routes", async () => {
  const body = new Uint8Array(17 * 1024 * 1024).fill(0x20);
  const requests = [
    rest("rpc/credit_get_balance", {
      method: "POST",
      headers: { apikey: ANON_KEY, "Content-Type": "application/json" },
      body,
    }),
    callFunction("credit-usage", {
      method: "POST",
      headers: { apikey: SECRET_KEY, "Content-Type": "application/json" },
      body,
    }),
  ];
  for (const response of await Promise.all(requests)) {
    const error = await expectError(response, 413, "payload_too_large");
    assert.match(error.message, /16 MB/);
  }
});

Deno.test("a URI or a header over 8 KB is refused in PostgREST's shape", async () => {
  const long = "x".repeat(9 * 1024);
  const uri = await rest(`rpc/credit_get_balance?p_user_id=${long}`, {
    headers: { apikey: ANON_KEY },
  });
  await expectError(uri, 414, "uri_too_long");
  const header = await rest("rpc/credit_get_balance", {
    headers: { apikey: ANON_KEY, "x-client-info": long },
  });
  await expectError(header, 431, "headers_too_large");
});

Deno.test("a function refuses another method with 405 and Allow", async () => {
  const token = await userToken(newUserId());
  const wrong: [string, string, string][] = [
    ["credit-balance", "POST", "GET, OPTIONS"],
    ["credit-balance", "DELETE", "GET, OPTIONS"],
    ["credit-usage", "GET", "POST, OPTIONS"],
    ["credit-usage", "PUT", "POST, OPTIONS"],
    ["credit-topup-webhook", "GET", "POST, OPTIONS"],
  ];
  for (const [name, method, allow] of wrong) {
    const response = await callFunction(name, {
      method,
      headers: { Authorization: `Bearer ${token}` },
    });
    await expectError(response, 405, "method_not_allowed");
    assert.equal(response.headers.get("allow"), allow);
  }
});

Deno.test("the runtime's JWT refusals have PostgREST's shape", async () => {
  const expired = await userToken(newUserId(), { expiresIn: -3600 });
  const tries: Record<string, string>[] = [{}, { Authorization: `Bearer ${expired}` }];
  for (const headers of tries) {
    const response = await callFunction("credit-balance", { headers });
    const error = await expectError(response, 401, response.headers.get("sb-error-code") ?? "");
    assert.match(error.code, /^UNAUTHORIZED_/);
  }
});

Deno.test("a preflight to /rest/v1/ needs no apikey and names each path's methods", async () => {
  const paths: [string, string][] = [
    ["rpc/credit_get_balance", "GET, HEAD, POST, OPTIONS"],
    ["credit_transactions?select=*", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"],
    ["", "GET, HEAD, OPTIONS"],
  ];
  for (const [path, methods] of paths) {
    const response = await preflight(`${SUPABASE_URL}/rest/v1/${path}`, "GET");
    assert.equal(response.status, 204, path);
    await response.body?.cancel();
    assert.equal(response.headers.get("access-control-allow-origin"), "*");
    assert.equal(response.headers.get("access-control-allow-methods"), methods);
    assertAllowsSupabaseJsHeaders(response);
  }
});

Deno.test("a preflight to a function names the function's one method", async () => {
  const functions: [string, string][] = [
    ["credit-balance", "GET, OPTIONS"],
    ["credit-usage", "POST, OPTIONS"],
    ["credit-topup-webhook", "POST, OPTIONS"],
  ];
  for (const [name, methods] of functions) {
    const response = await preflight(`${SUPABASE_URL}/functions/v1/${name}`, "POST");
    assert.equal(response.status, 204, name);
    await response.body?.cancel();
    assert.equal(response.headers.get("access-control-allow-origin"), "*");
    assert.equal(response.headers.get("access-control-allow-methods"), methods);
    assertAllowsSupabaseJsHeaders(response);
  }
});

function assertAllowsSupabaseJsHeaders(response: Response): void {
  const allowed = (response.headers.get("access-control-allow-headers") ?? "").split(/, */);
  for (const header of ["authorization", "apikey", "content-type", "x-client-info", "x-region"]) {
    assert.ok(allowed.includes(header), `${header} not in ${allowed}`);
  }
  assert.equal(response.headers.get("access-control-max-age"), "7200");
}

Deno.test("PostgREST and the runtime accept a token until 30 s after it expires", async () => {
  const user = newUserId();
  const readBoth = async (token: string) => {
    const headers = { apikey: ANON_KEY, Authorization: `Bearer ${token}` };
    const viaRest = await rest(`credit_transactions?user_id=eq.${user}`, { headers });
    const viaFunction = await callFunction("credit-balance", { headers });
    return [viaRest, viaFunction];
  };
  // expired 5 s ago: within the allowed clock skew of both
  for (const response of await readBoth(await userToken(user, { expiresIn: -5 }))) {
    await expectStatus(response, 200);
  }
  // expired 90 s ago: refused by both
  const [viaRest, viaFunction] = await readBoth(await userToken(user, { expiresIn: -90 }));
  assert.equal((await expectStatus(viaRest, 401)).code, "PGRST301");
  assert.equal((await expectStatus(viaFunction, 401)).code, "UNAUTHORIZED_LEGACY_JWT");
});
