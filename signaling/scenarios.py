"""``simulate``: the failures a client asks the server to act out (LiveKit ``room.go
onSimulateScenario``), so SDKs can test their recovery against a real server."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from livekit.protocol import models, rtc

from sfu.participant import Participant
from sfu.room import Room

logger = logging.getLogger(__name__)

#: How long a disconnect-on-resume mark waits for the resume it spoils (LiveKit
#: ``simulateDisconnectSignalTimeout``).
RESUME_CUT_WINDOW_S = 5.0
#: A no-messages mark cuts at most this many resumes.
RESUME_CUTS_WITHOUT_MESSAGES = 3


@dataclass
class ResumeCut:
    """The next resume of a participant is cut: after its responses, or before any frame."""

    expires_at: float
    before_any_frame: bool
    remaining: int = 1


#: identity -> mark, per room name (a resume arrives on a new connection).
RESUME_CUTS: dict[tuple[str, str], ResumeCut] = {}


def _sweep_resume_cuts() -> None:
    """Marks nobody resumed into expire (LiveKit sweeps them too, ``simulationCleanupWorker``)."""
    now = time.monotonic()
    for key in [k for k, cut in RESUME_CUTS.items() if now > cut.expires_at]:
        del RESUME_CUTS[key]


def take_resume_cut(room: str, identity: str) -> ResumeCut | None:
    """The mark for this resume, if one is live (it is used up by the call)."""
    key = (room, identity)
    cut = RESUME_CUTS.get(key)
    if cut is None or time.monotonic() > cut.expires_at:
        RESUME_CUTS.pop(key, None)
        return None
    cut.remaining -= 1
    if cut.remaining <= 0:
        del RESUME_CUTS[key]
    return cut


async def simulate(
    room: Room, participant: Participant, scenario: rtc.SimulateScenario
) -> models.DisconnectReason | None:
    """Act out ``scenario``; a reason when the session ends (the participant is removed
    with it), None when it carries on."""
    kind = scenario.WhichOneof("scenario")
    participant.log.info("simulating %s", kind)
    reasons = models.DisconnectReason
    match kind:
        case "speaker_update":
            _speak(room, participant, scenario.speaker_update)
        case "node_failure" | "migration":
            # Closed without a leave: the client resumes, learns the participant is gone
            # (STATE_MISMATCH, RECONNECT) and rejoins from scratch.
            reason = reasons.MIGRATION if kind == "migration" else reasons.SIGNAL_CLOSE
            await room.remove(participant, reason, send_leave=False)
            return reason
        case "server_leave":
            participant.send_leave(reasons.SERVER_SHUTDOWN)
            await room.remove(participant, reasons.SERVER_SHUTDOWN)
            return reasons.SERVER_SHUTDOWN
        case "leave_request_full_reconnect":
            participant.send_leave(reasons.STATE_MISMATCH, reconnect=True)
            await room.remove(participant, reasons.STATE_MISMATCH)
            return reasons.STATE_MISMATCH
        case "disconnect_signal_on_resume" | "disconnect_signal_on_resume_no_messages":
            _sweep_resume_cuts()
            silent = kind.endswith("no_messages")
            RESUME_CUTS[(room.name, participant.identity)] = ResumeCut(
                time.monotonic() + RESUME_CUT_WINDOW_S,
                before_any_frame=silent,
                remaining=RESUME_CUTS_WITHOUT_MESSAGES if silent else 1,
            )
        case "switch_candidate_protocol" | "subscriber_bandwidth":
            # No per-identity ICE preference and no stream allocator yet: the client's own
            # part (a local full reconnect for TCP/TLS) still runs.
            participant.log.info("simulated %s is not acted out by this server", kind)
        case _:
            participant.log.info("unknown simulated scenario %r ignored", kind)
    return None


def _speak(room: Room, participant: Participant, seconds: int) -> None:
    """The participant is announced as speaking, then as silent ``seconds`` later."""

    def announce(level: float, active: bool) -> None:
        speaker = models.SpeakerInfo(sid=participant.sid, level=level, active=active)
        changed = rtc.SpeakersChanged(speakers=[speaker])
        for other in list(room.participants.values()):
            other.send(rtc.SignalResponse(speakers_changed=changed))

    announce(0.9, True)
    asyncio.get_running_loop().call_later(max(1, seconds), announce, 0.0, False)
