// The chart-review page: reads through the stand-in backend, writes through
// it, and applies every change from fhir-notify-bridge in place.
import { connect } from "/client/fhir-notify-client.mjs";

const CHART_TYPES = ["AllergyIntolerance", "Condition", "MedicationRequest", "Observation"];
const TYPE_LABEL = {
  AllergyIntolerance: "allergy",
  Condition: "condition",
  MedicationRequest: "medication",
  Observation: "vital sign",
};
const VERB = { created: "added", updated: "changed", deleted: "removed" };
const $ = (id) => document.getElementById(id);

const app = {
  config: null,
  token: sessionStorage.getItem("demo.token"),
  user: JSON.parse(sessionStorage.getItem("demo.user") || "null"),
  client: null,
  patientId: null,
  subscription: null,
  store: new Map(), // "Type/id" -> {version, resource, actor, at}
  tombstones: new Map(), // "Type/id" -> version at which it was deleted
  loaded: false,
  offlineSince: null,
  presence: null, // the last presence snapshot of the open chart
  editing: { allergy: null, condition: null }, // "Type/id" open in each edit form
  conflicts: { allergy: null, condition: null }, // the conflict shown in each form
  stats: { updates: 0, applied: 0, ignored: 0, resyncs: 0, conflicts: 0, replayed: 0 },
};
// For the browser tests and the curious: what the page has done.
window.fhirNotifyDemo = app;

/* ---------- small helpers ---------- */

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function displayName(name) {
  // Synthea numbers its names ("Augustus49 Emmerich580"); strip the digits.
  const n = name?.[0] ?? {};
  const given = (n.given ?? []).join(" ");
  return `${given} ${n.family ?? ""}`.replace(/\d+/g, "").replace(/\s+/g, " ").trim() || "(no name)";
}

function codeText(concept) {
  return concept?.text || concept?.coding?.[0]?.display || concept?.coding?.[0]?.code || "(unnamed)";
}

function statusOf(concept) {
  return concept?.coding?.[0]?.code ?? "";
}

function when(iso, short = false) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, { dateStyle: short ? "short" : "medium", timeStyle: "short" });
}

const VITAL_NAME = {
  "8867-4": "Heart rate",
  "9279-1": "Respiratory rate",
  "8310-5": "Temperature",
  "2708-6": "SpO₂",
  "59408-5": "SpO₂",
  "85354-9": "Blood pressure",
};

function actorName(actor) {
  if (!actor) return "someone";
  if (actor === app.user?.username) return "you";
  const user = app.config?.users?.find((u) => u.username === actor);
  return user ? user.name : actor;
}

function patientOf(resource) {
  const ref = resource?.subject?.reference || resource?.patient?.reference || "";
  return ref.startsWith("Patient/") ? ref.slice(8) : null;
}

function isVital(resource) {
  return resource?.category?.some((c) => c.coding?.some((x) => x.code === "vital-signs"));
}

