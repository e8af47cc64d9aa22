import base64
import hashlib
import hmac
import json
import random
import time
from datetime import timedelta

import pytest
from livekit import api

from protocol.token import (
    Claims,
    TokenError,
    VideoGrant,
    issue_token,
    refresh_token,
    verify_token,
)

KEY = "APItestkey"
SECRET = "s3cr3t-that-is-at-least-32-chars-long"
KEYS = {KEY: SECRET, "APIother": "another-secret-of-a-good-length-xx"}
NOW = 1_700_000_000.0


_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def _raw(payload: dict[str, object], *, secret: str = SECRET, alg: str = "HS256") -> str:
    # Signed by hand: jwt.encode refuses some of the malformed payloads tested here.
    signing_input = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(payload)}"
    digest = hmac.new(secret.encode(), signing_input.encode(), _HASHES[alg]).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


def _payload(**overrides: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "iss": KEY,
        "sub": "alice",
        "nbf": int(NOW),
        "exp": int(NOW) + 3600,
        "video": {"roomJoin": True, "room": "r"},
    }
    payload.update(overrides)
    return payload


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _refused(token: str, message: str | None = None, **kwargs: float) -> TokenError:
    with pytest.raises(TokenError) as info:
        verify_token(token, KEYS, **kwargs)
    if message is not None:
        assert str(info.value) == message
    return info.value


# --- tokens from the official SDK ----------------------------------------------------------


def test_sdk_token_maps_fields() -> None:
    token = (
        api.AccessToken(KEY, SECRET)
        .with_identity("alice")
        .with_name("Alice")
        .with_metadata('{"a":1}')
        .with_attributes({"team": "blue"})
        .with_kind("agent")
        .with_grants(api.VideoGrants(room_join=True, room="r"))
        .to_jwt()
    )
    claims = verify_token(token, KEYS)
    assert claims.api_key == KEY
    assert claims.identity == "alice"
    assert (claims.name, claims.metadata, claims.kind) == ("Alice", '{"a":1}', "agent")
    assert dict(claims.attributes) == {"team": "blue"}
    assert claims.video.room_join and claims.video.room == "r"
    assert claims.video.can_publish and claims.video.can_subscribe
    assert claims.video.can_publish_data
    assert not claims.video.can_update_own_metadata
    assert not claims.video.room_admin and not claims.video.hidden
    assert claims.room_config is None and claims.room_preset == ""
    assert claims.expires_at > time.time() + 5 * 3600
    assert claims.raw["sub"] == "alice"


def test_sdk_token_explicit_grants() -> None:
    grants = api.VideoGrants(
        room_join=True,
        room="r",
        room_admin=True,
        can_publish=False,
        can_subscribe=False,
        can_publish_data=False,
        can_publish_sources=["camera", "microphone"],
        can_update_own_metadata=True,
        hidden=True,
        destination_room="other",
    )
    token = api.AccessToken(KEY, SECRET).with_identity("bob").with_grants(grants).to_jwt()
    video = verify_token(token, KEYS).video
    assert video.room_admin and video.hidden and video.can_update_own_metadata
    assert not video.can_publish and not video.can_subscribe and not video.can_publish_data
    assert video.can_publish_sources == ("camera", "microphone")
    assert video.destination_room == "other"


def test_can_publish_data_follows_can_publish_when_absent() -> None:
    denied = _raw(_payload(video={"roomJoin": True, "room": "r", "canPublish": False}))
    assert not verify_token(denied, KEYS, now=NOW).video.can_publish_data
    allowed = _raw(_payload(video={"roomJoin": True, "room": "r"}))
    grant = verify_token(allowed, KEYS, now=NOW).video
    assert grant.can_publish and grant.can_publish_data and grant.can_subscribe
    explicit = _raw(_payload(video={"canPublish": False, "canPublishData": True}))
    assert verify_token(explicit, KEYS, now=NOW).video.can_publish_data


def test_missing_video_and_nulls_mean_defaults() -> None:
    claims = verify_token(_raw(_payload(video=None, name=None)), KEYS, now=NOW)
    assert claims.video == VideoGrant()
    assert claims.name == ""
    nulls = {"canPublish": None, "roomJoin": None, "room": None}
    assert verify_token(_raw(_payload(video=nulls)), KEYS, now=NOW).video == VideoGrant()


