/**
 * fhir-notify-client.mjs: a dependency-free client for fhir-notify-bridge.
 *
 * Speaks the bridge's WebSocket protocol (docs/protocol.md): the WintEHR
 * messages plus the extras that make a chart never silently stale. Runs in
 * browsers and in Node (20 with --experimental-websocket, 22+, or any
 * WHATWG-style WebSocket passed as options.WebSocket).
 *
 *   import { connect } from "./fhir-notify-client.mjs";
 *   const client = connect({ url: "wss://host/api/ws", token, getToken });
 *   client.on("update", (data) => { ... data.action, data.resource ... });
 *   client.on("resync", (data) => { reload data.patient_id from the FHIR server });
 *   client.on("state", ({ state }) => { live | catching-up | reconnecting | ... });
 *   client.on("caughtup", ({ count }) => { the replay after a reconnect is complete });
 *   const sub = client.subscribePatient("123", ["Condition", "AllergyIntolerance"]);
 *   client.unsubscribe(sub);
 *
 * Presence, editing and conflicts (docs/protocol.md), opt-in per subscription:
 *
 *   client.subscribePatient("123", types, { presence: true });
 *   client.onPresence(({ patient_id, users, others, count }) => { ... });
 *   client.startEditing(allergy);            // a resource (its type, id, meta.versionId)
 *   client.onConflict((c) => { c.changed_by, c.version_id, c.content: someone saved first });
 *   client.stopEditing(allergy);
 *
 * With options.storage (e.g. sessionStorage), each patient subscription's
 * cursor is kept there, so a page reload resumes from exactly where the
 * page was: the bridge replays what the reload missed.
 *
 * What it adds to WintEHR's own client: it reconnects forever (capped
 * exponential backoff with jitter) instead of giving up after five tries;
 * it resubscribes with the cursor of the last update it handed out (`since`),
 * so the bridge replays exactly what was missed or says `resync`; it drops
 * an update it has already delivered; it refreshes the token through
 * getToken() when the bridge says the token expired; and it reports its
 * connection state, including "catching-up" while missed updates replay:
 * the bridge ends each resumed subscription's replay with `caught_up`
 * (emitted as "caught_up" per subscription), and once every one has ended
 * (or ended in a resync) the state is "live" again and "caughtup" is emitted.
 */

export const DEFAULTS = Object.freeze({
  heartbeatInterval: 30000, // ms between pings
  heartbeatTimeout: 10000, // ms to wait for the pong before reconnecting
  backoffInitial: 500, // ms before the first reconnect attempt
  backoffMax: 30000, // the cap on the reconnect delay
  backoffFactor: 2,
  jitter: 0.5, // each delay is drawn from [delay * (1 - jitter), delay]
  connectTimeout: 15000, // ms from opening the socket to the welcome before trying again
  // Only for a bridge from before the caught_up message, which never sends
  // it: catching up is then taken as over after this many ms without a
  // replayed update.
  catchUpQuiet: 10000,
  dedupeWindow: 2000, // how many delivered updates are remembered to drop repeats
  storage: null, // a Storage (sessionStorage) to keep cursors in across page reloads
  storageKey: "fhir-notify", // the prefix of the keys kept in storage
});

/** The most resources one connection may say it edits in one patient (the bridge's limit). */
export const MAX_EDITING_PER_PATIENT = 8;

export const STATES = Object.freeze([
  "connecting", // the first connection is being made
  "catching-up", // connected again; missed updates are being replayed
  "live", // connected, subscriptions confirmed
  "reconnecting", // connection lost; waiting or trying again
  "unauthorized", // the bridge refused the token and no getToken() can renew it
  "closed", // close() was called
]);

let subscriptionCounter = 0;

/** Makes a client and starts connecting. */
export function connect(options) {
  const client = new FhirNotifyClient(options);
  client.open();
  return client;
}

/** The delay before reconnect attempt number `attempt` (0-based), with jitter. */
export function backoffDelay(attempt, options = DEFAULTS, random = Math.random) {
  const base = Math.min(
    options.backoffMax,
    options.backoffInitial * Math.pow(options.backoffFactor, attempt),
  );
  return Math.round(base * (1 - options.jitter * random()));
}