function notice(text, kind = "info") {
  $("notice-text").textContent = text;
  $("notice").className = `notice ${kind === "warn" ? "warn" : ""}`;
  $("notice").hidden = false;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: {
      "Content-Type": "application/json",
      ...(app.token ? { Authorization: `Bearer ${app.token}` } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401 && path !== "/api/login") {
    logout();
    throw new Error("your session ended; log in again");
  }
  if (!response.ok) throw new Error(data.error || `${method} ${path}: HTTP ${response.status}`);
  return data;
}

/* ---------- login and the connection ---------- */

function showView(name) {
  for (const view of ["login", "patients", "chart"]) $(`${view}-view`).hidden = view !== name;
}

function renderLogin() {
  const box = $("login-users");
  box.replaceChildren(
    ...app.config.users.map((u, i) =>
      el(
        "label",
        {},
        el("input", {
          type: "radio",
          name: "user",
          value: u.username,
          id: `user-${u.username}`,
          checked: i === 0,
        }),
        ` ${u.name} (${u.title})`,
      ),
    ),
  );
  showView("login");
}

async function login(username) {
  const data = await api("POST", "/api/login", { username });
  app.token = data.token;
  app.user = data.user;
  sessionStorage.setItem("demo.token", app.token);
  sessionStorage.setItem("demo.user", JSON.stringify(app.user));
  startSession();
}

function logout() {
  sessionStorage.removeItem("demo.token");
  sessionStorage.removeItem("demo.user");
  app.client?.close();
  app.client = null;
  app.token = null;
  app.user = null;
  $("whoami").hidden = true;
  $("logout").hidden = true;
  setConnection("offline");
  location.hash = "#/";
  renderLogin();
}

const STATE_TEXT = {
  offline: "Not connected",
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  "catching-up": "Catching up…",
  unauthorized: "Not authorised",
  closed: "Disconnected",
};

function setConnection(state) {
  $("connection").dataset.state = state;
  $("connection-text").textContent = STATE_TEXT[state] ?? state;
}

function startSession() {
  $("whoami").textContent = `${app.user.name} (${app.user.role})`;
  $("whoami").hidden = false;
  $("logout").hidden = false;
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.hostname}:${app.config.bridge_port}${app.config.ws_path}`;
  app.client = connect({
    url,
    token: app.token,
    // A reload resumes from where this tab was: the bridge replays what it missed.
    storage: sessionStorage,
    getToken: async () => {
      const data = await api("POST", "/api/token");
      app.token = data.token;
      sessionStorage.setItem("demo.token", app.token);
      return app.token;
    },
  });
  setConnection("connecting");
  app.client.on("state", ({ state, previous }) => {
    setConnection(state);
    if (state === "reconnecting" && app.offlineSince === null) app.offlineSince = new Date();
    if (state === "live" && previous === "reconnecting") finishOutage(0);
  });
  // The bridge marks the end of the replay (caught_up): only then is "nothing
  // changed" true. confirmed is false only with a bridge too old to say so.
  app.client.on("caughtup", ({ count, confirmed }) => finishOutage(count, confirmed !== false));
  app.client.on("update", onUpdate);
  app.client.on("resync", onResync);
  // After a reload the bridge replays what this tab missed (its cursor is in
  // sessionStorage); the chart loaded from the backend has it already.
  app.client.on("caught_up", (d) => (app.stats.replayed += d.replayed ?? 0));
  app.client.onPresence(renderPresence);
  app.client.onConflict(onConflict);
  app.client.on("error", (err) => {
    if (err.error === "FORBIDDEN" || err.error === "BAD_REQUEST") {
      notice(`The live stream refused a request: ${err.message || err.error}`, "warn");
    }
  });
  route();
}

function finishOutage(count, confirmed = true) {
  if (app.offlineSince === null) return;
  const since = app.offlineSince.toLocaleTimeString();
  app.offlineSince = null;
  if (!confirmed) {
    notice(
      `Back online. ${count} change${count === 1 ? "" : "s"} made since ${since} arrived; the live stream did not confirm that was all.`,
      "warn",
    );
    return;
  }
  notice(
    count > 0
      ? `Back online. ${count} change${count === 1 ? "" : "s"} made since ${since} ${count === 1 ? "is" : "are"} now shown and highlighted.`
      : `Back online. Nothing changed in this chart since ${since}.`,
  );
}

/* ---------- routing ---------- */

function route() {
  if (!app.user) return renderLogin();
  const match = location.hash.match(/^#\/patient\/([A-Za-z0-9.-]{1,64})$/);
  const opening = match ? openChart(match[1]) : openList();
  opening.catch((err) => notice(`Could not open ${match ? "the chart" : "the patient list"}: ${err.message}`, "warn"));
}

async function openList() {
  closeChart();
  showView("patients");
  const { patients } = await api("GET", "/api/patients");
  $("patient-list").replaceChildren(
    ...patients.map((p) =>
      el(
        "li",
        {},
        el(
          "a",
          { href: `#/patient/${p.id}`, "data-patient": p.id },
          el("strong", { text: displayName(p.name) }),
          el("span", { class: "meta", text: ` · born ${p.birthDate ?? "?"} · ${p.gender ?? ""}` }),
        ),
      ),
    ),
  );
}

function closeChart() {
  for (const form of ["allergy", "condition"]) clearEditing(form);
  if (app.subscription) app.client?.unsubscribe(app.subscription);
  app.presence = null;
  renderPresence(null);
  app.subscription = null;
  app.patientId = null;
  app.loaded = false;
  app.store.clear();
  app.tombstones.clear();
}

