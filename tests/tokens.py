"""Real JSON Web Tokens and keys for the tests.

Keys are made at test time in a directory the caller owns (a pytest
tmp_path): nothing secret is committed. The files are the ones the bridge
reads: an HS256 secret file (--jwt-secret-file), PEM public keys
(--jwt-public-key-file) and JSON Web Key Sets (--jwks-file).

    secret = make_hs256_secret(tmp_path)
    tok = token(secret, "HS256", patient="123", scope="patient/*.read")

    private, public = make_rsa_keypair(tmp_path)
    jwks = make_jwks(tmp_path, [(public, "rsa-1")])
    tok = token(private, "RS256", kid="rsa-1", aud="fhir-notify")

Attack tokens, which the bridge must refuse: unsigned_token() ("alg": "none")
and confused_token() (HS256 keyed with an RSA public key's PEM text).
"""

import base64
import hashlib
import hmac
import itertools
import json
import os
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

DEFAULT_SCOPE = "openid user/*.read"
_counter = itertools.count(1)


def _unique(directory, stem, suffix):
    """A fresh file name in directory, so that several keys can share it."""
    while True:
        path = os.path.join(str(directory), f"{stem}-{next(_counter)}{suffix}")
        if not os.path.exists(path):
            return path


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_hs256_secret(directory, length=32):
    """An HS256 secret file: 2*length hex characters and a newline (which the
    bridge strips). Returns its path."""
    secret = os.urandom(length).hex().encode() + b"\n"
    return _write(_unique(directory, "hs256", ".secret"), secret)


def _write_keypair(directory, stem, private_key):
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path = _write(_unique(directory, stem, "-private.pem"), private_pem)
    public_path = _write(private_path.replace("-private.pem", "-public.pem"), public_pem)
    return private_path, public_path


def make_rsa_keypair(directory, bits=2048):
    """An RSA key pair as PEM files: (private pem path, public pem path)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return _write_keypair(directory, "rsa", key)


def make_ec_keypair(directory, curve=None):
    """An EC P-256 key pair as PEM files: (private pem path, public pem path)."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    return _write_keypair(directory, "ec", key)


def _load_public(path):
    """The public key in a PEM file that holds a public or a private key."""
    data = open(path, "rb").read()
    if b"PRIVATE KEY" in data:
        return serialization.load_pem_private_key(data, password=None).public_key()
    return serialization.load_pem_public_key(data)


def public_jwk(path, kid=None):
    """The public JWK (a dict) of the key in a PEM file (public or private)."""
    key = _load_public(path)
    if isinstance(key, rsa.RSAPublicKey):
        jwk = json.loads(RSAAlgorithm.to_jwk(key))
    elif isinstance(key, ec.EllipticCurvePublicKey):
        jwk = json.loads(ECAlgorithm.to_jwk(key))
    else:
        raise ValueError(f"{path}: not an RSA or EC key")
    jwk["use"] = "sig"
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def make_jwks(directory, keys):
    """A JWKS file of keys, each a PEM path (no kid) or a (PEM path, kid)
    pair; private or public PEMs, only public parts are written. Returns its
    path."""
    jwks = {"keys": []}
    for entry in keys:
        path, kid = entry if isinstance(entry, tuple) else (entry, None)
        jwks["keys"].append(public_jwk(path, kid))
    return _write(_unique(directory, "jwks", ".json"), json.dumps(jwks, indent=1).encode())


def _key_material(key):
    """The signing key: a secret file's bytes (trailing newline stripped, as
    the bridge does), a PEM file's bytes, or bytes/str given directly."""
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    if isinstance(key, str) and os.path.exists(key):
        data = open(key, "rb").read()
        if b"-----BEGIN" not in data:
            data = data.rstrip(b"\r\n")
        return data
    if isinstance(key, str):
        return key.encode()
    raise TypeError("key must be a file path, bytes or str")


def claims_for(
    claims=None,
    exp_in=3600,
    scope=DEFAULT_SCOPE,
    patient=None,
    aud=None,
    iss=None,
    sub="test-user",
    now=None,
):
    """The payload token() signs: sub, iat, exp (now + exp_in; None for no
    exp), scope, and patient/aud/iss when given; claims override them."""
    now = int(time.time()) if now is None else int(now)
    payload = {"sub": sub, "iat": now}
    if exp_in is not None:
        payload["exp"] = now + int(exp_in)
    if scope is not None:
        payload["scope"] = scope
    if patient is not None:
        payload["patient"] = patient
    if aud is not None:
        payload["aud"] = aud
    if iss is not None:
        payload["iss"] = iss
    payload.update(claims or {})
    return {k: v for k, v in payload.items() if v is not None}


def token(key, alg="HS256", claims=None, *, kid=None, **options):
    """A signed compact JWT. key: a secret file or private PEM path (or the
    bytes); alg: HS256, RS256 or ES256 (others PyJWT knows also work, for
    negative tests); options: see claims_for (exp_in, scope, patient, aud,
    iss, sub, now)."""
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims_for(claims, **options), _key_material(key), algorithm=alg, headers=headers)


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(header, payload):
    return _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(payload).encode())


def unsigned_token(claims=None, alg="none", **options):
    """An "alg": "none" token with an empty signature (must be refused)."""
    return _compact({"alg": alg, "typ": "JWT"}, claims_for(claims, **options)) + "."


def hs256_with_key_bytes(key_bytes, claims=None, kid=None, **options):
    """HS256 keyed with arbitrary bytes, bypassing PyJWT's refusal to use
    PEM text as an HMAC secret."""
    header = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = _compact(header, claims_for(claims, **options))
    mac = hmac.new(key_bytes, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64url(mac)


def confused_token(public_pem_path, claims=None, **options):
    """The HS/RS confusion attack: an HS256 token whose HMAC secret is the
    server's RSA (or EC) public key PEM, which an attacker can read."""
    return hs256_with_key_bytes(open(public_pem_path, "rb").read(), claims, **options)


def tamper(compact, **changes):
    """The token with its payload claims changed but the old signature kept
    (must be refused)."""
    header, payload, signature = compact.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return header + "." + _b64url(json.dumps(claims).encode()) + "." + signature