# --- time rules ----------------------------------------------------------------------------


def test_expiry_leeway() -> None:
    token = _raw(_payload(exp=int(NOW)))
    assert verify_token(token, KEYS, now=NOW + 59).identity == "alice"
    _refused(token, "invalid token: token is expired", now=NOW + 60)
    _refused(token, "invalid token: token is expired", now=NOW + 3600)


def test_not_before_leeway() -> None:
    token = _raw(_payload(nbf=int(NOW) + 60))
    assert verify_token(token, KEYS, now=NOW).identity == "alice"
    _refused(token, "invalid token: token is not valid yet", now=NOW - 1)


def test_future_iat_is_not_checked_like_livekit() -> None:
    # golang-jwt v5 only validates iat with WithIssuedAt, which LiveKit does not use.
    claims = verify_token(_raw(_payload(iat=int(NOW) + 86400)), KEYS, now=NOW)
    assert claims.issued_at == int(NOW) + 86400


def test_missing_exp_refused() -> None:
    payload = _payload()
    del payload["exp"]
    _refused(_raw(payload), "invalid token: exp claim required", now=NOW)
    _refused(_raw(_payload(exp=None)), "invalid token: exp claim required", now=NOW)


def test_fractional_dates_truncate() -> None:
    claims = verify_token(_raw(_payload(exp=NOW + 100.9, nbf=NOW - 0.5)), KEYS, now=NOW)
    assert claims.expires_at == int(NOW) + 100
    assert claims.not_before == int(NOW) - 1


# --- signing rules -------------------------------------------------------------------------


def test_alg_none_refused() -> None:
    token = _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(_payload()) + "."
    _refused(token, "invalid token: unexpected signing method", now=NOW)


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_refused(alg: str) -> None:
    _refused(_raw(_payload(), alg=alg), "invalid token: unexpected signing method", now=NOW)


@pytest.mark.parametrize("header", [{"alg": "RS256"}, {"typ": "JWT"}, {"alg": 256}])
def test_forged_headers_refused(header: dict[str, object]) -> None:
    # An RS256 header signed with the HMAC secret is the classic key-confusion attack.
    good = _raw(_payload())
    forged = _b64(header) + "." + good.split(".", 1)[1]
    _refused(forged, "invalid token: unexpected signing method", now=NOW)


def test_wrong_secret_refused() -> None:
    token = _raw(_payload(), secret="not-the-secret-but-just-as-long-x")
    _refused(token, "invalid token: signature is invalid", now=NOW)


def test_tampered_payload_refused() -> None:
    header, _, signature = _raw(_payload()).split(".")
    forged = f"{header}.{_b64(_payload(sub='mallory'))}.{signature}"
    _refused(forged, "invalid token: signature is invalid", now=NOW)


def test_key_selected_by_issuer() -> None:
    token = _raw(_payload(iss="APIother"), secret=KEYS["APIother"])
    assert verify_token(token, KEYS, now=NOW).api_key == "APIother"


@pytest.mark.parametrize("iss", ["APIunknown", "", None])
def test_unknown_or_missing_issuer_refused(iss: str | None) -> None:
    payload = _payload(iss=iss)
    _refused(_raw(payload), "invalid token: unknown API key", now=NOW)


def test_empty_secret_is_not_a_key() -> None:
    with pytest.raises(TokenError, match="unknown API key"):
        verify_token(_raw(_payload(iss="APIempty"), secret=""), {"APIempty": ""}, now=NOW)


# --- robustness ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b.c",
        "..",
        "a.b",
        "a.b.c.d",
        "ey.ey.ey",
        "!!!.???.***",
        _b64([1, 2]) + "." + _b64({}) + ".",
        _b64({"alg": "HS256"}) + "." + _b64([1]) + ".",
        _b64({"alg": "HS256"}) + ".bm90IGpzb24." + "x",
        _b64({"alg": "HS256"}) + "." + _b64(_payload()) + ".a",
        _b64({"alg": "HS256"}) + "." + base64.urlsafe_b64encode(b"\xff\xfe").decode() + ".",
        bytes(range(256)).decode("latin-1"),
    ],
)
def test_garbage_refused(token: str) -> None:
    _refused(token, now=NOW)


