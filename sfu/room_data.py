"""Data packets in a room: who sent them, and who gets them (LiveKit
``room.go BroadcastDataPacketForRoom``)."""

from __future__ import annotations

from collections.abc import Sequence

from livekit.protocol import models

from sfu.participant import Participant, ParticipantState


def stamp_sender(packet: models.DataPacket, sender: Participant, *, reliable: bool) -> None:
    """The sender is stamped by us (empty for a hidden one), on the kind of channel it came in
    on."""
    identity = "" if sender.hidden else sender.identity
    sid = "" if sender.hidden else sender.sid
    packet.participant_identity = identity
    packet.participant_sid = sid
    # The channel it came in on is the truth about its kind (LiveKit sets ``kind`` from it);
    # livekit-client reports that field to the app as reliable or lossy.
    packet.kind = models.DataPacket.Kind.RELIABLE if reliable else models.DataPacket.Kind.LOSSY
    if packet.HasField("user"):
        # Old clients read the sender from UserPacket.
        packet.user.participant_identity = identity
        packet.user.participant_sid = sid


def deliver(
    packet: models.DataPacket,
    receivers: Sequence[Participant],
    sender: Participant | None,
    *,
    reliable: bool,
) -> None:
    """Send ``packet`` to everyone joined but its sender; only to ``destination_identities``
    (or, for old clients, the UserPacket's identities and sids) when any are given."""
    destinations = set(packet.destination_identities)
    destination_sids: set[str] = set()
    if packet.HasField("user"):
        destinations.update(packet.user.destination_identities)
        destination_sids.update(packet.user.destination_sids)
    payload = packet.SerializeToString()
    for other in receivers:
        if other is sender or other.state is ParticipantState.JOINING:
            continue
        if (destinations or destination_sids) and not (
            other.identity in destinations or other.sid in destination_sids
        ):
            continue
        other.send_data(payload, reliable=reliable)
