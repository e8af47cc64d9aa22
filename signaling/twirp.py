"""Twirp over aiohttp: ``POST /twirp/<package>.<Service>/<Method>`` with protobuf or JSON bodies.

What LiveKit's generated Twirp servers do (twitchtv/twirp, ``livekit/protocol`` ``*.twirp.go``):
protobuf (``application/protobuf``) or protojson (``application/json``) requests, answered in
the same encoding; JSON answers use proto field names and emit default values
(``UseProtoNames``, ``EmitUnpopulated``) and JSON input accepts both naming styles; errors are
JSON ``{"code", "msg", "meta"}`` with the HTTP status of the code. Bad tokens are refused by
LiveKit's auth middleware before Twirp sees the request, as plain-text 401.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from config import Config
from protocol.token import Claims, TokenError, verify_token
from signaling.auth import HttpError

logger = logging.getLogger(__name__)

#: HTTP status per Twirp error code (twitchtv/twirp ``ServerHTTPStatusFromErrorCode``).
STATUS_BY_CODE: Mapping[str, int] = {
    "canceled": 408,
    "unknown": 500,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
}
_PROTOBUF = "application/protobuf"
_JSON = "application/json"
#: Bodies over this many bytes count as large; at most MAX_LARGE_BODIES are handled at once.
LARGE_BODY_BYTES = 1024 * 1024
MAX_LARGE_BODIES = 4
_LARGE_BODIES = asyncio.Semaphore(MAX_LARGE_BODIES)
#: Items of any one list in a request (room names, identities, track sids...).
MAX_LIST_ITEMS = 10_000
_CONTENT_TYPES = {_PROTOBUF: _PROTOBUF, "application/x-protobuf": _PROTOBUF, _JSON: _JSON}


class TwirpError(Exception):
    """A Twirp error answer: ``code`` is one of :data:`STATUS_BY_CODE`."""

    def __init__(self, code: str, msg: str, **meta: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.meta = meta

    @property
    def status(self) -> int:
        return STATUS_BY_CODE.get(self.code, 500)


def permission_denied() -> TwirpError:
    # LiveKit answers a missing grant with twirp.Unauthenticated "permissions denied"
    # (`service/auth.go twirpAuthError`).
    return TwirpError("unauthenticated", "permissions denied")


#: One RPC: the caller's verified claims and the decoded request -> the response message.
Handler = Callable[[Claims, Message], Awaitable[Message]]
#: Runs a call on the node hosting its room and returns the answer, or None to run it here:
#: (service, method, request, Authorization header).
Forwarder = Callable[[str, str, Message, str], Awaitable[Message | None]]


@dataclass
class TwirpService:
    """A protobuf service descriptor and a handler per method it implements; methods without
    one answer ``unimplemented``."""

    descriptor: ServiceDescriptor
    handlers: Mapping[str, Handler]

    @property
    def full_name(self) -> str:
        return self.descriptor.full_name


@dataclass
class TwirpServer:
    """Routes Twirp requests to services and counts outcomes for the metrics.

    :param stats: requests by ``(service, method, http_status, twirp_code)``; the code is ""
        on success. Exported as ``livekit_node_twirp_request_status``.
    """

    config: Config
    services: dict[str, TwirpService] = field(default_factory=dict)
    stats: Counter[tuple[str, str, int, str]] = field(default_factory=Counter)
    forward: Forwarder | None = None

    def add(self, service: TwirpService) -> None:
        self.services[service.full_name] = service

    async def handle(self, request: web.Request) -> web.Response:
        service_name = request.match_info.get("service", "")
        method_name = request.match_info.get("method", "")
        started = time.monotonic()
        code = ""
        try:
            response = await self._dispatch(request, service_name, method_name)
        except TwirpError as exc:
            code = exc.code
            response = _error_response(exc)
        except HttpError as exc:
            # A bad token: answered as a Twirp error too, so every SDK shows its message
            # (livekit-api showed an empty one for a plain-text body).
            code = "unauthenticated"
            response = _error_response(TwirpError(code, exc.reason))
        self.stats[(service_name, method_name, response.status, code)] += 1
        logger.debug(
            "twirp %s/%s -> %d %s (%.1f ms)",
            service_name,
            method_name,
            response.status,
            code,
            (time.monotonic() - started) * 1000,
        )
        return response

    async def _dispatch(self, request: web.Request, service_name: str, method: str) -> web.Response:
        service = self.services.get(service_name)
        descriptor = service.descriptor.methods_by_name.get(method) if service else None
        if service is None or descriptor is None:
            raise TwirpError("bad_route", f"no handler for path {request.path}")
        content_type = _CONTENT_TYPES.get(request.content_type)
        if request.method != "POST" or content_type is None:
            raise TwirpError(
                "bad_route",
                f"unexpected {request.method} {request.content_type!r}: "
                "POST with application/protobuf or application/json",
            )
        authorization = request.headers.get("Authorization", "")
        claims = self._authenticate(authorization)
        body = await _read_body(request)
        message = message_factory.GetMessageClass(descriptor.input_type)()
        _decode(message, body, content_type)
        result = None
        if self.forward is not None:
            result = await self.forward(service_name, method, message, authorization)
        if result is None:
            result = await self.run(service, method, claims, message)
        return _encode(result, content_type)

    async def run(
        self, service: TwirpService, method: str, claims: Claims, message: Message
    ) -> Message:
        """Run a handler here (for a local request, or one another node forwarded)."""
        handler = service.handlers.get(method)
        if handler is None:
            raise TwirpError("unimplemented", f"{service.full_name}/{method} is not implemented")
        try:
            return await handler(claims, message)
        except TwirpError:
            raise
        except Exception:
            logger.exception("twirp %s/%s failed", service.full_name, method)
            raise TwirpError("internal", "internal error") from None

    async def run_forwarded(
        self, service_name: str, method: str, authorization: str, body: bytes
    ) -> tuple[int, bytes]:
        """A call another node forwarded: (HTTP status, protobuf body or Twirp error JSON)."""
        try:
            service = self.services.get(service_name)
            descriptor = service.descriptor.methods_by_name.get(method) if service else None
            if service is None or descriptor is None:
                raise TwirpError("bad_route", f"no handler for {service_name}/{method}")
            try:
                claims = self._authenticate(authorization)
            except HttpError as exc:
                raise TwirpError("unauthenticated", exc.reason) from None
            message = message_factory.GetMessageClass(descriptor.input_type)()
            _decode(message, body, _PROTOBUF)
            result = await self.run(service, method, claims, message)
        except TwirpError as exc:
            return exc.status, json.dumps(_error_body(exc)).encode()
        return 200, result.SerializeToString()

    def _authenticate(self, header: str) -> Claims:
        if not header:
            raise permission_denied()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpError(401, "invalid authorization header: must start with Bearer")
        try:
            return verify_token(token.strip(), self.config.keys)
        except TokenError as exc:
            raise HttpError(401, f"invalid authorization token: {exc}") from exc


async def _read_body(request: web.Request) -> bytes:
    """The body; at most :data:`MAX_LARGE_BODIES` bodies over :data:`LARGE_BODY_BYTES` are
    read and decoded at once, so a burst of big requests cannot take the node's memory."""
    length = request.content_length
    if length is not None and length <= LARGE_BODY_BYTES:
        return await _read_limited(request)
    if _LARGE_BODIES.locked():
        raise TwirpError("resource_exhausted", "too many large requests at once; retry later")
    async with _LARGE_BODIES:
        return await _read_limited(request)


