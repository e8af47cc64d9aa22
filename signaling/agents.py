"""Agent workers and their jobs (LiveKit ``pkg/agent``, ``service/agentservice.go``).

Workers (livekit-agents processes) connect to ``/agent`` (``signaling/agent_socket.py``) and
register under an agent name. Rooms dispatch jobs to them:

- when a room starts, one JT_ROOM job per dispatch the room was created with (a ``CreateRoom``
  request's or the first joiner's token ``roomConfig.agents``); none configured means one
  dispatch to unnamed workers, LiveKit's automatic dispatch;
- when ``CreateDispatch`` adds a dispatch to a live room;
- JT_PUBLISHER on a participant's first publication, JT_PARTICIPANT on each non-agent join, for
  workers registered for those types.

A job goes to an available worker of that name picked at random weighted by spare load
(``1 - load``), never one at or above ``agents.target_load`` (0.7) alone: LiveKit dispatches
only when some worker is under it. The worker is offered the job (``availability``) and has
:data:`ASSIGN_TIMEOUT_S` to accept; a worker that declines (``available=false``) or goes away
passes it to the next, one that answers ``terminate`` ends it. Accepted, it gets the job with a
token of its own key for the agent participant (``assignment``). When that participant leaves,
or the room closes, the worker is told (``termination``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from livekit.protocol import agent, agent_dispatch, models

from protocol.ids import AGENT_JOB_PREFIX, new_id
from protocol.token import VideoGrant, issue_token
from sfu.events import EventKind, RoomEvent
from sfu.participant_api import is_dependent
from sfu.rooms import RoomManager

logger = logging.getLogger(__name__)

#: How long a worker has to accept an offered job (LiveKit's assignment timeout; the client
#: waits 7.5 s for the assignment after accepting).
ASSIGN_TIMEOUT_S = 5.0
#: LiveKit's ``agents.target_load``: a job is dispatched only when a worker is under it.
TARGET_LOAD = 0.7
#: Job tokens live an hour (LiveKit ``BuildAgentToken``).
JOB_TOKEN_TTL_S = 3600
#: The participant attribute naming the agent (LiveKit ``AgentNameAttributeKey``).
AGENT_NAME_ATTRIBUTE = "lk.agent_name"

Send = Callable[[agent.ServerMessage], Awaitable[None]]


@dataclass(eq=False)
class Worker:
    """One registered worker connection."""

    id: str
    agent_name: str
    job_type: agent.JobType
    namespace: str
    api_key: str
    api_secret: str
    permissions: models.ParticipantPermission
    send: Send
    status: agent.WorkerStatus = agent.WorkerStatus.WS_AVAILABLE
    load: float = 0.0
    jobs: dict[str, agent.Job] = field(default_factory=dict)
    offers: dict[str, asyncio.Future[agent.AvailabilityResponse]] = field(default_factory=dict)
    """Job id -> the answer to an ``availability`` offer not yet answered."""
    closed: bool = False

    @property
    def spare(self) -> float:
        if self.closed or self.status != agent.WorkerStatus.WS_AVAILABLE:
            return 0.0
        return max(0.0, 1.0 - self.load)


class WorkerRejected(Exception):
    """A worker declined or could not take a job; the next one may."""


class _Ended(Exception):
    """The worker answered an offer with ``terminate``: the job is not to run."""


class ClusterJobs(Protocol):
    """Jobs given to the workers of other nodes (``signaling/agent_cluster.py``)."""

    async def offer(self, job: agent.Job) -> tuple[str, agent.Job] | None: ...

    async def terminate(self, node_id: str, job_id: str) -> None: ...


class AgentService:
    """Registered workers, and the jobs rooms give them.

    :param rooms: the rooms of this node (dispatches live on them).
    :param url: where job participants connect; empty leaves it to the worker's own setting,
        as LiveKit leaves ``assignment.url`` empty.
    """

    def __init__(self, rooms: RoomManager, rng: random.Random | None = None) -> None:
        self.rooms = rooms
        self.workers: dict[str, Worker] = {}
        self._jobs_by_identity: dict[tuple[str, str], tuple[Worker, agent.Job]] = {}
        """(room name, agent participant identity) -> its worker and job."""
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[object]] = set()
        self.cluster: ClusterJobs | None = None
        """The other nodes' workers, when there is a cluster."""
        self._remote_jobs: dict[tuple[str, str], tuple[str, str]] = {}
        """(room name, agent identity) -> (node, job id) of a job another node's worker runs."""

    # --- workers -----------------------------------------------------------------------

    def add(self, worker: Worker) -> None:
        self.workers[worker.id] = worker
        logger.info(
            "agent worker %s registered (name %r, %s)",
            worker.id,
            worker.agent_name,
            agent.JobType.Name(worker.job_type),
        )

    def remove(self, worker: Worker) -> None:
        """The worker's connection closed: offers to it fail over; its jobs run on, as in
        LiveKit, but can no longer be terminated through it."""
        worker.closed = True
        self.workers.pop(worker.id, None)
        for offer in worker.offers.values():
            if not offer.done():
                offer.set_exception(WorkerRejected("worker closed"))
        for key in [k for k, (w, _) in self._jobs_by_identity.items() if w is worker]:
            del self._jobs_by_identity[key]
        logger.info("agent worker %s gone with %d job(s)", worker.id, len(worker.jobs))

    def on_availability(self, worker: Worker, answer: agent.AvailabilityResponse) -> None:
        offer = worker.offers.get(answer.job_id)
        if offer is None or offer.done():
            logger.debug("availability for unknown job %s from %s", answer.job_id, worker.id)
            return
        offer.set_result(answer)

    def on_job_update(self, worker: Worker, update: agent.UpdateJobStatus) -> None:
        job = worker.jobs.get(update.job_id)
        if job is None:
            return
        now = time.time_ns()
        job.state.status = update.status
        job.state.error = update.error
        job.state.updated_at = now
        if update.status in (agent.JobStatus.JS_SUCCESS, agent.JobStatus.JS_FAILED):
            job.state.ended_at = now
            del worker.jobs[update.job_id]

    # --- room events -------------------------------------------------------------------

    def on_room_event(self, event: RoomEvent) -> None:
        """Rooms start jobs; an agent that leaves has its job terminated."""
        match event.kind:
            case EventKind.ROOM_STARTED:
                self._room_started(event.room.name)
            case EventKind.PARTICIPANT_JOINED if event.participant is not None:
                if not _dependent(event.participant):
                    kind = agent.JobType.JT_PARTICIPANT
                    self._launch_for(event.room.name, kind, event.participant)
            case EventKind.TRACK_PUBLISHED if event.participant is not None:
                if len(event.participant.tracks) == 1 and not _dependent(event.participant):
                    kind = agent.JobType.JT_PUBLISHER
                    self._launch_for(event.room.name, kind, event.participant)
            case EventKind.PARTICIPANT_LEFT | EventKind.PARTICIPANT_CONNECTION_ABORTED:
                if event.participant is not None:
                    self._agent_left(event.room.name, event.participant.identity)

    def _room_started(self, room_name: str) -> None:
        """A room job per dispatch the room was made with; none configured means one for the
        unnamed workers (LiveKit's automatic dispatch)."""
        room = self.rooms.get(room_name)
        if room is None:
            return
        if not room.agent_dispatches:
            room.add_agent_dispatch("")
        for dispatch in list(room.agent_dispatches.values()):
            self._spawn(self.dispatch(dispatch, agent.JobType.JT_ROOM))

    def dispatch_now(self, dispatch: agent_dispatch.AgentDispatch) -> None:
        """A dispatch added to a live room (``CreateDispatch``): its room job now."""
        self._spawn(self.dispatch(dispatch, agent.JobType.JT_ROOM))

    def _launch_for(
        self, room_name: str, job_type: agent.JobType, participant: models.ParticipantInfo
    ) -> None:
        room = self.rooms.get(room_name)
        if room is None or not any(w.job_type == job_type for w in self.workers.values()):
            return
        for dispatch in list(room.agent_dispatches.values()):
            self._spawn(self.dispatch(dispatch, job_type, participant))

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- jobs --------------------------------------------------------------------------

    async def dispatch(
        self,
        dispatch: agent_dispatch.AgentDispatch,
        job_type: agent.JobType,
        participant: models.ParticipantInfo | None = None,
    ) -> agent.Job | None:
        """Offer a job for ``dispatch`` to its workers, here and then on the other nodes,
        until one takes it; the job, or None."""
        room = self.rooms.get(dispatch.room)
        if room is None:
            return None
        job = agent.Job(
            id=new_id(AGENT_JOB_PREFIX),
            dispatch_id=dispatch.id,
            type=job_type,
            room=room.to_proto(),
            agent_name=dispatch.agent_name,
            metadata=dispatch.metadata,
        )
        job.attributes.update(dispatch.attributes)
        if participant is not None:
            job.participant.CopyFrom(participant)
        taken = await self.offer_here(job)
        if taken is None and self.cluster is not None:
            placed = await self.cluster.offer(job)
            if placed is not None:
                node_id, taken = placed
                identity = taken.state.participant_identity
                self._remote_jobs[room.name, identity] = (node_id, taken.id)
        if taken is None:
            logger.info("room %s: no agent worker for %r took a job", room.name, job.agent_name)
            return None
        dispatch.state.jobs.append(taken)
        return taken

    async def offer_here(self, job: agent.Job) -> agent.Job | None:
        """Offer ``job`` to this node's workers until one takes it (a room of another node
        may ask, ``signaling/agent_cluster.py``); the job as taken, or None."""
        tried: set[str] = set()
        while True:
            worker = self._pick(job.agent_name, job.type, tried)
            if worker is None:
                return None
            tried.add(worker.id)
            try:
                return await self._offer(worker, job)
            except WorkerRejected as exc:
                logger.info("job %s: worker %s passed (%s)", job.id, worker.id, exc)
            except TimeoutError:
                logger.warning("job %s: worker %s did not answer in time", job.id, worker.id)
                return None
            except _Ended:
                return None

    def _pick(
        self, agent_name: str, job_type: agent.JobType, tried: Iterable[str]
    ) -> Worker | None:
        """A worker of that name and job type, weighted by spare load, when one is under the
        target load (LiveKit's node affinity, then ``selectWorkerWeightedByLoad``)."""
        candidates = [
            w
            for w in self.workers.values()
            if w.agent_name == agent_name and w.job_type == job_type and w.id not in tried
        ]
        if not any(w.spare > 1.0 - TARGET_LOAD for w in candidates):
            return None
        weighted = [w for w in candidates if w.spare > 0]
        total = sum(w.spare for w in weighted)
        point = self._rng.random() * total
        for worker in weighted:
            point -= worker.spare
            if point <= 0:
                return worker
        return weighted[-1] if weighted else None

    async def _offer(self, worker: Worker, job: agent.Job) -> agent.Job:
        now = time.time_ns()
        job.state.CopyFrom(
            agent.JobState(
                status=agent.JobStatus.JS_RUNNING,
                worker_id=worker.id,
                started_at=now,
                updated_at=now,
            )
        )
        answer_future = asyncio.get_running_loop().create_future()
        worker.offers[job.id] = answer_future
        try:
            await worker.send(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job)))
            answer = await asyncio.wait_for(answer_future, ASSIGN_TIMEOUT_S)
        finally:
            worker.offers.pop(job.id, None)
        if answer.terminate:
            logger.info("job %s ended by worker %s", job.id, worker.id)
            raise _Ended
        if not answer.available:
            raise WorkerRejected("not available")
        job.state.participant_identity = answer.participant_identity
        token = self._job_token(worker, job, answer)
        await worker.send(agent.ServerMessage(assignment=agent.JobAssignment(job=job, token=token)))
        worker.jobs[job.id] = job
        self._jobs_by_identity[job.room.name, answer.participant_identity] = (worker, job)
        logger.info(
            "job %s (%s) in room %s assigned to worker %s as %r",
            job.id,
            agent.JobType.Name(job.type),
            job.room.name,
            worker.id,
            answer.participant_identity,
        )
        return job

    def _job_token(self, worker: Worker, job: agent.Job, answer: agent.AvailabilityResponse) -> str:
        """The agent participant's token, signed with the worker's own key (LiveKit
        ``BuildAgentToken``): room join, the agent flag and the worker's permissions."""
        allowed = worker.permissions
        grant = VideoGrant(
            room_join=True,
            room=job.room.name,
            agent=True,
            can_publish=allowed.can_publish,
            can_subscribe=allowed.can_subscribe,
            can_publish_data=allowed.can_publish_data,
            can_update_own_metadata=allowed.can_update_metadata,
            can_subscribe_metrics=allowed.can_subscribe_metrics,
            hidden=allowed.hidden,
        )
        attributes = dict(answer.participant_attributes)
        attributes[AGENT_NAME_ATTRIBUTE] = worker.agent_name
        return issue_token(
            api_key=worker.api_key,
            secret=worker.api_secret,
            identity=answer.participant_identity,
            video=grant,
            ttl_s=JOB_TOKEN_TTL_S,
            name=answer.participant_name,
            metadata=answer.participant_metadata,
            attributes=attributes,
            kind="agent",
        )

    def _agent_left(self, room_name: str, identity: str) -> None:
        """LiveKit terminates the job of an agent that leaves its room (room close included)
        and records it failed: "agent worker left the room"."""
        remote = self._remote_jobs.pop((room_name, identity), None)
        if remote is not None and self.cluster is not None:
            node_id, job_id = remote
            logger.info(
                "job %s: agent %r left room %s, node %s told", job_id, identity, room_name, node_id
            )
            self._spawn(self.cluster.terminate(node_id, job_id))
            return
        found = self._jobs_by_identity.pop((room_name, identity), None)
        if found is None:
            return
        self.terminate(*found)

    def terminate_job(self, job_id: str) -> bool:
        """End a job of this node's workers that a room of another node asked to end."""
        for worker in list(self.workers.values()):
            job = worker.jobs.get(job_id)
            if job is not None:
                self._jobs_by_identity.pop((job.room.name, job.state.participant_identity), None)
                self.terminate(worker, job)
                return True
        return False

    def terminate(self, worker: Worker, job: agent.Job) -> None:
        if worker.jobs.pop(job.id, None) is None or worker.closed:
            return
        job.state.status = agent.JobStatus.JS_FAILED
        job.state.error = "agent worker left the room"
        job.state.ended_at = time.time_ns()
        termination = agent.ServerMessage(termination=agent.JobTermination(job_id=job.id))
        logger.info(
            "job %s: agent left room %s, worker told (%s)", job.id, job.room.name, worker.id
        )
        self._spawn(_send_quietly(worker, termination))


def _dependent(participant: models.ParticipantInfo) -> bool:
    """Agents and egress neither start jobs nor keep a room open (LiveKit ``IsDependent``)."""
    permission = participant.permission
    return is_dependent(participant.kind, permission.agent, permission.recorder)


async def _send_quietly(worker: Worker, message: agent.ServerMessage) -> None:
    """A message the worker may no longer be there for."""
    try:
        await worker.send(message)
    except (ConnectionError, RuntimeError) as exc:
        logger.debug("worker %s: %s not sent: %s", worker.id, message.WhichOneof("message"), exc)
