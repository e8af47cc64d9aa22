"""LiveKit access tokens: verification, issuing and refresh.

Follows ``livekit/protocol`` ``auth/verifier.go``, ``auth/accesstoken.go`` and
``auth/grants.go``: HS256-signed JWTs whose ``iss`` is the API key, whose ``sub`` is
the participant identity and whose custom claims are LiveKit's camelCase grants.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NoReturn

from jwt.algorithms import HMACAlgorithm
from jwt.utils import base64url_decode, base64url_encode

# livekit/protocol auth/verifier.go: `tokenLeeway = time.Minute`.
DEFAULT_LEEWAY_S = 60.0
# livekit-server roommanager.go: `tokenDefaultTTL = 10 * time.Minute` for refreshed tokens.
MIN_REFRESH_TTL_S = 600.0

_ALGORITHM = "HS256"
_HS256 = HMACAlgorithm(HMACAlgorithm.SHA256)
_B64URL_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")

_MALFORMED = "invalid token: malformed"
_EXPIRED = "invalid token: token is expired"
_NOT_YET_VALID = "invalid token: token is not valid yet"
_BAD_SIGNATURE = "invalid token: signature is invalid"
_UNKNOWN_KEY = "invalid token: unknown API key"
_BAD_METHOD = "invalid token: unexpected signing method"
_EXP_REQUIRED = "invalid token: exp claim required"

# Plain `bool` / `*bool` grant fields that default to false, as (attribute, claim key).
_VIDEO_FLAGS: tuple[tuple[str, str], ...] = (
    ("room_create", "roomCreate"),
    ("room_list", "roomList"),
    ("room_record", "roomRecord"),
    ("room_admin", "roomAdmin"),
    ("room_join", "roomJoin"),
    ("can_update_own_metadata", "canUpdateOwnMetadata"),
    ("ingress_admin", "ingressAdmin"),
    ("hidden", "hidden"),
    ("recorder", "recorder"),
    ("agent", "agent"),
    ("can_subscribe_metrics", "canSubscribeMetrics"),
    ("can_manage_agent_session", "canManageAgentSession"),
)

# Other grant objects LiveKit decodes (grants.go SIPGrant, AgentGrant, InferenceGrant,
# ObservabilityGrant): not modelled here, but a wrong JSON type in them makes Go's
# json.Unmarshal fail, so the token is refused as malformed there too.
_OTHER_GRANTS: Mapping[str, tuple[str, ...]] = {
    "sip": ("admin", "call"),
    "agent": ("admin", "simulationAdmin", "databaseAdmin"),
    "inference": ("perform",),
    "observability": ("write",),
}

# Claims a refreshed token sets afresh; everything else in the old payload is carried.
# `identity` is ClaimGrants.Identity, which Go tokens also emit; `sha256` signs one body.
_REISSUED_CLAIMS = frozenset(
    {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "identity", "sha256"}
    | {"name", "metadata", "attributes", "kind", "video"}
)


class TokenError(Exception):
    """A token was refused; ``str()`` is a one-line, LiveKit-style reason."""


def _malformed(detail: str) -> NoReturn:
    raise TokenError(f"{_MALFORMED}: {detail}")


@dataclass(frozen=True)
class VideoGrant:
    """LiveKit's ``VideoGrant`` with its pointer fields resolved to their defaults."""

    room_create: bool = False
    room_list: bool = False
    room_record: bool = False
    room_admin: bool = False
    room_join: bool = False
    room: str = ""
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_publish_sources: tuple[str, ...] = ()
    can_update_own_metadata: bool = False
    ingress_admin: bool = False
    hidden: bool = False
    recorder: bool = False
    agent: bool = False
    can_subscribe_metrics: bool = False
    can_manage_agent_session: bool = False
    destination_room: str = ""

    @classmethod
    def from_claim(cls, obj: object) -> VideoGrant:
        """Parse the ``video`` claim; ``None`` (absent or null) yields the defaults."""
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            _malformed("claim 'video' must be an object")
        flags = {attr: _opt_bool(obj, key, False, "video.") for attr, key in _VIDEO_FLAGS}
        can_publish = _opt_bool(obj, "canPublish", True, "video.")
        return cls(
            room=_opt_str(obj, "room", "video."),
            can_publish=can_publish,
            can_subscribe=_opt_bool(obj, "canSubscribe", True, "video."),
            # grants.go GetCanPublishData: an unset canPublishData follows canPublish.
            can_publish_data=_opt_bool(obj, "canPublishData", can_publish, "video."),
            can_publish_sources=tuple(_opt_str_list(obj, "canPublishSources", "video.")),
            destination_room=_opt_str(obj, "destinationRoom", "video."),
            **flags,
        )

    def to_claim(self) -> dict[str, object]:
        """The camelCase ``video`` claim, omitting false and empty fields.

        canPublish, canSubscribe and canPublishData are always written because their
        absence does not mean false (they default to true / to canPublish).
        """
        claim: dict[str, object] = {}
        for attr, key in _VIDEO_FLAGS:
            if getattr(self, attr):
                claim[key] = True
        if self.room:
            claim["room"] = self.room
        claim["canPublish"] = self.can_publish
        claim["canSubscribe"] = self.can_subscribe
        claim["canPublishData"] = self.can_publish_data
        if self.can_publish_sources:
            claim["canPublishSources"] = list(self.can_publish_sources)
        if self.destination_room:
            claim["destinationRoom"] = self.destination_room
        return claim

    def can_publish_source(self, source: str) -> bool:
        """Whether a track of ``source`` (``camera``, ``screen_share``, ...) may be published.

        grants.go GetCanPublishSource: needs canPublish, and an empty canPublishSources
        list allows every source (nil and empty are not distinguished).
        """
        if not self.can_publish:
            return False
        if not self.can_publish_sources:
            return True
        return source.lower() in self.can_publish_sources


