"""End to end: who may connect, and what a token may see.

Three bridges on one database: HS256 with a shared secret, RS256 with a
PEM public key, and RS256 with a JSON Web Key Set. A refused token in the
query or the Authorization header is refused at the upgrade with HTTP 401
(no WebSocket); in an authenticate message it gets an error message then
close 4001, never a welcome and never data.
"""

import time

import pytest

import tokens
from bridgeproc import (AUDIENCE, ISSUER, KEY_DIR, SECRET_FILE, Bridge, FhirStore,  # noqa: F401
                        assert_update, bridge_logs, condition, create_fhir_database, hs256, new_id,
                        observation, rs256, shared_cluster)
from wsclient import Closed

# No per-address limit here: these tests refuse many tokens from 127.0.0.1 (see
# test_bridge_wintehr.py for the limit).
VALIDATION_ARGS = ["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER, "--jwt-leeway", "0",
                   "--auth-failure-limit", "0"]
RSA_PRIVATE, RSA_PUBLIC = tokens.make_rsa_keypair(KEY_DIR)
OTHER_PRIVATE, OTHER_PUBLIC = tokens.make_rsa_keypair(KEY_DIR)
KID = "test-key-1"
EC_PRIVATE, EC_PUBLIC = tokens.make_ec_keypair(KEY_DIR)
EC_KID = "test-ec-key"



@pytest.fixture(scope="module")
def db():
    return create_fhir_database(shared_cluster())


@pytest.fixture(scope="module")
def store(db):
    s = FhirStore(shared_cluster(), db)
    yield s
    s.close()


def _module_bridge(db, **kwargs):
    with Bridge(shared_cluster(), db, **kwargs) as b:
        yield b
        assert b.proc.poll() is None, f"the bridge died during the tests:\n{b.log()[-4000:]}"


@pytest.fixture(scope="module")
def hs_bridge(db):
    yield from _module_bridge(db, secret_file=SECRET_FILE, args=VALIDATION_ARGS)


@pytest.fixture(scope="module")
def rs_bridge(db):
    yield from _module_bridge(db, args=VALIDATION_ARGS + ["--jwt-public-key-file", RSA_PUBLIC])


@pytest.fixture(scope="module")
def jwks_bridge(db):
    jwks_file = tokens.make_jwks(KEY_DIR, [(RSA_PUBLIC, KID), (EC_PUBLIC, EC_KID)])
    yield from _module_bridge(db, args=VALIDATION_ARGS + ["--jwks-file", jwks_file])


def assert_refused(bridge, token, error="AUTH_FAILED", headers=None):
    """The bridge refuses token in the query (or the Authorization header given) at the
    upgrade, 401 and no WebSocket; the same token in an authenticate message gets one error
    message (error) and close 4001, never a welcome."""
    bridge.refused_token(token, headers=headers, expired=error == "TOKEN_EXPIRED")
    if token is None:
        return
    with bridge.connect(None, welcome=False) as client:
        client.send_json({"type": "authenticate", "token": token})
        code, reason, messages = client.wait_closed()
    assert [m.get("type") for m in messages] == ["error"], messages
    assert messages[0]["error"] == error, messages
    assert code == 4001, (code, reason, messages)


def assert_accepted(bridge, token, **connect_args):
    with bridge.connect(token, **connect_args) as client:
        client.ping()
        return client.welcome


# -- HS256 --------------------------------------------------------------------

def test_valid_hs256_token_in_query_or_header_is_accepted(hs_bridge):
    welcome = assert_accepted(hs_bridge, hs256(sub="dr.who", scope="user/*.read"))
    assert welcome["data"]["user"]["sub"] == "dr.who"
    assert welcome["data"]["user"]["scope"] == "user/*.read"
    assert_accepted(hs_bridge, None, headers={"Authorization": f"Bearer {hs256()}"})


@pytest.mark.parametrize("case", [
    "bad_signature", "alg_none", "garbage", "wrong_audience", "wrong_issuer", "no_audience",
    "not_yet_valid", "rs256_on_hs_bridge"])
def test_bad_hs256_tokens_are_refused(hs_bridge, case):
    token = {
        "bad_signature": lambda: hs256(secret=b"not-the-secret"),
        "alg_none": lambda: tokens.unsigned_token(aud=AUDIENCE, iss=ISSUER),
        "garbage": lambda: "not.a.token",
        "wrong_audience": lambda: hs256(aud="someone-else"),
        "wrong_issuer": lambda: hs256(iss="https://evil.example"),
        "no_audience": lambda: hs256(aud=None),
        "not_yet_valid": lambda: hs256(claims={"nbf": int(time.time()) + 120}),
        "rs256_on_hs_bridge": lambda: rs256(RSA_PRIVATE),
    }[case]()
    assert_refused(hs_bridge, token)


