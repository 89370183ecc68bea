// Stripe's webhook signature: the header `Stripe-Signature: t=<unix time>,v1=<hex>[,v1=...]`
// where each v1 is HMAC-SHA256(signing secret, "<t>.<raw body>"). A payment provider that
// signs the same way works too.

import { HttpError } from "./http.ts";

/** How far the signed time may lie from now, in seconds (Stripe's libraries use 300). */
export const TOLERANCE_SECONDS = 300;

const encoder = new TextEncoder();

function fail(message: string, code = "invalid_signature"): never {
  throw new HttpError(400, code, message);
}

function hexBytes(hex: string): Uint8Array<ArrayBuffer> | null {
  if (!/^([0-9a-f]{2})+$/.test(hex)) return null;
  return Uint8Array.from(hex.match(/../g)!, (pair) => parseInt(pair, 16));
}

/**
 * Returns when `header` signs `body` with `secret` at a time within the tolerance of
 * `now` (unix seconds); otherwise throws a 400 `invalid_signature` (or
 * `stale_signature` for a valid signature made too long ago). Each candidate is
 * checked with WebCrypto's HMAC verify, which compares in constant time.
 */
export async function verifySignature(
  body: Uint8Array,
  header: string | null,
  secret: string,
  now: number,
): Promise<void> {
  if (!header) fail("the Stripe-Signature header is missing");
  const items = header.split(",").map((item) => item.trim().split("="));
  const times = items.filter(([name]) => name === "t").map(([, value]) => value);
  const signatures = items.filter(([name]) => name === "v1").map(([, value]) => hexBytes(value));
  if (times.length !== 1 || !/^[0-9]{1,12}$/.test(times[0])) {
    fail("the Stripe-Signature header needs exactly one timestamp t=<unix time>");
  }
  if (!signatures.length) fail("the Stripe-Signature header has no v1 signature");

  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["verify"],
  );
  const prefix = encoder.encode(`${times[0]}.`);
  const signed = new Uint8Array(prefix.length + body.length);
  signed.set(prefix);
  signed.set(body, prefix.length);
  let valid = false;
  for (const signature of signatures) {
    if (signature && await crypto.subtle.verify("HMAC", key, signature, signed)) valid = true;
  }
  if (!valid) fail("no signature matches the body and the signing secret");
  // Checked after the signature, so the signed time can be trusted: a replay of an old
  // delivery is refused even before its event id would be recognised.
  if (Math.abs(now - Number(times[0])) > TOLERANCE_SECONDS) {
    fail(`the signature's time is more than ${TOLERANCE_SECONDS} s from now`, "stale_signature");
  }
}
