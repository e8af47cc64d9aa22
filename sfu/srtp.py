"""libsrtp called directly, on preallocated buffers, for the media path.

pylibsrtp's public ``protect``/``unprotect`` allocate on every call (and raise for every
refused packet); performance.md measured direct calls at about twice the throughput. The
pylibsrtp internals used here (pinned in pyproject, checked by ``tests/unit/test_rtc_adapter.py``):
``Session._srtp``, ``._cdata``, ``._buffer``, ``Policy._policy`` and ``pylibsrtp._binding``'s
``ffi`` and ``lib``. The C fan-out (``sfu/_fastsend.c``) is given the address of
``srtp_protect`` (:func:`_configure_fanout`) and the contexts of these sessions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pylibsrtp
from pylibsrtp import SRTP_MAX_TRAILER_LEN, Session
from pylibsrtp._binding import ffi as srtp_ffi
from pylibsrtp._binding import lib as srtp_lib

from sfu.fanout import configure_srtp

logger = logging.getLogger(__name__)


#: The libsrtp 2 prototype the C fan-out calls; any other (libsrtp 3 changed it) keeps the
#: Python protect path.
_SRTP_PROTECT_TYPE = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"


def _configure_fanout() -> bool:
    function = srtp_ffi.addressof(srtp_lib, "srtp_protect")
    if srtp_ffi.typeof(function).cname != _SRTP_PROTECT_TYPE:
        logger.warning("libsrtp's srtp_protect is not the expected one: fan-out stays in Python")
        return False
    configure_srtp(int(srtp_ffi.cast("uintptr_t", function)))
    return True


FANOUT_CONFIGURED = _configure_fanout()


class SrtpProtector:
    """SRTP protection on libsrtp's preallocated buffer (performance.md: calling
    ``srtp_protect`` directly roughly doubles throughput against the allocating public API).

    :param session: a transmit session; its 1500-byte C buffer is reused for every packet.
    """

    __slots__ = ("_buffer", "_context", "_data", "_length", "_limit", "_session")

    def __init__(self, session: Session) -> None:
        # The raw pointers below live only as long as the session: keep it (its finaliser
        # frees the libsrtp context; a dangling one would crash the process).
        self._session = session
        self._context = session._srtp[0]
        self._data = session._cdata
        self._buffer = session._buffer
        self._limit = len(session._cdata) - SRTP_MAX_TRAILER_LEN
        self._length = srtp_ffi.new("int *")

    @property
    def context_address(self) -> int:
        """The libsrtp context, for the C fan-out (valid while ``session`` is alive)."""
        return int(srtp_ffi.cast("uintptr_t", self._context))

    @property
    def session(self) -> Session:
        return self._session

    def protect(self, packet: bytes | memoryview) -> bytes | None:
        """The protected packet, or None when libsrtp refuses it (or it is too long)."""
        size = len(packet)
        if size > self._limit:
            return None
        self._buffer[0:size] = packet
        self._length[0] = size
        if srtp_lib.srtp_protect(self._context, self._data, self._length) != 0:
            return None
        return bytes(self._buffer[0 : self._length[0]])


class SrtpVerifier:
    """SRTP and SRTCP verification on libsrtp's preallocated buffer: pylibsrtp's public
    ``unprotect`` allocates on every call and raises for every refused packet.

    :param session: a receive session; its C buffer is reused for every packet.
    """

    __slots__ = ("_buffer", "_context", "_data", "_length", "_limit", "_session")

    def __init__(self, session: Session) -> None:
        self._session = session  # owns the context and the buffer below
        self._context = session._srtp[0]
        self._data = session._cdata
        self._buffer = session._buffer
        self._limit = len(session._cdata)
        self._length = srtp_ffi.new("int *")

    def unprotect(self, packet: bytes) -> bytes | None:
        """The RTP packet, or None when libsrtp refuses it (replayed, forged, too long)."""
        return self._verify(srtp_lib.srtp_unprotect, packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        """The compound RTCP packet, or None when libsrtp refuses it."""
        return self._verify(srtp_lib.srtp_unprotect_rtcp, packet)

    def _verify(self, function: Callable[[Any, Any, Any], int], packet: bytes) -> bytes | None:
        size = len(packet)
        if size > self._limit:
            return None
        self._buffer[0:size] = packet
        self._length[0] = size
        if function(self._context, self._data, self._length) != 0:
            return None
        return bytes(self._buffer[0 : self._length[0]])


def transmit_context(policy: pylibsrtp.Policy) -> tuple[int, object]:
    """A new libsrtp session for ``policy`` without pylibsrtp's 1,500-byte buffer, as
    (context address, owner that frees it when collected)."""
    holder = srtp_ffi.new("srtp_t *")
    if srtp_lib.srtp_create(holder, policy._policy) != 0:
        raise pylibsrtp.Error("srtp_create failed")
    owner = srtp_ffi.gc(holder, lambda created: srtp_lib.srtp_dealloc(created[0]))
    return int(srtp_ffi.cast("uintptr_t", holder[0])), owner
