"""``livekit-py-server``: parse flags, load the configuration, run the server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from config import CliOverrides, Config, ConfigError, LoadedConfig, load_config
from server import tools
from server.app import run_server, server_version
from server.cluster import WorkerIdentity
from server.local_redis import redis_server_path
from server.logs import add_process_context, setup_logging
from server.ports import PortInUseError, check_ports
from server.workers import (
    EXIT_STARTUP_FAILED,
    Supervisor,
    default_worker_count,
    strip_worker_flags,
)

# Named, not __name__: workers run this module as __main__ (python -m server.cli).
logger = logging.getLogger("server.cli")

COMMANDS = """commands (server flags such as --config, --keys or --dev may come before or after):
  (none)              run the server
  generate-keys       print a new API key and secret
  create-join-token   print a join token: --room ROOM --identity IDENTITY [--recorder]
  load-test           run lk load-test's load against a LiveKit-compatible server
                      (livekit-py-server load-test --help)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livekit-py-server",
        description="A LiveKit-compatible WebRTC SFU. Flags win over env, env over the config.",
        epilog=COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {server_version()}")
    parser.add_argument("--config", help="path to a YAML config file")
    parser.add_argument(
        "--config-body", help="YAML config as a string (env LIVEKIT_CONFIG); wins over --config"
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="development mode: devkey/secret, bound to 127.0.0.1, debug logging",
    )
    parser.add_argument(
        "--bind",
        action="append",
        default=[],
        help="IP address to listen on (repeatable; default all)",
    )
    parser.add_argument("--port", type=int, help="HTTP/WebSocket port (default 7880)")
    parser.add_argument("--keys", help='API keys as "key: secret" lines (env LIVEKIT_KEYS)')
    parser.add_argument("--key-file", help="YAML file of key: secret (must not be world-readable)")
    parser.add_argument("--node-ip", help="IP address advertised to clients (env NODE_IP)")
    parser.add_argument("--udp-port", type=int, help="UDP port for WebRTC media (env UDP_PORT)")
    parser.add_argument("--region", help="region of this node (env LIVEKIT_REGION)")
    parser.add_argument("--redis-host", help="Redis host:port (env REDIS_HOST)")
    parser.add_argument("--redis-password", help="Redis password (env REDIS_PASSWORD)")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's own event loop")
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes, one node each, sharing the HTTP port (default: one per CPU, "
        "one with --dev; 1 runs a single process)",
    )
    # Set by the supervisor for each worker it starts.
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-redis", default="", help=argparse.SUPPRESS)
    return parser


def overrides_from(args: argparse.Namespace) -> CliOverrides:
    return CliOverrides(
        config_path=args.config,
        config_body=args.config_body,
        dev=args.dev,
        bind=tuple(args.bind),
        port=args.port,
        keys=args.keys,
        key_file=args.key_file,
        node_ip=args.node_ip,
        udp_port=args.udp_port,
        region=args.region,
        redis_host=args.redis_host,
        redis_password=args.redis_password,
    )


