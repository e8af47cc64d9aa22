"""DTLS, SRTP and SCTP for the load tester's peer connections, on the server's own glue to
aiortc (``sfu/rtc_adapter.py`` ``DtlsSession``): the load tester touches no aiortc internals
of its own."""

from __future__ import annotations

from collections.abc import Callable

from aiortc import RTCCertificate, RTCSctpCapabilities, RTCSctpTransport
from pylibsrtp import Session

from sfu.rtc_adapter import SCTP_MAX_MESSAGE_SIZE, DtlsSession
from sfu.srtp import SrtpProtector

_certificate: RTCCertificate | None = None


def certificate() -> RTCCertificate:
    """One DTLS certificate for every client peer connection of the process (browsers reuse
    theirs too); generating a key per connection would cost more than the handshake."""
    global _certificate
    if _certificate is None:
        _certificate = RTCCertificate.generateCertificate()
    return _certificate


def local_fingerprints() -> tuple[tuple[str, str], ...]:
    return tuple((f.algorithm, f.value) for f in certificate().getFingerprints())


class DtlsLink:
    """DTLS (and SCTP, when the description has data channels) for one peer connection.

    :param send: sends one datagram on the selected ICE path.
    """

    def __init__(self, send: Callable[[bytes], None], *, controlling: bool) -> None:
        self._session = DtlsSession(send, certificate(), controlling=controlling)
        self._sctp: RTCSctpTransport | None = None
        self.rx: Session | None = None
        self.tx: Session | None = None
        self.protector: SrtpProtector | None = None

    def feed(self, datagram: bytes) -> None:
        """A DTLS record from the network (RFC 7983: first byte 20-63)."""
        self._session.feed(datagram)

    async def connect(self, *, client: bool, fingerprints: tuple[tuple[str, str], ...]) -> bool:
        """Run the handshake as DTLS client or server; True once the SRTP keys are set."""
        self._session.set_role(client=client)
        if not await self._session.start(fingerprints):
            return False
        sessions = self._session.srtp_sessions()
        if sessions is None:
            return False
        self.rx, self.tx = sessions
        self.protector = SrtpProtector(self.tx)
        return True

    async def start_sctp(self, port: int) -> None:
        """Associate SCTP over DTLS (RFC 8841) so the server's data channels open; their
        messages are not read."""
        self._sctp = RTCSctpTransport(self._session.transport)
        await self._sctp.start(RTCSctpCapabilities(maxMessageSize=SCTP_MAX_MESSAGE_SIZE), port)

    async def close(self) -> None:
        if self._sctp is not None:
            await self._sctp.stop()
        await self._session.stop()
