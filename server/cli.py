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
from server.app import run_server
from server.cluster import WorkerIdentity
from server.logs import add_process_context, setup_logging
from server.workers import Supervisor, default_worker_count, strip_worker_flags

# Named, not __name__: workers run this module as __main__ (python -m server.cli).
logger = logging.getLogger("server.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livekit-py-server",
        description="A LiveKit-compatible WebRTC SFU. Flags win over env, env over the config.",
    )
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
        help="worker processes, one node each, sharing the HTTP port (default: CPU count; "
        "1 runs a single process)",
    )
    # Set by the supervisor for each worker it starts.
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-broker", default="", help=argparse.SUPPRESS)
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
        return tools.generate_keys()
    if command == "load-test":
        from server.loadtest.cli import main as load_test  # not needed to run the server

        return load_test(command_args)
    args = build_parser().parse_args(server_args)
    if args.workers is not None and args.workers < 1:
        print("livekit-py-server: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        loaded = load_config(overrides_from(args), os.environ)
    except ConfigError as exc:
        print(f"livekit-py-server: config error: {exc}", file=sys.stderr)
        return 2
    if command == "create-join-token":
        return tools.create_join_token(
            tools.join_token_parser().parse_args(command_args), loaded.config
        )
    config = loaded.config
    setup_logging(
        level=config.logging.level,
        json_format=config.logging.json,
        library_level=config.logging.pion_level,
    )
    _announce(loaded)
    count = args.workers if args.workers is not None else default_worker_count()
    if args.worker_index is None and count > 1:
        return _supervise(server_args, config, count)
    worker = WorkerIdentity(
        args.worker_index or 0, count if args.worker_index is not None else 1, args.worker_broker
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
        # Typically a port already in use: one line, not a traceback.
        print(f"livekit-py-server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130  # interrupted before the signal handlers were installed
    return 0


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
    if loaded.dev_placeholder_keys:
        # LiveKit prints the placeholder pair so developers can mint tokens at once.
        for key, secret in loaded.config.keys.items():
            logger.info(
                "no keys provided, using placeholder keys: API key %s, secret %s", key, secret
            )


if __name__ == "__main__":
    sys.exit(main())