def test_bad_token_in_header_is_refused(hs_bridge):
    assert_refused(hs_bridge, None, headers={"Authorization": f"Bearer {hs256(secret='wrong')}"})
    # the query wins over the header: a good token there lets the upgrade through
    assert_accepted(hs_bridge, hs256(), headers={"Authorization": "Bearer not.a.token"})


def test_expired_token_is_refused_with_token_expired(hs_bridge):
    assert_refused(hs_bridge, hs256(exp_in=-60), error="TOKEN_EXPIRED")


def test_no_token_gets_auth_required_and_no_data(hs_bridge, store):
    patient = new_id("pat")
    with hs_bridge.connect(None, welcome=False) as client:
        client.send_json({"type": "subscribe", "data": {"subscription_id": "s", "patient_ids": [patient]}})
        answer = client.recv_json()
        assert answer.get("type") == "error" and answer["error"] == "AUTH_REQUIRED", answer
        client.send_json({"type": "ping"})
        answer = client.recv_json()
        assert answer.get("type") == "error" and answer["error"] == "AUTH_REQUIRED", answer
        store.create(condition(patient))
        # Barrier: authenticate now; nothing of the change may have come before auth_success.
        client.send_json({"type": "authenticate", "token": hs256()})
        assert client.recv_json()["type"] == "auth_success"
        assert client.recv_json()["type"] == "welcome"
        client.ping()


def test_unauthenticated_connection_is_closed_after_10_seconds(hs_bridge):
    started = time.monotonic()
    with hs_bridge.connect(None, welcome=False) as client:
        code, _, messages = client.wait_closed(timeout=40)
    assert code == 4001, (code, messages)
    assert time.monotonic() - started > 8
    assert not any(m.get("type") == "welcome" for m in messages), messages


def test_first_message_authenticate(hs_bridge, store):
    patient = new_id("pat")
    with hs_bridge.connect(None, welcome=False) as client:
        client.send_json({"type": "authenticate", "token": hs256(sub="nurse.jones")})
        success = client.recv_json()
        assert success == {"type": "auth_success", "message": "authenticated"}, success
        welcome = client.recv_json()
        assert welcome["type"] == "welcome" and welcome["data"]["user"]["sub"] == "nurse.jones", welcome
        client.subscribe("chart", [patient])
        created = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", created["id"], patient, created)


def test_first_message_authenticate_with_bad_token_is_refused(hs_bridge):
    with hs_bridge.connect(None, welcome=False) as client:
        client.send_json({"type": "authenticate", "token": hs256(secret=b"wrong")})
        code, _, messages = client.wait_closed()
    assert [m.get("type") for m in messages] == ["error"], messages
    assert messages[0]["error"] == "AUTH_FAILED"
    assert code == 4001


# -- what a token may see --------------------------------------------------------

def test_patient_scope_forbids_other_patients(hs_bridge, store):
    mine, other = new_id("pat"), new_id("pat")
    token = hs256(scope="patient/*.read launch/patient", patient=mine)
    with hs_bridge.connect(token) as client:
        for patient_ids in ([other], [mine, other]):
            client.send_json({"type": "subscribe", "data": {"subscription_id": "bad",
                                                            "patient_ids": patient_ids}})
            answer = client.recv_json()
            assert answer.get("type") == "error" and answer["error"] == "FORBIDDEN", answer
            assert answer.get("subscription_id") == "bad", answer
        client.subscribe("good", [mine])
        store.create(condition(other))
        allowed = store.create(condition(mine))
        assert_update(client.recv_update(), "created", "Condition", allowed["id"], mine, allowed)
        client.expect_no_message()


@pytest.mark.parametrize("scope", ["user/Condition.read", "user/Condition.rs",
                                   "patient/Condition.read"])
def test_type_scopes_filter_what_arrives(hs_bridge, store, scope):
    patient = new_id("pat")
    token = hs256(scope=scope, patient=patient if scope.startswith("patient/") else None)
    with hs_bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        store.create(observation(patient))
        allowed = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", allowed["id"], patient, allowed)
        client.expect_no_message()


def test_token_without_read_scope_gets_nothing(hs_bridge, store):
    patient = new_id("pat")
    with hs_bridge.connect(hs256(scope="openid profile")) as client:
        client.send_json({"type": "subscribe", "data": {"subscription_id": "s", "patient_ids": [patient]}})
        answer = client.recv_json()
        assert answer.get("type") == "error" and answer["error"] == "FORBIDDEN", answer
        store.create(condition(patient))
        client.ping()
        client.expect_no_message()


