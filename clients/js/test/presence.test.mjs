// The client's presence, editing, conflict and stored-cursor logic against
// an in-process stand-in of the bridge (the real bridge is exercised in
// client.test.mjs and tests/test_demo_browser.py).
import { describe, test } from "node:test";
import assert from "node:assert/strict";

import { connect, MAX_EDITING_PER_PATIENT } from "../fhir-notify-client.mjs";
import { nextEvent } from "../testlib/demo.mjs";

/** Records what the client sends; the test plays the bridge. */
class FakeBridge {
  static sockets = [];

  constructor(url) {
    this.url = url;
    this.readyState = 1;
    this.sent = [];
    FakeBridge.sockets.push(this);
    setTimeout(() => this.deliver({ type: "welcome", data: { client_id: "c", user: { sub: "me" }, cursor: "1-0" } }), 0);
  }

  static last() {
    return FakeBridge.sockets.at(-1);
  }

  deliver(message) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  send(text) {
    const message = JSON.parse(text);
    this.sent.push(message);
    if (message.type === "subscribe") {
      const { subscription_id, since } = message.data;
      setTimeout(
        () => this.deliver({ type: "subscription", data: { action: "created", subscription_id, cursor: since ?? "1-0" } }),
        0,
      );
    }
  }

  sentOf(type) {
    return this.sent.filter((m) => m.type === type);
  }

  drop() {
    this.readyState = 3;
    this.onclose?.({ code: 1006, reason: "" });
  }

  close() {
    this.readyState = 3;
  }
}

class MemoryStorage {
  constructor() {
    this.items = new Map();
  }
  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }
  setItem(key, value) {
    this.items.set(key, String(value));
  }
}

const open = (options = {}) =>
  connect({ url: "ws://fake.invalid/api/ws", WebSocket: FakeBridge, backoffInitial: 10, backoffMax: 10, ...options });

const allergy = { resourceType: "AllergyIntolerance", id: "a1", meta: { versionId: "3" } };

describe("presence", () => {
  test("subscribe asks for presence only when told to", async () => {
    const client = open();
    try {
      const plain = client.subscribePatient("p1", []);
      const visible = client.subscribePatient("p2", [], { presence: true });
      await nextEvent(client, "subscribed", (s) => s === visible);
      const subscribes = FakeBridge.last().sentOf("subscribe");
      assert.equal(subscribes.find((m) => m.data.subscription_id === plain.id).data.presence, undefined);
      assert.equal(subscribes.find((m) => m.data.subscription_id === visible.id).data.presence, true);
    } finally {
      client.close();
    }
  });

  test("onPresence hands out the snapshot with the others apart from this user", async () => {
    const client = open();
    try {
      const sub = client.subscribePatient("p1", [], { presence: true });
      await nextEvent(client, "subscribed", (s) => s === sub);
      const seen = [];
      client.onPresence((p) => seen.push(p));
      FakeBridge.last().deliver({
        type: "presence",
        data: {
          patient_id: "p1",
          subscription_id: sub.id,
          users: [
            { user: "me", name: "Me", role: "nurse", connections: 2 },
            { user: "dr.smith", name: "Dr. Smith", role: "physician", connections: 1, editing: [{ resource: "AllergyIntolerance/a1" }] },
          ],
          count: 2,
          truncated: false,
          joined: ["dr.smith"],
          left: [],
        },
      });
      // A room this client is not (or no longer) in is ignored.
      FakeBridge.last().deliver({ type: "presence", data: { patient_id: "p9", users: [{ user: "x" }], count: 1 } });
      assert.equal(seen.length, 1);
      assert.deepEqual(seen[0].others.map((u) => u.user), ["dr.smith"]);
      assert.equal(seen[0].count, 2);
      assert.equal(client.presence.get("p1").users.length, 2);
    } finally {
      client.close();
    }
  });
});

