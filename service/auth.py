"""Optional bearer tokens on the sync routes (docs/operations.md#authentication).

Off unless AUTH_JWT_SECRET (HS256, as the Logikids backend signs its tokens) or
AUTH_JWT_PUBLIC_KEY_FILE (RS*/PS*, ES*, EdDSA: the algorithm follows from the key) is
set. `build_verifier` checks those settings once at start-up and returns a frozen
TokenVerifier, kept in the lifespan state as `request.state.auth` (None when off).

Each sync handler calls `authorize(request, user_id)` right after it parsed the path's
user id, before it reads a body or counts the request against the user's rate limit:
a refused request is counted against its client IP instead (RateLimiter.admit_refusal),
so bad tokens cannot spend a user's quota. The outcome (`ok`, `missing`, `invalid`,
`expired`, `forbidden`) goes to the access line through the request's state; the token
itself is never logged.

Only the configured algorithm is ever accepted (PyJWT's `algorithms=[...]`): never
`none`, and never an HMAC token verified with a public key as its secret.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from starlette.requests import Request

from service.config import ConfigError, Settings
from service.errors import (
    AccessDenied,
    AuthenticationFailed,
    AuthorizationFormatInvalid,
    TokenExpired,
    TokenInvalid,
    TokenMissing,
)

OUTCOME_KEY = "auth_outcome"
"""The request-state key (scope["state"]) the access line reads the outcome from."""

MAX_TOKEN_CHARS = 8192
"""Longer tokens are refused unread: ours are a few hundred characters."""

# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_MIN_BITS = 2048


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    """Checks `Authorization: Bearer <JWT>` and answers the token's user id."""

    key: Any = field(repr=False)  # the HMAC secret (bytes) or a public key object
    algorithm: str
    user_claim: str = "userId"
    audience: str | None = None
    issuer: str | None = None
    leeway: int = 30
    _decoder: jwt.PyJWT = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        require = ["exp"]
        require += ["aud"] if self.audience else []
        require += ["iss"] if self.issuer else []
        object.__setattr__(self, "_decoder", jwt.PyJWT(options={"require": require}))

    def user_of(self, authorization: list[str]) -> uuid.UUID:
        """The user id a request's Authorization header values prove, or raise the
        AuthenticationFailed that says why not.

        RFC 7235 §2.1 / RFC 6750 §2.1: `Bearer 1*SP token`. The scheme is compared
        case-insensitively; one or more spaces may separate it from the token, and
        whitespace around the field value is not part of it (RFC 9110 §5.5). Anything
        else after the scheme, or two Authorization headers, is a format error."""
        value = authorization[0].strip(" \t") if authorization else ""
        if not value:
            raise TokenMissing()
        scheme, _, token = value.partition(" ")
        token = token.lstrip(" ")
        if len(authorization) > 1 or scheme.lower() != "bearer" or not token or " " in token:
            raise AuthorizationFormatInvalid()
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenInvalid()
        try:
            claims = self._decoder.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired() from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
            raise TokenInvalid() from None
        value = claims.get(self.user_claim)
        if not isinstance(value, str):
            raise TokenInvalid()
        try:
            return uuid.UUID(value)
        except ValueError:
            raise TokenInvalid() from None


def authorize(request: Request, user_id: str) -> None:
    """Refuse the request unless auth is off or its token is for `user_id` (the path's
    id in canonical text, service.payload.parse_user_key).

    A refusal is counted against the client IP (it may raise RateLimitExceeded, a 429,
    when that address spent its refusals), never against the path's user."""
    verifier: TokenVerifier | None = request.scope["state"].get("auth")
    if verifier is None:
        return
    try:
        if str(verifier.user_of(request.headers.getlist("authorization"))) != user_id:
            raise AccessDenied()
    except AuthenticationFailed as refused:
        setattr(request.state, OUTCOME_KEY, refused.outcome)
        client = request.client.host if request.client else None
        request.state.quota = request.state.limiter.admit_refusal(client_ip=client)
        raise
    setattr(request.state, OUTCOME_KEY, "ok")


