"""The demo in a real headless Chromium: two users, one patient, live sync.

Runs what `make demo` runs (demo/launcher.py: a throwaway cluster with the
Synthea sample, the extension, the real bridge, the stand-in backend) and
drives two independent browser sessions, logged in as different users, on
the same patient's chart. Screenshots go to tests/artifacts/.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "demo"))

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

import launcher  # noqa: E402

ARTIFACTS = os.path.join(TOP, "tests", "artifacts")
PATIENT = "cbc86e51-9eca-3855-76ec-c058f72c5761"  # Augustus Emmerich: allergies, conditions, meds
# A change must show in the other chart within this many seconds of being
# committed (the path is milliseconds; this leaves room for a loaded machine).
PROPAGATION_LIMIT = 1.0
# A client that missed more than this many changes of a patient is told to
# resync instead of getting them replayed.
RESUME_MAX_CHANGES = 5
# Chromium logs every refused WebSocket connection attempt as an error; that
# is expected only while the bridge is deliberately down.
EXPECTED_OUTAGE_LOG = re.compile(r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/api/ws\?token=[^']*' failed")


def bridge_is_built():
    try:
        out = subprocess.run([launcher.BRIDGE, "--help"], capture_output=True, text=True, timeout=10)
    except OSError:
        return False
    return "not built yet" not in (out.stdout + out.stderr)


@pytest.fixture(scope="module")
def demo():
    if not bridge_is_built():
        pytest.skip("fhir-notify-bridge is not built yet")
    demo = launcher.Demo(db=os.environ.get("FHIR_NOTIFY_TEST_DEMO_DB"), quiet=True,
                         bridge_args=["--resume-max-changes", str(RESUME_MAX_CHANGES)])
    demo.start()
    yield demo
    logs = demo.logs()
    os.makedirs(ARTIFACTS, exist_ok=True)
    for name, text in logs.items():
        with open(os.path.join(ARTIFACTS, f"{name}.log"), "w") as f:
            f.write(text)
    demo.stop()


def new_browser(profile):
    """A headless Chromium with a fresh profile in the directory profile."""
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_argument("--user-data-dir=" + profile)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if os.path.exists("/usr/bin/chromium"):
        options.binary_location = "/usr/bin/chromium"
    if os.path.exists("/usr/bin/chromedriver"):
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    else:
        driver = webdriver.Chrome(options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    return driver


class Chart:
    """One user's browser on the demo page."""

    def __init__(self, driver, name):
        self.driver = driver
        self.name = name
        self.logs = []

    def wait(self, condition, timeout=20, message=""):
        return WebDriverWait(self.driver, timeout, poll_frequency=0.02).until(condition, message)

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def login_and_open(self, demo, username, patient):
        self.driver.get(demo.url)
        self.wait(lambda d: d.find_elements(By.ID, f"user-{username}"), message="login form")
        self.driver.find_element(By.ID, f"user-{username}").click()
        self.driver.find_element(By.ID, "login-submit").click()
        link = self.wait(lambda d: d.find_elements(By.CSS_SELECTOR, f'a[data-patient="{patient}"]'),
                         message="patient list")[0]
        link.click()
        self.wait(lambda d: self.js("return window.fhirNotifyDemo.loaded === true"), message="chart loaded")
        self.wait_state("live")
        self.js("window.__noReloadMarker = arguments[0]", self.name)

    def state(self):
        return self.driver.find_element(By.ID, "connection").get_attribute("data-state")

    def wait_state(self, state, timeout=30):
        self.wait(lambda d: self.state() == state, timeout, f"{self.name}: connection {state}")

    def not_reloaded(self):
        return self.js("return window.__noReloadMarker") == self.name

    def rows(self, key):
        return self.driver.find_elements(By.CSS_SELECTOR, f'[data-key="{key}"]')

    def row_text(self, key):
        """The row's visible text, read in one step (a row may be replaced at any time)."""
        return self.js("return document.querySelector(`[data-key=\"${arguments[0]}\"]`)?.innerText ?? null", key)

    def click_in_row(self, key, label):
        """Clicks the row's button labelled label, found and clicked in one step."""
        clicked = self.js(
            "const b = [...(document.querySelector(`[data-key=\"${arguments[0]}\"]`)?.querySelectorAll('button') ?? [])]"
            ".find(b => b.textContent === arguments[1]); if (b) b.click(); return Boolean(b);", key, label)
        assert clicked, f"{self.name}: no {label} button in {key}"

    def key_of(self, list_id, text):
        """The data-key of the row in list_id whose text contains text."""
        return self.js(
            "return [...document.querySelectorAll('#' + arguments[0] + ' [data-key]')]"
            ".find(r => r.textContent.includes(arguments[1]))?.dataset.key ?? null", list_id, text)

    def wait_key(self, list_id, text, timeout):
        return self.wait(lambda d: self.key_of(list_id, text), timeout, f"{self.name}: {text} in #{list_id}")

    def activity(self):
        return [li.text for li in self.driver.find_elements(By.CSS_SELECTOR, "#activity li")]

    def collect_logs(self):
        self.logs += self.driver.get_log("browser")
        return self.logs

    def screenshot(self, name):
        os.makedirs(ARTIFACTS, exist_ok=True)
        self.driver.save_screenshot(os.path.join(ARTIFACTS, f"{name}.png"))


