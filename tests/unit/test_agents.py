"""Agent dispatch without a network (signaling/agents.py): which worker gets a job, what it is
sent, failing over when one declines, and termination when the agent leaves."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import cast

from livekit.protocol import agent, models

from protocol.token import verify_token
from routing.router import Router, RpcRequest, RpcResponse
from sfu.events import EventKind, RoomEvent
from sfu.room import Room, RoomSettings
from sfu.rooms import RoomManager
from signaling.agent_cluster import SERVICE, AgentCluster
from signaling.agents import AgentService, Worker

KEY, SECRET = "agentkey", "agent-secret-that-is-at-least-32-characters"


class FakeWorker:
    """Records what the server sends and answers offers as told."""

    def __init__(self, service: AgentService, name: str, load: float, accept: bool = True):
        self.sent: list[agent.ServerMessage] = []
        self.accept = accept
        self.service = service
        self.worker = Worker(
            id=f"AW_{name}",
            agent_name="",
            job_type=agent.JobType.JT_ROOM,
            namespace="",
            api_key=KEY,
            api_secret=SECRET,
            permissions=models.ParticipantPermission(can_publish=True, can_subscribe=True),
            send=self.send,
            load=load,
        )
        service.add(self.worker)

    async def send(self, message: agent.ServerMessage) -> None:
        self.sent.append(message)
        if message.WhichOneof("message") == "availability":
            job = message.availability.job
            answer = agent.AvailabilityResponse(
                job_id=job.id,
                available=self.accept,
                participant_identity=f"agent-{job.id}",
                participant_name="Echo",
            )
            asyncio.get_running_loop().call_soon(self.service.on_availability, self.worker, answer)

    def of(self, kind: str) -> list[agent.ServerMessage]:
        return [m for m in self.sent if m.WhichOneof("message") == kind]


def _service() -> tuple[AgentService, RoomManager]:
    rooms = RoomManager(RoomSettings(), auto_create=True)
    return AgentService(rooms, rng=random.Random(1)), rooms


async def test_a_room_gets_one_job_and_its_agent_a_token_of_the_workers_key() -> None:
    service, rooms = _service()
    busy = FakeWorker(service, "busy", load=0.95)
    idle = FakeWorker(service, "idle", load=0.1)
    room = rooms.create("lobby", rooms.settings)
    dispatch = room.add_agent_dispatch("")
    job = await service.dispatch(dispatch, agent.JobType.JT_ROOM)
    assert job is not None and job.room.name == "lobby"
    assert not busy.sent, "a worker at 0.95 load is never offered a job"
    (assignment,) = idle.of("assignment")
    claims = verify_token(assignment.assignment.token, {KEY: SECRET})
    assert claims.identity == f"agent-{job.id}" and claims.name == "Echo"
    assert claims.kind == "agent"
    assert claims.video.agent and claims.video.room_join and claims.video.room == "lobby"
    assert claims.attributes["lk.agent_name"] == ""
    assert assignment.assignment.job.state.status == agent.JobStatus.JS_RUNNING
    assert dispatch.state.jobs[0].id == job.id


async def test_no_worker_under_the_target_load_no_job() -> None:
    service, rooms = _service()
    FakeWorker(service, "hot", load=0.8)
    room = rooms.create("hot-room", rooms.settings)
    assert await service.dispatch(room.add_agent_dispatch(""), agent.JobType.JT_ROOM) is None


async def test_a_declined_job_goes_to_the_next_worker() -> None:
    service, rooms = _service()
    declining = FakeWorker(service, "declining", load=0.0, accept=False)
    taking = FakeWorker(service, "taking", load=0.5)
    room = rooms.create("fallback", rooms.settings)
    for _ in range(3):
        job = await service.dispatch(room.add_agent_dispatch(""), agent.JobType.JT_ROOM)
        assert job is not None and job.state.worker_id == taking.worker.id
    assert declining.of("availability"), "the emptier worker is asked first, mostly"
    assert not declining.of("assignment")


async def test_an_agent_that_leaves_has_its_job_terminated() -> None:
    service, rooms = _service()
    worker = FakeWorker(service, "one", load=0.0)
    room = rooms.create("closing", rooms.settings)
    job = await service.dispatch(room.add_agent_dispatch(""), agent.JobType.JT_ROOM)
    assert job is not None
    left = models.ParticipantInfo(
        identity=f"agent-{job.id}", kind=models.ParticipantInfo.Kind.AGENT
    )
    service.on_room_event(RoomEvent(EventKind.PARTICIPANT_LEFT, room.to_proto(), left))
    await asyncio.sleep(0)
    (termination,) = worker.of("termination")
    assert termination.termination.job_id == job.id
    assert job.state.status == agent.JobStatus.JS_FAILED
    await service.close()


async def test_a_room_start_dispatches_automatically_only_without_named_agents() -> None:
    service, rooms = _service()
    worker = FakeWorker(service, "auto", load=0.0)
    rooms.events.subscribe(service)
    rooms.create("plain", rooms.settings)

    def named_agent(room: Room) -> None:
        room.add_agent_dispatch("concierge")

    rooms.create("named", rooms.settings, configure=named_agent)
    for _ in range(20):
        await asyncio.sleep(0)
    jobs = [m.assignment.job.room.name for m in worker.of("assignment")]
    assert jobs == ["plain"], "a room with named agents gets no automatic one"
    await service.close()


class LoopbackCluster:
    """Another node's AgentCluster, reached directly instead of through the router."""

    def __init__(self, other: AgentCluster) -> None:
        self.other = other

    async def _call(self, method: str, body: bytes) -> RpcResponse:
        request = RpcRequest(
            reply_to="r", service=SERVICE, method=method, authorization="", body=body
        )
        return await self.other.serve(request)

    async def offer(self, job: agent.Job) -> tuple[str, agent.Job] | None:
        response = await self._call("OfferJob", job.SerializeToString())
        if response.status != 200:
            return None
        taken = agent.Job()
        taken.ParseFromString(response.body)
        return "ND_other", taken

    async def terminate(self, node_id: str, job_id: str) -> None:
        await self._call("TerminateJob", agent.JobTermination(job_id=job_id).SerializeToString())


async def test_a_job_goes_to_another_nodes_worker_and_is_ended_there() -> None:
    service, rooms = _service()
    remote_service, _ = _service()
    remote = FakeWorker(remote_service, "remote", load=0.1)
    remote_cluster = AgentCluster(cast(Router, None), remote_service)
    service.cluster = LoopbackCluster(remote_cluster)
    room = rooms.create("spread", rooms.settings)
    dispatch = room.add_agent_dispatch("")
    job = await service.dispatch(dispatch, agent.JobType.JT_ROOM)
    assert job is not None and job.state.worker_id == remote.worker.id
    assert [j.id for j in dispatch.state.jobs] == [job.id]
    left = models.ParticipantInfo(
        identity=f"agent-{job.id}", kind=models.ParticipantInfo.Kind.AGENT
    )
    service.on_room_event(RoomEvent(EventKind.PARTICIPANT_LEFT, room.to_proto(), left))
    await asyncio.sleep(0.01)
    (termination,) = remote.of("termination")
    assert termination.termination.job_id == job.id
    garbage = RpcRequest(
        reply_to="r", service=SERVICE, method="OfferJob", authorization="", body=b"\xff"
    )
    assert (await remote_cluster.serve(garbage)).status == 400
    unknown = dataclasses.replace(garbage, method="Nope", body=b"")
    assert (await remote_cluster.serve(unknown)).status == 404
    await service.close()
    await remote_service.close()
