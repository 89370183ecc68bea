// The supabase-js example in a browser: headless Chromium (Debian's `chromium`) loads
// tests/js/browser/index.html from http://localhost:<port>, another origin than the API's
// http://127.0.0.1:<port>, so every call is a CORS request with a preflight, as from a
// real app. A signed-in user (a token from `scripts/local-stack token`) reads their
// balance, history and account; with an expired token the page shows ducto's error, its
// status and code, not a network failure.
//
//   node --experimental-websocket --test tests/js/browser.test.mjs   (after local-stack up)
//
// Chromium is driven over the DevTools protocol (CDP) on a WebSocket.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, normalize } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { serverClient } from "../../examples/supabase-js/ledger.mjs";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const CHROMIUM = process.env.CHROMIUM ?? "chromium";

function stackEnv(name) {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run with scripts/run-tests or after local-stack up`);
  return value;
}

const SUPABASE_URL = stackEnv("SUPABASE_URL");
const ANON_KEY = stackEnv("SUPABASE_ANON_KEY");

/** A user's access token, as `scripts/local-stack token` signs it. */
function accessToken(userId, expiresIn = 600) {
  return execFileSync(
    join(ROOT, "scripts/local-stack"),
    ["token", userId, "--expires-in", String(expiresIn)],
    { encoding: "utf8" },
  ).trim();
}

// What the page may load: itself, the example, and supabase-js's browser build.
const SERVED = ["tests/js/browser/", "examples/supabase-js/", "node_modules/@supabase/"];
const TYPES = { ".html": "text/html", ".mjs": "text/javascript", ".js": "text/javascript" };

/** Serves SERVED from the repository on 127.0.0.1; answers its port. */
async function servePage() {
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).slice(1);
    const type = TYPES[extname(path)];
    if (!type || path.includes("..") || !SERVED.some((prefix) => path.startsWith(prefix))) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = readFileSync(join(ROOT, path));
      res.writeHead(200, { "Content-Type": type }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

/** Headless Chromium with its DevTools endpoint; `close()` stops it and its profile. */
async function launchChromium() {
  const profile = mkdtempSync(join(tmpdir(), "ducto-chromium-"));
  const child = spawn(CHROMIUM, [
    "--headless",
    "--no-sandbox", // the tests may run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    `--user-data-dir=${profile}`,
    "--remote-debugging-port=0",
    "about:blank",
  ], { detached: true, stdio: ["ignore", "ignore", "pipe"] });
  const endpoint = await new Promise((resolve, reject) => {
    let output = "";
    child.stderr.on("data", (chunk) => {
      output += chunk;
      const found = /DevTools listening on (ws:\/\/\S+)/.exec(output);
      if (found) resolve(found[1]);
    });
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`chromium exited (${code}): ${output}`)));
  });
  const close = () => {
    // the browser and its helper processes: the process group it leads
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {
      // already gone
    }
    rmSync(profile, { recursive: true, force: true });
  };
  return { endpoint, close };
}

/** A DevTools protocol connection: `send` a command, `once` an event. */
async function connectCdp(endpoint) {
  const socket = new WebSocket(endpoint);
  await new Promise((resolve, reject) => {
    socket.onopen = resolve;
    socket.onerror = () => reject(new Error(`cannot connect to ${endpoint}`));
  });
  let lastId = 0;
  const pending = new Map();
  const waiting = [];
  socket.onmessage = ({ data }) => {
    const message = JSON.parse(data);
    if (message.id) {
      const { resolve, reject } = pending.get(message.id);
      pending.delete(message.id);
      if (message.error) reject(new Error(JSON.stringify(message.error)));
      else resolve(message.result);
      return;
    }
    for (const [i, wait] of waiting.entries()) {
      if (wait.method === message.method && wait.sessionId === message.sessionId) {
        waiting.splice(i, 1);
        wait.resolve(message.params);
        break;
      }
    }
  };
  return {
    send(method, params = {}, sessionId = undefined) {
      const id = ++lastId;
      socket.send(JSON.stringify({ id, method, params, sessionId }));
      return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
    },
    once(method, sessionId) {
      return new Promise((resolve) => waiting.push({ method, sessionId, resolve }));
    },
    close: () => socket.close(),
  };
}

describe("the supabase-js example in headless Chromium", () => {
  const user = randomUUID();
  let server, chromium, cdp, session;

  /** Calls the page's showAccount with `token` and answers what the page shows. */
  async function pageShows(token) {
    const { result, exceptionDetails } = await cdp.send("Runtime.evaluate", {
      expression: `showAccount(${JSON.stringify(token)}, ${JSON.stringify(user)})`,
      awaitPromise: true,
      returnByValue: true,
    }, session);
    assert.equal(exceptionDetails, undefined, JSON.stringify(exceptionDetails));
    const shown = await cdp.send("Runtime.evaluate", {
      expression: `document.getElementById("account").textContent`,
      returnByValue: true,
    }, session);
    assert.equal(shown.result.value, result.value);
    return Object.fromEntries(
      result.value.split("\n").map((line) => line.split(/: (.*)/s).slice(0, 2)),
    );
  }

  before(async () => {
    const admin = serverClient(SUPABASE_URL, stackEnv("SUPABASE_SERVICE_ROLE_KEY"));
    const added = await admin.rpc("credit_add_credits", {
      p_user_id: user,
      p_amount: 250,
      p_tx_type: "grant",
    });
    assert.equal(added.error, null, JSON.stringify(added.error));
    const spent = await admin.rpc("credit_deduct_credits", { p_user_id: user, p_amount: 40 });
    assert.equal(spent.error, null, JSON.stringify(spent.error));
    server = await servePage();
    chromium = await launchChromium();
    cdp = await connectCdp(chromium.endpoint);
    const { targetId } = await cdp.send("Target.createTarget", { url: "about:blank" });
    ({ sessionId: session } = await cdp.send("Target.attachToTarget", { targetId, flatten: true }));
    await cdp.send("Page.enable", {}, session);
    const loaded = cdp.once("Page.loadEventFired", session);
    // localhost: another origin than the API's 127.0.0.1
    const page = `http://localhost:${server.address().port}/tests/js/browser/index.html#${
      encodeURIComponent(JSON.stringify({ url: SUPABASE_URL, anonKey: ANON_KEY }))
    }`;
    await cdp.send("Page.navigate", { url: page }, session);
    await loaded;
  });

  after(async () => {
    await cdp?.send("Browser.close").catch(() => {});
    cdp?.close();
    chromium?.close();
    server?.close();
  });

  test("a signed-in user reads their balance, history and account", async () => {
    const shown = await pageShows(accessToken(user));
    const balance = JSON.parse(shown.balance);
    assert.equal(balance.balance, 210);
    const history = JSON.parse(shown.history);
    assert.deepEqual(history.map((row) => row.amount), [250, -40]);
    const account = JSON.parse(shown.account);
    assert.equal(account.user_id, user);
    assert.equal(account.available, 210);
    assert.deepEqual(account.transactions.map((row) => row.amount), [-40, 250]);
  });

  test("an expired session shows ducto's error, not a network failure", async () => {
    const shown = await pageShows(accessToken(user, -3600));
    // PostgREST refuses the token; the edge runtime (verify_jwt) refuses it too
    assert.match(shown.balance, /^error 401 PGRST301: /);
    assert.match(shown.history, /^error 401 PGRST301: /);
    assert.match(shown.account, /^error 401 UNAUTHORIZED_LEGACY_JWT: /);
  });
});