@pytest.fixture(scope="module")
def charts(demo):
    drivers = []
    profiles = tempfile.mkdtemp(prefix="fhir_notify-chromium-")
    try:
        a = Chart(new_browser(os.path.join(profiles, "a")), "nurse")
        drivers.append(a.driver)
        b = Chart(new_browser(os.path.join(profiles, "b")), "physician")
        drivers.append(b.driver)
        a.login_and_open(demo, "nurse.jones", PATIENT)
        b.login_and_open(demo, "dr.smith", PATIENT)
        yield a, b
    finally:
        for driver in drivers:
            driver.quit()
        shutil.rmtree(profiles, ignore_errors=True)


def record_latency(what, seconds):
    """Notes a measured commit-to-screen time in tests/artifacts/latency.txt (a measurement, not a test)."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    with open(os.path.join(ARTIFACTS, "latency.txt"), "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {what}: {seconds * 1000:.0f} ms\n")


def _alert(driver):
    try:
        return driver.switch_to.alert
    except Exception:
        return False


def severe(entries, allow=None):
    return [e for e in entries if e.get("level") == "SEVERE" and not (allow and allow.search(e.get("message", "")))]


def sql_write(demo, sql, params, actor):
    import psycopg
    with psycopg.connect(demo.db) as conn:
        conn.execute("SELECT pg_catalog.set_config('fhir_notify.actor', %s, true)", (actor,))
        conn.execute(sql, params)


def test_allergy_added_by_one_user_appears_for_the_other(demo, charts):
    a, b = charts
    # Mark every row B shows now: an incremental update leaves them the same
    # DOM nodes (a re-render would replace them, and flicker).
    marked = b.js("const rows = [...document.querySelectorAll('[data-key]')];"
                  "rows.forEach(r => r.__untouched = true); return rows.length")
    assert marked > 10
    substance = f"Peanut {uuid.uuid4().hex[:6]}"
    a.driver.find_element(By.ID, "allergy-substance").send_keys(substance)
    Select(a.driver.find_element(By.ID, "allergy-criticality")).select_by_value("high")
    a.driver.find_element(By.ID, "allergy-save").click()
    # A's own write is shown once the backend committed it...
    key = a.wait_key("allergies", substance, 10)
    committed = time.monotonic()
    # ...and B, who did nothing, sees it without a reload.
    assert b.wait_key("allergies", substance, 10) == key
    latency = time.monotonic() - committed
    record_latency("allergy from nurse to physician", latency)
    assert latency < PROPAGATION_LIMIT, f"the allergy took {latency:.3f} s to reach the other chart"
    assert b.not_reloaded()
    assert b.js("return [...document.querySelectorAll('[data-key]')].filter(r => r.__untouched).length") == marked
    assert len(b.rows(key)) == 1
    assert "criticality high" in b.row_text(key)
    assert "by Nurse Jones" in b.row_text(key)
    assert any(line.endswith(f"Nurse Jones added allergy: {substance}") for line in b.activity())
    assert b.js("return document.querySelector(`[data-key=\"${arguments[0]}\"]`).classList.contains('changed')", key)
    b.screenshot("physician-sees-nurse-allergy")
    a.screenshot("nurse-added-allergy")

    # B edits it: A's row changes in place.
    b.click_in_row(key, "Edit")
    Select(b.driver.find_element(By.ID, "allergy-criticality")).select_by_value("low")
    b.driver.find_element(By.ID, "allergy-save").click()
    a.wait(lambda d: "criticality low" in (a.row_text(key) or ""), 10, "edit reached A")
    assert "by Dr. Smith" in a.row_text(key)
    assert a.not_reloaded()

    # B deletes it: it leaves A's chart.
    # The confirmation is window.confirm(); the click must not wait for it.
    b.js("setTimeout(() => [...document.querySelector(`[data-key=\"${arguments[0]}\"]`).querySelectorAll('button')]"
         ".find(b => b.textContent === 'Delete').click(), 0)", key)
    b.wait(lambda d: _alert(d), 10, "delete confirmation").accept()
    a.wait(lambda d: not a.rows(key), 10, "delete reached A")
    assert any(line.endswith(f"Dr. Smith removed allergy: {substance}") for line in a.activity())
    assert any(line.endswith(f"you added allergy: {substance}") for line in a.activity())
    assert sum(substance in line for line in b.activity()) == 3, b.activity()  # added, changed, removed: once each
    assert a.not_reloaded() and b.not_reloaded()
    assert severe(a.collect_logs()) == [] and severe(b.collect_logs()) == []


def test_every_control_has_a_label_and_the_keyboard_reaches_it(demo, charts):
    a, _ = charts
    unlabelled = a.js(
        "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())"
        ".map(e => e.outerHTML.slice(0, 80))")
    assert unlabelled == []
    unreachable = a.js(
        "return [...document.querySelectorAll('#chart-view input:not([type=hidden]), #chart-view select,"
        " #chart-view button, #chart-view a')].filter(e => e.tabIndex < 0).map(e => e.id || e.textContent)")
    assert unreachable == []
    assert a.driver.find_element(By.ID, "connection").get_attribute("role") == "status"


def test_change_written_in_sql_appears_in_both_charts(demo, charts):
    a, b = charts
    condition_id = str(uuid.uuid4())
    text = f"Seasonal allergic rhinitis {condition_id[:6]}"
    resource = {"resourceType": "Condition", "id": condition_id, "meta": {"versionId": "1"},
                "clinicalStatus": {"coding": [{"code": "active"}]}, "code": {"text": text},
                "subject": {"reference": f"Patient/{PATIENT}"}, "onsetDateTime": "2026-11-26T09:00:00Z"}
    import json
    sql_write(demo, "INSERT INTO fhir.resources (resource_type, fhir_id, resource) VALUES ('Condition', %s, %s)",
              (condition_id, json.dumps(resource)), "lab.interface")
    committed = time.monotonic()
    key = f"Condition/{condition_id}"
    for chart in (a, b):
        chart.wait(lambda d: chart.rows(key), 10, f"{chart.name}: SQL insert shown")
        latency = time.monotonic() - committed
        record_latency(f"SQL insert to {chart.name}", latency)
        assert latency < PROPAGATION_LIMIT + 0.5, f"{chart.name}: {latency:.3f} s"
        assert text in chart.row_text(key) and "by lab.interface" in chart.row_text(key)
    # A soft delete, as WintEHR does it, removes it from both.
    sql_write(demo, "UPDATE fhir.resources SET deleted = true, version_id = version_id + 1 "
                    "WHERE resource_type = 'Condition' AND fhir_id = %s", (condition_id,), "lab.interface")
    for chart in (a, b):
        chart.wait(lambda d: not chart.rows(key), 10, f"{chart.name}: SQL delete shown")
        assert chart.not_reloaded()


def test_vital_recorded_during_an_outage_shows_after_reconnect_once(demo, charts):
    a, b = charts
    a.collect_logs()
    b.collect_logs()
    demo.stop_bridge()
    b.wait(lambda d: b.state() in ("reconnecting", "connecting"), 20, "B noticed the outage")
    # A records a vital sign while nobody can hear about it.
    Select(a.driver.find_element(By.ID, "vital-kind")).select_by_value("heart-rate")
    a.driver.find_element(By.ID, "vital-value").send_keys("137")
    a.driver.find_element(By.ID, "vital-save").click()
    key = a.wait_key("vitals", "137 /min", 10)
    assert not b.rows(key)
    b.screenshot("physician-offline")
    demo.start_bridge()
    b.wait(lambda d: b.rows(key), 60, "B caught up with the vital sign")
    b.wait_state("live", 30)
    a.wait_state("live", 30)
    assert len(b.rows(key)) == 1
    assert "137 /min" in b.row_text(key)
    assert "Nurse Jones" in b.row_text(key)
    notice = b.driver.find_element(By.ID, "notice-text").text
    assert notice.startswith("Back online. 1 change"), notice
    # Nothing twice: one row and one activity line for it, also in A's own chart.
    assert len(a.rows(key)) == 1
    assert sum("137 /min" in line for line in b.activity()) == 1
    assert b.js("return window.fhirNotifyDemo.stats.resyncs") == 0
    assert b.not_reloaded() and a.not_reloaded()
    b.screenshot("physician-after-reconnect")
    for chart in (a, b):
        errors = severe(chart.collect_logs(), EXPECTED_OUTAGE_LOG)
        assert errors == [], f"{chart.name}: console errors {errors}"


def live_chart_keys(demo, patient):
    """The Type/id of every resource the chart shows, straight from the database."""
    import psycopg
    with psycopg.connect(demo.db) as conn:
        rows = conn.execute(
            "SELECT resource_type || '/' || fhir_id FROM fhir.resources "
            "WHERE resource_type IN ('AllergyIntolerance', 'Condition', 'MedicationRequest', 'Observation') "
            "AND NOT coalesce(deleted, false) AND (resource->'subject'->>'reference' = %(ref)s "
            "OR resource->'patient'->>'reference' = %(ref)s)", {"ref": f"Patient/{patient}"}).fetchall()
    return sorted(r[0] for r in rows)


def test_too_many_missed_changes_reload_the_chart(demo, charts):
    a, b = charts
    b.collect_logs()
    demo.stop_bridge()
    b.wait(lambda d: b.state() in ("reconnecting", "connecting"), 20, "B noticed the outage")
    # More changes than the bridge replays: it must say resync, and the page reload.
    subprocess.run([os.path.join(TOP, "demo", "simulate"), "--db", demo.db, "--patient", PATIENT,
                    "--count", str(RESUME_MAX_CHANGES + 4), "--rate", "100", "--seed", "7", "--quiet"],
                   check=True, timeout=60)
    demo.start_bridge()
    b.wait(lambda d: b.js("return window.fhirNotifyDemo.stats.resyncs") == 1, 60, "B got a resync")
    b.wait(lambda d: b.js("return window.fhirNotifyDemo.loaded === true"), 30, "B reloaded the chart")
    b.wait_state("live", 30)
    assert b.driver.find_element(By.ID, "notice-text").text.startswith("This chart was reloaded")
    assert b.not_reloaded()
    # The reloaded chart is exactly what the database holds, each row once.
    shown = sorted(b.js("return [...document.querySelectorAll('[data-key]')].map(e => e.dataset.key)"))
    assert shown == live_chart_keys(demo, PATIENT)
    # And it is live again afterwards.
    a.wait_state("live", 30)
    substance = f"Kiwi {uuid.uuid4().hex[:6]}"
    a.driver.find_element(By.ID, "allergy-substance").send_keys(substance)
    a.driver.find_element(By.ID, "allergy-save").click()
    b.wait_key("allergies", substance, 10)
    b.screenshot("physician-after-resync")
    errors = severe(b.collect_logs(), EXPECTED_OUTAGE_LOG)
    assert errors == [], f"console errors {errors}"


def test_backend_refuses_bad_input_clearly(demo):
    """The stand-in backend answers bad requests with a JSON error and writes nothing."""
    import json
    import urllib.error
    import urllib.request

    def call(method, path, body=None, token=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(demo.url.rstrip("/") + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    before = live_chart_keys(demo, PATIENT)
    assert call("POST", "/api/login", {"username": "mallory"})[0] == 401
    status, body = call("POST", "/api/login", {"username": "nurse.jones"})
    assert status == 200
    token = body["token"]
    assert call("GET", "/api/patients")[0] == 401
    assert call("GET", "/api/patients", token=token + "x")[0] == 401
    cases = [
        ("POST", "/fhir/AllergyIntolerance", None, b"{not json", 400),
        ("POST", "/fhir/AllergyIntolerance", {"resourceType": "Condition"}, None, 400),
        ("POST", "/fhir/AllergyIntolerance", {"resourceType": "AllergyIntolerance"}, None, 400),
        ("POST", "/fhir/AllergyIntolerance", {"resourceType": "AllergyIntolerance",
                                              "patient": {"reference": "Patient/nobody"}}, None, 422),
        ("POST", "/fhir/Patient", {"resourceType": "Patient"}, None, 404),
        ("PUT", "/fhir/Condition/does-not-exist", {"resourceType": "Condition",
                                                    "subject": {"reference": f"Patient/{PATIENT}"}}, None, 404),
        ("DELETE", "/fhir/Condition/does-not-exist", None, None, 404),
        ("DELETE", "/fhir/Condition/bad%20id", None, None, 400),
        ("GET", "/api/patients/nobody/chart", None, None, 404),
    ]
    for method, path, body, raw, expected in cases:
        status, answer = call(method, path, body, token, raw)
        assert status == expected, (method, path, status, answer)
        assert answer.get("error"), (method, path, answer)
    assert live_chart_keys(demo, PATIENT) == before
    assert demo.backend.poll() is None


def test_demo_run_prints_one_url_and_stops_everything_on_ctrl_c():
    """demo/run itself, as `make demo` runs it: one URL, a working page, a clean Ctrl-C."""
    import urllib.request
    if not bridge_is_built():
        pytest.skip("fhir-notify-bridge is not built yet")
    port = launcher.pgcluster.free_port()
    proc = subprocess.Popen([os.path.join(TOP, "demo", "run")], env=dict(os.environ, DEMO_PORT=str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(lines)
        urls = re.findall(r"http://\S+", output)
        assert urls == [f"http://127.0.0.1:{port}/"], output
        bridge_port = int(re.search(r"ws://127\.0\.0\.1:(\d+)/", output).group(1))
        cluster_port = int(re.search(r"port=(\d+) dbname", output).group(1))
        with urllib.request.urlopen(urls[0], timeout=10) as response:
            assert b"Chart review" in response.read()
        # Ctrl-C twice (an impatient user, or a wrapper such as timeout
        # relaying the signal to the process group): the second lands in the
        # cleanup, which must still take everything down.
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        for p in (port, bridge_port, cluster_port):
            with pytest.raises(OSError):
                launcher.socket.create_connection(("127.0.0.1", p), timeout=1).close()
    finally:
        if proc.poll() is None:
            # Ctrl-C first, so that demo/run takes its cluster and children down.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# -- presence, editing and conflicts ------------------------------------------------

# Presence shows within this many seconds of opening or closing a chart.
PRESENCE_LIMIT = 2.0
# A killed browser's presence is gone within the bridge's presence-ttl (default 15 s).
PRESENCE_TTL = 15.0


def other_patient():
    return next(p for p in launcher.sampledata.patient_ids() if p != PATIENT)


def present_users(chart):
    """The users the chart shows as also on it."""
    return chart.js("return [...document.querySelectorAll('#presence-list [data-user]')].map(e => e.dataset.user)")


def wait_present(chart, user, present, timeout):
    started = time.monotonic()
    chart.wait(lambda d: (user in present_users(chart)) == present, timeout,
               f"{chart.name}: {user} {'shown' if present else 'gone'}")
    return time.monotonic() - started


def browser_descendants(driver):
    """The pids of chromedriver's descendants (the browser we started), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [driver.service.process.pid]
    while todo:
        children = parents.get(todo.pop(), [])
        pids += children
        todo += children
    return pids


