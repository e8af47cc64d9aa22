"""What a room tells its participants about each other every so often: who is speaking
(``SpeakersChanged``, LiveKit ``audioUpdateWorker``) and how well everyone is connected
(``ConnectionQualityUpdate``, ``connectionQualityWorker``). Each participant hears about itself
and about the participants whose tracks it subscribes to, and only when something changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from livekit.protocol import models, rtc

from sfu.quality import mean_opinion, quality_of
from sfu.speakers import SpeakerTracker

if TYPE_CHECKING:
    from sfu.participant import Participant


class RoomReports:
    """The speakers and qualities last sent in one room."""

    def __init__(self) -> None:
        self._speakers = SpeakerTracker()
        self._qualities_sent: dict[str, dict[str, models.ConnectionQuality]] = {}
        """receiver sid -> the qualities it was last told, by participant sid: one that starts
        subscribing to a publisher hears of it at the next window."""

    def send_speakers(self, participants: Sequence[Participant]) -> None:
        """One speaker interval ends: each participant gets the changes among itself and the
        participants it subscribes to."""
        levels: dict[str, float] = {}
        for participant in participants:
            level = participant.tracks.close_audio_interval()
            if level is not None:
                levels[participant.sid] = level
        changes = self._speakers.update(levels)
        if not changes:
            return
        by_sid = {p.sid: p for p in participants}
        for receiver in participants:
            seen = _seen_by(receiver, by_sid)
            visible = [speaker for speaker in changes if speaker.sid in seen]
            if visible:
                update = rtc.SpeakersChanged(speakers=visible)
                receiver.send(rtc.SignalResponse(speakers_changed=update))

    def send_qualities(self, participants: Sequence[Participant]) -> None:
        """Score everyone; each participant gets its own quality and its publishers' when one
        of them changed."""
        infos: dict[str, rtc.ConnectionQualityInfo] = {}
        for participant in participants:
            score = participant.tracks.connection_score()
            infos[participant.sid] = rtc.ConnectionQualityInfo(
                participant_sid=participant.sid,
                quality=quality_of(score),
                score=mean_opinion(score),
            )
        by_sid = {p.sid: p for p in participants}
        told_before = self._qualities_sent
        self._qualities_sent = {}
        for receiver in participants:
            seen = _seen_by(receiver, by_sid)
            told = {sid: infos[sid].quality for sid in seen}
            self._qualities_sent[receiver.sid] = told
            before = told_before.get(receiver.sid, {})
            if all(before.get(sid) == quality for sid, quality in told.items()):
                continue  # nothing new to it (one it stopped hearing about is no news)
            ordered = [receiver.sid, *(sid for sid in seen if sid != receiver.sid)]
            update = rtc.ConnectionQualityUpdate(updates=[infos[sid] for sid in ordered])
            receiver.send(rtc.SignalResponse(connection_quality=update))


def _seen_by(receiver: Participant, by_sid: dict[str, Participant]) -> set[str]:
    """The sids ``receiver`` hears about: its own and those of the participants whose tracks
    it subscribes to."""
    subscribed = receiver.tracks.downtracks.keys()
    seen = {receiver.sid}
    seen.update(
        sid
        for sid, other in by_sid.items()
        if other is not receiver and not subscribed.isdisjoint(other.tracks.published)
    )
    return seen
