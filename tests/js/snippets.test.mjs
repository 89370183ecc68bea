// The JavaScript and TypeScript examples of README.md and docs/*.md (each ```js and ```ts
// block) and the usage lines of examples/supabase-js/ledger.mjs's header, as written:
//
// - all of them type-check with tsc, strict, as a bundled browser app compiles them,
//   against the generated database types. What an example takes from the app around it
//   (`supabase`, the app's supabase-js client with the user's session; `session`; the
//   project's URL and keys) is declared, not defined (APP below);
// - each one that does not begin with `// Sketch:` runs against the stack, with
//   `supabase` a signed-in user's client, and its results are checked. A sketch needs
//   what the local stack does not run (Supabase Realtime): it is type-checked only.
//
//   node --experimental-websocket --test tests/js/   (with the stack's exports)

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { before, describe, test } from "node:test";
import { SignJWT } from "jose";
import { serverClient, userClient } from "../../examples/supabase-js/ledger.mjs";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const EXAMPLE = join(ROOT, "examples/supabase-js/ledger.mjs");
const SKETCH = "// Sketch:";
/** A fenced block, maybe indented (in a list item), up to the fence that closes it. */
const FENCE = /^(?<indent> *)```(?<lang>\w*)\n(?<code>.*?)^\k<indent>```$/gms;
const LANGS = new Set(["js", "javascript", "mjs", "ts", "typescript"]);

/** `text` without the indentation its lines share. */
function dedent(text) {
  const lines = text.split("\n");
  const indent = Math.min(
    ...lines.filter((line) => line.trim()).map((line) => line.match(/^ */)[0].length),
  );
  return lines.map((line) => line.slice(indent)).join("\n");
}

/** The examples: {name, code}, named by page and line. */
function examples() {
  const pages = [
    "README.md",
    ...readdirSync(join(ROOT, "docs")).filter((name) => name.endsWith(".md")).sort()
      .map((name) => `docs/${name}`),
  ];
  const found = [];
  for (const page of pages) {
    const text = readFileSync(join(ROOT, page), "utf8");
    for (const fence of text.matchAll(FENCE)) {
      if (!LANGS.has(fence.groups.lang)) continue;
      const line = text.slice(0, fence.index).split("\n").length;
      found.push({ name: `${page}:${line}`, code: dedent(fence.groups.code) });
    }
  }
  // ledger.mjs's header: the indented comment lines from its first `import`
  const header = readFileSync(EXAMPLE, "utf8").split("\n");
  const start = header.findIndex((line) => line.startsWith("//   import"));
  const lines = [];
  for (const line of header.slice(start)) {
    if (line.startsWith("//   ") || line === "//") lines.push(line.slice(2));
    else break;
  }
  const code = dedent(lines.join("\n")).replace('from "./ledger.mjs"', `from "${EXAMPLE}"`);
  found.push({ name: "examples/supabase-js/ledger.mjs:header", code });
  return found;
}

// What the examples take from the app around them.
const APP = `
import type { SupabaseClient } from "@supabase/supabase-js";
import type { Database } from "${join(ROOT, "supabase/functions/_shared/database.types.ts")}";
declare const supabase: SupabaseClient<Database>;
declare const session: { access_token: string };
declare const SUPABASE_URL: string;
declare const SUPABASE_ANON_KEY: string;
declare const SUPABASE_SERVICE_ROLE_KEY: string;
declare function showExportButton(): void;
export {};
`;

const EXAMPLES = examples();

test("the examples type-check as a browser app compiles them (tsc, strict)", () => {
  assert.ok(EXAMPLES.length >= 3, EXAMPLES.map((one) => one.name).join(", "));
  const folder = mkdtempSync(join(tmpdir(), "ducto-examples-"));
  try {
    const files = EXAMPLES.map(({ name, code }) => {
      const file = join(folder, `${name.replace(/[^\w.-]+/g, "_")}.ts`);
      writeFileSync(file, `${APP}\n${code}\n`);
      return file;
    });
    const config = {
      compilerOptions: {
        target: "ES2022",
        module: "ESNext",
        moduleResolution: "Bundler",
        lib: ["ES2022", "DOM"],
        types: [],
        strict: true,
        allowJs: true,
        checkJs: true,
        noEmit: true,
        skipLibCheck: true,
        // the packages an app installs, from this repository's node_modules
        baseUrl: ROOT,
        paths: { "*": ["node_modules/*"] },
      },
      files,
    };
    writeFileSync(join(folder, "tsconfig.json"), JSON.stringify(config));
    const tsc = spawnSync(
      process.execPath,
      [join(ROOT, "node_modules/typescript/bin/tsc"), "-p", folder],
      { cwd: folder, encoding: "utf8" },
    );
    assert.equal(tsc.status, 0, `tsc:\n${tsc.stdout}${tsc.stderr}`);
  } finally {
    rmSync(folder, { recursive: true, force: true });
  }
});

