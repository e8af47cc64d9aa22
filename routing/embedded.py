"""An embedded broker speaking the Redis protocol on a Unix socket (issue 6).

``livekit-py-server --workers N`` without a ``redis`` section runs one :class:`EmbeddedRedis`
in the supervisor; each worker connects with the ordinary ``redis.asyncio`` client
(``unix_socket_path=`` or ``unix://`` URL), so the Redis store and bus are the only code path.
It keeps strings and hashes with expiry, pub/sub, MULTI/EXEC and the room lock's release
script: what the store and bus use, with Redis' reply types, in RESP2 or RESP3 (redis-py >= 8
asks for RESP3 with ``HELLO 3``; older versions stay on RESP2).

Every reply and pub/sub message for a connection goes through one ordered output queue, written
out once per event-loop turn, so messages keep their publisher's order and PUBLISH never waits
for a subscriber. A client that stops reading while subscribed is cut off when its backlog
passes ``pubsub_limit`` (Redis' ``client-output-buffer-limit pubsub`` hard limit, 32 MiB);
other clients get back-pressure instead (we stop reading from them until they read replies).

Debug with ``python -m routing.embedded /path/to.sock`` and ``redis-cli -s /path/to.sock``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from types import TracebackType

from routing.embedded_commands import Broker
from routing.resp import Error, RespParser, encode

logger = logging.getLogger(__name__)

#: A subscriber's unsent output beyond which it is disconnected.
DEFAULT_PUBSUB_LIMIT = 32 * 1024 * 1024
#: How often expired keys are swept (they also vanish when looked at).
DEFAULT_SWEEP_INTERVAL_S = 0.1
READ_SIZE = 64 * 1024
#: How long a closing connection may take to hand its last replies to the kernel.
CLOSE_TIMEOUT_S = 5.0


class EmbeddedRedis:
    """The broker server. ``async with EmbeddedRedis(path):`` or ``start(path)``/``stop()``."""

    def __init__(
        self,
        path: str | None = None,
        *,
        pubsub_limit: int = DEFAULT_PUBSUB_LIMIT,
        sweep_interval: float = DEFAULT_SWEEP_INTERVAL_S,
    ) -> None:
        self.path = path
        self.broker = Broker()
        self.pubsub_limit = pubsub_limit
        self.sweep_interval = sweep_interval
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._inode: int | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        """The address for ``redis.asyncio.from_url``."""
        if self.path is None:
            raise RuntimeError("the embedded broker has no socket path")
        return f"unix://{self.path}"

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self, path: str | None = None) -> None:
        """Listen on the Unix socket ``path`` (a stale socket file there is replaced)."""
        if self._server is not None:
            raise RuntimeError(f"the embedded broker already listens on {self.path}")
        self.path = path or self.path
        if self.path is None:
            raise ValueError("a socket path is needed")
        self._server = await asyncio.start_unix_server(self._accept, path=self.path)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        self._sweeper = asyncio.create_task(self._sweep(), name="embedded-redis-sweep")
        logger.info("embedded redis listening on %s", self.path)

    async def stop(self) -> None:
        """Stop listening, drop every connection and wait for their tasks to end."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        try:
            server.close()
            for connection in list(self._connections.values()):
                connection.abort()
            tasks = list(self._connections)
            if self._sweeper is not None:
                tasks.append(self._sweeper)
                self._sweeper = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()
        finally:
            self._stopping = False
            self._unlink()
        logger.info("embedded redis on %s stopped", self.path)

    async def __aenter__(self) -> EmbeddedRedis:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine, so the task is known before anything awaits.
        if self._stopping or self._server is None:
            writer.transport.abort()
            return
        connection = _Connection(self.broker, reader, writer, self.pubsub_limit)
        task = asyncio.get_running_loop().create_task(
            connection.run(), name=f"embedded-redis-client-{connection.client.id}"
        )
        self._connections[task] = connection
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._connections.pop(task, None)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            self.broker.keyspace.sweep()

    def _unlink(self) -> None:
        """Remove our socket file, unless something else has replaced it since."""
        if self.path is None or self._inode is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self._inode = None


class _Connection:
    """One client: read commands, run them, queue replies; pub/sub frames join the queue."""

    def __init__(
        self,
        broker: Broker,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pubsub_limit: int,
    ) -> None:
        self._broker = broker
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        self._loop = asyncio.get_running_loop()
        self._pubsub_limit = pubsub_limit
        self._parser = RespParser()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flush_handle: asyncio.Handle | None = None
        self.client = broker.connect(self._push)

    async def run(self) -> None:
        try:
            await self._serve()
        except ConnectionError as exc:
            logger.debug("embedded redis: client %d: %s", self.client.id, exc)
        except Exception:
            logger.exception("embedded redis: client %d failed", self.client.id)
        finally:
            await self._close()

    async def _serve(self) -> None:
        client = self.client
        while not client.closed:
            data = await self._reader.read(READ_SIZE)
            if not data:
                return
            self._handle(data)
            self._flush()
            if client.quitting:
                return
            await self._writer.drain()

    def _handle(self, data: bytes) -> None:
        client = self.client
        for args in self._parser.feed(data):
            reply = self._broker.execute(client, args)
            self._queue(encode(reply, client.protocol))  # after HELLO: in the new protocol
            if client.quitting or client.closed:
                return
        if self._parser.error is not None:
            logger.warning(
                "embedded redis: closing client %d: protocol error: %s",
                client.id,
                self._parser.error,
            )
            self._queue(encode(Error(f"ERR Protocol error: {self._parser.error}")))
            client.quitting = True

    def _push(self, frame: bytes) -> None:
        """A pub/sub message from another connection's PUBLISH."""
        self._queue(frame)
        if self._flush_handle is None and self._pending:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _queue(self, frame: bytes) -> None:
        if self.client.closed:
            return
        self._pending.append(frame)
        self._pending_size += len(frame)
        if self.client.subscriptions:
            backlog = self._pending_size + self._transport.get_write_buffer_size()
            if backlog > self._pubsub_limit:
                logger.warning(
                    "embedded redis: disconnecting subscriber %d (%s): %d bytes of output "
                    "waiting, over the %d byte pub/sub limit",
                    self.client.id,
                    (self.client.name or b"-").decode(errors="replace"),
                    backlog,
                    self._pubsub_limit,
                )
                self.abort()

    def _flush(self) -> None:
        self._flush_handle = None
        if self._pending and not self._transport.is_closing():
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._writer.write(data)

    def abort(self) -> None:
        """Drop the connection now, with whatever it had not sent yet."""
        self._broker.disconnect(self.client)
        self._pending.clear()
        self._pending_size = 0
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._transport.abort()

    async def _close(self) -> None:
        self._broker.disconnect(self.client)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._writer.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._writer.wait_closed()
        except (TimeoutError, OSError):
            self._transport.abort()


async def _serve_forever(path: str, pubsub_limit: int) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    async with EmbeddedRedis(path, pubsub_limit=pubsub_limit):
        await stopped.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m routing.embedded",
        description="Run the embedded Redis-protocol broker on a Unix socket.",
    )
    parser.add_argument("path", help="Unix socket to listen on")
    parser.add_argument(
        "--pubsub-limit",
        type=int,
        default=DEFAULT_PUBSUB_LIMIT,
        help="bytes of unsent output after which a subscriber is disconnected",
    )
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_serve_forever(args.path, args.pubsub_limit))


if __name__ == "__main__":
    main()