def _empty_mapping() -> Mapping[str, str]:
    return MappingProxyType({})


def _empty_raw() -> Mapping[str, object]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class Claims:
    """A verified token's claims. ``raw`` is the whole payload, unknown claims included."""

    api_key: str
    identity: str
    name: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = field(default_factory=_empty_mapping)
    kind: str = ""
    video: VideoGrant = field(default_factory=VideoGrant)
    room_config: Mapping[str, object] | None = None
    room_preset: str = ""
    sha256: str = ""
    expires_at: int
    not_before: int | None = None
    issued_at: int | None = None
    raw: Mapping[str, object] = field(default_factory=_empty_raw)


def verify_token(
    token: str,
    keys: Mapping[str, str],
    *,
    now: float | None = None,
    leeway: float = DEFAULT_LEEWAY_S,
) -> Claims:
    """Verify ``token`` against the configured ``keys`` (API key -> secret).

    Applies LiveKit's rules: HS256 only, ``iss`` selects the secret, ``exp`` required,
    ``exp``/``nbf`` checked with ``leeway``. Raises only :class:`TokenError`.
    """
    current = time.time() if now is None else now
    try:
        return _verify(token, keys, current, leeway)
    except TokenError:
        raise
    except Exception as exc:
        # An auth boundary: whatever an unexpected input trips over must be a refusal,
        # never a 500 or a crashed handler.
        raise TokenError(_MALFORMED) from exc


def _verify(token: str, keys: Mapping[str, str], now: float, leeway: float) -> Claims:
    parts = token.split(".")
    if len(parts) != 3:
        _malformed("token contains an invalid number of segments")
    header_seg, payload_seg, signature_seg = parts
    header = _json_object(_b64url(header_seg, "header"), "header")
    # verifier.go allowedSigningMethods: checked before any key is used, so `none` and
    # asymmetric algorithms (key confusion) never reach signature verification.
    if header.get("alg") != _ALGORITHM:
        raise TokenError(_BAD_METHOD)
    payload = _json_object(_b64url(payload_seg, "payload"), "payload")
    signature = _b64url(signature_seg, "signature")
    # As in Go, the whole payload is decoded (types checked) before the signature.
    claims = _claims_from_payload(payload)
    secret = keys.get(claims.api_key) if claims.api_key else None
    if not secret:
        raise TokenError(_UNKNOWN_KEY)
    signing_input = f"{header_seg}.{payload_seg}".encode("ascii")
    if not _HS256.verify(signing_input, secret.encode("utf-8"), signature):
        raise TokenError(_BAD_SIGNATURE)
    _check_times(claims, now, leeway)
    return claims


