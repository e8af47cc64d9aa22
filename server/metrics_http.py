"""``/metrics`` on its own port, as LiveKit serves Prometheus (``service/server.go``): the same
bind addresses as the main server, HTTP basic auth when ``prometheus.username`` and
``prometheus.password`` are set (``service/basic_auth.go``)."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest

from config import Config
from server.metrics import Lifecycle, MetricsSources, create_registry
from sfu.events import EventBus

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
#: LiveKit's realm (``basic_auth.go``).
REALM = 'Basic realm="Protected Area"'


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic`` header (RFC 7617), None if it is not
    one."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def _authorized(request: web.Request, username: str, password: str) -> bool:
    given = basic_credentials(request.headers.get(hdrs.AUTHORIZATION, ""))
    if given is None:
        return False
    # Both compared, in constant time, so a wrong user name takes as long as a wrong password.
    user_ok = hmac.compare_digest(given[0].encode(), username.encode())
    password_ok = hmac.compare_digest(given[1].encode(), password.encode())
    return user_ok and password_ok


def metrics_app(
    registry: CollectorRegistry, username: str = "", password: str = ""
) -> web.Application:
    """The application serving ``registry``; protected when both credentials are set."""

    async def scrape(request: web.Request) -> web.Response:
        if username and password and not _authorized(request, username, password):
            return web.Response(status=401, headers={hdrs.WWW_AUTHENTICATE: REALM})
        # Synchronous on purpose: the collector reads state the event loop owns, and a scrape
        # of a busy node is a few milliseconds of integer sums.
        body = generate_latest(registry)
        # The classic text format, which every Prometheus reads (as LiveKit's Go handler sends).
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_PLAIN_0_0_4})

    app = web.Application()
    app.router.add_get(METRICS_PATH, scrape)
    return app


def serve_metrics(
    config: Config, registry: CollectorRegistry, port: int
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context for the main application: the metrics site runs from its startup to
    its cleanup, after rooms have closed."""

    async def context(_: web.Application) -> AsyncIterator[None]:
        prometheus = config.prometheus
        app = metrics_app(registry, prometheus.username, prometheus.password)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        hosts = list(config.bind_addresses) or ["0.0.0.0"]
        try:
            for host in hosts:
                await web.TCPSite(runner, host, port).start()
            logger.info("metrics on %s port %d at %s", ", ".join(hosts), port, METRICS_PATH)
            yield
        finally:
            await runner.cleanup()

    return context


def install_metrics(
    app: web.Application,
    config: Config,
    *,
    node_id: str,
    events: EventBus,
    sources: MetricsSources,
    port_offset: int = 0,
) -> CollectorRegistry | None:
    """Wire Prometheus into ``app`` when a metrics port is configured; None when it is off.

    :param port_offset: added to the port, so each worker process of one machine (a node of
        its own) serves its metrics on its own port, as it does its media ports.
    """
    if not config.metrics_port:
        return None
    lifecycle = Lifecycle()
    events.subscribe(lifecycle)
    app.on_response_prepare.append(lifecycle.on_response_prepare)
    registry = create_registry(node_id, sources, lifecycle)
    app.cleanup_ctx.append(serve_metrics(config, registry, config.metrics_port + port_offset))
    return registry
