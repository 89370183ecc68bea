// Requests and responses of ducto's edge functions.
//
// Every error answers PostgREST's body, `{code, message, details, hint}`, so a client
// maps one shape whether the function refused the request itself (a snake_case code
// such as `invalid_request`) or passed on the database's answer (a ducto SQLSTATE such
// as `DC010`, with PostgREST's HTTP status).

import type { PostgrestError } from "npm:@supabase/supabase-js@2.109.0";

/** A request the function refuses, answered as an error body with `status`. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: string | null = null,
    readonly hint: string | null = null,
  ) {
    super(message);
  }
}

// Every function answers CORS: the caller's token or key, never a cookie, authenticates
// a request, so any origin may call; and a browser reads an error's body (an expired
// session's 401) only when it carries Allow-Origin.
// What supabase-js sends (`functions.invoke` adds x-region when a region is chosen).
const ALLOW_HEADERS =
  "authorization, apikey, content-type, x-client-info, x-region, x-retry-count, x-supabase-api-version";

// Chromium caches a preflight for at most 2 hours.
const MAX_AGE_SECONDS = "7200";

export function json(body: unknown, status = 200): Response {
  return Response.json(body, { status });
}

function errorResponse(error: HttpError, headers: Record<string, string> = {}): Response {
  const { code, message, details, hint } = error;
  return Response.json({ code, message, details, hint }, { status: error.status, headers });
}

/**
 * The function's `fetch` for requests of one `method`: answers a CORS preflight with that
 * method, another method with 405 and `Allow`, runs `handler` on the rest and answers an
 * {@link HttpError} as its error body and anything unexpected as a 500 (logged, never
 * shown to the caller). Every answer carries CORS's Allow-Origin.
 */
export function serve(
  method: "GET" | "POST",
  handler: (req: Request) => Promise<Response>,
): (req: Request) => Promise<Response> {
  const allow = `${method}, OPTIONS`;
  return async (req) => {
    let response: Response;
    if (req.method === "OPTIONS") {
      response = new Response(null, {
        status: 204,
        headers: {
          Allow: allow,
          "Access-Control-Allow-Methods": allow,
          "Access-Control-Allow-Headers": ALLOW_HEADERS,
          "Access-Control-Max-Age": MAX_AGE_SECONDS,
        },
      });
    } else if (req.method !== method) {
      response = errorResponse(
        new HttpError(405, "method_not_allowed", `use ${method}, not ${req.method}`),
        { Allow: allow },
      );
    } else {
      try {
        response = await handler(req);
      } catch (error) {
        if (error instanceof HttpError) {
          response = errorResponse(error);
        } else {
          console.error(error);
          response = errorResponse(
            new HttpError(500, "internal_error", "the function failed; see its logs"),
          );
        }
      }
    }
    response.headers.set("Access-Control-Allow-Origin", "*");
    return response;
  };
}

/** The caller's `Authorization` header, which must carry a bearer token. */
export function bearerAuthorization(req: Request): { header: string; token: string } {
  const header = req.headers.get("Authorization") ?? "";
  const match = /^Bearer +(\S+)$/.exec(header);
  if (!match) {
    throw new HttpError(401, "unauthorized", "an Authorization: Bearer <token> header is required");
  }
  return { header, token: match[1] };
}

/**
 * How a caller authenticates to a function that passes its credential on to the API:
 * - `bearer`: an `Authorization: Bearer <JWT>` header (a user's access token or a legacy
 *   `anon`/`service_role` key), passed on as is;
 * - `apikey`: one of Supabase's API keys, `sb_secret_...` or `sb_publishable_...` (not
 *   JWTs), in the `apikey` header or as the bearer token, or both when they are the same
 *   value (as Supabase's gateway requires). A bare legacy key in `apikey` is one too.
 * The gateway behind SUPABASE_URL decides what an API key stands for (a secret key runs
 * as service_role, a publishable key as anon) and refuses one it never issued, so the
 * function never compares a key itself.
 */
export type Credential = { kind: "bearer"; authorization: string } | {
  kind: "apikey";
  apikey: string;
};

export function callerCredential(req: Request): Credential {
  const apikey = req.headers.get("apikey") || null;
  if (!req.headers.has("Authorization")) {
    if (apikey !== null) return { kind: "apikey", apikey };
    throw new HttpError(
      401,
      "unauthorized",
      "an apikey header or an Authorization: Bearer <token> header is required",
    );
  }
  const { header, token } = bearerAuthorization(req);
  if (!token.startsWith("sb_")) return { kind: "bearer", authorization: header };
  if (apikey !== null && apikey !== token) {
    throw new HttpError(
      401,
      "unauthorized",
      "an sb_ key as the bearer token must be the same as the apikey header",
    );
  }
  return { kind: "apikey", apikey: token };
}

/** The request body, which must be a JSON object. */
export async function jsonObject(req: Request): Promise<Record<string, unknown>> {
  let body: unknown;
  try {
    body = JSON.parse(await req.text());
  } catch {
    throw new HttpError(400, "invalid_json", "the body must be a JSON object");
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new HttpError(400, "invalid_json", "the body must be a JSON object");
  }
  return body as Record<string, unknown>;
}

type FieldType = "string" | "object";

/**
 * Checks the envelope of a request body: each field of `fields` has its JSON type (a
 * trailing `?` in the name makes it optional) and no other field is present, so a
 * misspelt `idempotency_key` is refused rather than silently ignored. The values
 * themselves are the database's to check.
 */
export function checkFields(
  body: Record<string, unknown>,
  fields: Record<string, FieldType>,
): void {
  const known = new Set(Object.keys(fields).map((name) => name.replace(/\?$/, "")));
  const unknown = Object.keys(body).filter((name) => !known.has(name));
  if (unknown.length) {
    throw new HttpError(400, "invalid_request", `unknown field(s): ${unknown.join(", ")}`);
  }
  for (const [spec, type] of Object.entries(fields)) {
    const name = spec.replace(/\?$/, "");
    const value = body[name];
    if (value === undefined && spec.endsWith("?")) continue;
    const actual = value === null ? "null" : Array.isArray(value) ? "array" : typeof value;
    if (actual !== type) {
      throw new HttpError(400, "invalid_request", `${name} must be a JSON ${type}, got ${actual}`);
    }
  }
}

/** The data of a supabase-js answer, or its error passed on with PostgREST's status. */
export function unwrap<T>(
  answer: { data: T | null; error: PostgrestError | null; status: number },
): T {
  const { data, error, status } = answer;
  if (error) {
    // status 0: the request never got an answer. A 401 without a code is a gateway's
    // refusal of the apikey (hosted Supabase's has no code; the local stack's says 42501,
    // as PostgREST does for a role that may not act): 42501 either way.
    throw new HttpError(
      status || 502,
      error.code || (status === 401 ? "42501" : "upstream_error"),
      error.message,
      error.details || null,
      error.hint || null,
    );
  }
  return data as T;
}