@pytest.fixture(scope="module")
def third(demo, charts):
    """A third session: the pharmacist, logged in, on the patient list."""
    profiles = tempfile.mkdtemp(prefix="fhir_notify-chromium-")
    chart = Chart(new_browser(os.path.join(profiles, "c")), "pharmacist")
    try:
        chart.driver.get(demo.url)
        chart.wait(lambda d: d.find_elements(By.ID, "user-pharmacist.lee"), message="login form")
        chart.driver.find_element(By.ID, "user-pharmacist.lee").click()
        chart.driver.find_element(By.ID, "login-submit").click()
        chart.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "a[data-patient]"), message="patient list")
        yield chart
    finally:
        chart.driver.quit()
        shutil.rmtree(profiles, ignore_errors=True)


def open_patient(chart, patient):
    chart.driver.execute_script("location.hash = arguments[0]", f"#/patient/{patient}")
    chart.wait(lambda d: chart.js("return window.fhirNotifyDemo.loaded === true && "
                                  "window.fhirNotifyDemo.patientId === arguments[0]", patient),
               message=f"{chart.name}: chart {patient}")


def test_presence_shows_who_else_has_the_chart_open(demo, charts, third):
    a, b = charts
    a.wait_state("live", 30)
    b.wait_state("live", 30)
    # The two on the chart see each other, with name and role.
    wait_present(a, "dr.smith", True, PRESENCE_LIMIT + 5)
    wait_present(b, "nurse.jones", True, PRESENCE_LIMIT + 5)
    shown = a.js("return document.querySelector('#presence-list [data-user=\"dr.smith\"]').innerText")
    assert "Dr. Smith" in shown and "physician" in shown and "DS" in shown, shown
    assert "nurse.jones" not in present_users(a)  # not oneself

    # A third opens the chart: both see her within the limit; she sees both.
    opened = time.monotonic()
    open_patient(third, PATIENT)
    for chart in (a, b):
        wait_present(chart, "pharmacist.lee", True, PRESENCE_LIMIT)
        assert time.monotonic() - opened < PRESENCE_LIMIT + 1.0, f"{chart.name}: presence took too long"
    record_latency("presence shown after opening a chart", time.monotonic() - opened)
    wait_present(third, "nurse.jones", True, PRESENCE_LIMIT)
    assert set(present_users(third)) == {"nurse.jones", "dr.smith"}

    # She closes it (back to the list): gone within the limit.
    closed = time.monotonic()
    third.driver.find_element(By.ID, "back-to-list").click()
    for chart in (a, b):
        wait_present(chart, "pharmacist.lee", False, PRESENCE_LIMIT)
    record_latency("presence gone after closing a chart", time.monotonic() - closed)
    assert time.monotonic() - closed < PRESENCE_LIMIT + 1.0

    # On another patient she sees nobody of this chart, and nobody here sees her.
    open_patient(third, other_patient())
    time.sleep(1.0)
    assert present_users(third) == []
    assert "pharmacist.lee" not in present_users(a) and "pharmacist.lee" not in present_users(b)
    for chart in (a, b, third):
        assert severe(chart.collect_logs(), EXPECTED_OUTAGE_LOG) == [], chart.name