async def _read_limited(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise TwirpError(
            "resource_exhausted",
            f"request body exceeds limit.max_api_request_body_size ({exc.text})",
        ) from None


def _decode(message: Message, body: bytes, content_type: str) -> None:
    name = message.DESCRIPTOR.name
    try:
        if content_type == _PROTOBUF:
            message.ParseFromString(body)
            return
        document = json.loads(body or b"{}")
    except (DecodeError, ValueError) as exc:
        raise TwirpError("malformed", f"the request body is not a valid {name}: {exc}") from None
    if not isinstance(document, dict):
        raise TwirpError("malformed", f"the request body must be a JSON object ({name})")
    if _longest_list(document) > MAX_LIST_ITEMS:
        raise TwirpError(
            "invalid_argument", f"a list in the request has over {MAX_LIST_ITEMS} items"
        )
    try:
        # protojson accepts both the proto names and the lowerCamelCase JSON names.
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        first_line = str(exc).splitlines()[0][:200] if str(exc) else "bad field"
        raise TwirpError(
            "malformed", f"the request body is not a valid {name}: {first_line}"
        ) from None


def _longest_list(value: object, depth: int = 0) -> int:
    """The longest JSON array in ``value`` (protobuf's own parser walks them one by one in
    Python: two million names took 2.4 s of the event loop)."""
    if depth > 32:
        return 0
    if isinstance(value, list):
        return max([len(value), *(_longest_list(v, depth + 1) for v in value[:16])])
    if isinstance(value, dict):
        return max([0, *(_longest_list(v, depth + 1) for v in value.values())])
    return 0


def _encode(message: Message, content_type: str) -> web.Response:
    if content_type == _PROTOBUF:
        return web.Response(body=message.SerializeToString(), content_type=_PROTOBUF)
    text = json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=None,
    )
    return _json_response(text, 200)


def _json_response(text: str, status: int) -> web.Response:
    # Exactly "application/json", as Go's Twirp writes it: livekit-server-sdk (npm) compares
    # the header verbatim before reading an error's code and message.
    return web.Response(body=text.encode(), status=status, headers={"Content-Type": _JSON})


def _error_body(error: TwirpError) -> dict[str, object]:
    body: dict[str, object] = {"code": error.code, "msg": error.msg}
    if error.meta:
        body["meta"] = dict(error.meta)
    return body


def _error_response(error: TwirpError) -> web.Response:
    return _json_response(json.dumps(_error_body(error)), error.status)


def error_from_json(status: int, body: bytes) -> TwirpError:
    """The TwirpError another node answered with."""
    try:
        obj = json.loads(body)
        return TwirpError(str(obj["code"]), str(obj["msg"]), **dict(obj.get("meta") or {}))
    except (ValueError, KeyError, TypeError):
        return TwirpError("internal", f"remote node answered {status}")


def add_twirp_routes(app: web.Application, server: TwirpServer) -> None:
    # LiveKit normalises `//twirp/...`; the prefix variable soaks up extra slashes.
    app.router.add_route("*", "/twirp/{service}/{method}", server.handle)
    app.router.add_route("*", "/{slashes:/+}twirp/{service}/{method}", server.handle)