def _check_times(claims: Claims, now: float, leeway: float) -> None:
    # golang-jwt v5 with WithExpirationRequired and WithLeeway(1m). `iat` is only
    # type-checked: LiveKit does not pass WithIssuedAt, so a future iat is accepted.
    if claims.expires_at <= now - leeway:
        raise TokenError(_EXPIRED)
    if claims.not_before is not None and claims.not_before > now + leeway:
        raise TokenError(_NOT_YET_VALID)


def _claims_from_payload(payload: dict[str, object]) -> Claims:
    expires_at = _numeric_date(payload, "exp")
    if expires_at is None:
        raise TokenError(_EXP_REQUIRED)
    _check_audience(payload)
    _check_other_grants(payload)
    _opt_str_list(payload, "kindDetails")
    room_config = payload.get("roomConfig")
    if room_config is not None and not isinstance(room_config, dict):
        _malformed("claim 'roomConfig' must be an object")
    # verifier.go ParseAPIToken: identity is `sub`, or `jti` when `sub` is empty.
    subject, token_id = _opt_str(payload, "sub"), _opt_str(payload, "jti")
    identity = subject or token_id
    return Claims(
        api_key=_opt_str(payload, "iss"),
        identity=identity,
        name=_opt_str(payload, "name"),
        metadata=_opt_str(payload, "metadata"),
        attributes=MappingProxyType(_str_map(payload, "attributes")),
        kind=_opt_str(payload, "kind"),
        video=VideoGrant.from_claim(payload.get("video")),
        room_config=None if room_config is None else MappingProxyType(room_config),
        room_preset=_opt_str(payload, "roomPreset"),
        sha256=_opt_str(payload, "sha256"),
        expires_at=expires_at,
        not_before=_numeric_date(payload, "nbf"),
        issued_at=_numeric_date(payload, "iat"),
        raw=MappingProxyType(payload),
    )


def issue_token(
    *,
    api_key: str,
    secret: str,
    identity: str,
    video: VideoGrant,
    ttl_s: float,
    name: str = "",
    metadata: str = "",
    attributes: Mapping[str, str] | None = None,
    kind: str = "",
    extra: Mapping[str, object] | None = None,
    now: float | None = None,
    sha256: str = "",
) -> str:
    """Issue an HS256 access token valid for ``ttl_s`` seconds (accesstoken.go ToJWT).

    ``extra`` adds further claims (``roomConfig``, ``sip``, ...); it cannot override
    the registered claims or ``video``. Raises ValueError for missing keys or a TTL <= 0.
    """
    if not api_key or not secret:
        raise ValueError("api_key and secret are required")
    if not ttl_s > 0:
        raise ValueError("ttl_s must be positive")
    issued = time.time() if now is None else now
    payload: dict[str, object] = dict(extra or {})
    optional: dict[str, str] = {
        "name": name,
        "metadata": metadata,
        "kind": kind,
        "sha256": sha256,
    }
    payload.update((key, value) for key, value in optional.items() if value)
    if attributes:
        payload["attributes"] = dict(attributes)
    payload["video"] = video.to_claim()
    # Like ToJWT, iat and nbf are both "now"; NumericDates are whole seconds.
    payload.update(
        iss=api_key, sub=identity, iat=int(issued), nbf=int(issued), exp=int(issued + ttl_s)
    )
    return _sign(payload, secret)