def test_a_killed_browser_disappears_within_the_expiry(demo, charts):
    a, _ = charts
    profiles = tempfile.mkdtemp(prefix="fhir_notify-chromium-")
    doomed = Chart(new_browser(os.path.join(profiles, "d")), "doomed")
    try:
        doomed.login_and_open(demo, "pharmacist.lee", PATIENT)
        wait_present(a, "pharmacist.lee", True, PRESENCE_LIMIT + 2)
        killed = time.monotonic()
        victims = browser_descendants(doomed.driver)
        assert victims, "no browser processes found"
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_present(a, "pharmacist.lee", False, PRESENCE_TTL + PRESENCE_LIMIT)
        record_latency("presence gone after the browser was killed", time.monotonic() - killed)
    finally:
        try:
            doomed.driver.quit()
        except Exception:
            pass
        shutil.rmtree(profiles, ignore_errors=True)


def editing_marker(chart, key):
    return chart.js("return document.querySelector(`[data-key=\"${arguments[0]}\"] .editing-by`)?.innerText ?? null", key)


def test_two_editors_see_each_other_and_the_second_to_save_is_warned(demo, charts, third):
    a, b = charts
    # A fresh allergy, so that the test does not depend on the sample's.
    substance = f"Sesame {uuid.uuid4().hex[:6]}"
    a.driver.find_element(By.ID, "allergy-substance").send_keys(substance)
    a.driver.find_element(By.ID, "allergy-save").click()
    key = a.wait_key("allergies", substance, 10)
    b.wait_key("allergies", substance, 10)

    # The nurse edits it: the physician's row says so.
    a.click_in_row(key, "Edit")
    started = time.monotonic()
    b.wait(lambda d: editing_marker(b, key) == "Nurse Jones is editing", PRESENCE_LIMIT, "B sees A editing")
    record_latency("editing shown to the other", time.monotonic() - started)
    # The physician edits it too: each sees the other.
    b.click_in_row(key, "Edit")
    a.wait(lambda d: editing_marker(a, key) == "Dr. Smith is editing", PRESENCE_LIMIT, "A sees B editing")
    assert editing_marker(b, key) == "Nurse Jones is editing"
    assert "editing allergy" in b.js("return document.getElementById('presence').innerText")

    # The nurse saves first: the physician is warned at once, before saving.
    Select(a.driver.find_element(By.ID, "allergy-criticality")).select_by_value("high")
    a.driver.find_element(By.ID, "allergy-save").click()
    saved = time.monotonic()
    b.wait(lambda d: d.find_element(By.ID, "allergy-conflict").is_displayed(), PRESENCE_LIMIT, "B warned")
    record_latency("conflict warning after the other's save", time.monotonic() - saved)
    banner = b.driver.find_element(By.ID, "allergy-conflict-text").text
    assert banner.startswith("Nurse Jones changed this allergy while you were editing it (now version 2)"), banner
    assert b.driver.find_element(By.ID, "allergy-save").text == "Save anyway"
    assert not a.driver.find_element(By.ID, "allergy-conflict").is_displayed()
    # The nurse has stopped editing: the marker leaves the physician's row.
    b.wait(lambda d: editing_marker(b, key) is None, PRESENCE_LIMIT, "A's editing marker gone")
    b.screenshot("presence-conflict")

    # One click loads the new version into the form, and the warning goes.
    b.driver.find_element(By.ID, "allergy-conflict-reload").click()
    assert not b.driver.find_element(By.ID, "allergy-conflict").is_displayed()
    assert b.driver.find_element(By.ID, "allergy-criticality").get_attribute("value") == "high"
    assert b.driver.find_element(By.ID, "allergy-save").text == "Save allergy"
    # Saving from the new version is no conflict for anybody.
    Select(b.driver.find_element(By.ID, "allergy-criticality")).select_by_value("unable-to-assess")
    b.driver.find_element(By.ID, "allergy-save").click()
    a.wait(lambda d: "unable to assess" in (a.row_text(key) or ""), 10, "B's save reached A")
    assert not a.driver.find_element(By.ID, "allergy-conflict").is_displayed()
    assert b.js("return window.fhirNotifyDemo.stats.conflicts") == 1
    assert a.js("return window.fhirNotifyDemo.stats.conflicts") == 0

    # The third session, on another patient, saw none of it.
    assert third.js("return window.fhirNotifyDemo.patientId") != PATIENT
    assert present_users(third) == []
    assert third.js("return document.querySelectorAll('.editing-by').length") == 0
    assert third.js("return window.fhirNotifyDemo.stats.conflicts") == 0
    assert not third.rows(key)
    for chart in (a, b, third):
        assert severe(chart.collect_logs(), EXPECTED_OUTAGE_LOG) == [], chart.name