def main(argv: Sequence[str] | None = None) -> int:
    command, command_args, server_args = tools.split_subcommand(
        sys.argv[1:] if argv is None else argv
    )
    if command == "generate-keys":
        tools.generate_keys_parser().parse_args(command_args)  # --help, or refuse extra words
        return tools.generate_keys()
    if command == "load-test":
        try:  # a client, not needed to run the server: the Docker image leaves it out
            from loadtest.cli import main as load_test
        except ImportError as exc:
            print(f"livekit-py-server: the load tester is not installed ({exc})", file=sys.stderr)
            return 1
        return load_test(command_args)
    token_args = None
    if command == "create-join-token":
        # Its own flags, and server flags written after it ("create-join-token --dev").
        token_args, extra = tools.join_token_parser().parse_known_args(command_args)
        server_args = [*server_args, *extra]
    args = build_parser().parse_args(server_args)
    if args.workers is not None and args.workers < 1:
        print("livekit-py-server: --workers must be at least 1", file=sys.stderr)
        return 2
    env_workers = os.environ.get("LIVEKIT_WORKERS", "")
    if env_workers and (not env_workers.isdigit() or int(env_workers) < 1):
        print(
            f"livekit-py-server: LIVEKIT_WORKERS={env_workers!r} is not a count of 1 or more",
            file=sys.stderr,
        )
        return 2
    try:
        loaded = load_config(overrides_from(args), os.environ)
    except ConfigError as exc:
        print(f"livekit-py-server: config error: {exc}", file=sys.stderr)
        return 2
    if token_args is not None:
        return tools.create_join_token(token_args, loaded.config)
    config = loaded.config
    setup_logging(
        level=config.logging.level,
        json_format=config.logging.json,
        library_level=config.logging.pion_level,
    )
    if args.worker_index is None:
        _announce(loaded)  # once, not once per worker
    count = _worker_count(args, config)
    if args.worker_index is None:
        try:
            check_ports(config, count)
        except PortInUseError as exc:
            print(f"livekit-py-server: {exc}", file=sys.stderr)
            return 1
    if args.worker_index is None and count > 1:
        return _supervise(server_args, config, count)
    worker = WorkerIdentity(
        args.worker_index or 0, count if args.worker_index is not None else 1, args.worker_redis
    )
    if worker.count > 1:
        add_process_context(worker=str(worker.index))
    if args.no_uvloop:
        runner = asyncio.run
    else:
        import uvloop

        runner = uvloop.run
    try:
        runner(run_server(config, worker))
    except OSError as exc:
        # Typically a port already in use: one line, not a traceback. A worker says it failed
        # to start, so the supervisor does not start it again and again.
        print(f"livekit-py-server: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILED if args.worker_index is not None else 1
    except KeyboardInterrupt:
        return 130  # interrupted before the signal handlers were installed
    return 0


def _worker_count(args: argparse.Namespace, config: Config) -> int:
    """--workers, else LIVEKIT_WORKERS (the Docker image sets 1), else one process in
    development mode (as LiveKit's --dev), else one per CPU. Workers meet in Redis: without a
    ``redis`` section and without ``redis-server`` to start, one worker it is."""
    if args.workers is not None:
        count = int(args.workers)
    elif os.environ.get("LIVEKIT_WORKERS"):
        count = int(os.environ["LIVEKIT_WORKERS"])
    else:
        count = 1 if config.development else default_worker_count()
    if count > 1 and args.worker_index is None and not config.redis.enabled:
        if redis_server_path() is None:
            logger.warning(
                "running 1 worker instead of %d: the workers share a redis-server, and none is "
                "installed (apt-get install redis-server) or configured (redis.address)",
                count,
            )
            return 1
    return count


def _supervise(server_args: Sequence[str], config: Config, count: int) -> int:
    supervisor = Supervisor(strip_worker_flags(server_args), config, count)
    try:
        return asyncio.run(supervisor.run())
    except OSError as exc:
        print(f"livekit-py-server: {exc}", file=sys.stderr)
        return 1


def _announce(loaded: LoadedConfig) -> None:
    for warning in loaded.warnings:
        logger.warning("%s", warning)
    config = loaded.config
    if loaded.dev_placeholder_keys:
        # LiveKit prints the placeholder pair so developers can mint tokens at once.
        for key, secret in config.keys.items():
            logger.info(
                "no keys provided, using placeholder keys: API key %s, secret %s", key, secret
            )
    hosts = [h for h in config.bind_addresses if h not in ("0.0.0.0", "::")] or ["127.0.0.1"]
    host = f"[{hosts[0]}]" if ":" in hosts[0] else hosts[0]
    logger.info("clients connect to ws://%s:%d", host, config.port)


if __name__ == "__main__":
    sys.exit(main())
