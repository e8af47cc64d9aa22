import re

import pytest

from protocol import ids

_BASE57 = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

ALL_PREFIXES = [
    ids.ROOM_PREFIX,
    ids.PARTICIPANT_PREFIX,
    ids.TRACK_PREFIX,
    ids.DATA_TRACK_PREFIX,
    ids.NODE_PREFIX,
    ids.EVENT_PREFIX,
    ids.CONNECTION_PREFIX,
    ids.AGENT_DISPATCH_PREFIX,
    ids.AGENT_JOB_PREFIX,
]


def test_prefix_values_match_livekit() -> None:
    assert ALL_PREFIXES == ["RM_", "PA_", "TR_", "DTR_", "ND_", "EV_", "CO_", "AD_", "AJ_"]
    assert ids.ID_ALPHABET == _BASE57
    assert len(set(_BASE57)) == 57


@pytest.mark.parametrize("prefix", ALL_PREFIXES)
def test_new_id_format(prefix: str) -> None:
    pattern = re.compile(re.escape(prefix) + "[" + _BASE57 + "]{12}")
    for _ in range(200):
        assert pattern.fullmatch(ids.new_id(prefix))


def test_new_id_unique() -> None:
    generated = {ids.new_id(ids.TRACK_PREFIX) for _ in range(10_000)}
    assert len(generated) == 10_000


def test_new_id_uses_whole_alphabet() -> None:
    seen = set("".join(ids.new_id("")[:12] for _ in range(2_000)))
    assert seen == set(_BASE57)


def test_node_id_stable_and_formatted() -> None:
    first = ids.node_id_for_host("media-1.example.com")
    assert first == ids.node_id_for_host("media-1.example.com")
    assert re.fullmatch(r"ND_[A-Za-z0-9]{8}", first)
    assert first != ids.node_id_for_host("media-2.example.com")


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        # Computed with jxskiss/base62 encodeV2 (the encoder guid.HashedID uses) in Go.
        ("localhost", "ND_QxvnQfTh"),
        ("livekit-node-1", "ND_PvWsgTJ8"),
        ("ip-10-0-0-12.ec2.internal", "ND_86Hl7U2Z"),
        ("", "ND_JcA2vCJG"),
    ],
)
def test_node_id_matches_livekit(hostname: str, expected: str) -> None:
    assert ids.node_id_for_host(hostname) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff\xff\xff", "ffffP"),
        (b"\x00\x01\x02\x03\xfe", "efACEAA"),
        (b"", ""),
    ],
)
def test_jxskiss_base62_vectors(raw: bytes, expected: str) -> None:
    assert ids._jxskiss_base62(raw) == expected