describe("editing", () => {
  test("startEditing waits for the presence subscription, then is said again after every reconnect", async () => {
    const client = open();
    try {
      const sub = client.subscribePatient("p1", ["AllergyIntolerance"], { presence: true });
      // Before the subscription is confirmed: kept, not sent.
      assert.equal(client.startEditing(allergy), "AllergyIntolerance/a1");
      await nextEvent(client, "subscribed", (s) => s === sub);
      let editing = FakeBridge.last().sentOf("editing");
      assert.deepEqual(editing.map((m) => m.data), [
        { patient_id: "p1", resource: "AllergyIntolerance/a1", version_id: "3" },
      ]);
      // A newer version replaces the declared one.
      client.startEditing("AllergyIntolerance/a1", { version: "4" });
      assert.equal(FakeBridge.last().sentOf("editing").at(-1).data.version_id, "4");

      const first = FakeBridge.last();
      first.drop();
      await nextEvent(client, "subscribed", (s) => s === sub, 5000);
      assert.notEqual(FakeBridge.last(), first);
      editing = FakeBridge.last().sentOf("editing");
      assert.deepEqual(editing.map((m) => m.data), [
        { patient_id: "p1", resource: "AllergyIntolerance/a1", version_id: "4" },
      ]);

      client.stopEditing(allergy);
      assert.deepEqual(FakeBridge.last().sentOf("stop_editing").map((m) => m.data), [
        { patient_id: "p1", resource: "AllergyIntolerance/a1" },
      ]);
      assert.equal(client.editing.size, 0);
    } finally {
      client.close();
    }
  });

  test("the patient must be clear, the reference well formed, and the count bounded", async () => {
    const client = open();
    try {
      assert.throws(() => client.startEditing(allergy), /options.patientId/);
      client.subscribePatient("p1", [], { presence: true });
      client.subscribePatient("p2", [], { presence: true });
      assert.throws(() => client.startEditing(allergy), /options.patientId/);
      assert.throws(() => client.startEditing("not a reference", { patientId: "p1" }), TypeError);
      for (let i = 0; i < MAX_EDITING_PER_PATIENT; i++) client.startEditing(`Condition/c${i}`, { patientId: "p1" });
      assert.throws(() => client.startEditing("Condition/one-more", { patientId: "p1" }), RangeError);
      client.startEditing("Condition/c0", { patientId: "p1", version: "2" }); // the same one again is fine
      client.stopEditing();
      assert.equal(client.editing.size, 0);
    } finally {
      client.close();
    }
  });

  test("unsubscribing from the patient forgets what was edited there", async () => {
    const client = open();
    try {
      const sub = client.subscribePatient("p1", [], { presence: true });
      await nextEvent(client, "subscribed", (s) => s === sub);
      client.startEditing(allergy);
      client.unsubscribe(sub);
      assert.equal(client.editing.size, 0);
      assert.equal(client.presence.has("p1"), false);
    } finally {
      client.close();
    }
  });

  test("onConflict delivers the bridge's conflict", async () => {
    const client = open();
    try {
      const sub = client.subscribePatient("p1", [], { presence: true });
      await nextEvent(client, "subscribed", (s) => s === sub);
      client.startEditing(allergy);
      const conflict = new Promise((resolve) => client.onConflict(resolve));
      FakeBridge.last().deliver({
        type: "conflict",
        data: {
          patient_id: "p1",
          resource: "AllergyIntolerance/a1",
          declared_version: "3",
          version_id: "4",
          action: "updated",
          actor: "dr.smith",
          changed_by: { user: "dr.smith", name: "Dr. Smith", role: "physician" },
          content: { resourceType: "AllergyIntolerance", id: "a1" },
        },
      });
      const data = await conflict;
      assert.equal(data.version_id, "4");
      assert.equal(data.changed_by.name, "Dr. Smith");
    } finally {
      client.close();
    }
  });
});

describe("conflicts from updates", () => {
  test("an update at another version by someone else is a conflict once, also without the bridge's word", async () => {
    const client = open();
    try {
      const sub = client.subscribePatient("p1", [], { presence: true });
      await nextEvent(client, "subscribed", (s) => s === sub);
      client.startEditing(allergy); // version 3
      const conflicts = [];
      client.onConflict((c) => conflicts.push(c));
      const update = (version, actor, cursor) =>
        FakeBridge.last().deliver({
          type: "update",
          data: {
            action: "updated",
            resource_type: "AllergyIntolerance",
            resource_id: "a1",
            patient_id: "p1",
            version_id: version,
            actor,
            cursor,
            resource: { resourceType: "AllergyIntolerance", id: "a1" },
          },
        });
      update("3", "dr.smith", "5-1"); // the version she has: nothing
      update("4", "me", "5-2"); // her own save: nothing
      // The bridge's conflict for version 5, then its update: one conflict.
      FakeBridge.last().deliver({
        type: "conflict",
        data: { patient_id: "p1", resource: "AllergyIntolerance/a1", declared_version: "3", version_id: "5" },
      });
      update("5", "dr.smith", "5-3");
      // A replayed update for version 6 without a conflict message: the client says so.
      update("6", "dr.smith", "5-4");
      assert.deepEqual(conflicts.map((c) => [c.version_id, Boolean(c.from_update)]), [["5", false], ["6", true]]);
      assert.equal(conflicts[1].declared_version, "3");
      assert.equal(conflicts[1].actor, "dr.smith");
    } finally {
      client.close();
    }
  });
});

describe("cursor kept across page reloads", () => {
  test("a new client on the same storage resumes each patient from its last update", async () => {
    const storage = new MemoryStorage();
    const first = open({ storage });
    const sub = first.subscribePatient("p1", ["Condition", "AllergyIntolerance"]);
    await nextEvent(first, "subscribed", (s) => s === sub);
    FakeBridge.last().deliver({
      type: "update",
      data: { action: "created", resource_type: "Condition", resource_id: "c1", patient_id: "p1", cursor: "7-42" },
    });
    first.close(); // the page goes away

    const second = open({ storage });
    try {
      // Same patient and types, in any order: resumes from 7-42.
      const again = second.subscribePatient("p1", ["AllergyIntolerance", "Condition"]);
      assert.equal(again.cursor, "7-42");
      // Other types: a cursor of another stream is not used.
      const other = second.subscribePatient("p1", ["Observation"]);
      assert.equal(other.cursor, null);
      await nextEvent(second, "subscribed", (s) => s === other);
      const subscribe = FakeBridge.last().sentOf("subscribe").find((m) => m.data.subscription_id === again.id);
      assert.equal(subscribe.data.since, "7-42");
    } finally {
      second.close();
    }
  });

  test("a storage that refuses is no error", async () => {
    const storage = {
      getItem() {
        throw new Error("denied");
      },
      setItem() {
        throw new Error("quota");
      },
    };
    const client = open({ storage });
    try {
      const sub = client.subscribePatient("p1", []);
      assert.equal(sub.cursor, null);
      await nextEvent(client, "subscribed", (s) => s === sub);
      assert.equal(client.state, "live");
    } finally {
      client.close();
    }
  });
});
