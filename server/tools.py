"""Operator subcommands LiveKit's server has: ``generate-keys`` and ``create-join-token``."""

from __future__ import annotations

import argparse
import secrets
import string
from collections.abc import Sequence

from config import Config
from protocol.token import VideoGrant, issue_token

_ALPHABET = string.ascii_letters + string.digits
#: LiveKit's join tokens from create-join-token are valid for a day.
JOIN_TOKEN_TTL_S = 24 * 3600


def generate_keys_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="livekit-py-server generate-keys",
        description="Print a new API key and secret for the keys section of the config.",
    )


def generate_keys() -> int:
    """Print a new API key and a 32-character secret (LiveKit's ``generate-keys``)."""
    key = "API" + "".join(secrets.choice(_ALPHABET) for _ in range(12))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(43))
    print(f"API Key: {key}")
    print(f"API Secret: {secret}")
    return 0


def join_token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livekit-py-server create-join-token",
        description="Print a join token signed with the first configured key.",
    )
    parser.add_argument("--room", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--recorder", action="store_true", help="a hidden recorder participant")
    return parser


def create_join_token(args: argparse.Namespace, config: Config) -> int:
    api_key, secret = next(iter(config.keys.items()))
    grant = VideoGrant(room_join=True, room=args.room, hidden=args.recorder, recorder=args.recorder)
    token = issue_token(
        api_key=api_key, secret=secret, identity=args.identity, video=grant, ttl_s=JOIN_TOKEN_TTL_S
    )
    print(token)
    return 0


def split_subcommand(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """(subcommand, its own arguments, the server flags) from the command line; server
    flags (--config, --keys, --dev...) may come before the subcommand."""
    for index, word in enumerate(argv):
        if word in ("generate-keys", "create-join-token", "load-test"):
            return word, list(argv[index + 1 :]), list(argv[:index])
    return None, [], list(argv)
