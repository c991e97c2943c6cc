// A client that behaves like WintEHR's (testlib/wintehr-client.mjs) against
// a real bridge on a real cluster, run the way README "Running beside
// WintEHR" says: tokens {sub, role, exp} without scopes, HS256.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { makeToken, startDemo, writeResource, allergy, condition } from "../testlib/demo.mjs";
import { ChartReview, WintehrClient } from "../testlib/wintehr-client.mjs";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitUntil(check, what, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** A token as WintEHR's backend signs them: {sub, role, exp} and nothing else. */
function wintehrToken(secret, sub, role, expIn = 3600) {
  const now = Math.floor(Date.now() / 1000);
  return makeToken(secret, { sub, role, exp: now + expIn, scope: undefined, name: undefined, iat: undefined });
}

/** The largest number of connection attempts within any window of windowMs. */
function peakRate(times, windowMs = 1000) {
  let peak = 0;
  for (let i = 0; i < times.length; i++) {
    let n = 0;
    for (let j = i; j < times.length && times[j] - times[i] < windowMs; j++) n += 1;
    peak = Math.max(peak, n);
  }
  return peak;
}

/** A server that refuses every token with AUTH_FAILED in band, as the bridge used to. */
class InBandRefusal {
  constructor() {
    setTimeout(() => {
      this.onopen?.();
      this.onmessage?.({ data: JSON.stringify({ type: "error", error: "AUTH_FAILED" }) });
    }, 0);
  }

  send() {}

  close() {
    setTimeout(() => this.onclose?.({ code: 4001 }), 0);
  }
}

describe("the WintEHR-like client itself", () => {
  test("storms a server that answers a stale token with AUTH_FAILED (what issue 11 measured)", async () => {
    const client = new WintehrClient({
      url: "ws://refusing.invalid/api/ws",
      token: "stale",
      getFreshToken: async () => "stale",
      WebSocket: InBandRefusal,
    });
    client.connect();
    await sleep(500);
    client.close();
    assert.ok(client.attempts > 50, `only ${client.attempts} attempts in 0.5 s`);
  });
});

describe("a WintEHR-like client against a real fhir-notify-bridge", () => {
  let demo;
  const clients = [];
  const open = (options) => {
    const client = new WintehrClient({ url: demo.ws_url, backoffUnit: 200, ...options });
    clients.push(client);
    return client;
  };
  const metric = async (name) => {
    const text = await fetch(`http://127.0.0.1:${demo.bridge_port}/metrics`).then((r) => r.text());
    const line = text.split("\n").find((l) => l.startsWith(`${name} `));
    return Number(line?.split(" ")[1] ?? NaN);
  };

  before(
    async () => {
      demo = await startDemo(
        '--default-scopes user/*.read --scopes-by-claim "role=physician:user/*.read" --jwt-leeway 1 ' +
          "--relay-client-events",
      );
    },
    { timeout: 240000 },
  );

  after(async () => {
    for (const client of clients) client.close();
    if (demo && !demo.skip) await demo.stop();
  });

  const skipUnlessReady = (t) => {
    if (demo.skip) {
      t.skip(demo.skip);
      return true;
    }
    return false;
  };

  test("connects with its {sub, role, exp} token and follows a chart", async (t) => {
    if (skipUnlessReady(t)) return;
    const [patient] = demo.patients;
    const client = open({ token: wintehrToken(demo.secret, "dr.house", "physician") });
    const chart = new ChartReview(client, patient);
    client.connect();
    await waitUntil(() => client.received.some((m) => m.type === "subscription"), "the subscription");
    const saved = await writeResource(demo, "POST", "/fhir/Condition", condition(patient, "Asthma"));
    await waitUntil(() => chart.has("Condition", saved.id), "the condition on the chart");
    assert.equal(client.attempts, 1);
  });

  test("no storm with a stale token: refused at the upgrade, it backs off and gives up", async (t) => {
    if (skipUnlessReady(t)) return;
    const stale = wintehrToken(demo.secret, "dr.house", "physician", -120);
    const before = await metric("fhir_notify_bridge_auth_failures_total");
    const client = open({ token: stale, getFreshToken: async () => stale });
    client.connect();
    await waitUntil(() => client.gaveUp, "the client to give up", 20000);
    // 1 attempt + 5 retries after 0.2, 0.4, 0.8, 1.6, 3.2 s (backoffUnit 200 ms)
    assert.equal(client.attempts, 6);
    assert.ok(peakRate(client.attemptTimes) <= 3, `peak ${peakRate(client.attemptTimes)} attempts/s`);
    assert.ok(!client.received.some((m) => m.type === "welcome"));
    assert.equal((await metric("fhir_notify_bridge_auth_failures_total")) - before, 6);
  });

  test("a live token that expires: TOKEN_EXPIRED, one reconnect with the fresh token", async (t) => {
    if (skipUnlessReady(t)) return;
    const [patient] = demo.patients;
    let asked = 0;
    const client = open({
      token: wintehrToken(demo.secret, "dr.house", "physician", 1),
      getFreshToken: async () => {
        asked += 1;
        return wintehrToken(demo.secret, "dr.house", "physician");
      },
    });
    const chart = new ChartReview(client, patient);
    client.connect();
    await waitUntil(() => client.received.some((m) => m.error === "TOKEN_EXPIRED"), "TOKEN_EXPIRED", 20000);
    await waitUntil(() => client.received.filter((m) => m.type === "welcome").length === 2, "the second welcome");
    assert.equal(asked, 1);
    assert.equal(client.attempts, 2);
    const saved = await writeResource(demo, "POST", "/fhir/Condition", condition(patient, "After renewal"));
    await waitUntil(() => chart.has("Condition", saved.id), "the condition after the renewal");
  });

  test("a live token that expires with no fresh one: refused at the upgrade, then backoff", async (t) => {
    if (skipUnlessReady(t)) return;
    const expiring = wintehrToken(demo.secret, "dr.house", "physician", 1);
    const client = open({ token: expiring, getFreshToken: async () => expiring });
    client.connect();
    await waitUntil(() => client.received.some((m) => m.error === "TOKEN_EXPIRED"), "TOKEN_EXPIRED", 20000);
    await waitUntil(() => client.gaveUp, "the client to give up", 20000);
    assert.equal(client.attempts, 7); // the live one, its immediate retry, 5 backed-off ones
    assert.ok(peakRate(client.attemptTimes) <= 3, `peak ${peakRate(client.attemptTimes)} attempts/s`);
  });

  test("nothing is lost across a bridge restart: the cursorless re-subscribe is replayed", async (t) => {
    if (skipUnlessReady(t)) return;
    const [, , patient] = demo.patients;
    const client = open({ token: wintehrToken(demo.secret, "dr.restart", "physician") });
    const chart = new ChartReview(client, patient);
    client.connect();
    await waitUntil(() => client.received.some((m) => m.type === "subscription"), "the subscription");
    const before = await writeResource(demo, "POST", "/fhir/AllergyIntolerance", allergy(patient, "Penicillin"));
    await waitUntil(() => chart.has("AllergyIntolerance", before.id), "the allergy on the chart");
    await demo.stopBridge();
    // while the bridge is down: a new condition, and the allergy deleted
    const during = await writeResource(demo, "POST", "/fhir/Condition", condition(patient, "Written while down"));
    await writeResource(demo, "DELETE", `/fhir/AllergyIntolerance/${before.id}`);
    await demo.startBridge();
    await waitUntil(
      () => chart.has("Condition", during.id) && !chart.has("AllergyIntolerance", before.id),
      "the chart to catch up after the restart",
      20000,
    );
    assert.ok(!client.gaveUp);
    assert.ok(client.received.some((m) => m.type === "caught_up"));
  });

  test("nothing is lost across a switch to a second bridge", async (t) => {
    if (skipUnlessReady(t)) return;
    const [, , , patient] = demo.patients;
    const second = await demo.startSecondBridge();
    const client = open({ token: wintehrToken(demo.secret, "dr.switch", "physician") });
    const chart = new ChartReview(client, patient);
    client.connect();
    await waitUntil(() => client.received.some((m) => m.type === "subscription"), "the subscription");
    const seen = await writeResource(demo, "POST", "/fhir/Condition", condition(patient, "Seen on the first"));
    await waitUntil(() => chart.has("Condition", seen.id), "the condition on the chart");
    // the load balancer sends the next connection elsewhere; the first bridge goes away
    client.options.url = second.ws_url;
    await demo.stopBridge();
    const missed = await writeResource(demo, "POST", "/fhir/Condition", condition(patient, "Missed on the way"));
    await waitUntil(() => chart.has("Condition", missed.id), "the missed condition from the second bridge", 20000);
    const live = await writeResource(demo, "POST", "/fhir/Condition", condition(patient, "Live on the second"));
    await waitUntil(() => chart.has("Condition", live.id), "a live condition from the second bridge");
    await demo.startBridge();
  });

  test("client events go only to the patient's other followers, stamped with the sender", async (t) => {
    if (skipUnlessReady(t)) return;
    const [p1, p2] = demo.patients;
    const sender = open({ token: wintehrToken(demo.secret, "dr.sender", "physician"), userId: "forged.user" });
    const peer = open({ token: wintehrToken(demo.secret, "dr.peer", "physician") });
    const elsewhere = open({ token: wintehrToken(demo.secret, "dr.elsewhere", "physician") });
    const got = { sender: [], peer: [], elsewhere: [] };
    for (const [name, c, p] of [["sender", sender, p1], ["peer", peer, p1], ["elsewhere", elsewhere, p2]]) {
      c.on("order.placed", (payload) => got[name].push(payload));
      c.subscribe(p, []);
      c.connect();
    }
    for (const c of [sender, peer, elsewhere]) {
      await waitUntil(() => c.received.some((m) => m.type === "subscription"), "the subscriptions");
    }
    sender.publish("order.placed", { orderId: "o-1", medication: "Aspirin" }, p1);
    await waitUntil(() => got.peer.length === 1, "the event at the peer");
    assert.equal(got.peer[0].orderId, "o-1");
    assert.equal(got.peer[0].patientId, p1);
    assert.equal(got.peer[0].userId, "dr.sender"); // never the payload's "forged.user"
    await sleep(500);
    assert.equal(got.sender.length, 0);
    assert.equal(got.elsewhere.length, 0);
  });

  test("deletes of allergies and conditions leave the chart; an observation's does not", async (t) => {
    if (skipUnlessReady(t)) return;
    const [, patient] = demo.patients;
    const client = open({ token: wintehrToken(demo.secret, "dr.house", "physician") });
    const chart = new ChartReview(client, patient);
    client.connect();
    await waitUntil(() => client.received.some((m) => m.type === "subscription"), "the subscription");
    const a = await writeResource(demo, "POST", "/fhir/AllergyIntolerance", allergy(patient, "Latex"));
    const c = await writeResource(demo, "POST", "/fhir/Condition", condition(patient, "Gout"));
    const o = await writeResource(demo, "POST", "/fhir/Observation", {
      resourceType: "Observation",
      status: "final",
      subject: { reference: `Patient/${patient}` },
      code: { text: "Heart rate" },
      valueQuantity: { value: 72, unit: "/min" },
    });
    await waitUntil(
      () => chart.has("AllergyIntolerance", a.id) && chart.has("Condition", c.id) && chart.has("Observation", o.id),
      "the three items on the chart",
    );
    for (const [type, id] of [["AllergyIntolerance", a.id], ["Condition", c.id], ["Observation", o.id]]) {
      await writeResource(demo, "DELETE", `/fhir/${type}/${id}`);
    }
    await waitUntil(
      () => !chart.has("AllergyIntolerance", a.id) && !chart.has("Condition", c.id),
      "the allergy and the condition to leave the chart",
    );
    // The observation's delete arrives (resource null, ignored by the hook: documented).
    await waitUntil(
      () => client.received.some((m) => m.type === "update" && m.data.resource_id === o.id && m.data.action === "deleted"),
      "the observation's delete",
    );
    assert.ok(chart.has("Observation", o.id));
  });
});