async function openChart(patientId) {
  closeChart();
  app.patientId = patientId;
  showView("chart");
  for (const id of ["allergies", "conditions", "medications", "vitals", "activity"]) $(id).replaceChildren();
  $("patient-name").textContent = "Loading…";
  $("patient-details").textContent = "";
  // Subscribe first, then load: an update that lands between the two is
  // kept by version, so nothing falls in the gap.
  // presence: the others on this chart see us, and we see them and what they edit.
  app.subscription = app.client.subscribePatient(patientId, CHART_TYPES, { presence: true });
  await loadChart(patientId);
  $("main").focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

/*
 * A resource version as a number that grows with every write: WintEHR and
 * HAPI number their versions; Medplum's are UUIDs, so there the time of the
 * write (meta.lastUpdated, or the change's time) orders them.
 */
function versionOf(versionId, at) {
  if (versionId != null && versionId !== "" && Number.isFinite(Number(versionId))) return Number(versionId);
  const time = Date.parse(at ?? "");
  return Number.isFinite(time) ? time : 0;
}

async function loadChart(patientId) {
  const chart = await api("GET", `/api/patients/${encodeURIComponent(patientId)}/chart`);
  if (app.patientId !== patientId) return;
  const p = chart.patient;
  $("patient-name").textContent = displayName(p.name);
  $("patient-details").textContent =
    `Born ${p.birthDate ?? "?"} · ${p.gender ?? ""} · id ${p.id}`;
  for (const entry of chart.resources) {
    const key = `${entry.resource_type}/${entry.id}`;
    const version = versionOf(entry.version_id, entry.resource?.meta?.lastUpdated ?? entry.last_updated);
    if ((app.tombstones.get(key) ?? 0) >= version) continue;
    const known = app.store.get(key);
    if (known && known.version >= version) continue;
    app.store.set(key, { version, resource: entry.resource, at: entry.last_updated });
  }
  app.loaded = true;
  renderAll();
}

/* ---------- live updates ---------- */

function onUpdate(data) {
  app.stats.updates += 1;
  if (data.patient_id !== app.patientId || !CHART_TYPES.includes(data.resource_type)) return;
  const key = `${data.resource_type}/${data.resource_id}`;
  const version = versionOf(data.version_id ?? data.resource?.meta?.versionId,
    data.resource?.meta?.lastUpdated ?? data.changed_at);
  const known = app.store.get(key);
  const deletedAt = app.tombstones.get(key) ?? 0;
  if ((known && known.version >= version) || deletedAt >= version) {
    app.stats.ignored += 1; // already shown (our own write, or a replay)
    return;
  }
  // A resource moved to another patient arrives here as deleted.
  if (data.action === "deleted" || (data.resource && patientOf(data.resource) !== app.patientId)) {
    app.tombstones.set(key, version);
    app.store.delete(key);
    if (app.loaded) removeRow(key);
    // A delete carries no resource: name what was removed from what we showed.
    if (app.loaded) logActivity({ ...data, action: "deleted" }, data.resource ?? known?.resource);
  } else {
    app.store.set(key, { version, resource: data.resource, actor: data.actor, at: data.changed_at });
    if (app.loaded) renderRow(key, true);
    if (app.loaded) logActivity(data, data.resource);
  }
  app.stats.applied += 1;
}

const RESYNC_REASON = {
  too_many_changes: "too many changes were made while you were disconnected to replay them one by one",
  cursor_too_old: "you were disconnected for longer than the live stream keeps changes",
  queue_overflow: "changes arrived faster than this page could take them",
  cursor_unknown: "the live stream did not recognise where this page had got to",
  catch_up_failed: "the live stream could not read the changes this page missed",
};

async function onResync(data) {
  if (data.patient_id !== app.patientId) return;
  app.stats.resyncs += 1;
  app.offlineSince = null; // this notice, not "back online", says what happened
  const why = RESYNC_REASON[data.reason] ?? `the live stream could not guarantee every change (${data.reason ?? "resync"})`;
  notice(`This chart was reloaded: ${why}.`, "warn");
  app.store.clear();
  app.tombstones.clear();
  app.loaded = false;
  await loadChart(app.patientId);
}

/** One line in the list of changes: who did what to which resource. */
function logActivity(data, resource) {
  const what = TYPE_LABEL[data.resource_type] ?? data.resource_type;
  const name = summary(data.resource_type, resource);
  const item = el(
    "li",
    { class: app.client.state === "catching-up" ? "offline" : null },
    el("time", { datetime: data.changed_at ?? "", text: new Date(data.changed_at ?? Date.now()).toLocaleTimeString() }),
    `${actorName(data.actor)} ${VERB[data.action] ?? data.action} ${what}${name ? `: ${name}` : ""}`,
  );
  $("activity").prepend(item);
  while ($("activity").children.length > 50) $("activity").lastChild.remove();
}

function summary(type, r) {
  if (!r || !r.resourceType) return "";
  if (type === "Observation") return `${VITAL_NAME[r.code?.coding?.[0]?.code] ?? codeText(r.code)} ${vitalValue(r)}`;
  if (type === "MedicationRequest") return codeText(r.medicationCodeableConcept);
  return codeText(r.code);
}

/* ---------- presence, editing, conflicts ---------- */

function initials(name) {
  const words = String(name || "?").replace(/^(dr|mr|mrs|ms)\.?\s+/i, (m) => m.trim()[0] + " ").split(/\s+/);
  return words.filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join("") || "?";
}

/** The others on the chart: avatars with name and role, updated live. */
function renderPresence(snapshot) {
  if (snapshot && snapshot.patient_id !== app.patientId) return;
  app.presence = snapshot;
  const others = snapshot?.others ?? [];
  $("presence-list").replaceChildren(
    ...others.map((u) => {
      const name = u.name || u.user;
      const what = (u.editing ?? []).map((e) => editLabel(e.resource)).filter(Boolean);
      return el(
        "li",
        { "data-user": u.user, title: `${name}${u.role ? ` (${u.role})` : ""}${u.connections > 1 ? `, ${u.connections} windows` : ""}` },
        el("span", { class: `avatar ${u.role ?? ""}`, "aria-hidden": "true", text: initials(name) }),
        el("span", { class: "name", text: name }),
        u.role && el("span", { class: "role", text: `· ${u.role}` }),
        what.length > 0 && el("span", { class: "editing", text: `· editing ${what.join(", ")}` }),
      );
    }),
  );
  const more = snapshot && snapshot.truncated ? snapshot.count - (snapshot.users?.length ?? 0) : 0;
  if (more > 0) $("presence-list").append(el("li", { class: "more", text: `and ${more} more` }));
  $("presence-none").hidden = others.length > 0;
  markEditingRows();
}

/** "Type/id" -> what the chart calls it, e.g. "allergy Peanut". */
function editLabel(ref) {
  const entry = app.store.get(ref);
  const [type] = ref.split("/");
  const name = entry ? summary(type, entry.resource) : "";
  return `${TYPE_LABEL[type] ?? type}${name ? ` ${name}` : ""}`;
}

/** The names of the others editing a resource ("Type/id"). */
function editorsOf(key) {
  return (app.presence?.others ?? [])
    .filter((u) => (u.editing ?? []).some((e) => e.resource === key))
    .map((u) => u.name || u.user);
}

function editingMarker(key) {
  const names = editorsOf(key);
  if (names.length === 0) return null;
  return el("span", { class: "editing-by", text: `${names.join(" and ")} ${names.length > 1 ? "are" : "is"} editing` });
}

/** Puts "Nurse Jones is editing" on exactly the rows someone else edits. */
function markEditingRows() {
  for (const row of document.querySelectorAll("#allergies [data-key], #conditions [data-key]")) {
    const old = row.querySelector(".editing-by");
    const marker = editingMarker(row.dataset.key);
    if (old && marker && old.textContent === marker.textContent) continue;
    old?.remove();
    if (marker) row.querySelector(".info")?.append(marker);
  }
}

/** The edit form now shows key: tell the others, from the version shown. */
function startEditing(form, key) {
  if (app.editing[form] !== key) clearEditing(form);
  else showConflict(form, null);
  const entry = app.store.get(key);
  if (!entry) return;
  app.editing[form] = key;
  try {
    app.client.startEditing(key, { patientId: app.patientId, version: String(entry.version) });
  } catch (err) {
    console.warn("presence:", err.message);
  }
}

function clearEditing(form) {
  if (app.editing[form]) app.client?.stopEditing(app.editing[form], { patientId: app.patientId });
  app.editing[form] = null;
  showConflict(form, null);
}

function formOf(key) {
  for (const form of ["allergy", "condition"]) if (app.editing[form] === key) return form;
  return null;
}

/** Someone saved the resource this user is editing: say who, before she saves over it. */
function onConflict(data) {
  if (data.patient_id !== app.patientId) return;
  const form = formOf(data.resource);
  if (!form) return;
  app.stats.conflicts += 1;
  showConflict(form, data);
}

function showConflict(form, data) {
  app.conflicts[form] = data;
  $(`${form}-conflict`).hidden = !data;
  $(`${form}-save`).textContent = data ? "Save anyway" : app.editing[form] ? `Save ${form}` : `Add ${form}`;
  if (!data) return;
  const who = data.changed_by?.name ?? actorName(data.actor);
  const deleted = data.action === "deleted";
  $(`${form}-conflict-text`).textContent = deleted
    ? `${who} deleted this ${form} while you were editing it.`
    : `${who} changed this ${form} while you were editing it (now version ${data.version_id}).`;
  $(`${form}-conflict-reload`).textContent = deleted ? "Close the editor" : "Load their version";
}

/** One click: the form shows the new version (or closes on a delete), editing from it. */
function reloadConflicted(form) {
  const data = app.conflicts[form];
  if (!data) return;
  const key = data.resource;
  if (data.action === "deleted") {
    if (form === "allergy") resetAllergyForm();
    else resetConditionForm();
    return;
  }
  const version = Number(data.version_id ?? 0);
  const known = app.store.get(key);
  if (data.content && (!known || known.version < version)) {
    app.store.set(key, { version, resource: data.content, actor: data.actor, at: data.changed_at });
    renderRow(key, true);
  }
  if (form === "allergy") editAllergy(key);
  else editCondition(key);
}

/* ---------- rendering ---------- */

function listFor(resource) {
  switch (resource.resourceType) {
    case "AllergyIntolerance":
      return "allergies";
    case "Condition":
      return "conditions";
    case "MedicationRequest":
      return "medications";
    case "Observation":
      return isVital(resource) ? "vitals" : null;
    default:
      return null;
  }
}

function sortKey(resource) {
  return (
    resource.effectiveDateTime ||
    resource.recordedDate ||
    resource.onsetDateTime ||
    resource.authoredOn ||
    resource.meta?.lastUpdated ||
    ""
  );
}

function renderAll() {
  for (const id of ["allergies", "conditions", "medications", "vitals"]) $(id).replaceChildren();
  const entries = [...app.store.entries()].sort((a, b) => sortKey(b[1].resource).localeCompare(sortKey(a[1].resource)));
  for (const [key] of entries) renderRow(key, false);
  updateCounts();
}

function updateCounts() {
  const count = (id) => $(id).querySelectorAll("[data-key]:not(.removing)").length;
  $("allergies-count").textContent = `(${count("allergies")})`;
  $("conditions-count").textContent = `(${count("conditions")})`;
  $("meds-count").textContent = `(${count("medications")})`;
  for (const id of ["allergies", "conditions", "medications"]) {
    const list = $(id);
    const empty = list.querySelector(".empty");
    if (count(id) === 0 && !empty) list.append(el("li", { class: "empty", text: "None recorded" }));
    if (count(id) > 0 && empty) empty.remove();
  }
}

function byLine(entry) {
  if (!entry.actor) return null;
  return el("span", { class: "by", text: `by ${actorName(entry.actor)}, ${when(entry.at)}` });
}

function rowFor(key, entry) {
  const r = entry.resource;
  const attrs = { "data-key": key, "data-version": entry.version };
  switch (r.resourceType) {
    case "AllergyIntolerance": {
      const crit = r.criticality ?? "";
      const name = codeText(r.code);
      return el(
        "li",
        attrs,
        el(
          "div",
          { class: "info" },
          el("span", { class: "title", text: name }),
          crit && el("span", { class: `badge ${crit}`, text: `criticality ${crit.replace(/-/g, " ")}` }),
          el("div", {
            class: "detail",
            text: [statusOf(r.clinicalStatus), r.recordedDate && `recorded ${when(r.recordedDate)}`].filter(Boolean).join(" · "),
          }),
          byLine(entry),
          editingMarker(key),
        ),
        el(
          "div",
          { class: "actions" },
          el("button", { type: "button", onclick: () => editAllergy(key), "aria-label": `Edit allergy ${name}`, text: "Edit" }),
          el("button", { type: "button", onclick: () => remove(key), "aria-label": `Delete allergy ${name}`, text: "Delete" }),
        ),
      );
    }
    case "Condition": {
      const status = statusOf(r.clinicalStatus);
      const name = codeText(r.code);
      return el(
        "li",
        attrs,
        el(
          "div",
          { class: "info" },
          el("span", { class: "title", text: name }),
          status && el("span", { class: `badge ${status}`, text: status }),
          el("div", { class: "detail", text: `onset ${when(r.onsetDateTime || r.recordedDate)}` }),
          byLine(entry),
          editingMarker(key),
        ),
        el(
          "div",
          { class: "actions" },
          el("button", { type: "button", onclick: () => editCondition(key), "aria-label": `Edit condition ${name}`, text: "Edit" }),
          el("button", { type: "button", onclick: () => remove(key), "aria-label": `Delete condition ${name}`, text: "Delete" }),
        ),
      );
    }
    case "MedicationRequest":
      return el(
        "li",
        attrs,
        el(
          "div",
          { class: "info" },
          el("span", { class: "title", text: codeText(r.medicationCodeableConcept) }),
          el("span", { class: "badge", text: r.status ?? "" }),
          el("div", { class: "detail", text: `ordered ${when(r.authoredOn)}` }),
          byLine(entry),
        ),
      );
    case "Observation":
      return el(
        "tr",
        attrs,
        el("td", { text: when(r.effectiveDateTime, true) }),
        el("td", { text: VITAL_NAME[r.code?.coding?.[0]?.code] ?? codeText(r.code) }),
        el("td", { text: vitalValue(r) }),
        el("td", { text: entry.actor ? actorName(entry.actor) : "" }),
      );
    default:
      return null;
  }
}

function vitalValue(r) {
  if (r.component) {
    const part = (code) => r.component.find((c) => c.code?.coding?.some((x) => x.code === code))?.valueQuantity?.value;
    return `${part("8480-6") ?? "?"}/${part("8462-4") ?? "?"} mm[Hg]`;
  }
  const q = r.valueQuantity;
  return q ? `${q.value} ${q.unit === "Cel" ? "°C" : q.unit ?? ""}`.trim() : "";
}

/** Puts one resource's row in place: replaces the old row, or inserts it in date order. */
function renderRow(key, highlight) {
  const entry = app.store.get(key);
  const listId = entry && listFor(entry.resource);
  const old = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
  if (!listId) {
    old?.remove();
    return;
  }
  const row = rowFor(key, entry);
  // A changed row flashes; a new one also slides in.
  if (highlight) row.classList.add(...(old ? ["changed"] : ["changed", "added"]));
  if (old && old.parentElement === $(listId)) {
    old.replaceWith(row);
  } else {
    old?.remove();
    const list = $(listId);
    const mine = sortKey(entry.resource);
    const next = [...list.querySelectorAll("[data-key]")].find((other) => {
      const o = app.store.get(other.dataset.key);
      return o && sortKey(o.resource).localeCompare(mine) < 0;
    });
    list.insertBefore(row, next ?? null);
  }
  updateCounts();
}

function removeRow(key) {
  const old = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
  if (!old) return;
  old.classList.add("removing", "changed");
  old.removeAttribute("data-key");
  old.querySelectorAll("button").forEach((b) => (b.disabled = true));
  setTimeout(() => {
    old.remove();
    updateCounts();
  }, 1500);
  updateCounts();
}

/* ---------- writes through the stand-in backend ---------- */

function applyOwnWrite(resource) {
  // Show our own write at once; the bridge's copy of it has the same
  // version and is then ignored.
  const key = `${resource.resourceType}/${resource.id}`;
  const version = versionOf(resource.meta?.versionId, resource.meta?.lastUpdated);
  const known = app.store.get(key);
  if (known && known.version >= version) return;
  app.store.set(key, { version, resource, actor: app.user.username, at: resource.meta?.lastUpdated });
  renderRow(key, true);
  logActivity(
    { action: known ? "updated" : "created", resource_type: resource.resourceType, actor: app.user.username },
    resource,
  );
}

async function write(action) {
  $("form-error").textContent = "";
  try {
    return await action();
  } catch (err) {
    $("form-error").textContent = `Could not save: ${err.message}`;
    return null;
  }
}

function resetAllergyForm() {
  clearEditing("allergy");
  $("allergy-form").reset();
  $("allergy-id").value = "";
  $("allergy-form-title").textContent = "Add an allergy";
  $("allergy-save").textContent = "Add allergy";
  $("allergy-cancel").hidden = true;
}

function editAllergy(key) {
  const r = app.store.get(key)?.resource;
  if (!r) return;
  $("allergy-id").value = r.id;
  $("allergy-substance").value = codeText(r.code);
  $("allergy-criticality").value = r.criticality ?? "low";
  $("allergy-form-title").textContent = `Edit allergy: ${codeText(r.code)}`;
  $("allergy-cancel").hidden = false;
  startEditing("allergy", key);
  $("allergy-save").textContent = "Save allergy";
  $("allergy-substance").focus();
}

async function saveAllergy(event) {
  event.preventDefault();
  const id = $("allergy-id").value;
  const text = $("allergy-substance").value.trim();
  if (!text) return;
  const base = id ? structuredClone(app.store.get(`AllergyIntolerance/${id}`)?.resource ?? {}) : {
    resourceType: "AllergyIntolerance",
    clinicalStatus: { coding: [{ system: "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", code: "active" }] },
    verificationStatus: { coding: [{ system: "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", code: "unconfirmed" }] },
    type: "allergy",
    patient: { reference: `Patient/${app.patientId}` },
    recordedDate: new Date().toISOString(),
  };
  const sameText = base.code && codeText(base.code) === text;
  const resource = {
    ...base,
    resourceType: "AllergyIntolerance",
    code: sameText ? base.code : { text },
    criticality: $("allergy-criticality").value,
  };
  const saved = await write(() =>
    id ? api("PUT", `/fhir/AllergyIntolerance/${id}`, resource) : api("POST", "/fhir/AllergyIntolerance", resource),
  );
  if (saved) {
    applyOwnWrite(saved);
    resetAllergyForm();
  }
}

function resetConditionForm() {
  clearEditing("condition");
  $("condition-form").reset();
  $("condition-id").value = "";
  $("condition-form-title").textContent = "Add a condition";
  $("condition-save").textContent = "Add condition";
  $("condition-cancel").hidden = true;
}

function editCondition(key) {
  const r = app.store.get(key)?.resource;
  if (!r) return;
  $("condition-id").value = r.id;
  $("condition-text").value = codeText(r.code);
  $("condition-status").value = statusOf(r.clinicalStatus) || "active";
  $("condition-form-title").textContent = `Edit condition: ${codeText(r.code)}`;
  $("condition-cancel").hidden = false;
  startEditing("condition", key);
  $("condition-save").textContent = "Save condition";
  $("condition-text").focus();
}

async function saveCondition(event) {
  event.preventDefault();
  const id = $("condition-id").value;
  const text = $("condition-text").value.trim();
  if (!text) return;
  const now = new Date().toISOString();
  const base = id ? structuredClone(app.store.get(`Condition/${id}`)?.resource ?? {}) : {
    resourceType: "Condition",
    subject: { reference: `Patient/${app.patientId}` },
    onsetDateTime: now,
    recordedDate: now,
  };
  const sameText = base.code && codeText(base.code) === text;
  const resource = {
    ...base,
    resourceType: "Condition",
    code: sameText ? base.code : { text },
    clinicalStatus: {
      coding: [{ system: "http://terminology.hl7.org/CodeSystem/condition-clinical", code: $("condition-status").value }],
    },
  };
  const saved = await write(() =>
    id ? api("PUT", `/fhir/Condition/${id}`, resource) : api("POST", "/fhir/Condition", resource),
  );
  if (saved) {
    applyOwnWrite(saved);
    resetConditionForm();
  }
}

async function remove(key) {
  const entry = app.store.get(key);
  if (!entry) return;
  const [type, id] = key.split("/");
  const label = `${TYPE_LABEL[type]} ${summary(type, entry.resource)}`;
  if (!window.confirm(`Delete ${label}?`)) return;
  const done = await write(() => api("DELETE", `/fhir/${type}/${id}`));
  if (done && app.store.get(key) === entry) {
    app.tombstones.set(key, entry.version + 1);
    app.store.delete(key);
    removeRow(key);
    logActivity({ action: "deleted", resource_type: type, actor: app.user.username }, entry.resource);
  }
}

const VITALS = {
  "heart-rate": ["8867-4", "Heart rate", "/min"],
  "respiratory-rate": ["9279-1", "Respiratory rate", "/min"],
  "body-temperature": ["8310-5", "Body temperature", "Cel"],
  "oxygen-saturation": ["2708-6", "Oxygen saturation in Arterial blood", "%"],
  "blood-pressure": ["85354-9", "Blood pressure panel with all children optional", "mm[Hg]"],
};

async function saveVital(event) {
  event.preventDefault();
  const kind = $("vital-kind").value;
  const raw = $("vital-value").value.trim();
  const [code, display, unit] = VITALS[kind];
  const quantity = (value, u) => ({ value, unit: u, system: "http://unitsofmeasure.org", code: u });
  const resource = {
    resourceType: "Observation",
    status: "final",
    category: [{ coding: [{ system: "http://terminology.hl7.org/CodeSystem/observation-category", code: "vital-signs", display: "Vital signs" }] }],
    code: { coding: [{ system: "http://loinc.org", code, display }], text: display },
    subject: { reference: `Patient/${app.patientId}` },
    effectiveDateTime: new Date().toISOString(),
  };
  if (kind === "blood-pressure") {
    const m = raw.match(/^(\d{2,3})\s*\/\s*(\d{2,3})$/);
    if (!m) {
      $("form-error").textContent = "Enter blood pressure as systolic/diastolic, e.g. 120/80.";
      $("vital-value").focus();
      return;
    }
    resource.component = [
      { code: { coding: [{ system: "http://loinc.org", code: "8480-6", display: "Systolic blood pressure" }] }, valueQuantity: quantity(Number(m[1]), unit) },
      { code: { coding: [{ system: "http://loinc.org", code: "8462-4", display: "Diastolic blood pressure" }] }, valueQuantity: quantity(Number(m[2]), unit) },
    ];
  } else {
    const value = Number(raw.replace(",", "."));
    if (!raw || !Number.isFinite(value)) {
      $("form-error").textContent = "Enter a number.";
      $("vital-value").focus();
      return;
    }
    resource.valueQuantity = quantity(value, unit);
  }
  const saved = await write(() => api("POST", "/fhir/Observation", resource));
  if (saved) {
    applyOwnWrite(saved);
    $("vital-value").value = "";
  }
}

/* ---------- start ---------- */

async function main() {
  app.config = await api("GET", "/api/config");
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = document.querySelector('input[name="user"]:checked');
    if (chosen) login(chosen.value).catch((err) => ($("login-error").textContent = err.message));
  });
  $("logout").addEventListener("click", logout);
  $("notice-close").addEventListener("click", () => ($("notice").hidden = true));
  $("allergy-form").addEventListener("submit", saveAllergy);
  $("allergy-cancel").addEventListener("click", resetAllergyForm);
  $("condition-form").addEventListener("submit", saveCondition);
  $("condition-cancel").addEventListener("click", resetConditionForm);
  $("vital-form").addEventListener("submit", saveVital);
  $("allergy-conflict-reload").addEventListener("click", () => reloadConflicted("allergy"));
  $("condition-conflict-reload").addEventListener("click", () => reloadConflicted("condition"));
  window.addEventListener("hashchange", () => app.user && route());
  if (app.user && app.token) startSession();
  else renderLogin();
}

main().catch((err) => notice(`The page could not start: ${err.message}`, "warn"));
