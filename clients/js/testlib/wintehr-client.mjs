// A test client that behaves like WintEHR's browser client
// (frontend/src/services/websocket.js as of 2026-08) and its chart-review
// hook (useChartReviewResources), written from the facts in
// ../shared/reference/wintehr-protocol.md ("Today's WintEHR"). It is not
// WintEHR's code: it reproduces the behaviour the bridge has to cope with,
// faults included:
//
// - URL `<base>/api/ws?token=<JWT>` (URL-encoded), nothing else to log in;
// - subscription ids `patient-<pid>-<Date.now()>`, kept in a Map by id (two
//   subscriptions in the same millisecond: the later one wins);
// - on every (re)connect it re-sends every stored subscription, never with
//   a cursor;
// - reconnect backoff 1, 2, 4, 8, 16 s (options.backoffUnit scales the
//   second), then it gives up for good; no reconnect after close 1000;
// - on an error message AUTH_FAILED or TOKEN_EXPIRED it asks
//   options.getFreshToken() for a token, resets its failure count and
//   reconnects at once (the reconnect storm of issue 11);
// - heartbeat: ping every 30 s, no pong within 10 s: close and reconnect;
// - update dispatch: the event name is data.event_type, else
//   data.resource.event_type, else `resource.<action>`; other message types
//   go to listeners by type with `payload || data`; FORBIDDEN and other
//   error codes are ignored;
// - publish(type, data) sends {type, payload: {...data, patientId, userId,
//   timestamp, eventId}, timestamp}, queued (100 max) while disconnected.

const BACKOFF_STEPS = [1, 2, 4, 8, 16];

export class WintehrClient {
  /**
   * options: url (ws://host/api/ws), token, getFreshToken (async () =>
   * token), userId, backoffUnit (ms per backoff second, default 1000),
   * heartbeatInterval (30000), heartbeatTimeout (10000), WebSocket.
   */
  constructor(options) {
    this.options = { backoffUnit: 1000, heartbeatInterval: 30000, heartbeatTimeout: 10000, ...options };
    this.token = options.token;
    this.WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    this.subscriptions = new Map(); // id -> {patient_ids, resource_types} or {room}
    this.listeners = new Map(); // event name -> Set
    this.queue = [];
    this.failures = 0;
    this.gaveUp = false;
    this.closedByUser = false;
    this.connected = false;
    this.attempts = 0; // sockets opened, for the storm test
    this.attemptTimes = [];
    this.received = [];
    this.timers = {};
  }

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.listeners.get(event)?.delete(fn);
  }

  emit(event, detail) {
    for (const fn of this.listeners.get(event) ?? []) fn(detail);
    for (const fn of this.listeners.get("*") ?? []) fn(event, detail);
  }

  connect() {
    if (this.closedByUser) return;
    const url = `${this.options.url}?token=${encodeURIComponent(this.token)}`;
    this.attempts += 1;
    this.attemptTimes.push(Date.now());
    let socket;
    try {
      socket = new this.WebSocketImpl(url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket !== socket) return;
      this.connected = true;
      this.failures = 0;
      for (const [id, data] of this.subscriptions) {
        this.sendNow({ type: "subscribe", data: { subscription_id: id, ...data } });
      }
      while (this.queue.length) this.sendNow(this.queue.shift());
      this.startHeartbeat();
      this.emit("connected", {});
    };
    socket.onmessage = (event) => this.onMessage(socket, event);
    let closed = false;
    const onClose = (event) => {
      if (this.socket !== socket || closed) return;
      closed = true;
      this.connected = false;
      this.stopHeartbeat();
      this.socket = null;
      this.emit("disconnected", { code: event.code });
      if (this.closedByUser || event.code === 1000) return;
      this.scheduleReconnect();
    };
    socket.onclose = onClose;
    // A browser follows a failed handshake's error with a close event (1006);
    // Node 20's WebSocket fires only the error: do what the browser would.
    socket.onerror = () => {
      if (!this.connected) onClose({ code: 1006 });
    };
  }

  scheduleReconnect() {
    if (this.closedByUser) return;
    if (this.failures >= BACKOFF_STEPS.length) {
      this.gaveUp = true;
      this.emit("gaveup", { attempts: this.attempts });
      return;
    }
    const delay = BACKOFF_STEPS[this.failures] * this.options.backoffUnit;
    this.failures += 1;
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => this.connect(), delay);
  }

  /** What it does on AUTH_FAILED / TOKEN_EXPIRED: a fresh token, reset, reconnect now. */
  async reconnectWithFreshToken() {
    if (this.options.getFreshToken) {
      try {
        this.token = (await this.options.getFreshToken()) ?? this.token;
      } catch {
        // keeps the old one
      }
    }
    this.failures = 0;
    clearTimeout(this.timers.reconnect);
    const old = this.socket;
    if (old) {
      try {
        old.close();
      } catch {
        // closing anyway
      }
      this.socket = null;
      this.connected = false;
      this.stopHeartbeat();
    }
    this.connect();
  }

  onMessage(socket, event) {
    if (this.socket !== socket) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    this.received.push(message);
    clearTimeout(this.timers.pong);
    switch (message.type) {
      case "welcome":
        return this.emit("welcome", message.data);
      case "pong":
        return;
      case "subscription":
        return this.emit("subscription", message.data);
      case "error":
        this.emit("error", message);
        if (message.error === "AUTH_FAILED" || message.error === "TOKEN_EXPIRED") {
          this.reconnectWithFreshToken();
        }
        return; // FORBIDDEN and the rest: ignored
      case "update": {
        const data = message.data ?? {};
        const name = data.event_type || data.resource?.event_type || `resource.${data.action}`;
        return this.emit(name, {
          ...data,
          patientId: data.patient_id,
          resourceType: data.resource_type,
          resourceId: data.resource_id,
          resource: data.resource,
        });
      }
      default:
        return this.emit(message.type, message.payload || message.data);
    }
  }

  sendNow(message) {
    this.socket.send(JSON.stringify(message));
  }

  send(message) {
    if (this.connected && this.socket) this.sendNow(message);
    else {
      this.queue.push(message);
      if (this.queue.length > 100) this.queue.shift();
    }
  }

  /** Subscribes to a patient; returns the subscription id (patient-<pid>-<ms>). */
  subscribe(patientId, resourceTypes = [], now = Date.now()) {
    const id = `patient-${patientId}-${now}`;
    const data = { patient_ids: [patientId], resource_types: resourceTypes };
    this.subscriptions.set(id, data); // same id: the later one replaces the earlier
    if (this.connected) this.sendNow({ type: "subscribe", data: { subscription_id: id, ...data } });
    return id;
  }

  subscribeRoom(room, now = Date.now()) {
    const id = `room-${room}-${now}`;
    this.subscriptions.set(id, { room });
    if (this.connected) this.sendNow({ type: "subscribe", data: { subscription_id: id, room } });
    return id;
  }

  unsubscribe(id) {
    this.subscriptions.delete(id);
    if (this.connected) this.sendNow({ type: "unsubscribe", data: { subscription_id: id } });
  }

  publish(type, data, patientId) {
    const timestamp = new Date().toISOString();
    this.send({
      type,
      payload: { ...data, patientId, userId: this.options.userId, timestamp, eventId: `${Date.now()}-${Math.random()}` },
      timestamp,
    });
  }

  startHeartbeat() {
    this.stopHeartbeat();
    this.timers.ping = setInterval(() => {
      if (!this.connected) return;
      this.sendNow({ type: "ping" });
      clearTimeout(this.timers.pong);
      this.timers.pong = setTimeout(() => this.socket?.close(), this.options.heartbeatTimeout);
    }, this.options.heartbeatInterval);
  }

  stopHeartbeat() {
    clearInterval(this.timers.ping);
    clearTimeout(this.timers.pong);
  }

  close() {
    this.closedByUser = true;
    for (const t of Object.values(this.timers)) {
      clearTimeout(t);
      clearInterval(t);
    }
    try {
      this.socket?.close(1000);
    } catch {
      // closed
    }
  }
}