def test_random_garbage_only_raises_token_error() -> None:
    rng = random.Random(1234)
    alphabet = "abcAZ09-_.=+/ \x00é"
    for _ in range(2000):
        token = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        _refused(token, now=NOW)
    for _ in range(200):
        _refused(rng.randbytes(rng.randrange(0, 64)).decode("latin-1"), now=NOW)


def test_non_finite_and_deep_json_refused() -> None:
    header = _b64({"alg": "HS256", "typ": "JWT"})
    nan_payload = base64.urlsafe_b64encode(b'{"iss":"APItestkey","exp":NaN}').decode()
    _refused(f"{header}.{nan_payload}.", "invalid token: malformed: could not JSON decode payload")
    deep = base64.urlsafe_b64encode(b"[" * 100_000).decode()
    _refused(f"{header}.{deep}.", now=NOW)


@pytest.mark.parametrize(
    "overrides",
    [
        {"video": "room"},
        {"video": ["roomJoin"]},
        {"video": {"canPublish": "yes"}},
        {"video": {"roomJoin": 1}},
        {"video": {"room": 5}},
        {"video": {"canPublishSources": "camera"}},
        {"video": {"canPublishSources": ["camera", 1]}},
        {"attributes": {"a": 1}},
        {"attributes": {"a": None}},
        {"attributes": ["a"]},
        {"exp": "1800000000"},
        {"exp": True},
        {"exp": [1]},
        {"nbf": "now"},
        {"iat": {}},
        {"sub": 5},
        {"jti": 5},
        {"iss": ["APItestkey"]},
        {"aud": 5},
        {"aud": ["a", 5]},
        {"name": 5},
        {"metadata": {}},
        {"kind": True},
        {"roomConfig": "cfg"},
        {"roomPreset": 1},
        {"sha256": 1},
        {"kindDetails": "x"},
        {"sip": True},
        {"agent": {"admin": "yes"}},
    ],
)
def test_wrong_claim_types_refused(overrides: dict[str, object]) -> None:
    error = _refused(_raw(_payload(**overrides)), now=NOW)
    assert str(error).startswith("invalid token: malformed")


def test_sub_falls_back_to_jti() -> None:
    payload = _payload(sub="", jti="from-jti")
    assert verify_token(_raw(payload), KEYS, now=NOW).identity == "from-jti"
    del payload["sub"]
    assert verify_token(_raw(payload), KEYS, now=NOW).identity == "from-jti"


def test_audience_and_unknown_claims_kept() -> None:
    extra = {"aud": ["x"], "sip": {"admin": True}, "kindDetails": ["forwarded"], "zz": 1}
    claims = verify_token(_raw(_payload(**extra)), KEYS, now=NOW)
    assert claims.raw["sip"] == {"admin": True}
    assert claims.raw["zz"] == 1


# --- grants --------------------------------------------------------------------------------


def test_video_grant_claim_round_trip() -> None:
    grant = VideoGrant(
        room_join=True,
        room="r",
        can_publish=False,
        can_publish_data=True,
        can_publish_sources=("camera",),
        recorder=True,
        destination_room="d",
    )
    claim = grant.to_claim()
    assert claim == {
        "roomJoin": True,
        "recorder": True,
        "room": "r",
        "canPublish": False,
        "canSubscribe": True,
        "canPublishData": True,
        "canPublishSources": ["camera"],
        "destinationRoom": "d",
    }
    assert VideoGrant.from_claim(claim) == grant
    assert VideoGrant().to_claim() == {
        "canPublish": True,
        "canSubscribe": True,
        "canPublishData": True,
    }


def test_can_publish_source() -> None:
    assert VideoGrant().can_publish_source("screen_share")
    limited = VideoGrant(can_publish_sources=("camera", "microphone"))
    assert limited.can_publish_source("camera")
    assert limited.can_publish_source("MICROPHONE")
    assert not limited.can_publish_source("screen_share")
    assert not VideoGrant(can_publish=False).can_publish_source("camera")


# --- issuing and refresh -------------------------------------------------------------------


