// The JavaScript client against a real bridge on a real cluster.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { backoffDelay, connect, DEFAULTS } from "../fhir-notify-client.mjs";
import {
  allergy,
  condition,
  makeToken,
  nextEvent,
  recordUpdates,
  startDemo,
  waitState,
  writeResource,
} from "../testlib/demo.mjs";

describe("backoffDelay", () => {
  test("grows exponentially, is capped, and is jittered downwards only", () => {
    const options = { ...DEFAULTS, backoffInitial: 500, backoffMax: 30000, backoffFactor: 2, jitter: 0.5 };
    assert.equal(backoffDelay(0, options, () => 0), 500);
    assert.equal(backoffDelay(3, options, () => 0), 4000);
    assert.equal(backoffDelay(20, options, () => 0), 30000);
    assert.equal(backoffDelay(20, options, () => 1), 15000);
    for (let i = 0; i < 100; i++) {
      const d = backoffDelay(2, options);
      assert.ok(d >= 1000 && d <= 2000, `delay ${d}`);
    }
  });
});

/*
 * A bridge from before the caught_up message cannot be run here: this
 * in-process socket speaks its protocol (welcome, subscription, a replayed
 * update, then silence) so that the client's fallback can be checked.
 */
class OldBridgeSocket {
  static sockets = [];

  constructor() {
    this.readyState = 1;
    OldBridgeSocket.sockets.push(this);
    setTimeout(() => this.deliver({ type: "welcome", data: { client_id: "old", cursor: "1-0" } }), 0);
  }

  deliver(message) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  send(text) {
    const message = JSON.parse(text);
    if (message.type !== "subscribe") return;
    const { subscription_id, patient_ids, since } = message.data;
    setTimeout(() => {
      this.deliver({ type: "subscription", data: { action: "created", subscription_id, cursor: since ?? "1-0" } });
      if (since) {
        this.deliver({
          type: "update",
          data: {
            action: "created",
            resource_type: "Condition",
            resource_id: "c1",
            patient_id: patient_ids[0],
            cursor: "2-0",
          },
        });
      }
    }, 0);
  }

  drop() {
    this.readyState = 3;
    this.onclose?.({ code: 1006, reason: "" });
  }

  close() {
    this.readyState = 3;
  }
}

describe("against a bridge that never sends caught_up", () => {
  test("catching up ends after catchUpQuiet, marked as not confirmed", async () => {
    const client = connect({
      url: "ws://old.invalid/api/ws",
      WebSocket: OldBridgeSocket,
      catchUpQuiet: 200,
      backoffInitial: 10,
      backoffMax: 10,
    });
    try {
      const states = [];
      client.on("state", ({ state }) => states.push(state));
      const sub = client.subscribePatient("p1", []);
      await nextEvent(client, "subscribed", (s) => s === sub);
      assert.equal(client.state, "live");
      const caughtUp = nextEvent(client, "caughtup", () => true, 10000);
      OldBridgeSocket.sockets.at(-1).drop();
      const { count, confirmed } = await caughtUp;
      assert.equal(count, 1);
      assert.equal(confirmed, false);
      assert.equal(client.state, "live");
      assert.ok(states.includes("catching-up"), `states ${states}`);
      assert.equal(sub.cursor, "2-0");
    } finally {
      client.close();
    }
  });
});

const RESUME_MAX_CHANGES = 10;

