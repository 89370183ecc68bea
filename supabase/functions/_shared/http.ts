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

// Browsers may call a function that sets `cors` (a signed-in user's own reads); the
// caller's token, not a cookie, authenticates them, so any origin may.
const CORS_HEADERS = {
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Headers": "authorization, x-client-info, apikey, content-type",
  "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
};

export function json(body: unknown, status = 200): Response {
  return Response.json(body, { status });
}

function errorResponse(error: HttpError): Response {
  const { code, message, details, hint } = error;
  return json({ code, message, details, hint }, error.status);
}

/**
 * The function's `fetch`: runs `handler`, answers an {@link HttpError} as its error
 * body and anything unexpected as a 500 (logged, never shown to the caller).
 */
export function serve(
  handler: (req: Request) => Promise<Response>,
  options: { cors?: boolean } = {},
): (req: Request) => Promise<Response> {
  return async (req) => {
    let response: Response;
    if (options.cors && req.method === "OPTIONS") {
      response = new Response(null, { status: 204 });
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
    if (options.cors) {
      for (const [name, value] of Object.entries(CORS_HEADERS)) response.headers.set(name, value);
    }
    return response;
  };
}

export function allowMethod(req: Request, method: string): void {
  if (req.method !== method) {
    throw new HttpError(405, "method_not_allowed", `use ${method}, not ${req.method}`);
  }
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
    // status 0: the request never got an answer. A 401 without a code is the gateway's
    // (PostgREST's always have one): it refused the apikey, a key it never issued.
    throw new HttpError(
      status || 502,
      error.code || (status === 401 ? "invalid_api_key" : "upstream_error"),
      error.message,
      error.details || null,
      error.hint || null,
    );
  }
  return data as T;
}