def test_a_reloaded_page_resumes_from_its_cursor(demo, charts):
    """The cursor is kept in sessionStorage: the page that comes back resumes exactly."""
    a, b = charts
    b.wait_state("live", 30)
    stored = b.js("return Object.keys(sessionStorage).filter(k => k.startsWith('fhir-notify:cursor:' + arguments[0]))"
                  ".map(k => sessionStorage.getItem(k))", PATIENT)
    assert len(stored) == 1 and stored[0], stored
    # B's tab goes elsewhere; A adds an allergy meanwhile; B comes back.
    b.driver.get("about:blank")
    substance = f"Lupin {uuid.uuid4().hex[:6]}"
    a.driver.find_element(By.ID, "allergy-substance").send_keys(substance)
    a.driver.find_element(By.ID, "allergy-save").click()
    key = a.wait_key("allergies", substance, 10)
    b.driver.get(demo.url + f"#/patient/{PATIENT}")
    b.wait(lambda d: b.js("return window.fhirNotifyDemo?.loaded === true"), 30, "B's chart after coming back")
    b.wait_state("live", 30)
    # The bridge replayed exactly the one change made while the page was away.
    b.wait(lambda d: b.js("return window.fhirNotifyDemo.stats.replayed") == 1, 10, "B resumed from its cursor")
    assert len(b.rows(key)) == 1
    b.js("window.__noReloadMarker = arguments[0]", b.name)
    assert severe(b.collect_logs(), EXPECTED_OUTAGE_LOG) == []