def refresh_token(claims: Claims, *, api_key: str, secret: str, now: float | None = None) -> str:
    """Re-issue ``claims`` with a new key pair, as livekit-server's ``refreshToken`` does.

    The TTL is max(10 min, time left until the original ``exp``), so the original
    expiry is preserved while it is more than 10 minutes away. Name, identity, kind,
    metadata, attributes, video, roomConfig, roomPreset and any other non-registered
    claims (``sip``, ``agent``, ``kindDetails``, ...) are carried over.
    """
    current = time.time() if now is None else now
    ttl_s = max(MIN_REFRESH_TTL_S, claims.expires_at - current)
    extra = {key: value for key, value in claims.raw.items() if key not in _REISSUED_CLAIMS}
    return issue_token(
        api_key=api_key,
        secret=secret,
        identity=claims.identity,
        video=claims.video,
        ttl_s=ttl_s,
        name=claims.name,
        metadata=claims.metadata,
        attributes=claims.attributes,
        kind=claims.kind,
        extra=extra,
        now=current,
    )


def _sign(payload: Mapping[str, object], secret: str) -> str:
    # Signed with pyjwt's HMAC primitive rather than jwt.encode, which warns on every
    # call for secrets under 32 bytes; LiveKit only warns once, when loading its keys.
    header = {"alg": _ALGORITHM, "typ": "JWT"}
    signing_input = _b64json(header) + b"." + _b64json(payload)
    signature = _HS256.sign(signing_input, secret.encode("utf-8"))
    return (signing_input + b"." + base64url_encode(signature)).decode("ascii")


def _b64json(obj: Mapping[str, object]) -> bytes:
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return base64url_encode(text.encode("utf-8"))


def _b64url(segment: str, what: str) -> bytes:
    # golang-jwt decodes with RawURLEncoding: URL-safe alphabet, no padding. Python's
    # decoder would silently skip foreign characters, so the alphabet is checked first.
    if not _B64URL_SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        _malformed(f"could not base64 decode {what}")
    return base64url_decode(segment)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"invalid JSON constant {name}")


def _json_object(data: bytes, what: str) -> dict[str, object]:
    try:
        # NaN and Infinity are not JSON; Go's decoder refuses them too.
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        _malformed(f"could not JSON decode {what}")
    if not isinstance(obj, dict):
        _malformed(f"{what} must be a JSON object")
    return obj


def _opt_str(obj: dict[str, object], key: str, where: str = "") -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        _malformed(f"claim '{where}{key}' must be a string")
    return value


def _opt_bool(obj: dict[str, object], key: str, default: bool, where: str = "") -> bool:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        _malformed(f"claim '{where}{key}' must be a boolean")
    return value


def _opt_str_list(obj: dict[str, object], key: str, where: str = "") -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        _malformed(f"claim '{where}{key}' must be a list of strings")
    return list(value)


def _str_map(obj: dict[str, object], key: str) -> dict[str, str]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        _malformed(f"claim '{key}' must be an object of strings")
    return dict(value)


def _numeric_date(obj: dict[str, object], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int subclass in Python but not a JSON number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        _malformed(f"claim '{key}' must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        _malformed(f"claim '{key}' must be finite")
    # golang-jwt truncates fractional NumericDates to whole seconds.
    return int(value)


def _check_audience(payload: dict[str, object]) -> None:
    # RegisteredClaims.Audience accepts a string or a list of strings; LiveKit expects
    # no particular audience, so it is only type-checked (pyjwt would refuse any aud).
    audience = payload.get("aud")
    if audience is None or isinstance(audience, str):
        return
    _opt_str_list(payload, "aud")


def _check_other_grants(payload: dict[str, object]) -> None:
    for claim, flags in _OTHER_GRANTS.items():
        grant = payload.get(claim)
        if grant is None:
            continue
        if not isinstance(grant, dict):
            _malformed(f"claim '{claim}' must be an object")
        for flag in flags:
            _opt_bool(grant, flag, False, f"{claim}.")
