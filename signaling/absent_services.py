"""Egress, Ingress and SIP: services a LiveKit deployment runs beside the server (connected
through Redis). This server has none of them, so every call gets the error LiveKit's server
answers when they are not connected ("egress not connected (redis required)" and the like,
``service/errors.go``; its clients see Twirp code "unknown"), instead of a 404 that reads
like a wrong URL.
"""

from __future__ import annotations

from google.protobuf.message import Message
from livekit.protocol import egress, ingress, sip

from protocol.token import Claims
from signaling.twirp import Handler, TwirpError, TwirpService

#: (module, service name, what LiveKit calls it in its error).
_ABSENT = ((egress, "Egress", "egress"), (ingress, "Ingress", "ingress"), (sip, "SIP", "sip"))


def _not_connected(what: str) -> Handler:
    async def refuse(claims: Claims, request: Message) -> Message:
        raise TwirpError("unknown", f"{what} not connected (redis required)")

    return refuse


def absent_services() -> list[TwirpService]:
    services = []
    for module, name, what in _ABSENT:
        descriptor = module.DESCRIPTOR.services_by_name[name]
        handler = _not_connected(what)
        handlers = {method.name: handler for method in descriptor.methods}
        services.append(TwirpService(descriptor, handlers))
    return services
