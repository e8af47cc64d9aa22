"""The only load-test module that touches aiortc internals: DTLS, its SRTP keys, SCTP.

A client peer connection hands DTLS datagrams to :class:`DtlsLink` and gets back the SRTP
sessions keyed by the handshake (RFC 5764); RTP and RTCP never pass through aiortc.

aiortc internals used here (the versions are pinned in pyproject):

- ``RTCDtlsTransport`` reads its ICE transport's ``role``, ``_recv()`` and ``_send()``
  (our :class:`_IceShim`, the client-side twin of ``sfu/rtc_adapter.py``'s);
- ``RTCDtlsTransport._set_role`` sets the DTLS role from the SDP ``a=setup``;
- ``RTCDtlsTransport._rx_srtp`` / ``_tx_srtp`` are the SRTP sessions after the handshake.

RTP is protected with ``sfu.rtc_adapter.SrtpProtector`` (libsrtp on its own buffer), whose
pylibsrtp internals stay in that module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiortc import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
    RTCSctpCapabilities,
    RTCSctpTransport,
)
from pylibsrtp import Session

from sfu.rtc_adapter import SCTP_MAX_MESSAGE_SIZE, SrtpProtector

logger = logging.getLogger(__name__)

_certificate: RTCCertificate | None = None


def certificate() -> RTCCertificate:
    """One DTLS certificate for every peer connection of the process (browsers reuse theirs
    too); generating a key per connection would cost more than the handshake."""
    global _certificate
    if _certificate is None:
        _certificate = RTCCertificate.generateCertificate()
    return _certificate


def local_fingerprints() -> tuple[tuple[str, str], ...]:
    return tuple((f.algorithm, f.value) for f in certificate().getFingerprints())


class _IceShim:
    """What ``RTCDtlsTransport`` needs of an ICE transport, over our ICE agent's path."""

    def __init__(self, send: Callable[[bytes], None], controlling: bool) -> None:
        self.role = "controlling" if controlling else "controlled"
        self._send_datagram = send
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def _recv(self) -> bytes:
        return await self.queue.get()

    async def _send(self, data: bytes) -> None:
        self._send_datagram(data)


class DtlsLink:
    """DTLS (and SCTP, when the description has data channels) for one peer connection.

    :param send: sends one datagram on the selected ICE path.
    """

    def __init__(self, send: Callable[[bytes], None], *, controlling: bool) -> None:
        self._shim = _IceShim(send, controlling)
        shim: Any = self._shim  # duck-typed RTCIceTransport
        self._dtls = RTCDtlsTransport(shim, [certificate()])
        self._sctp: RTCSctpTransport | None = None
        self.rx: Session | None = None
        self.tx: Session | None = None
        self.protector: SrtpProtector | None = None

    def feed(self, datagram: bytes) -> None:
        """A DTLS record from the network (RFC 7983: first byte 20-63)."""
        self._shim.queue.put_nowait(datagram)

    async def connect(self, *, client: bool, fingerprints: tuple[tuple[str, str], ...]) -> bool:
        """Run the handshake as DTLS client or server; True once the SRTP keys are set."""
        self._dtls._set_role("client" if client else "server")
        remote = RTCDtlsParameters(
            fingerprints=[RTCDtlsFingerprint(algorithm=a, value=v) for a, v in fingerprints]
        )
        await self._dtls.start(remote)
        if self._dtls.state != "connected":
            return False
        self.rx, self.tx = self._dtls._rx_srtp, self._dtls._tx_srtp
        if self.tx is None or self.rx is None:
            return False
        self.protector = SrtpProtector(self.tx)
        return True

    async def start_sctp(self, port: int) -> None:
        """Associate SCTP over DTLS (RFC 8841) so the server's data channels open; their
        messages are not read."""
        self._sctp = RTCSctpTransport(self._dtls)
        await self._sctp.start(RTCSctpCapabilities(maxMessageSize=SCTP_MAX_MESSAGE_SIZE), port)

    async def close(self) -> None:
        if self._sctp is not None:
            await self._sctp.stop()
        await self._dtls.stop()