# -- expiry ------------------------------------------------------------------------

def test_token_expiry_closes_the_socket_and_authenticate_extends_it(hs_bridge, store):
    patient = new_id("pat")
    lifetime = 4
    short = tokens.claims_for(exp_in=lifetime, aud=AUDIENCE, iss=ISSUER)
    with hs_bridge.connect(hs256(claims=short)) as expiring, \
            hs_bridge.connect(hs256(claims=short)) as renewed:
        expiring.subscribe("chart-1", [patient])  # two tabs: two ids (and resume points)
        renewed.subscribe("chart-2", [patient])
        renewed.send_json({"type": "authenticate", "token": hs256(sub=short["sub"], exp_in=600)})
        assert renewed.recv_json()["type"] == "auth_success"
        before = store.create(condition(patient))
        for client in (expiring, renewed):
            assert_update(client.recv_update(), "created", "Condition", before["id"], patient)

        code, _, messages = expiring.wait_closed(timeout=lifetime + 20)
        assert time.time() >= short["exp"] - 1
        assert [m.get("type") for m in messages] == ["error"], messages
        assert messages[0]["error"] == "TOKEN_EXPIRED", messages
        assert code == 4001

        while time.time() < short["exp"] + 1.5:
            time.sleep(0.2)
        renewed.ping()
        after = store.create(condition(patient))
        assert_update(renewed.recv_update(), "created", "Condition", after["id"], patient)


# -- RS256 with a PEM key ----------------------------------------------------------

def test_valid_rs256_token_is_accepted(rs_bridge):
    assert_accepted(rs_bridge, rs256(RSA_PRIVATE))


@pytest.mark.parametrize("case", ["hs256_with_public_key_as_secret", "hs256", "other_rsa_key",
                                  "alg_none", "expired_rs256"])
def test_bad_rs256_tokens_are_refused(rs_bridge, case):
    token = {
        "hs256_with_public_key_as_secret": lambda: tokens.confused_token(RSA_PUBLIC, aud=AUDIENCE,
                                                                          iss=ISSUER),
        "hs256": lambda: hs256(),
        "other_rsa_key": lambda: rs256(OTHER_PRIVATE),
        "alg_none": lambda: tokens.unsigned_token(aud=AUDIENCE, iss=ISSUER),
        "expired_rs256": lambda: rs256(RSA_PRIVATE, exp_in=-60),
    }[case]()
    assert_refused(rs_bridge, token, error="TOKEN_EXPIRED" if case == "expired_rs256" else "AUTH_FAILED")


# -- RS256 with a JWKS -------------------------------------------------------------

def test_jwks_known_kid_is_accepted(jwks_bridge):
    assert_accepted(jwks_bridge, rs256(RSA_PRIVATE, kid=KID))
    assert_accepted(jwks_bridge, tokens.token(EC_PRIVATE, "ES256", kid=EC_KID, aud=AUDIENCE, iss=ISSUER))


@pytest.mark.parametrize("case", ["unknown_kid", "known_kid_wrong_key", "hs256_with_public_key",
                                  "es256_with_rsa_kid", "rs256_with_ec_kid"])
def test_jwks_bad_tokens_are_refused(jwks_bridge, case):
    token = {
        "unknown_kid": lambda: rs256(OTHER_PRIVATE, kid="no-such-key"),
        "es256_with_rsa_kid": lambda: tokens.token(EC_PRIVATE, "ES256", kid=KID, aud=AUDIENCE, iss=ISSUER),
        "rs256_with_ec_kid": lambda: rs256(RSA_PRIVATE, kid=EC_KID),
        "known_kid_wrong_key": lambda: rs256(OTHER_PRIVATE, kid=KID),
        "hs256_with_public_key": lambda: tokens.confused_token(RSA_PUBLIC, kid=KID, aud=AUDIENCE,
                                                                iss=ISSUER),
    }[case]()
    assert_refused(jwks_bridge, token)


def test_refused_client_never_gets_data(hs_bridge, store):
    """A connection refused in an authenticate message is closed: even racing a write, no
    update reaches it."""
    patient = new_id("pat")
    client = hs_bridge.connect(None, welcome=False)
    with client:
        client.send_json({"type": "authenticate", "token": hs256(secret=b"wrong")})
        try:
            client.send_json({"type": "subscribe", "data": {"subscription_id": "s",
                                                            "patient_ids": [patient]}})
        except Closed:
            pass  # refused before the subscribe went out: fine
        store.create(condition(patient))
        code, _, messages = client.wait_closed()
    assert code == 4001
    assert not any(m.get("type") in ("update", "welcome", "subscription") for m in messages), messages