def build_verifier(settings: Settings) -> TokenVerifier | None:
    """The verifier `settings` ask for, or None when auth is off; ConfigError (naming
    the variable, never showing the secret) for settings it cannot work with."""
    secret, key_file = settings.auth_jwt_secret, settings.auth_jwt_public_key_file
    pinned = settings.auth_jwt_algorithm
    if secret and key_file:
        raise ConfigError(
            "AUTH_JWT_SECRET and AUTH_JWT_PUBLIC_KEY_FILE are both set: choose one "
            "(a shared HS256 secret, or the issuer's public key)"
        )
    if not secret and not key_file:
        extra = [
            name
            for name, value in (
                ("AUTH_JWT_ALGORITHM", pinned),
                ("AUTH_JWT_AUDIENCE", settings.auth_jwt_audience),
                ("AUTH_JWT_ISSUER", settings.auth_jwt_issuer),
            )
            if value
        ]
        if extra:
            raise ConfigError(
                f"{', '.join(extra)} set without AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY_FILE: "
                "authentication would be off"
            )
        return None
    if not settings.auth_user_claim:
        raise ConfigError("AUTH_USER_CLAIM must name a claim (e.g. userId or sub)")
    if secret:
        key, algorithm = _hmac_key(secret, pinned)
    else:
        key, algorithm = _public_key(key_file, pinned)
    return TokenVerifier(
        key=key,
        algorithm=algorithm,
        user_claim=settings.auth_user_claim,
        audience=settings.auth_jwt_audience or None,
        issuer=settings.auth_jwt_issuer or None,
        leeway=settings.auth_jwt_leeway_seconds,
    )


def _hmac_key(secret: str, pinned: str) -> tuple[bytes, str]:
    algorithm = _canonical(pinned, _HMAC_MIN_BYTES) if pinned else "HS256"
    if algorithm is None:
        raise ConfigError(
            f"AUTH_JWT_ALGORITHM {pinned!r} does not fit AUTH_JWT_SECRET: use HS256, HS384 "
            "or HS512 (or AUTH_JWT_PUBLIC_KEY_FILE for a public-key algorithm)"
        )
    key = secret.encode()
    if not secret.strip():
        raise ConfigError("AUTH_JWT_SECRET is empty: unset it to turn authentication off")
    if len(key) < _HMAC_MIN_BYTES[algorithm]:
        raise ConfigError(
            f"AUTH_JWT_SECRET is too short for {algorithm}: it needs at least "
            f"{_HMAC_MIN_BYTES[algorithm]} bytes (RFC 7518 §3.2; value not shown). "
            "Generate one with `openssl rand -base64 48`"
        )
    return key, algorithm


def _public_key(path: str, pinned: str) -> tuple[Any, str]:
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"AUTH_JWT_PUBLIC_KEY_FILE {path!r} cannot be read: {exc.strerror or exc}"
        ) from None
    if b"PRIVATE KEY" in pem:
        raise ConfigError(
            f"AUTH_JWT_PUBLIC_KEY_FILE {path!r} holds a private key: give the service the "
            "public key only (`openssl pkey -in private.pem -pubout`)"
        )
    try:
        if b"BEGIN CERTIFICATE" in pem:
            key: Any = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise ConfigError(
            f"AUTH_JWT_PUBLIC_KEY_FILE {path!r} does not hold a PEM public key "
            "(-----BEGIN PUBLIC KEY-----) or certificate"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _RSA_MIN_BITS:
            raise ConfigError(
                f"AUTH_JWT_PUBLIC_KEY_FILE {path!r} holds a {key.key_size}-bit RSA key: "
                f"at least {_RSA_MIN_BITS} bits are needed"
            )
        allowed: tuple[str, ...] = _RSA_ALGORITHMS
        kind = "an RSA key"
    elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
        allowed = (_EC_ALGORITHMS[key.curve.name],)
        kind = f"an EC key on {key.curve.name}"
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        allowed = ("EdDSA",)
        kind = "an Ed25519/Ed448 key"
    else:
        raise ConfigError(
            f"AUTH_JWT_PUBLIC_KEY_FILE {path!r} holds a key type JWTs are not verified with "
            "here: use RSA (2048 bits or more), EC P-256/P-384/P-521, or Ed25519/Ed448"
        )
    algorithm = _canonical(pinned, allowed) if pinned else allowed[0]
    if algorithm is None:
        raise ConfigError(
            f"AUTH_JWT_ALGORITHM {pinned!r} does not fit AUTH_JWT_PUBLIC_KEY_FILE, which "
            f"holds {kind}: use {' or '.join(allowed)}"
        )
    return key, algorithm


def _canonical(name: str, allowed: Any) -> str | None:
    """`name` as JOSE spells it, if it is one of `allowed` (compared case-insensitively)."""
    return next((a for a in allowed if a.lower() == name.lower()), None)
