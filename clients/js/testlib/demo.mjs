// Test helpers: a real cluster, bridge and stand-in backend from
// demo/launcher.py, real HS256 tokens, writes through the backend.
import { spawn, spawnSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

const TOP = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const PYTHON = process.env.FHIR_NOTIFY_PYTHON ?? "/usr/bin/python3";

/**
 * Starts demo/launcher.py --json and resolves with its details, or with
 * {skip: reason} when the bridge or the extension is not built yet.
 */
export async function startDemo(bridgeArgs = "") {
  const bridge = process.env.FHIR_NOTIFY_BRIDGE || path.join(TOP, "bridge", "fhir-notify-bridge");
  const probe = spawnSync(bridge, ["--help"], { encoding: "utf8", timeout: 10000 });
  if (probe.error || /not built yet/.test(`${probe.stdout}${probe.stderr}`)) {
    return { skip: `fhir-notify-bridge is not built (${bridge}): run make` };
  }
  const child = spawn(PYTHON, [path.join(TOP, "demo", "launcher.py"), "--json", `--bridge-args=${bridgeArgs}`], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr += chunk));
  const lines = createInterface({ input: child.stdout });
  const queue = [];
  const waiting = [];
  lines.on("line", (line) => {
    const w = waiting.shift();
    if (w) w(line);
    else queue.push(line);
  });
  const exited = new Promise((resolve) => child.on("exit", resolve));
  const nextLine = (timeoutMs) =>
    new Promise((resolve, reject) => {
      if (queue.length) return resolve(queue.shift());
      const timer = setTimeout(() => reject(new Error(`launcher: no answer in ${timeoutMs} ms\n${stderr}`)), timeoutMs);
      waiting.push((line) => {
        clearTimeout(timer);
        resolve(line);
      });
      exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`launcher exited with ${code}:\n${stderr}`));
      });
    });
  let info;
  try {
    info = JSON.parse(await nextLine(180000));
  } catch (err) {
    child.kill("SIGTERM");
    throw err;
  }
  const command = async (name) => {
    child.stdin.write(name + "\n");
    return JSON.parse(await nextLine(60000));
  };
  return {
    ...info,
    command,
    stopBridge: () => command("stop-bridge"),
    startBridge: () => command("start-bridge"),
    pauseBridge: () => command("pause-bridge"),
    resumeBridge: () => command("resume-bridge"),
    startSecondBridge: () => command("start-second-bridge"),
    async stop() {
      child.stdin.end();
      const timer = setTimeout(() => child.kill("SIGTERM"), 30000);
      await exited;
      clearTimeout(timer);
    },
  };
}

const b64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 JSON Web Token signed with the demo's secret. */
export function makeToken(secret, claims = {}) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(
    JSON.stringify({ sub: "node.test", name: "Node Test", scope: "user/*.read", iat: now, exp: now + 3600, ...claims }),
  );
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

/** Writes a resource through the stand-in backend as a demo user; returns the saved resource. */
export async function writeResource(demo, method, pathname, body, username = "nurse.jones") {
  const login = await fetch(new URL("/api/login", demo.url), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username }),
  }).then((r) => r.json());
  const response = await fetch(new URL(pathname, demo.url), {
    method,
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${login.token}` },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(`${method} ${pathname}: ${response.status} ${JSON.stringify(data)}`);
  return data;
}

export function allergy(patientId, text) {
  return {
    resourceType: "AllergyIntolerance",
    patient: { reference: `Patient/${patientId}` },
    code: { text },
    criticality: "low",
  };
}

export function condition(patientId, text) {
  return { resourceType: "Condition", subject: { reference: `Patient/${patientId}` }, code: { text } };
}

/** Resolves with the first event of `type` for which accept() is true; rejects after timeoutMs. */
export function nextEvent(client, type, accept = () => true, timeoutMs = 15000, what = "") {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${type} event ${what} within ${timeoutMs} ms (state ${client.state})`));
    }, timeoutMs);
    const off = client.on(type, (detail, extra) => {
      if (!accept(detail, extra)) return;
      clearTimeout(timer);
      off();
      resolve(detail);
    });
  });
}

/** Resolves when the client is in `state`, at once if it already is. */
export function waitState(client, state, timeoutMs = 30000) {
  if (client.state === state) return Promise.resolve({ state });
  return nextEvent(client, "state", (e) => e.state === state, timeoutMs, state);
}

/**
 * Records every update a client delivers, so a test can wait for one that
 * may already have arrived (a write's update can beat its HTTP response).
 */
export function recordUpdates(client) {
  const seen = [];
  client.on("update", (u) => seen.push(u));
  return {
    seen,
    async waitFor(accept, what = "", timeoutMs = 15000) {
      const found = seen.find(accept);
      if (found) return found;
      return nextEvent(client, "update", accept, timeoutMs, what);
    },
  };
}