describe("connect", () => {
  test("refuses a URL that is not ws:// or wss://", () => {
    assert.throws(() => connect({ url: "http://example.org/api/ws" }), /ws:\/\/ or wss:\/\//);
    assert.throws(() => connect({ url: "not a url" }), TypeError);
    assert.throws(() => connect({}), TypeError);
  });
});

describe("against a real fhir-notify-bridge", () => {
  let demo;
  const clients = [];
  const open = (options) => {
    const client = connect({ url: demo.ws_url, ...options });
    clients.push(client);
    return client;
  };

  before(async () => {
    demo = await startDemo(`--resume-max-changes ${RESUME_MAX_CHANGES}`);
  }, { timeout: 240000 });

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

  test("subscribes to a patient and receives a change with actor and cursor", async (t) => {
    if (skipUnlessReady(t)) return;
    const [patient] = demo.patients;
    const client = open({ token: makeToken(demo.secret) });
    const updates = recordUpdates(client);
    const sub = client.subscribePatient(patient, ["AllergyIntolerance"]);
    await nextEvent(client, "subscribed", (s) => s === sub);
    assert.equal(client.state, "live");
    assert.ok(client.clientId);
    const saved = await writeResource(demo, "POST", "/fhir/AllergyIntolerance", allergy(patient, "Shellfish"));
    const update = await updates.waitFor((u) => u.resource_id === saved.id);
    assert.equal(update.action, "created");
    assert.equal(update.resource_type, "AllergyIntolerance");
    assert.equal(update.patient_id, patient);
    assert.equal(update.actor, "nurse.jones");
    assert.equal(update.resource.code.text, "Shellfish");
    assert.equal(String(update.version_id), "1");
    assert.ok(update.cursor);
    assert.equal(sub.cursor, update.cursor);

    await writeResource(demo, "DELETE", `/fhir/AllergyIntolerance/${saved.id}`, undefined, "dr.smith");
    const deleted = await updates.waitFor((u) => u.resource_id === saved.id && u.action === "deleted");
    assert.equal(deleted.resource, null);
    assert.equal(deleted.actor, "dr.smith");
  });

  test("resource types filter, and unsubscribe stops a patient's updates", async (t) => {
    if (skipUnlessReady(t)) return;
    const [p1, p2] = demo.patients;
    const client = open({ token: makeToken(demo.secret) });
    const updates = recordUpdates(client);
    const received = updates.seen;
    const sub1 = client.subscribePatient(p1, ["Condition"]);
    const sub2 = client.subscribePatient(p2, ["Condition"]);
    await nextEvent(client, "subscribed", (s) => s === sub2);
    if (!sub1.confirmed) await nextEvent(client, "subscribed", (s) => s === sub1);

    // An allergy of p1 is not a Condition: only the condition written after it arrives.
    const skipped = await writeResource(demo, "POST", "/fhir/AllergyIntolerance", allergy(p1, "Latex"));
    const wanted = await writeResource(demo, "POST", "/fhir/Condition", condition(p1, "Asthma"));
    await updates.waitFor((u) => u.resource_id === wanted.id, "for the wanted condition");
    assert.ok(!received.some((u) => u.resource_id === skipped.id));

    // After unsubscribing p1, a p1 change written before a p2 change must not arrive.
    client.unsubscribe(sub1);
    await nextEvent(client, "unsubscribed", (d) => d.subscription_id === sub1.id);
    const gone = await writeResource(demo, "POST", "/fhir/Condition", condition(p1, "Gout"));
    const sentinel = await writeResource(demo, "POST", "/fhir/Condition", condition(p2, "Migraine"));
    await updates.waitFor((u) => u.resource_id === sentinel.id, "for the sentinel");
    assert.ok(!received.some((u) => u.resource_id === gone.id), "an update after unsubscribe");
    assert.equal(received.filter((u) => u.resource_id === sentinel.id).length, 1);
  });

  test("reconnects after the bridge restarts and replays exactly what was missed", async (t) => {
    if (skipUnlessReady(t)) return;
    const [, , patient] = demo.patients;
    const client = open({ token: makeToken(demo.secret), backoffInitial: 200, backoffMax: 1000 });
    const states = [];
    client.on("state", ({ state }) => states.push(state));
    const updates = recordUpdates(client);
    const received = updates.seen;
    const sub = client.subscribePatient(patient, []);
    await nextEvent(client, "subscribed", (s) => s === sub);
    const before = await writeResource(demo, "POST", "/fhir/Condition", condition(patient, "Before outage"));
    await updates.waitFor((u) => u.resource_id === before.id, "before the outage");

    await demo.stopBridge();
    await waitState(client, "reconnecting");
    const missed1 = await writeResource(demo, "POST", "/fhir/Condition", condition(patient, "During outage 1"));
    const missed2 = await writeResource(demo, "POST", "/fhir/AllergyIntolerance", allergy(patient, "During outage 2"));
    const marker = nextEvent(client, "caught_up", (d) => d.subscription_id === sub.id, 60000);
    const caughtUp = nextEvent(client, "caughtup", () => true, 60000);
    await demo.startBridge();
    const { count, confirmed, resynced } = await caughtUp;
    assert.equal(client.state, "live");
    assert.equal(count, 2);
    // Ended by the bridge's caught_up, not by the fallback timer's guess.
    assert.equal(confirmed, true);
    assert.equal(resynced, 0);
    const ended = await marker;
    assert.equal(ended.replayed, 2);
    assert.equal(ended.cursor, received.find((u) => u.resource_id === missed2.id).cursor);
    const ids = received.map((u) => u.resource_id);
    assert.deepEqual(
      ids.filter((id) => [before.id, missed1.id, missed2.id].includes(id)),
      [before.id, missed1.id, missed2.id],
      "each change once, in commit order",
    );
    assert.ok(states.includes("catching-up"), `states ${states}`);

    // And it is live again.
    const afterwards = await writeResource(demo, "POST", "/fhir/Condition", condition(patient, "After outage"));
    await updates.waitFor((u) => u.resource_id === afterwards.id, "after the outage");
  });

  test("a reconnect with nothing missed is caught up at once, on the bridge's word", async (t) => {
    if (skipUnlessReady(t)) return;
    const patient = demo.patients[4] ?? demo.patients[0];
    // A fallback far beyond the test's limits: only caught_up can end the catch-up.
    const client = open({
      token: makeToken(demo.secret),
      backoffInitial: 200,
      backoffMax: 1000,
      catchUpQuiet: 600000,
    });
    const states = [];
    client.on("state", ({ state }) => states.push(state));
    const sub = client.subscribePatient(patient, ["Condition"]);
    await nextEvent(client, "subscribed", (s) => s === sub);
    const cursor = sub.cursor;
    await demo.stopBridge();
    await waitState(client, "reconnecting");
    const marker = nextEvent(client, "caught_up", (d) => d.subscription_id === sub.id, 60000);
    const caughtUp = nextEvent(client, "caughtup", () => true, 60000);
    await demo.startBridge();
    const ended = await marker;
    assert.equal(ended.replayed, 0);
    assert.equal(ended.cursor, cursor);
    const { count, confirmed } = await caughtUp;
    assert.equal(count, 0);
    assert.equal(confirmed, true);
    assert.equal(client.state, "live");
    assert.ok(states.includes("catching-up"), `states ${states}`);
  });

  test("too many missed changes end in a resync with a cursor to go on from", async (t) => {
    if (skipUnlessReady(t)) return;
    const [, , , patient] = demo.patients;
    const client = open({ token: makeToken(demo.secret), backoffInitial: 200, backoffMax: 1000 });
    const updates = recordUpdates(client);
    const received = updates.seen;
    const sub = client.subscribePatient(patient, ["Condition"]);
    await nextEvent(client, "subscribed", (s) => s === sub);
    await demo.stopBridge();
    await waitState(client, "reconnecting");
    for (let i = 0; i <= RESUME_MAX_CHANGES; i++) {
      await writeResource(demo, "POST", "/fhir/Condition", condition(patient, `Missed ${i}`));
    }
    const resync = nextEvent(client, "resync", () => true, 60000);
    const caughtUp = nextEvent(client, "caughtup", () => true, 60000);
    await demo.startBridge();
    const data = await resync;
    assert.equal(data.patient_id, patient);
    assert.equal(data.subscription_id, sub.id);
    assert.ok(data.reason);
    assert.ok(data.cursor);
    assert.equal(sub.cursor, data.cursor);
    assert.ok(!received.some((u) => u.resource?.code?.text?.startsWith("Missed")), "no partial replay");
    // The resync ends the replay (no caught_up follows one): live without waiting for the fallback.
    const ended = await caughtUp;
    assert.equal(ended.resynced, 1);
    assert.equal(ended.confirmed, true);
    await waitState(client, "live");
    // Live again after the resync.
    const next = await writeResource(demo, "POST", "/fhir/Condition", condition(patient, "After resync"));
    await updates.waitFor((u) => u.resource_id === next.id, "after the resync");
  });

  test("a subscription outside the token's rights is refused, and the client still goes live", async (t) => {
    if (skipUnlessReady(t)) return;
    const [own, other] = demo.patients;
    const client = open({ token: makeToken(demo.secret, { scope: "patient/*.read", patient: own }) });
    const updates = recordUpdates(client);
    const refused = client.subscribePatient(other, []);
    const allowed = client.subscribePatient(own, ["Condition"]);
    const err = await nextEvent(client, "error", (e) => e.subscription_id === refused.id);
    assert.equal(err.error, "FORBIDDEN");
    await waitState(client, "live");
    assert.equal(refused.error, "FORBIDDEN");
    assert.equal(allowed.confirmed, true);
    const hidden = await writeResource(demo, "POST", "/fhir/Condition", condition(other, "Not yours"));
    const mine = await writeResource(demo, "POST", "/fhir/Condition", condition(own, "Yours"));
    await updates.waitFor((u) => u.resource_id === mine.id, "for the allowed patient");
    assert.ok(!updates.seen.some((u) => u.resource_id === hidden.id));
  });

  test("a refused token ends in 'unauthorized' without getToken, and is renewed with it", async (t) => {
    if (skipUnlessReady(t)) return;
    const bad = open({ token: makeToken("not the secret") });
    await waitState(bad, "unauthorized");

    let asked = 0;
    const renewed = open({
      token: makeToken("not the secret"),
      backoffInitial: 100,
      getToken: async () => {
        asked += 1;
        return makeToken(demo.secret);
      },
    });
    await nextEvent(renewed, "welcome");
    assert.ok(asked >= 1);
    const sub = renewed.subscribePatient(demo.patients[0], []);
    await nextEvent(renewed, "subscribed", (s) => s === sub);
    assert.equal(renewed.state, "live");
  });

  test("presence, editing and a conflict through the real bridge", async (t) => {
    if (skipUnlessReady(t)) return;
    const patient = demo.patients[1];
    const nurse = open({ token: makeToken(demo.secret, { sub: "nurse.jones", name: "Nurse Jones", role: "nurse" }) });
    const doctor = open({ token: makeToken(demo.secret, { sub: "dr.smith", name: "Dr. Smith", role: "physician" }) });
    const saved = await writeResource(demo, "POST", "/fhir/AllergyIntolerance", allergy(patient, "Sulfa"), "pharmacist.lee");
    const sub = nurse.subscribePatient(patient, ["AllergyIntolerance"], { presence: true });
    await nextEvent(nurse, "subscribed", (s) => s === sub);
    const seesDoctor = nextEvent(nurse, "presence", (p) => p.others.some((u) => u.user === "dr.smith"), 5000);
    doctor.subscribePatient(patient, ["AllergyIntolerance"], { presence: true });
    const present = await seesDoctor;
    assert.equal(present.others.find((u) => u.user === "dr.smith").name, "Dr. Smith");
    assert.ok(!present.others.some((u) => u.user === "nurse.jones"), "oneself is not among the others");

    // The nurse edits version 1; the doctor sees it; the doctor's save is her conflict.
    assert.equal(nurse.startEditing(saved, { patientId: patient }), `AllergyIntolerance/${saved.id}`);
    await nextEvent(
      doctor,
      "presence",
      (p) => p.others.some((u) => u.user === "nurse.jones" && u.editing.some((e) => e.resource === `AllergyIntolerance/${saved.id}`)),
      5000,
    );
    const conflict = nextEvent(nurse, "conflict", () => true, 10000);
    await writeResource(demo, "PUT", `/fhir/AllergyIntolerance/${saved.id}`, { ...saved, criticality: "high" }, "dr.smith");
    const data = await conflict;
    assert.equal(data.declared_version, "1");
    assert.equal(data.version_id, "2");
    assert.equal(data.changed_by.name, "Dr. Smith");
    assert.equal(data.content.criticality, "high");
    assert.ok(!data.from_update, "the bridge said so, before the update");
    nurse.stopEditing(saved);
  });

  test("a bridge that stops answering is detected by the heartbeat", async (t) => {
    if (skipUnlessReady(t)) return;
    const client = open({
      token: makeToken(demo.secret),
      heartbeatInterval: 300,
      heartbeatTimeout: 500,
      backoffInitial: 200,
      backoffMax: 500,
    });
    const sub = client.subscribePatient(demo.patients[1], []);
    await nextEvent(client, "subscribed", (s) => s === sub);
    // Pings are answered: still live after several intervals.
    await new Promise((resolve) => setTimeout(resolve, 1200));
    assert.equal(client.state, "live");
    await demo.pauseBridge();
    try {
      const err = await nextEvent(client, "error", (e) => e.error === "HEARTBEAT_TIMEOUT", 10000);
      assert.equal(err.error, "HEARTBEAT_TIMEOUT");
      assert.equal(client.state, "reconnecting");
    } finally {
      await demo.resumeBridge();
    }
    await waitState(client, "live");
  });
});
