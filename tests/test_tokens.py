"""tests/tokens.py: the tokens it mints verify with PyJWT and with the
bridge's own C verifier (bridge/test_auth in its "verify" mode), and its
attack tokens are refused by both."""

import json
import os
import subprocess
import time

import jwt
import pytest

import tokens

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRIDGE = os.path.join(TOP, "bridge")


@pytest.fixture(scope="module")
def c_verifier():
    """bridge/test_auth, built if needed; verify(token, *options) runs it."""
    subprocess.run(["make", "--no-print-directory", "-s", "-C", BRIDGE, "test_auth"], check=True)

    def verify(token, *options):
        result = subprocess.run(
            [os.path.join(BRIDGE, "test_auth"), "verify", *options, token],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return result.returncode, result.stdout

    return verify


def test_hs256_round_trip(tmp_path):
    secret_file = tokens.make_hs256_secret(tmp_path)
    secret = open(secret_file, "rb").read()
    assert secret.endswith(b"\n") and len(secret.strip()) == 64
    tok = tokens.token(secret_file, "HS256", patient="123", scope="patient/*.read", aud="a", iss="i")
    claims = jwt.decode(tok, secret.strip(), algorithms=["HS256"], audience="a", issuer="i")
    assert claims["patient"] == "123"
    assert claims["scope"] == "patient/*.read"
    assert claims["sub"] == "test-user"
    assert claims["exp"] - claims["iat"] == 3600 and claims["iat"] <= time.time()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tok, b"x" * 32, algorithms=["HS256"], audience="a")


@pytest.mark.parametrize("make, alg", [(tokens.make_rsa_keypair, "RS256"), (tokens.make_ec_keypair, "ES256")])
def test_public_key_round_trip(tmp_path, make, alg):
    private, public = make(tmp_path)
    assert "PRIVATE KEY" in open(private).read()
    assert "PUBLIC KEY" in open(public).read()
    tok = tokens.token(private, alg, kid="k1", sub="dr-who", claims={"extra": [1, 2]})
    assert jwt.get_unverified_header(tok) == {"alg": alg, "kid": "k1", "typ": "JWT"}
    claims = jwt.decode(tok, open(public, "rb").read(), algorithms=[alg])
    assert claims["sub"] == "dr-who" and claims["extra"] == [1, 2]
    other_private, _ = make(tmp_path)
    forged = tokens.token(other_private, alg)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, open(public, "rb").read(), algorithms=[alg])


def test_jwks_round_trip(tmp_path):
    rsa_private, rsa_public = tokens.make_rsa_keypair(tmp_path)
    ec_private, _ = tokens.make_ec_keypair(tmp_path)
    path = tokens.make_jwks(tmp_path, [(rsa_public, "r1"), (ec_private, "e1")])
    document = json.load(open(path))
    assert [k["kid"] for k in document["keys"]] == ["r1", "e1"]
    assert all("d" not in k for k in document["keys"]), "private parts leaked into the JWKS"
    jwks = jwt.PyJWKSet.from_dict(document)
    for private, alg, kid in [(rsa_private, "RS256", "r1"), (ec_private, "ES256", "e1")]:
        tok = tokens.token(private, alg, kid=kid)
        key = next(k for k in jwks.keys if k.key_id == kid)
        assert jwt.decode(tok, key.key, algorithms=[alg])["sub"] == "test-user"


def test_expiry_and_optional_claims(tmp_path):
    secret_file = tokens.make_hs256_secret(tmp_path)
    secret = open(secret_file, "rb").read().strip()
    expired = tokens.token(secret_file, exp_in=-60)
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(expired, secret, algorithms=["HS256"])
    forever = tokens.token(secret_file, exp_in=None, scope=None)
    claims = jwt.decode(forever, secret, algorithms=["HS256"])
    assert "exp" not in claims and "scope" not in claims


def test_attack_tokens(tmp_path):
    _, public = tokens.make_rsa_keypair(tmp_path)
    none = tokens.unsigned_token(patient="1")
    assert none.endswith(".")
    assert jwt.get_unverified_header(none)["alg"] == "none"
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(none, open(public, "rb").read(), algorithms=["RS256"])
    confused = tokens.confused_token(public)
    assert jwt.get_unverified_header(confused)["alg"] == "HS256"
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(confused, open(public, "rb").read(), algorithms=["RS256"])
    secret_file = tokens.make_hs256_secret(tmp_path)
    tampered = tokens.tamper(tokens.token(secret_file, patient="1"), patient="2")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tampered, open(secret_file, "rb").read().strip(), algorithms=["HS256"])


def test_c_verifier_accepts_minted_tokens(tmp_path, c_verifier):
    secret = tokens.make_hs256_secret(tmp_path)
    rsa_private, rsa_public = tokens.make_rsa_keypair(tmp_path)
    ec_private, ec_public = tokens.make_ec_keypair(tmp_path)
    jwks = tokens.make_jwks(tmp_path, [(rsa_public, "r1"), (ec_public, "e1")])

    tok = tokens.token(secret, "HS256", patient="123", scope="patient/*.read", aud="fn", iss="idp")
    status, out = c_verifier(
        tok, "--secret", secret, "--aud", "fn", "--iss", "idp",
        "--allows", "123", "Condition", "--allows", "456", "-",
    )
    assert (status, out) == (0, "ok test-user\nallows 123 Condition yes\nallows 456 - no\n")

    assert c_verifier(tokens.token(rsa_private, "RS256"), "--pem", rsa_public)[0] == 0
    assert c_verifier(tokens.token(ec_private, "ES256"), "--pem", ec_public)[0] == 0
    assert c_verifier(tokens.token(rsa_private, "RS256", kid="r1"), "--jwks", jwks)[0] == 0
    assert c_verifier(tokens.token(ec_private, "ES256", kid="e1"), "--jwks", jwks)[0] == 0


def test_c_verifier_refuses_bad_tokens(tmp_path, c_verifier):
    secret = tokens.make_hs256_secret(tmp_path)
    rsa_private, rsa_public = tokens.make_rsa_keypair(tmp_path)
    jwks = tokens.make_jwks(tmp_path, [(rsa_public, "r1")])

    status, out = c_verifier(tokens.token(secret, exp_in=-120), "--secret", secret)
    assert status == 2 and out.startswith("expired:")
    cases = [
        (tokens.unsigned_token(), ["--pem", rsa_public], "alg none"),
        (tokens.confused_token(rsa_public), ["--pem", rsa_public], "no configured key verifies HS256"),
        (tokens.confused_token(rsa_public), ["--pem", rsa_public, "--secret", secret], "does not verify"),
        (tokens.tamper(tokens.token(secret, patient="1"), patient="2"), ["--secret", secret], "does not verify"),
        (tokens.token(rsa_private, "RS256", kid="r2"), ["--jwks", jwks], "matches no"),
        (tokens.token(rsa_private, "RS512"), ["--pem", rsa_public], "not accepted"),
        (tokens.token(secret, aud="other"), ["--secret", secret, "--aud", "fn"], "aud"),
        (tokens.token(secret, claims={"nbf": int(time.time()) + 3600}), ["--secret", secret], "not valid yet"),
    ]
    for tok, options, reason in cases:
        status, out = c_verifier(tok, *options)
        assert status == 1 and out.startswith("invalid:") and reason in out, (reason, out)
