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
#: How long a client's ICE preference is remembered for its rejoins (LiveKit caches the ICE
#: configuration per identity for its reconnects).
ICE_PREFERENCE_TTL_S = 300.0
#: (room, identity) -> ("tcp" or "tls", expiry).
ICE_PREFERENCES: dict[tuple[str, str], tuple[str, float]] = {}
_PREFERENCE_NAMES: dict[int, str] = {
    rtc.CandidateProtocol.TCP: "tcp",
    rtc.CandidateProtocol.TLS: "tls",
}


def ice_preference(room: str, identity: str) -> str:
    """The ICE preference a participant asked for before its (re)join, or ""."""
    now = time.monotonic()
    for key in [k for k, (_, expiry) in ICE_PREFERENCES.items() if now > expiry]:
        del ICE_PREFERENCES[key]
    found = ICE_PREFERENCES.get((room, identity))
    return found[0] if found is not None else ""


def _prefer_candidates(room: Room, participant: Participant, protocol: int) -> None:
    """FORCE_TCP / FORCE_TLS (LiveKit caches an ICE config per identity): the client then
    rejoins on its own (a local full reconnect) and is offered ICE-TCP candidates only; UDP
    clears the preference."""
    key = (room.name, participant.identity)
    name = _PREFERENCE_NAMES.get(protocol, "")
    if name:
        ICE_PREFERENCES[key] = (name, time.monotonic() + ICE_PREFERENCE_TTL_S)
    else:
        ICE_PREFERENCES.pop(key, None)
    participant.subscriber.restart_ice()


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
            await room.remove(participant, reasons.SERVER_SHUTDOWN, send_leave=True)
            return reasons.SERVER_SHUTDOWN
        case "leave_request_full_reconnect":
            await room.remove(participant, reasons.STATE_MISMATCH, send_leave=True, reconnect=True)
            return reasons.STATE_MISMATCH
        case "disconnect_signal_on_resume" | "disconnect_signal_on_resume_no_messages":
            _sweep_resume_cuts()
            silent = kind.endswith("no_messages")
            RESUME_CUTS[(room.name, participant.identity)] = ResumeCut(
                time.monotonic() + RESUME_CUT_WINDOW_S,
                before_any_frame=silent,
                remaining=RESUME_CUTS_WITHOUT_MESSAGES if silent else 1,
            )
        case "switch_candidate_protocol":
            _prefer_candidates(room, participant, scenario.switch_candidate_protocol)
        case "subscriber_bandwidth":
            # No stream allocator yet (issue 18): nothing to cap.
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