def test_closed_error_is_reported(hs_bridge):
    """The harness itself: recv_json on a refused socket raises Closed with the code."""
    with hs_bridge.connect(None, welcome=False) as client:
        client.send_json({"type": "authenticate", "token": hs256(secret=b"wrong")})
        with pytest.raises(Closed) as closed:
            for _ in range(5):
                client.recv_json()
        assert closed.value.code == 4001


def test_reauthenticate_replaces_the_rights_of_a_live_connection(hs_bridge, store):
    first, second = new_id("pat"), new_id("pat")
    with hs_bridge.connect(hs256(scope="patient/*.read", patient=first)) as client:
        client.subscribe("first", [first])
        client.send_json({"type": "authenticate", "token": hs256(scope="patient/*.read", patient=second)})
        assert client.recv_json()["type"] == "auth_success"
        # The first patient is no longer allowed: neither an old subscription nor a new one
        # may deliver its changes.
        client.send_json({"type": "subscribe", "data": {"subscription_id": "again",
                                                        "patient_ids": [first]}})
        answer = client.recv_json()
        assert answer.get("type") == "error" and answer["error"] == "FORBIDDEN", answer
        client.subscribe("second", [second])
        store.create(condition(first))
        barrier = store.create(condition(second))
        assert_update(client.recv_update(), "created", "Condition", barrier["id"], second)
        client.expect_no_message()


def test_reauthenticate_with_a_bad_token_closes(hs_bridge):
    with hs_bridge.connect(hs256()) as client:
        client.send_json({"type": "authenticate", "token": hs256(secret=b"wrong")})
        code, _, messages = client.wait_closed()
    assert code == 4001, (code, messages)
    assert [m.get("type") for m in messages] == ["error"] and messages[0]["error"] == "AUTH_FAILED", messages


def test_authorize_sql_policy_decides_user_and_patient(db, store):
    cluster = shared_cluster()
    blocked, allowed = new_id("pat"), new_id("pat")
    cluster.execute("CREATE TABLE IF NOT EXISTS public.care_team (username text, patient_id text)", dbname=db)
    cluster.execute("INSERT INTO public.care_team VALUES ('dr.smith', %s)", (allowed,), dbname=db)
    query = ("SELECT EXISTS (SELECT 1 FROM public.care_team WHERE username = $1 AND patient_id = $2)")
    with Bridge(cluster, db, secret_file=SECRET_FILE,
                args=VALIDATION_ARGS + ["--authorize-sql", query]) as bridge:
        with bridge.connect(hs256(sub="dr.smith")) as client:
            client.send_json({"type": "subscribe", "data": {"subscription_id": "blocked",
                                                            "patient_ids": [blocked]}})
            answer = client.recv_json()
            assert answer.get("type") == "error" and answer["error"] == "FORBIDDEN", answer
            assert answer.get("subscription_id") == "blocked", answer
            client.subscribe("allowed", [allowed])
            store.create(condition(blocked))
            barrier = store.create(condition(allowed))
            assert_update(client.recv_update(), "created", "Condition", barrier["id"], allowed)
            client.expect_no_message()
        # Without "sub", "preferred_username" names the user.
        with bridge.connect(hs256(sub=None, claims={"preferred_username": "dr.smith"})) as client:
            client.subscribe("allowed", [allowed])
        with bridge.connect(hs256(sub="dr.jones")) as client:
            client.send_json({"type": "subscribe", "data": {"subscription_id": "allowed",
                                                            "patient_ids": [allowed]}})
            answer = client.recv_json()
            assert answer.get("type") == "error" and answer["error"] == "FORBIDDEN", answer


def test_asking_for_a_type_outside_the_scopes_never_delivers_it(hs_bridge, store):
    patient = new_id("pat")
    with hs_bridge.connect(hs256(scope="user/Condition.read")) as client:
        client.send_json({"type": "subscribe", "data": {"subscription_id": "chart", "patient_ids": [patient],
                                                        "resource_types": ["Observation", "Condition"]}})
        answer = client.recv_json()
        if answer.get("type") == "error":
            assert answer["error"] == "FORBIDDEN", answer
            client.subscribe("chart", [patient], ["Condition"])
        else:
            assert answer.get("type") == "subscription", answer
        store.create(observation(patient))
        allowed = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", allowed["id"], patient, allowed)
        client.expect_no_message()