def test_issued_token_accepted_by_sdk() -> None:
    video = VideoGrant(room_join=True, room="r", can_publish=False, can_update_own_metadata=True)
    token = issue_token(
        api_key=KEY,
        secret=SECRET,
        identity="carol",
        video=video,
        ttl_s=600,
        name="Carol",
        metadata="m",
        attributes={"k": "v"},
        kind="standard",
        sha256="abc=",
    )
    sdk_claims = api.TokenVerifier(KEY, SECRET).verify(token)
    assert sdk_claims.video is not None
    assert sdk_claims.identity == "carol"
    assert sdk_claims.name == "Carol" and sdk_claims.metadata == "m"
    assert sdk_claims.attributes == {"k": "v"} and sdk_claims.sha256 == "abc="
    assert sdk_claims.video.room == "r" and sdk_claims.video.room_join
    assert sdk_claims.video.can_publish is False
    assert sdk_claims.video.can_update_own_metadata is True
    claims = verify_token(token, KEYS)
    assert claims.video == video
    assert claims.issued_at == claims.not_before
    assert claims.issued_at is not None and claims.expires_at - claims.issued_at == 600


def test_issue_token_extra_and_short_secret() -> None:
    # LiveKit's dev mode uses `devkey: secret`; short secrets must still work silently.
    token = issue_token(
        api_key="devkey",
        secret="secret",
        identity="dev",
        video=VideoGrant(),
        ttl_s=60,
        now=NOW,
        extra={"roomPreset": "p", "exp": 1, "iss": "evil"},
    )
    claims = verify_token(token, {"devkey": "secret"}, now=NOW)
    assert claims.room_preset == "p"
    assert claims.api_key == "devkey"
    assert claims.expires_at == int(NOW) + 60


@pytest.mark.parametrize(
    ("key", "secret", "ttl"), [("", SECRET, 60.0), (KEY, "", 60.0), (KEY, SECRET, 0.0)]
)
def test_issue_token_rejects_bad_arguments(key: str, secret: str, ttl: float) -> None:
    with pytest.raises(ValueError):
        issue_token(api_key=key, secret=secret, identity="x", video=VideoGrant(), ttl_s=ttl)


def _verified_for_refresh(ttl: timedelta) -> Claims:
    token = (
        api.AccessToken(KEY, SECRET)
        .with_identity("dave")
        .with_name("Dave")
        .with_kind("sip")
        .with_metadata("meta")
        .with_attributes({"a": "b"})
        .with_room_preset("preset")
        .with_room_config(api.RoomConfiguration(name="r", max_participants=5))
        .with_sip_grants(api.SIPGrants(admin=True))
        .with_grants(api.VideoGrants(room_join=True, room="r", can_publish=False))
        .with_ttl(ttl)
        .to_jwt()
    )
    return verify_token(token, KEYS)


def test_refresh_keeps_claims_and_extends_to_ten_minutes() -> None:
    claims = _verified_for_refresh(timedelta(minutes=2))
    now = time.time()
    refreshed = refresh_token(claims, api_key="APIother", secret=KEYS["APIother"], now=now)
    new = verify_token(refreshed, KEYS, now=now)
    assert new.api_key == "APIother"
    assert (new.identity, new.name, new.kind, new.metadata) == ("dave", "Dave", "sip", "meta")
    assert dict(new.attributes) == {"a": "b"}
    assert new.video == claims.video and not new.video.can_publish
    assert new.room_preset == "preset"
    assert new.room_config == {"name": "r", "maxParticipants": 5}
    assert new.raw["sip"] == {"admin": True, "call": False}
    assert new.expires_at >= int(now) + 600 - 1
    assert new.expires_at >= claims.expires_at


def test_refresh_preserves_longer_original_expiry() -> None:
    # livekit-server refreshToken: validFor = max(10 min, time.Until(original exp)).
    claims = _verified_for_refresh(timedelta(hours=6))
    now = time.time()
    refreshed = refresh_token(claims, api_key=KEY, secret=SECRET, now=now)
    assert verify_token(refreshed, KEYS, now=now).expires_at == claims.expires_at


def test_refresh_of_expired_join_token_still_gets_ten_minutes() -> None:
    claims = verify_token(_raw(_payload(sha256="body")), KEYS, now=NOW)
    later = NOW + 7200
    refreshed = verify_token(
        refresh_token(claims, api_key=KEY, secret=SECRET, now=later), KEYS, now=later
    )
    assert refreshed.expires_at == int(later) + 600
    assert refreshed.sha256 == ""
    assert refreshed.identity == "alice"