// ------------------------------------------------------------------ running them

function stackEnv(name) {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run with scripts/run-tests or after local-stack up`);
  return value;
}

/** A signed-in user's access token, signed by the stack's secret like Supabase Auth's. */
async function accessToken(userId) {
  const now = Math.floor(Date.now() / 1000);
  return await new SignJWT({ role: "authenticated", aud: "authenticated" })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(userId)
    .setIssuedAt(now)
    .setExpirationTime(now + 600)
    .sign(new TextEncoder().encode(stackEnv("SUPABASE_JWT_SECRET")));
}

/** The names an example declares at its top level (`const x`, `const { data: x, y }`). */
function declaredNames(code) {
  const names = [];
  for (const [, single, pattern] of code.matchAll(/^(?:const|let) (?:(\w+)|\{([^}]*)\})/gm)) {
    if (single) names.push(single);
    else {
      for (const part of pattern.split(",")) {
        const name = part.split(":").pop().trim();
        if (name) names.push(name);
      }
    }
  }
  return names;
}

const AsyncFunction = (async () => {}).constructor;

/** Runs an example as an app's module body with `supabase`; answers what it declared. */
async function run(code, supabase) {
  const body = `${code}\nreturn { ${declaredNames(code).join(", ")} };`;
  return await new AsyncFunction("supabase", body)(supabase);
}

const RUNNABLE = EXAMPLES.filter(({ code, name }) =>
  !code.startsWith(SKETCH) && !name.endsWith(":header")
);

describe("the examples run against the stack", () => {
  const server = serverClient(stackEnv("SUPABASE_URL"), stackEnv("SUPABASE_SERVICE_ROLE_KEY"));
  const user = randomUUID();
  const team = randomUUID();
  let supabase;

  async function serverRpc(name, args) {
    const { data, error } = await server.rpc(name, args);
    assert.equal(error, null, JSON.stringify(error));
    return data;
  }

  before(async () => {
    const token = await accessToken(user);
    supabase = userClient(
      stackEnv("SUPABASE_URL"),
      stackEnv("SUPABASE_ANON_KEY"),
      () => Promise.resolve(token),
    );
    // the user's own journal, and a team pool's the user may read too
    await serverRpc("credit_add_credits", { p_user_id: user, p_amount: 250, p_tx_type: "grant" });
    await serverRpc("credit_upsert_team", { p_team_id: team, p_name: "Acme" });
    await serverRpc("credit_set_team_member", { p_team_id: team, p_user_id: user });
    await serverRpc("credit_add_credits", { p_user_id: `team:${team}`, p_amount: 600 });
    await serverRpc("credit_deduct_credits", { p_user_id: user, p_amount: 40 });
  });

  test("at least the README's runs", () => {
    assert.ok(RUNNABLE.some(({ name }) => name.startsWith("README.md:")));
  });

  // Every runnable example so far is a signed-in user's read of their balance and
  // history (README.md, step 4): each is checked for exactly that user's numbers.
  for (const { name, code } of RUNNABLE) {
    test(`${name}: the signed-in user's own balance and history`, async () => {
      const found = await run(code, supabase);
      assert.deepEqual(found.balance, {
        user_id: user,
        balance: 210,
        held: 0,
        available: 210,
        scopes: [{ scope: null, remaining: 210 }],
      });
      // the user's own rows, newest first: none of the team pool's
      assert.deepEqual(found.history.map((row) => [row.type, row.amount, row.balance_after]), [
        ["usage", -40, 210],
        ["grant", 250, 250],
      ]);
    });
  }
});
