"""The edge's reading of a hosting node's refusal (signaling/relay.py)."""

from __future__ import annotations

import pytest

from signaling.relay import _refusal


@pytest.mark.parametrize(
    "payload", [b"x", b"[]", b'{"status": 404}', b'{"status": "n", "reason": 1}']
)
def test_a_garbled_refusal_is_a_502(payload: bytes) -> None:
    refusal = _refusal(payload)
    assert refusal.status == 502
    assert "garbage" in refusal.reason


def test_a_refusal_keeps_the_hosting_nodes_status_and_reason() -> None:
    refusal = _refusal(b'{"status": 404, "reason": "room not found"}')
    assert (refusal.status, refusal.reason) == (404, "room not found")