export class FhirNotifyClient {
  /**
   * options: url (ws:// or wss://, the token is added as ?token=), token,
   * getToken (async () => token, called before reconnecting after an
   * expired or refused token, and before every reconnect when given),
   * WebSocket (a constructor; default globalThis.WebSocket), and any of
   * DEFAULTS.
   */
  constructor(options) {
    if (!options || typeof options.url !== "string") throw new TypeError("connect: url is required");
    this.options = { ...DEFAULTS, ...options };
    let protocol;
    try {
      protocol = new URL(options.url).protocol;
    } catch {
      protocol = null;
    }
    if (protocol !== "ws:" && protocol !== "wss:") {
      throw new TypeError(`connect: url must be ws:// or wss://, not ${JSON.stringify(options.url)}`);
    }
    this.url = options.url;
    this.token = options.token ?? null;
    this.getToken = options.getToken ?? null;
    this.WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocketImpl !== "function") {
      throw new TypeError(
        "connect: no WebSocket available; pass options.WebSocket (Node 20 needs --experimental-websocket)",
      );
    }
    this.state = "connecting";
    this.subscriptions = new Map(); // subscription_id -> subscription
    this.listeners = new Map(); // event type -> Set of functions
    this.clientId = null;
    this.user = null;
    this.cursor = null; // the newest cursor seen on any update
    this.socket = null;
    this.attempt = 0;
    this.timers = { reconnect: null, connect: null, ping: null, pong: null, quiet: null };
    this.pendingAcks = new Set();
    this.caughtUp = 0; // updates replayed during this catch-up
    this.resynced = 0; // resyncs during this catch-up
    this.replaying = new Set(); // ids subscribed with since, whose caught_up has not come
    this.delivered = new Set();
    this.deliveredOrder = [];
    this.closedByUser = false;
    this.storage = this.options.storage;
    this.presence = new Map(); // patient id -> the last presence snapshot
    this.editing = new Map(); // "patient|Type/id" -> {patientId, resource, version}
    // In a browser, coming back online is the moment to retry, not the
    // next backoff step.
    this.onOnline = () => {
      if (this.state === "reconnecting" && this.timers.reconnect) {
        this.attempt = 0;
        this.clearTimer("reconnect");
        this.open();
      }
    };
    globalThis.addEventListener?.("online", this.onOnline);
  }

  /** Adds a listener; returns a function that removes it. */
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this.listeners.get(type)?.delete(fn);
  }

  emit(type, detail, extra) {
    for (const fn of [...(this.listeners.get(type) ?? [])]) {
      try {
        fn(detail, extra);
      } catch (err) {
        // A faulty listener must not break the connection for the others.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  setState(state) {
    if (this.state === state) return;
    const previous = this.state;
    this.state = state;
    this.emit("state", { state, previous });
  }

  /**
   * Subscribes to the changes of one patient (bare id), of the given
   * resource types (empty: every type the token allows). options.since
   * resumes from a cursor kept from an earlier session (without it, from
   * the cursor kept in options.storage, if any); options.presence: true
   * makes this connection visible in the patient's room and delivers the
   * room's "presence" snapshots. Returns the subscription; its `cursor`
   * follows the updates delivered for it.
   */
  subscribePatient(patientId, types = [], options = {}) {
    if (typeof patientId !== "string" || !/^[A-Za-z0-9.-]{1,64}$/.test(patientId)) {
      throw new TypeError(`subscribePatient: bad patient id ${JSON.stringify(patientId)}`);
    }
    subscriptionCounter += 1;
    const sub = {
      id: options.id ?? `patient-${patientId}-${Date.now()}-${subscriptionCounter}`,
      patientId,
      resourceTypes: [...types],
      cursor: options.since ?? this.storedCursor(patientId, types),
      presence: options.presence === true,
      confirmed: false,
    };
    this.subscriptions.set(sub.id, sub);
    if (this.socket && this.clientId !== null) {
      this.sendSubscribe(sub);
    }
    return sub;
  }

  /** Ends a subscription made by subscribePatient(). */
  unsubscribe(sub) {
    const id = typeof sub === "string" ? sub : sub?.id;
    const removed = this.subscriptions.get(id);
    if (!this.subscriptions.delete(id)) return;
    if (removed.presence && !this.presenceSubscription(removed.patientId)) {
      // The bridge forgets what this connection edits there; so does the client.
      this.presence.delete(removed.patientId);
      for (const [key, entry] of this.editing) {
        if (entry.patientId === removed.patientId) this.editing.delete(key);
      }
    }
    this.pendingAcks.delete(id);
    this.replaying.delete(id);
    if (this.socket && this.clientId !== null) {
      this.send({ type: "unsubscribe", data: { subscription_id: id } });
    }
    this.maybeCaughtUp();
  }

  /** Listens for presence snapshots: fn({patient_id, users, others, count, truncated, joined, left}). */
  onPresence(fn) {
    return this.on("presence", fn);
  }

  /** Listens for conflicts: a change committed to a resource this client said it edits. */
  onConflict(fn) {
    return this.on("conflict", fn);
  }

  /** The confirmed-or-pending presence subscription of a patient, if any. */
  presenceSubscription(patientId) {
    for (const sub of this.subscriptions.values()) {
      if (sub.presence && sub.patientId === patientId) return sub;
    }
    return null;
  }

  /**
   * Says that this client edits a resource: a FHIR resource (its
   * resourceType, id and meta.versionId), or "Type/id" with options.version.
   * options.patientId: the patient (default: the only patient subscribed
   * with presence). Kept and said again after every reconnect until
   * stopEditing(). Returns the "Type/id".
   */
  startEditing(resource, options = {}) {
    const ref = typeof resource === "string" ? resource : `${resource?.resourceType}/${resource?.id}`;
    if (!/^[A-Za-z]{1,64}\/[A-Za-z0-9.-]{1,64}$/.test(ref)) {
      throw new TypeError(`startEditing: not a resource or "Type/id": ${JSON.stringify(ref)}`);
    }
    const version = String(options.version ?? (typeof resource === "object" ? resource?.meta?.versionId : "") ?? "");
    let patientId = options.patientId;
    if (!patientId) {
      const patients = new Set([...this.subscriptions.values()].filter((s) => s.presence).map((s) => s.patientId));
      if (patients.size !== 1) {
        throw new TypeError("startEditing: say which patient (options.patientId): not exactly one presence subscription");
      }
      [patientId] = patients;
    }
    const entry = { patientId, resource: ref, version, reported: null };
    const key = `${patientId}|${ref}`;
    if (!this.editing.has(key)) {
      const inPatient = [...this.editing.values()].filter((e) => e.patientId === patientId).length;
      if (inPatient >= MAX_EDITING_PER_PATIENT) {
        throw new RangeError(`startEditing: at most ${MAX_EDITING_PER_PATIENT} resources per patient`);
      }
    }
    this.editing.set(key, entry);
    this.sendEditing(entry);
    return ref;
  }

  /** Stops editing a resource (or "Type/id"); without one, everything. */
  stopEditing(resource, options = {}) {
    if (resource === undefined || resource === null) {
      const had = this.editing.size > 0;
      this.editing.clear();
      if (had && this.socket && this.clientId !== null) this.send({ type: "stop_editing", data: {} });
      return;
    }
    const ref = typeof resource === "string" ? resource : `${resource.resourceType}/${resource.id}`;
    for (const [key, entry] of this.editing) {
      if (entry.resource !== ref || (options.patientId && entry.patientId !== options.patientId)) continue;
      this.editing.delete(key);
      if (this.socket && this.clientId !== null) {
        this.send({ type: "stop_editing", data: { patient_id: entry.patientId, resource: ref } });
      }
    }
  }

  /** Sends one editing entry once its patient's presence subscription is confirmed. */
  sendEditing(entry) {
    const sub = this.presenceSubscription(entry.patientId);
    if (!sub?.confirmed || !this.socket || this.clientId === null) return; // sent on confirmation
    const data = { patient_id: entry.patientId, resource: entry.resource };
    if (entry.version) data.version_id = entry.version;
    this.send({ type: "editing", data });
  }

  storageKeyFor(patientId, types) {
    return `${this.options.storageKey}:cursor:${patientId}:${[...types].sort().join(",")}`;
  }

  storedCursor(patientId, types) {
    try {
      return this.storage?.getItem(this.storageKeyFor(patientId, types)) || null;
    } catch {
      return null; // storage refused (private mode, quota): no resume across reloads
    }
  }

  storeCursor(sub) {
    if (!this.storage || !sub.cursor) return;
    try {
      this.storage.setItem(this.storageKeyFor(sub.patientId, sub.resourceTypes), sub.cursor);
    } catch {
      // storage full or refused: resuming across reloads is best effort
    }
  }

  /** Replaces the token; on a live connection the bridge is told at once. */
  setToken(token) {
    this.token = token;
    if (this.socket && this.clientId !== null) this.send({ type: "authenticate", token });
  }

  /** Closes the connection for good. */
  close() {
    this.closedByUser = true;
    globalThis.removeEventListener?.("online", this.onOnline);
    for (const name of Object.keys(this.timers)) this.clearTimer(name);
    const socket = this.socket;
    this.detach();
    if (socket) {
      try {
        socket.close(1000, "client closed");
      } catch {
        // already closing
      }
    }
    this.setState("closed");
  }

  /** Starts (or restarts) a connection attempt. */
  open() {
    if (this.closedByUser) return;
    this.clearTimer("reconnect");
    let url = this.url;
    if (this.token) {
      url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this.token);
    }
    let socket;
    try {
      socket = new this.WebSocketImpl(url);
    } catch (err) {
      this.emit("error", { error: "CONNECT_FAILED", message: String(err?.message ?? err) });
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    this.clientId = null;
    socket.onmessage = (event) => this.onMessage(event);
    socket.onclose = (event) => this.onDrop(socket, event.code, event.reason);
    socket.onerror = () => {
      // The close event follows and decides; nothing to do here.
    };
    // A bridge that accepts the connection but never greets is as good as down.
    this.clearTimer("connect");
    this.timers.connect = setTimeout(() => {
      this.timers.connect = null;
      if (this.socket !== socket || this.clientId !== null) return;
      this.emit("error", { error: "CONNECT_TIMEOUT", message: "no welcome from the bridge" });
      this.abandon(socket, 4000, "connect timeout");
    }, this.options.connectTimeout);
  }

  /** Gives up on a socket that the browser still thinks is open. */
  abandon(socket, code, reason) {
    try {
      socket.close(code, reason);
    } catch {
      // closing anyway
    }
    this.onDrop(socket, code, reason);
  }

  detach() {
    if (!this.socket) return;
    this.socket.onmessage = null;
    this.socket.onclose = null;
    this.socket.onerror = null;
    this.socket = null;
    this.clientId = null;
  }

  send(message) {
    if (!this.socket || this.socket.readyState !== 1) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  sendSubscribe(sub) {
    const data = {
      subscription_id: sub.id,
      patient_ids: [sub.patientId],
      resource_types: sub.resourceTypes,
    };
    if (sub.presence) data.presence = true;
    if (sub.cursor) {
      data.since = sub.cursor;
      this.replaying.add(sub.id); // until its caught_up (or resync)
    } else {
      this.replaying.delete(sub.id);
    }
    this.pendingAcks.add(sub.id);
    this.send({ type: "subscribe", data });
  }

  onMessage(event) {
    let message;
    try {
      message = JSON.parse(typeof event.data === "string" ? event.data : String(event.data));
    } catch {
      this.emit("error", { error: "BAD_MESSAGE", message: "the bridge sent a frame that is not JSON" });
      return;
    }
    this.armHeartbeat();
    switch (message.type) {
      case "welcome":
        return this.onWelcome(message.data ?? {});
      case "subscription":
        return this.onSubscription(message.data ?? {});
      case "update":
        return this.onUpdate(message.data ?? {}, message);
      case "resync":
        return this.onResync(message.data ?? {});
      case "caught_up":
        return this.onCaughtUp(message.data ?? {});
      case "presence":
        return this.onPresenceMessage(message.data ?? {});
      case "conflict":
        return this.onConflictMessage(message.data ?? {}, message);
      case "pong":
        return;
      case "auth_success":
        return;
      case "error":
        return this.onError(message);
      default:
        this.emit(message.type, message.payload ?? message.data, message);
    }
  }

  onWelcome(data) {
    this.clearTimer("connect");
    this.clientId = data.client_id ?? "";
    this.user = data.user ?? null;
    if (!this.cursor && data.cursor) this.cursor = data.cursor;
    this.attempt = 0;
    this.emit("welcome", data);
    this.pendingAcks.clear();
    this.replaying.clear();
    this.caughtUp = 0;
    this.resynced = 0;
    const resuming = [...this.subscriptions.values()].some((s) => s.cursor);
    for (const sub of this.subscriptions.values()) {
      sub.confirmed = false;
      this.sendSubscribe(sub);
    }
    if (this.subscriptions.size === 0) this.setState("live");
    else if (resuming && this.everConnected) this.setState("catching-up");
    this.everConnected = true;
  }

  onSubscription(data) {
    if (data.action === "removed") {
      this.emit("unsubscribed", data);
      return;
    }
    const sub = this.subscriptions.get(data.subscription_id);
    if (data.action === "created" && sub) {
      sub.confirmed = true;
      // Resume from the subscription's cursor, else from the newest one known
      // (the welcome's): a reconnect then replays what this session missed.
      if (!sub.cursor) sub.cursor = data.cursor ?? this.cursor;
      this.storeCursor(sub);
      this.pendingAcks.delete(sub.id);
      this.emit("subscribed", sub, data);
      // What this client edits there is said again on every new connection.
      if (sub.presence) {
        for (const entry of this.editing.values()) {
          if (entry.patientId === sub.patientId) this.sendEditing(entry);
        }
      }
      if (this.pendingAcks.size === 0) {
        if (this.state === "catching-up") this.maybeCaughtUp();
        else this.setState("live");
      }
    }
  }

  onUpdate(data, message) {
    const key = `${data.cursor ?? ""}|${data.patient_id}|${data.resource_type}/${data.resource_id}|${data.version_id ?? ""}`;
    if (data.cursor && this.delivered.has(key)) return; // replayed twice: deliver once
    if (data.cursor) {
      this.delivered.add(key);
      this.deliveredOrder.push(key);
      if (this.deliveredOrder.length > this.options.dedupeWindow) {
        this.delivered.delete(this.deliveredOrder.shift());
      }
      this.cursor = data.cursor;
      for (const sub of this.subscriptions.values()) {
        if (sub.patientId === data.patient_id) {
          sub.cursor = data.cursor;
          this.storeCursor(sub);
        }
      }
    }
    if (this.state === "catching-up") {
      this.caughtUp += 1;
      if (this.replaying.size > 0) this.armQuiet();
    }
    this.checkEditing(data);
    this.emit("update", data, message);
  }

  /**
   * An update of a resource this client edits, at another version and by
   * someone else, is a conflict even when the bridge did not say so (an
   * older bridge, or the update came in a replay after a reconnect): the
   * facts are the same, from the change log. Each version is reported once.
   */
  checkEditing(data) {
    const entry = this.editing.get(`${data.patient_id}|${data.resource_type}/${data.resource_id}`);
    if (!entry) return;
    const version = data.version_id == null ? null : String(data.version_id);
    if (version !== null && version === entry.version) return;
    if (data.actor && data.actor === this.user?.sub) return; // her own save
    if (version !== null && entry.reported === version) return; // the bridge said so already
    entry.reported = version;
    this.emit("conflict", {
      patient_id: data.patient_id,
      resource: entry.resource,
      declared_version: entry.version,
      version_id: version,
      action: data.action,
      actor: data.actor ?? null,
      changed_by: null,
      content: data.resource ?? null,
      cursor: data.cursor ?? null,
      changed_at: data.changed_at ?? null,
      from_update: true,
    });
  }

  onConflictMessage(data, message) {
    const entry = this.editing.get(`${data.patient_id}|${data.resource}`);
    if (entry && data.version_id != null) entry.reported = String(data.version_id);
    this.emit("conflict", data, message);
  }

  onResync(data) {
    for (const sub of this.subscriptions.values()) {
      if (sub.id === data.subscription_id || (!data.subscription_id && sub.patientId === data.patient_id)) {
        if (data.cursor) sub.cursor = data.cursor;
        this.storeCursor(sub);
        // A resync ends the subscription's replay: no caught_up follows it.
        if (this.replaying.delete(sub.id) && this.state === "catching-up") this.resynced += 1;
      }
    }
    this.emit("resync", data);
    this.maybeCaughtUp();
  }

  onPresenceMessage(data) {
    if (!this.presenceSubscription(data.patient_id)) return; // unsubscribed meanwhile
    const me = this.user?.sub ?? null;
    const users = Array.isArray(data.users) ? data.users : [];
    const snapshot = { ...data, users, others: users.filter((u) => u.user !== me) };
    this.presence.set(data.patient_id, snapshot);
    this.emit("presence", snapshot);
  }

  /** The bridge has sent every update that one resumed subscription missed. */
  onCaughtUp(data) {
    this.replaying.delete(data.subscription_id);
    this.emit("caught_up", data, this.subscriptions.get(data.subscription_id) ?? null);
    this.maybeCaughtUp();
  }

  async onError(message) {
    // A refused subscription gets no acknowledgement: stop waiting for one.
    if (message.subscription_id && this.pendingAcks.delete(message.subscription_id)) {
      const sub = this.subscriptions.get(message.subscription_id);
      if (sub) sub.error = message.error;
      this.replaying.delete(message.subscription_id);
      if (this.pendingAcks.size === 0) {
        if (this.state === "catching-up") this.maybeCaughtUp();
        else if (this.clientId !== null) this.setState("live");
      }
    }
    this.emit("error", message);
    if (message.error === "TOKEN_EXPIRED" || message.error === "AUTH_FAILED") {
      // The bridge closes with 4001 next; renew the token first if we can.
      await this.refreshToken();
    }
  }

  async refreshToken() {
    if (!this.getToken) return false;
    try {
      const token = await this.getToken();
      if (token) this.token = token;
      return Boolean(token);
    } catch (err) {
      this.emit("error", { error: "TOKEN_REFRESH_FAILED", message: String(err?.message ?? err) });
      return false;
    }
  }

  async onDrop(socket, code, reason) {
    if (socket !== this.socket) return;
    this.detach();
    this.clearTimer("connect");
    this.clearTimer("ping");
    this.clearTimer("pong");
    this.clearTimer("quiet");
    if (this.closedByUser) return;
    this.emit("disconnected", { code, reason });
    if (code === 4001) {
      if (!this.getToken) {
        this.setState("unauthorized");
        return;
      }
      this.setState("reconnecting");
      if (!(await this.refreshToken())) {
        this.scheduleReconnect();
        return;
      }
    }
    this.setState("reconnecting");
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    if (this.closedByUser) return;
    this.setState(this.everConnected ? "reconnecting" : this.state);
    const delay = backoffDelay(this.attempt, this.options);
    this.attempt += 1;
    this.clearTimer("reconnect");
    this.timers.reconnect = setTimeout(async () => {
      this.timers.reconnect = null;
      if (this.getToken && this.everConnected) await this.refreshToken();
      this.open();
    }, delay);
  }

  /** Any message proves the connection alive: the next ping is due a full interval later. */
  armHeartbeat() {
    this.clearTimer("pong");
    this.clearTimer("ping");
    if (!this.socket) return;
    this.timers.ping = setTimeout(() => {
      this.timers.ping = null;
      if (!this.send({ type: "ping" })) return;
      this.timers.pong = setTimeout(() => {
        this.timers.pong = null;
        // No pong: the connection is dead even if the socket does not know yet.
        const socket = this.socket;
        this.emit("error", { error: "HEARTBEAT_TIMEOUT", message: "no pong from the bridge" });
        if (socket) this.abandon(socket, 4000, "heartbeat timeout");
      }, this.options.heartbeatTimeout);
    }, this.options.heartbeatInterval);
  }

  /**
   * Ends "catching-up" once every subscription is acknowledged and every
   * resumed one has had its caught_up (or a resync); while some have not,
   * the fallback timer for old bridges runs.
   */
  maybeCaughtUp() {
    if (this.state !== "catching-up" || this.pendingAcks.size > 0) return;
    if (this.replaying.size > 0) {
      if (!this.timers.quiet) this.armQuiet();
      return;
    }
    this.finishCatchUp(true);
  }

  /** confirmed: the bridge said so (caught_up); false: the fallback timer guessed. */
  finishCatchUp(confirmed) {
    this.clearTimer("quiet");
    const count = this.caughtUp;
    const resynced = this.resynced;
    this.caughtUp = 0;
    this.resynced = 0;
    this.setState("live");
    this.emit("caughtup", { count, resynced, confirmed });
  }

  /** The fallback for a bridge that never sends caught_up: quiet for catchUpQuiet ms. */
  armQuiet() {
    this.clearTimer("quiet");
    if (this.pendingAcks.size > 0) return;
    this.timers.quiet = setTimeout(() => {
      this.timers.quiet = null;
      this.replaying.clear();
      this.finishCatchUp(false);
    }, this.options.catchUpQuiet);
  }

  clearTimer(name) {
    if (this.timers[name]) {
      clearTimeout(this.timers[name]);
      this.timers[name] = null;
    }
  }
}
