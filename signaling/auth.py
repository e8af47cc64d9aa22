"""Who is connecting: the token and ``/rtc`` query checked before any WebSocket upgrade.

Every failure is an :class:`HttpError` with the status and plain-text reason LiveKit gives
(``service/rtcservice.go validateInternal``, ``service/auth.go``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from livekit.protocol import models, rtc

from config import Config
from protocol.token import Claims, TokenError, verify_token
from sfu.limits import LimitExceededError, Limits
from signaling.join_request import decode_join_request


class HttpError(Exception):
    """A request refused before the upgrade, answered as ``status`` with ``reason`` as body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ConnectRequest:
    """A validated ``/rtc`` request."""

    claims: Claims
    room_name: str
    protocol: int
    auto_subscribe: bool
    reconnect: bool
    attributes: Mapping[str, str]
    client_info: models.ClientInfo
    join_request: rtc.JoinRequest | None = None
    """Single peer connection mode (``/rtc/v1``, or ``join_request`` on ``/rtc``): what the
    client sent, including its first offer and tracks."""
    metadata: str | None = None
    """Metadata the client's join request sets instead of the token's."""
    adaptive_stream: bool = False
    """The client sizes its subscriptions by its video elements (``adaptive_stream``)."""

    @property
    def single_pc(self) -> bool:
        return self.join_request is not None


_SDKS: dict[str, models.ClientInfo.SDK] = {
    name.lower(): cast(models.ClientInfo.SDK, value)
    for name, value in models.ClientInfo.SDK.items()
}
_SDKS.update({"ios": models.ClientInfo.SWIFT, "reactnative": models.ClientInfo.REACT_NATIVE})


def extract_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """The JWT from ``Authorization: Bearer`` (preferred) or ``access_token``."""
    header = headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpError(401, "invalid authorization header: must start with Bearer")
        return token.strip()
    token = query.get("access_token", "")
    if not token:
        raise HttpError(401, "no authorization token provided")
    return token


def authenticate(headers: Mapping[str, str], query: Mapping[str, str], config: Config) -> Claims:
    try:
        return verify_token(extract_token(headers, query), config.keys)
    except TokenError as exc:
        raise HttpError(401, str(exc)) from exc


def validate_connect(
    headers: Mapping[str, str],
    query: Mapping[str, str],
    config: Config,
    *,
    single_pc_path: bool = False,
) -> ConnectRequest:
    """Check the token and the query of an ``/rtc`` or ``/rtc/validate`` request (``/rtc/v1``
    and its validate with ``single_pc_path``, where ``join_request`` is required)."""
    claims = authenticate(headers, query, config)
    _check_claims(claims, config)
    encoded = query.get("join_request", "")
    if single_pc_path and not encoded:
        raise HttpError(400, "join_request is required")
    if encoded:
        try:
            join = decode_join_request(encoded)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        connect = _from_join_request(claims, join)
    else:
        connect = _from_query(claims, query)
    if connect.attributes or connect.metadata:
        if not claims.video.can_update_own_metadata:
            raise HttpError(401, "permissions denied: attributes need canUpdateOwnMetadata")
    try:
        # Name, metadata and attributes go to everyone in the room (LiveKit 400s them too).
        merged = {**claims.attributes, **connect.attributes}
        metadata = claims.metadata if connect.metadata is None else connect.metadata
        Limits.from_config(config).check_participant(claims.name, metadata, merged)
    except LimitExceededError as exc:
        raise HttpError(400, f"participant {exc}") from None
    return connect


def _check_claims(claims: Claims, config: Config) -> None:
    grant = claims.video
    if not grant.room_join:
        raise HttpError(401, "permissions denied: token lacks roomJoin")
    if not grant.room:
        raise HttpError(400, "room name cannot be empty: token grant has no room")
    if not claims.identity:
        raise HttpError(400, "participant identity cannot be empty")
    limits = config.limit
    if len(grant.room) > limits.max_room_name_length:
        raise HttpError(400, f"room name exceeds {limits.max_room_name_length} characters")
    if len(claims.identity) > limits.max_participant_identity_length:
        limit = limits.max_participant_identity_length
        raise HttpError(400, f"participant identity exceeds {limit} characters")


def _from_query(claims: Claims, query: Mapping[str, str]) -> ConnectRequest:
    """Two peer connections: everything from the v0 query parameters."""
    protocol = _int(query.get("protocol", "0"), "protocol")
    return ConnectRequest(
        claims=claims,
        room_name=claims.video.room,
        protocol=protocol,
        # LiveKit's /rtc defaults auto_subscribe to true when absent.
        auto_subscribe=query.get("auto_subscribe", "1").lower() not in ("0", "false"),
        reconnect=query.get("reconnect", "").lower() in ("1", "true"),
        attributes=_query_attributes(query.get("attributes", "")),
        client_info=_client_info(query, protocol),
        adaptive_stream=query.get("adaptive_stream", "").lower() in ("1", "true"),
    )


def _from_join_request(claims: Claims, join: rtc.JoinRequest) -> ConnectRequest:
    """Single peer connection: everything from the JoinRequest, v0 parameters ignored. An
    unset ``auto_subscribe`` means false here, and empty attribute values are skipped
    (LiveKit ``validateInternal``, ``ValidateConnectRequest``)."""
    client_info = models.ClientInfo()
    client_info.CopyFrom(join.client_info)
    return ConnectRequest(
        claims=claims,
        room_name=claims.video.room,
        protocol=join.client_info.protocol,
        auto_subscribe=join.connection_settings.auto_subscribe,
        reconnect=join.reconnect,
        attributes={k: v for k, v in join.participant_attributes.items() if v},
        client_info=client_info,
        join_request=join,
        metadata=join.metadata or None,
        adaptive_stream=join.connection_settings.adaptive_stream,
    )


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise HttpError(400, f"{name} must be an integer") from None


def _query_attributes(encoded: str) -> dict[str, str]:
    """``attributes`` is base64url(JSON object of strings) (LiveKit ``ParseClientInfo``)."""
    if not encoded:
        return {}
    try:
        padded = encoded + "=" * (-len(encoded) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError):
        raise HttpError(400, "attributes must be base64url-encoded JSON") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise HttpError(400, "attributes must be a JSON object of strings")
    return value


def _client_info(query: Mapping[str, str], protocol: int) -> models.ClientInfo:
    return models.ClientInfo(
        protocol=protocol,
        sdk=_SDKS.get(query.get("sdk", "").lower(), models.ClientInfo.UNKNOWN),
        version=query.get("version", ""),
        os=query.get("os", ""),
        os_version=query.get("os_version", ""),
        device_model=query.get("device_model", ""),
        browser=query.get("browser", ""),
        browser_version=query.get("browser_version", ""),
        network=query.get("network", ""),
    )
