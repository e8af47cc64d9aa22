"""LiveKit-style resource identifiers (SIDs).

Mirrors ``livekit/protocol`` ``utils/guid/id.go``: a SID is a type prefix followed by
12 characters drawn from the shortuuid base57 alphabet, and a node id is derived from
the host name so that it stays stable across restarts.
"""

from __future__ import annotations

import hashlib
import secrets

ROOM_PREFIX = "RM_"
PARTICIPANT_PREFIX = "PA_"
TRACK_PREFIX = "TR_"
DATA_TRACK_PREFIX = "DTR_"
NODE_PREFIX = "ND_"
EVENT_PREFIX = "EV_"
CONNECTION_PREFIX = "CO_"
AGENT_DISPATCH_PREFIX = "AD_"
AGENT_JOB_PREFIX = "AJ_"

# shortuuid.DefaultAlphabet: base57, without the look-alike characters 0, 1, I, O and l.
# Clients and tools only ever see SIDs in this alphabet, and LiveKit's compact GuidBlock
# encoding relies on each character indexing into it.
ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
ID_LENGTH = 12

# github.com/jxskiss/base62 StdEncoding, which LiveKit's guid.HashedID uses.
_BASE62_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_NODE_HASH_CHARS = 8


def new_id(prefix: str) -> str:
    """Return ``prefix`` followed by 12 random base57 characters (LiveKit ``guid.New``)."""
    return prefix + "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def node_id_for_host(hostname: str) -> str:
    """Return LiveKit's ``guid.LocalNodeID`` for ``hostname``.

    ``"ND_"`` + the first 8 characters of base62(sha1(hostname)), so a node keeps the
    same id across restarts, as it does under livekit-server.
    """
    digest = hashlib.sha1(hostname.encode("utf-8"), usedforsecurity=False).digest()
    return NODE_PREFIX + _jxskiss_base62(digest)[:_NODE_HASH_CHARS]


def _jxskiss_base62(src: bytes) -> str:
    """Encode ``src`` the way github.com/jxskiss/base62 ``EncodeToString`` does.

    This is not the big-integer base62: it walks the input from its last bit towards
    its first, emitting 6-bit groups, and when a group's value is 30..63 (``x & 0x1E ==
    0x1E``, which does not fit 62 symbols) it emits only its low 5 bits and consumes
    5 bits instead of 6. Ported from ``encoder.encodeV2`` so node ids match LiveKit's.
    """
    out: list[str] = []
    pos = len(src) * 8
    while pos > 0:
        size = 6
        value = _low_6_bits_before(src, pos)
        if value & 0x1E == 0x1E:
            if pos > 6 or value > 0x1F:
                size = 5
            value &= 0x1F
        out.append(_BASE62_ALPHABET[value])
        pos -= size
    return "".join(out)


def _low_6_bits_before(src: bytes, pos: int) -> int:
    """The (up to) 6 bits of ``src`` that end at bit offset ``pos`` (``get6bits``)."""
    rem = pos & 7
    idx = pos >> 3
    if rem == 0:
        idx, rem = idx - 1, 8
    value = src[idx] >> (8 - rem)
    if rem < 6 and idx > 0:
        value |= src[idx - 1] << rem
    return value & 0x3F
