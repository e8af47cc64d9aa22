"""ForwardParticipant across two nodes seen from livekit-client in Chromium: a Python SDK
participant in a room on one node is forwarded to a room on the other, where a browser
subscribes to its copy (the tracks relayed between the nodes, then the ordinary downtrack
path with the browser's defaults)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from livekit import api

from tests.browser.conftest import Pages
from tests.browser.test_media import close_to
from tests.e2e.conftest import assert_clean_exit
from tests.e2e.harness import ServerProcess, start_server
from tests.e2e.redis_server import RedisProcess, start_redis
from tests.e2e.sdk import connect
from tests.e2e.test_cluster import node_id_of, server_api
from tests.e2e.test_media import COLOUR, publishing_colour, publishing_tone
from tests.e2e.test_moves import admin_api, forward


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    process = start_redis(tmp_path_factory.mktemp("redis"))
    yield process
    process.stop()


def _node(redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    return start_server(tmp_path_factory.mktemp("node"), f"redis:\n  address: {redis.address}\n")


@pytest.fixture(scope="module")
def source_node(
    redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    node = _node(redis, tmp_path_factory)
    yield node
    assert_clean_exit(node)


@pytest.fixture(scope="module")
def server(
    redis: RedisProcess, source_node: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The node the pages join: the destination room's."""
    node = _node(redis, tmp_path_factory)
    yield node
    assert_clean_exit(node)


def _flowing(stats: list[dict[str, Any]]) -> bool:
    video = [s for s in stats if s["kind"] == "video" and s["framesDecoded"] > 10]
    audio = [s for s in stats if s["kind"] == "audio" and s["totalAudioEnergy"] > 0]
    return bool(video) and bool(audio)


async def test_a_participant_forwarded_from_another_node_plays_in_the_browser(
    source_node: ServerProcess, server: ServerProcess, pages: Pages
) -> None:
    async with server_api(source_node) as lk:
        for node, name in ((source_node, "bx-from"), (server, "bx-to")):
            await lk.room.create_room(api.CreateRoomRequest(name=name, node_id=node_id_of(node)))
    source = await connect(source_node, "source", "bx-from")
    try:
        async with publishing_tone(source), publishing_colour(source):
            page = await pages.join("viewer", "bx-to")
            async with admin_api(server, "bx-from", "bx-to") as lk:
                await forward(lk, "bx-from", "source", "bx-to")
            stats = await page.wait_for("inbound", _flowing, "source", within_s=30)
            video = next(s for s in stats if s["kind"] == "video")
            assert (video["frameWidth"], video["frameHeight"]) == (320, 240)
            shown = await page.wait_for(
                "centreColour", lambda c: c is not None, "source", "camera", within_s=10
            )
            assert close_to(shown["rgb"], COLOUR), shown
    finally:
        await source.disconnect()
