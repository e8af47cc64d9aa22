"""The ICE servers a client is handed in its JoinResponse and ReconnectResponse (LiveKit
``roommanager.go iceServersForParticipant``): the configured STUN servers and the external
TURN servers of ``rtc.turn_servers``, with time-limited credentials where a shared secret is
configured (the TURN REST scheme coturn's ``use-auth-secret`` checks).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from pathlib import Path

from livekit.protocol import rtc

from config import Config
from config.schema import TurnServerConfig

logger = logging.getLogger(__name__)

#: LiveKit caps a TURN credential's lifetime at one day.
MAX_TURN_TTL_S = 86400


def turn_url(server: TurnServerConfig) -> str:
    """``turn:`` for UDP and TCP, ``turns:`` (TURN over TLS, RFC 7065) for TLS."""
    protocol = server.protocol.lower()
    scheme = "turns" if protocol == "tls" else "turn"
    transport = "udp" if protocol == "udp" else "tcp"
    return f"{scheme}:{server.host}:{server.port}?transport={transport}"


def _secret(server: TurnServerConfig) -> str:
    if server.secret:
        return server.secret
    if server.secret_file:
        try:
            return Path(server.secret_file).read_text().strip()
        except OSError as exc:
            logger.warning("TURN secret file %s unreadable: %s", server.secret_file, exc)
    return ""


def turn_credentials(secret: str, participant_sid: str, ttl_s: int, now: float) -> tuple[str, str]:
    """(username, credential) valid until ``now + ttl_s``: username ``<expiry>:<sid>``, the
    credential base64(HMAC-SHA1(secret, username)) (TURN REST API, as LiveKit issues them)."""
    expiry = int(now) + max(1, min(ttl_s, MAX_TURN_TTL_S))
    username = f"{expiry}:{participant_sid}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def _turn_server(server: TurnServerConfig, participant_sid: str, now: float) -> rtc.ICEServer:
    secret = _secret(server)
    if secret:
        username, credential = turn_credentials(secret, participant_sid, server.ttl, now)
    else:
        username, credential = server.username, server.credential
    return rtc.ICEServer(urls=[turn_url(server)], username=username, credential=credential)


def stun_url(server: str) -> str:
    return server if server.startswith(("stun:", "stuns:")) else f"stun:{server}"


def ice_servers(
    config: Config, participant_sid: str, preference: str, now: float
) -> tuple[list[rtc.ICEServer], bool]:
    """(the servers for this participant, whether it must relay). A client that asked for
    TLS (``switch_candidate_protocol``) gets the TLS TURN servers alone and must relay
    through them, when there are any (LiveKit sets ``force_relay``)."""
    turn = [s for s in config.rtc.turn_servers if s.host and s.port]
    tls = [s for s in turn if s.protocol.lower() == "tls"]
    if preference == "tls" and tls:
        return [_turn_server(s, participant_sid, now) for s in tls], True
    servers = [_turn_server(s, participant_sid, now) for s in turn]
    servers += [rtc.ICEServer(urls=[stun_url(s)]) for s in config.rtc.stun_servers]
    return servers, False
