"""Agent jobs across nodes: a room's job may go to a worker connected to another node.

LiveKit's agent service reaches every node's workers through psrpc. Here the node hosting the
room offers the job to its own workers first (``AgentService.offer_here``) and then asks the
other live nodes in turn, over the router's node-to-node calls, to offer it to theirs. The
node whose worker takes the job answers it as taken; the room's node records where it runs,
and when the agent leaves the room it asks that node to send the worker ``termination``.
The workers connect with their own keys and the job token they get is signed with them, so
nothing about the job depends on which node they are on.
"""

from __future__ import annotations

import logging
import random

from google.protobuf.message import DecodeError
from livekit.protocol import agent

from routing.router import Router, RoutingError, RpcRequest, RpcResponse
from routing.store import STORE_ERRORS
from signaling.agents import ASSIGN_TIMEOUT_S, AgentService

logger = logging.getLogger(__name__)

#: The router service name of these calls.
SERVICE = "agents"
#: A node tries its workers one by one, each with the assignment timeout.
OFFER_TIMEOUT_S = 3 * ASSIGN_TIMEOUT_S + 2.0
_NOT_TAKEN = RpcResponse(404, b"")
_CALL_ERRORS: tuple[type[Exception], ...] = (RoutingError, *STORE_ERRORS)


class AgentCluster:
    """``ClusterJobs`` over the router, and the serving side of the same calls."""

    def __init__(self, router: Router, agents: AgentService) -> None:
        self._router = router
        self._agents = agents

    async def offer(self, job: agent.Job) -> tuple[str, agent.Job] | None:
        """Ask the other nodes, in random order, until one's worker takes ``job``."""
        try:
            peers = await self._router.live_peers()
        except STORE_ERRORS as exc:
            logger.warning("job %s: other nodes unknown: %s", job.id, exc)
            return None
        random.shuffle(peers)
        for node_id in peers:
            response = await self._call(node_id, "OfferJob", job.SerializeToString())
            if response.status == 200:
                taken = agent.Job()
                taken.ParseFromString(response.body)
                logger.info("job %s taken by a worker of node %s", job.id, node_id)
                return node_id, taken
        return None

    async def terminate(self, node_id: str, job_id: str) -> None:
        body = agent.JobTermination(job_id=job_id).SerializeToString()
        response = await self._call(node_id, "TerminateJob", body)
        if response.status != 200:
            logger.info("job %s: node %s no longer has it", job_id, node_id)

    async def _call(self, node_id: str, method: str, body: bytes) -> RpcResponse:
        request = RpcRequest(
            reply_to=self._router.reply_channel(),
            service=SERVICE,
            method=method,
            authorization="",
            body=body,
        )
        try:
            return await self._router.call(node_id, request, OFFER_TIMEOUT_S)
        except _CALL_ERRORS as exc:
            logger.warning("agents: node %s did not answer %s: %s", node_id, method, exc)
            return _NOT_TAKEN

    async def serve(self, request: RpcRequest) -> RpcResponse:
        """Another node's call: offer its job to the workers here, or end one of their jobs."""
        try:
            return await self._serve(request)
        except DecodeError as exc:
            logger.warning("agents: unreadable %s call: %s", request.method, exc)
            return RpcResponse(400, b'{"code":"malformed","msg":"unreadable agents call"}')

    async def _serve(self, request: RpcRequest) -> RpcResponse:
        match request.method:
            case "OfferJob":
                job = agent.Job()
                job.ParseFromString(request.body)
                taken = await self._agents.offer_here(job)
                return _NOT_TAKEN if taken is None else RpcResponse(200, taken.SerializeToString())
            case "TerminateJob":
                termination = agent.JobTermination()
                termination.ParseFromString(request.body)
                ended = self._agents.terminate_job(termination.job_id)
                return RpcResponse(200, b"") if ended else _NOT_TAKEN
            case _:
                return RpcResponse(404, b'{"code":"bad_route","msg":"unknown agents call"}')
