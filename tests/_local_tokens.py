"""Stand-in JWT minting until tests/tokens.py (branch bridge-auth) is merged.

Only what the bridge end-to-end tests need; to be replaced by tokens.py.
"""

import base64
import hashlib
import hmac
import json
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SECRET = "fhir-notify-test-secret-0123456789abcdef"
AUDIENCE = "fhir-notify-tests"
ISSUER = "https://issuer.fhir-notify.test"


def claims(sub="dr.smith", scope="user/*.read", patient=None, expires_in=600, not_before=None,
           audience=AUDIENCE, issuer=ISSUER, **extra):
    now = int(time.time())
    payload = {"sub": sub, "scope": scope, "iat": now}
    if expires_in is not None:
        payload["exp"] = now + expires_in
    if not_before is not None:
        payload["nbf"] = now + not_before
    if audience is not None:
        payload["aud"] = audience
    if issuer is not None:
        payload["iss"] = issuer
    if patient is not None:
        payload["patient"] = patient
    payload.update(extra)
    return payload


def hs256(payload=None, secret=SECRET, kid=None, **claim_args):
    payload = payload if payload is not None else claims(**claim_args)
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers)


def rsa_key():
    """(private PEM, public PEM) of a fresh 2048-bit RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def rs256(private_pem, payload=None, kid=None, **claim_args):
    payload = payload if payload is not None else claims(**claim_args)
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, private_pem, algorithm="RS256", headers=headers)


def jwks(public_pem, kid):
    """A JSON Web Key Set (as a string) with public_pem under kid."""
    public = serialization.load_pem_public_key(public_pem)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return json.dumps({"keys": [jwk]})


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload=None, **claim_args):
    """An alg "none" token."""
    payload = payload if payload is not None else claims(**claim_args)
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


def hs256_with_key_bytes(key, payload=None, kid=None, **claim_args):
    """HS256 signed with arbitrary bytes (e.g. a public key PEM: the alg confusion attack),
    which PyJWT refuses to do."""
    payload = payload if payload is not None else claims(**claim_args)
    header = {"alg": "HS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"
