"""Records the RTP and RTCP a real libwebrtc session sends the server, as the parsers' test
vectors (``tests/unit/test_vectors.py``). Run it in the test namespace when the SDK changes:

    unshare -n sh tests/netns.sh .venv/bin/python -m tests.vectors.capture

A server is started with a ``sitecustomize`` that wraps the decrypted-packet entry points of
``sfu/ingest.py`` and ``sfu/tracks.py``; two SDK participants publish Opus and VP8 and
subscribe to each other for a few seconds. Records are ``kind (0 RTP, 1 RTCP), length
(2 bytes, big-endian), packet``.
"""

from __future__ import annotations

import asyncio
import tempfile
import textwrap
from pathlib import Path

from tests.e2e.harness import start_server
from tests.e2e.sdk import connect
from tests.e2e.test_media import publishing_colour, publishing_tone

OUTPUT = Path(__file__).with_name("libwebrtc_session.bin")
#: At most this many RTP packets per SSRC are kept (the first ones: keyframes, extensions).
RTP_PER_SSRC = 60
SITECUSTOMIZE = """
import os, struct
from sfu import ingest, tracks

_out = open(os.environ["LKPY_CAPTURE"], "ab")
_per_ssrc = {}

def _record(kind, packet):
    _out.write(struct.pack("!BH", kind, len(packet)) + bytes(packet))
    _out.flush()

def _wrap_rtp(original):
    def on_rtp(self, packet):
        ssrc = int.from_bytes(packet[8:12], "big")
        if _per_ssrc.get(ssrc, 0) < LIMIT:
            _per_ssrc[ssrc] = _per_ssrc.get(ssrc, 0) + 1
            _record(0, packet)
        return original(self, packet)
    return on_rtp

def _wrap_rtcp(original):
    def on_rtcp(self, packet):
        _record(1, packet)
        return original(self, packet)
    return on_rtcp

ingest.PublisherIngest.on_rtp = _wrap_rtp(ingest.PublisherIngest.on_rtp)
tracks.ParticipantTracks._on_rtcp = _wrap_rtcp(tracks.ParticipantTracks._on_rtcp)
""".replace("LIMIT", str(RTP_PER_SSRC))


async def capture() -> None:
    directory = Path(tempfile.mkdtemp(prefix="lkpy-capture-"))
    (directory / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    OUTPUT.unlink(missing_ok=True)
    env = {"PYTHONPATH": str(directory), "LKPY_CAPTURE": str(OUTPUT)}
    server = start_server(directory, extra_env=env)
    try:
        alice = await connect(server, "alice", "capture")
        bob = await connect(server, "bob", "capture")
        async with publishing_tone(alice), publishing_colour(bob):
            await asyncio.sleep(6.0)
        await alice.disconnect()
        await bob.disconnect()
    finally:
        server.stop()
    print(f"{OUTPUT}: {OUTPUT.stat().st_size} bytes")


if __name__ == "__main__":
    asyncio.run(capture())
