// The local stack's edge runtime (started by scripts/local-stack): serves every
// supabase/functions/<slug>/index.ts on a unix socket, where the gateway sends
// /functions/v1/<slug>/..., as `supabase functions serve` does without Docker.
//
//   deno run ... scripts/functions-server.ts <socket path>
//
// Like Supabase's runtime it
// - finds functions by globbing functions/*/index.ts (so `_shared/` is none) and reads
//   `[functions.<slug>] enabled, verify_jwt` from supabase/config.toml;
// - when verify_jwt is on (the default), answers 401 unless the Authorization header
//   holds a JWT signed with the project's secret and not expired, before the function
//   runs (OPTIONS requests pass, for CORS preflights); like PostgREST, it accepts a token
//   until 30 s after its `exp`, so both judge one token alike;
// - answers its own errors (no such function, a refused JWT, a function that threw) with
//   PostgREST's body, {code, message, details, hint}, and CORS's Allow-Origin, so a
//   browser reads them;
// - hands a function the request with the path /<slug>/..., and the environment less the
//   JWT secret, which functions never see on Supabase.
// Each module exports `default { fetch }`.

import { jwtVerify } from "npm:jose@6.2.18";
import { parse } from "npm:smol-toml@1.9.1";

type Handler = (req: Request) => Response | Promise<Response>;
type FunctionConfig = { enabled?: boolean; verify_jwt?: boolean };

const SUPABASE_DIR = new URL("../supabase/", import.meta.url);
const SLUG = /^[A-Za-z][A-Za-z0-9_-]*$/;

const socket = Deno.args[0];
if (!socket) throw new Error("usage: functions-server.ts <socket path>");
const jwtSecret = new TextEncoder().encode(Deno.env.get("SUPABASE_JWT_SECRET") ?? "");
if (!jwtSecret.length) throw new Error("SUPABASE_JWT_SECRET is not set");
Deno.env.delete("SUPABASE_JWT_SECRET");

const config = parse(await Deno.readTextFile(new URL("config.toml", SUPABASE_DIR)));
const configured = (config.functions ?? {}) as Record<string, FunctionConfig>;

const functions = new Map<string, { fetch: Handler; verifyJwt: boolean }>();
for await (const entry of Deno.readDir(new URL("functions/", SUPABASE_DIR))) {
  const entrypoint = new URL(`functions/${entry.name}/index.ts`, SUPABASE_DIR);
  const settings = configured[entry.name] ?? {};
  if (!entry.isDirectory || !SLUG.test(entry.name) || settings.enabled === false) continue;
  try {
    await Deno.stat(entrypoint);
  } catch {
    continue; // a folder without index.ts (tests, fixtures) is not a function
  }
  const module = await import(entrypoint.href);
  functions.set(entry.name, {
    fetch: module.default.fetch,
    verifyJwt: settings.verify_jwt ?? true,
  });
}

/** PostgREST's error body, readable by a browser on any origin. */
function errorResponse(
  status: number,
  code: string,
  message: string,
  headers: Record<string, string> = {},
): Response {
  return Response.json({ code, message, details: null, hint: null }, {
    status,
    headers: { "Access-Control-Allow-Origin": "*", ...headers },
  });
}

function unauthorized(code: string, message: string): Response {
  return errorResponse(401, code, message, { "sb-error-code": code });
}

// PostgREST allows a token's `exp` (and `iat`, `nbf`) to be off by 30 s: the same here.
const CLOCK_SKEW_SECONDS = 30;

/** Why the request's JWT is refused, or null when it is a valid one. */
async function jwtRefusal(req: Request): Promise<Response | null> {
  const header = req.headers.get("Authorization");
  if (!header) return unauthorized("UNAUTHORIZED_NO_AUTH_HEADER", "Missing authorization header");
  const [scheme, token, ...rest] = header.split(" ");
  if (scheme !== "Bearer" || !token || rest.length) {
    return unauthorized("UNAUTHORIZED_INVALID_JWT_FORMAT", "Invalid JWT format");
  }
  try {
    await jwtVerify(token, jwtSecret, {
      algorithms: ["HS256"],
      clockTolerance: CLOCK_SKEW_SECONDS,
    });
  } catch {
    return unauthorized("UNAUTHORIZED_LEGACY_JWT", "Invalid JWT");
  }
  return null;
}

Deno.serve({
  path: socket,
  onListen() {
    // the gateway's workers run as another user
    Deno.chmodSync(socket, 0o666);
    console.log(`serving ${[...functions.keys()].join(", ")} on ${socket}`);
  },
}, async (req) => {
  const { pathname } = new URL(req.url);
  if (pathname === "/_internal/health") return Response.json({ message: "ok" });
  const slug = pathname.split("/")[1];
  const fn = functions.get(slug);
  if (!fn) return errorResponse(404, "NOT_FOUND", "Requested function was not found");
  if (fn.verifyJwt && req.method !== "OPTIONS") {
    const refusal = await jwtRefusal(req);
    if (refusal) return refusal;
  }
  try {
    return await fn.fetch(req);
  } catch (error) {
    console.error(`${slug}:`, error);
    return errorResponse(500, "WORKER_ERROR", "Function exited due to an error");
  }
});