// The chart-review hook's subscription: its 14 patient clinical types.
export const CHART_REVIEW_TYPES = Object.freeze([
  "Encounter", "Condition", "MedicationRequest", "AllergyIntolerance", "Observation", "Procedure",
  "DiagnosticReport", "Coverage", "DocumentReference", "Immunization", "CarePlan", "CareTeam", "Goal",
  "ImagingStudy",
]);

/**
 * The chart-review hook's handling of events for one open chart: it keeps
 * only events whose patientId is the chart's, takes `resource` (or the
 * type's own field), ignores an event without a resource or resourceType,
 * removes a Condition only on condition.deleted and an AllergyIntolerance
 * only on allergy.deleted, and otherwise inserts or replaces by resource.id.
 */
export class ChartReview {
  constructor(client, patientId) {
    this.patientId = patientId;
    this.items = new Map(); // "Type/id" -> resource
    this.ignored = 0;
    this.off = client.on("*", (name, event) => this.onEvent(name, event));
    this.subscriptionId = client.subscribe(patientId, [...CHART_REVIEW_TYPES]);
  }

  onEvent(name, event) {
    if (!event || typeof event !== "object" || !("patientId" in event)) return;
    if (event.patientId !== this.patientId) return;
    const resource = event.resource ?? event.condition ?? event.allergy ?? null;
    if (!resource || !resource.resourceType) {
      this.ignored += 1; // "No valid resource"
      return;
    }
    const key = `${resource.resourceType}/${resource.id}`;
    if (
      (name === "condition.deleted" && resource.resourceType === "Condition") ||
      (name === "allergy.deleted" && resource.resourceType === "AllergyIntolerance")
    ) {
      this.items.delete(key);
      return;
    }
    this.items.set(key, resource);
  }

  has(type, id) {
    return this.items.has(`${type}/${id}`);
  }
}
