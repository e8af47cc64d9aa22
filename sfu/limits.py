"""Size limits on what clients supply (LiveKit ``config.LimitConfig`` and its checks).

Everything a participant sets about itself is stored and sent to every other participant in
``ParticipantInfo``, so an unbounded name, metadata, attribute map or track list from one client
would be broadcast to all (the Rust SDK refuses signal frames over 16 MiB and then reconnects
for ever). The same limits apply on every path: the token's join, the signal connection's
``update_metadata`` and ``add_track``, and the server API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from config.schema import Config

#: Characters of a track name (LiveKit has no key for it; client defaults are short names such
#: as "camera" or a device label).
MAX_TRACK_NAME_LENGTH = 256
#: Serialized bytes of one AddTrackRequest: layers, simulcast codecs and the stream name
#: included, a real one is a few hundred bytes.
MAX_ADD_TRACK_REQUEST_BYTES = 8 * 1024
#: Tracks one participant may publish or have pending at once.
MAX_TRACKS_PER_PARTICIPANT = 32


class LimitExceededError(ValueError):
    """A client-supplied value is over its limit; the message is LiveKit's wording."""


@dataclass(frozen=True)
class Limits:
    """The size limits of ``limit.*`` (``room.max_metadata_size`` overrides the first), in
    bytes of UTF-8 as LiveKit counts them (Go string lengths)."""

    max_metadata_size: int = 512 * 1024
    max_attributes_size: int = 64 * 1024
    max_participant_name_length: int = 256

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        return cls(
            max_metadata_size=config.room.max_metadata_size or config.limit.max_metadata_size,
            max_attributes_size=config.limit.max_attributes_size,
            max_participant_name_length=config.limit.max_participant_name_length,
        )

    def check_participant(self, name: str, metadata: str, attributes: Mapping[str, str]) -> None:
        """Raise LimitExceededError when a participant's name, metadata or (resulting)
        attributes are over their limit (LiveKit ``checkMetadataLimits``)."""
        if len(name.encode()) > self.max_participant_name_length:
            raise LimitExceededError("exceeds name length limit")
        if len(metadata.encode()) > self.max_metadata_size:
            raise LimitExceededError("exceeds metadata size limit")
        if attributes_size(attributes) > self.max_attributes_size:
            raise LimitExceededError("exceeds attributes size limit")

    def check_update(
        self,
        current: Mapping[str, str],
        name: str,
        metadata: str,
        attributes: Mapping[str, str],
    ) -> None:
        """Check an update against the attributes it would leave (an empty value deletes a
        key), so many small updates cannot add up past the limit."""
        merged = dict(current)
        for key, value in attributes.items():
            if value:
                merged[key] = value
            else:
                merged.pop(key, None)
        self.check_participant(name, metadata, merged)


def attributes_size(attributes: Mapping[str, str]) -> int:
    return sum(len(key.encode()) + len(value.encode()) for key, value in attributes.items())
