"""This node's membership of the cluster, started and stopped with the application: the
router (registration, liveness, API calls from other nodes), the relay host (sessions other
nodes hand over) and the store sync. Draining lives here too (LiveKit ``server.go Stop``)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from livekit.protocol import models

from routing.store import STORE_ERRORS
from server.cluster import Backends, StoreSync
from signaling.http import FORWARDER, SignalingContext, run_relayed_session
from signaling.relay import HostRelayServer

logger = logging.getLogger(__name__)

#: How often a draining node looks whether its participants have left (LiveKit: 5 s).
DRAIN_POLL_S = 0.5
STOP_STEP_S = 3.0


class Membership:
    """:param siblings: node ids of this supervisor's other workers (draining together)."""

    def __init__(
        self,
        ctx: SignalingContext,
        backends: Backends,
        sync: StoreSync,
        siblings: frozenset[str] = frozenset(),
    ) -> None:
        self.ctx = ctx
        self.siblings = siblings
        self.backends = backends
        self.router = ctx.router
        self.relay_host = HostRelayServer(
            backends.bus,
            ctx.router.node_id,
            lambda headers, query, socket: run_relayed_session(ctx, headers, query, socket),
        )
        self.sync = sync
        ctx.rooms.events.subscribe(sync)

    async def start(self, app: web.Application) -> None:
        try:
            await self.relay_host.start()
            await self.router.start(app[FORWARDER].serve)
        except STORE_ERRORS as exc:
            # One line for the operator (the CLI prints OSErrors), not a traceback.
            raise OSError(f"cannot reach the cluster's Redis: {exc}") from exc
        self.sync.start()

    async def stop(self, app: web.Application) -> None:
        await self.relay_host.stop()
        await self.relay_host.wait_closed()
        # Each step is bounded: with Redis gone, leaving the cluster must not hang the exit.
        for step in (self.sync.stop, self.router.stop, self.backends.close):
            try:
                async with asyncio.timeout(STOP_STEP_S):
                    await step()
            except TimeoutError:
                logger.warning("leaving the cluster: %s timed out", step.__qualname__)

    def participant_count(self) -> int:
        return sum(len(room.participants) for room in self.ctx.rooms.rooms.values())

    async def drain(self) -> None:
        """SHUTTING_DOWN; then, when another node serves, hand the rooms over (everyone is
        asked to rejoin, and their rejoins are placed there); else wait for every participant
        to leave, forever, as LiveKit does."""
        try:
            await self.router.drain()
            if await self.router.others_serving(excluding=self.siblings):
                await self._hand_over()
        except STORE_ERRORS as exc:
            logger.warning("could not announce draining: %s", exc)
        logger.info("draining: waiting for %d participants to leave", self.participant_count())
        while self.participant_count():  # noqa: ASYNC110 - rooms have no "emptied" event
            await asyncio.sleep(DRAIN_POLL_S)
        logger.info("drained: no participants left")

    async def _hand_over(self) -> None:
        """Each room leaves the store first, so a rejoin arriving here or anywhere is placed
        on a serving node, then its participants get a leave with RECONNECT."""
        rooms = self.ctx.rooms
        for room in list(rooms.rooms.values()):
            await self.router.store.delete_room(room.name, self.router.node_id)
            logger.info("draining: handing room %s over to the cluster", room.name)
            await rooms.close_room(room, models.DisconnectReason.SERVER_SHUTDOWN, reconnect=True)


CLUSTER = web.AppKey("cluster_membership", Membership)


def install_cluster(
    app: web.Application,
    ctx: SignalingContext,
    backends: Backends,
    sync: StoreSync,
    siblings: frozenset[str] = frozenset(),
) -> Membership:
    membership = Membership(ctx, backends, sync, siblings)
    app.on_startup.append(membership.start)
    # After the rooms are closed (on_shutdown), before the loop goes.
    app.on_cleanup.append(membership.stop)
    return membership
