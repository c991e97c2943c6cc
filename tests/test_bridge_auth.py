"""End to end: who may connect, and what a token may see.

Three bridges on one database: HS256 with a shared secret, RS256 with a
PEM public key, and RS256 with a JSON Web Key Set. A refused token gets an
error message then close 4001, never a welcome and never data.
"""

import time

import pytest

from _local_tokens import (AUDIENCE, ISSUER, SECRET, claims, hs256, hs256_with_key_bytes, jwks,
                           rs256, rsa_key, unsigned)
from bridgeproc import (Bridge, FhirStore, assert_update, bridge_logs, condition,  # noqa: F401
                        create_fhir_database, new_id, observation, shared_cluster)
from wsclient import Closed

VALIDATION_ARGS = ["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER, "--jwt-leeway", "0"]
RSA_PRIVATE, RSA_PUBLIC = rsa_key()
OTHER_PRIVATE, OTHER_PUBLIC = rsa_key()
KID = "test-key-1"


# Waiting for the bridge (branch bridge-core) and watch() (ext-capture); removed per test as they land.
pytestmark = pytest.mark.xfail(strict=True, reason="bridge not built yet")

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
    yield from _module_bridge(db, secret=SECRET, args=VALIDATION_ARGS)


@pytest.fixture(scope="module")
def rs_bridge(db, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("rs") / "public.pem"
    key_file.write_bytes(RSA_PUBLIC)
    key_file.chmod(0o644)
    yield from _module_bridge(db, args=VALIDATION_ARGS + ["--jwt-public-key-file", str(key_file)])


@pytest.fixture(scope="module")
def jwks_bridge(db, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("jwks") / "jwks.json"
    key_file.write_text(jwks(RSA_PUBLIC, KID))
    yield from _module_bridge(db, args=VALIDATION_ARGS + ["--jwks-file", str(key_file)])


def assert_refused(bridge, token, error="AUTH_FAILED", **connect_args):
    """The bridge answers token with one error message and closes 4001, never a welcome."""
    client = bridge.connect(token, welcome=False, **connect_args)
    with client:
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
        "bad_signature": lambda: hs256(secret=SECRET + "x"),
        "alg_none": lambda: unsigned(),
        "garbage": lambda: "not.a.token",
        "wrong_audience": lambda: hs256(audience="someone-else"),
        "wrong_issuer": lambda: hs256(issuer="https://evil.example"),
        "no_audience": lambda: hs256(audience=None),
        "not_yet_valid": lambda: hs256(not_before=120),
        "rs256_on_hs_bridge": lambda: rs256(RSA_PRIVATE),
    }[case]()
    assert_refused(hs_bridge, token)


def test_bad_token_in_header_is_refused(hs_bridge):
    assert_refused(hs_bridge, None, headers={"Authorization": f"Bearer {hs256(secret='wrong')}"})


def test_expired_token_is_refused_with_token_expired(hs_bridge):
    assert_refused(hs_bridge, hs256(expires_in=-60), error="TOKEN_EXPIRED")


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
        client.send_json({"type": "authenticate", "token": hs256(secret="wrong")})
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
    short = claims(expires_in=lifetime)
    with hs_bridge.connect(hs256(short)) as expiring, hs_bridge.connect(hs256(short)) as renewed:
        expiring.subscribe("chart", [patient])
        renewed.subscribe("chart", [patient])
        renewed.send_json({"type": "authenticate", "token": hs256(expires_in=600)})
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
        "hs256_with_public_key_as_secret": lambda: hs256_with_key_bytes(RSA_PUBLIC),
        "hs256": lambda: hs256(),
        "other_rsa_key": lambda: rs256(OTHER_PRIVATE),
        "alg_none": lambda: unsigned(),
        "expired_rs256": lambda: rs256(RSA_PRIVATE, expires_in=-60),
    }[case]()
    assert_refused(rs_bridge, token, error="TOKEN_EXPIRED" if case == "expired_rs256" else "AUTH_FAILED")


# -- RS256 with a JWKS -------------------------------------------------------------

def test_jwks_known_kid_is_accepted(jwks_bridge):
    assert_accepted(jwks_bridge, rs256(RSA_PRIVATE, kid=KID))


@pytest.mark.parametrize("case", ["unknown_kid", "known_kid_wrong_key", "hs256_with_public_key"])
def test_jwks_bad_tokens_are_refused(jwks_bridge, case):
    token = {
        "unknown_kid": lambda: rs256(OTHER_PRIVATE, kid="no-such-key"),
        "known_kid_wrong_key": lambda: rs256(OTHER_PRIVATE, kid=KID),
        "hs256_with_public_key": lambda: hs256_with_key_bytes(RSA_PUBLIC, kid=KID),
    }[case]()
    assert_refused(jwks_bridge, token)


def test_refused_client_never_gets_data(hs_bridge, store):
    """A refused connection is closed: even racing a write, no update reaches it."""
    patient = new_id("pat")
    client = hs_bridge.connect(hs256(secret="wrong"), welcome=False)
    with client:
        client.send_json({"type": "subscribe", "data": {"subscription_id": "s", "patient_ids": [patient]}})
        store.create(condition(patient))
        code, _, messages = client.wait_closed()
    assert code == 4001
    assert not any(m.get("type") in ("update", "welcome", "subscription") for m in messages), messages


def test_closed_error_is_reported(hs_bridge):
    """The harness itself: recv_json on a refused socket raises Closed with the code."""
    with hs_bridge.connect(hs256(secret="wrong"), welcome=False) as client:
        with pytest.raises(Closed) as closed:
            for _ in range(5):
                client.recv_json()
        assert closed.value.code == 4001
