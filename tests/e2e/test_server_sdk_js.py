"""The server API through the official JS server SDK (``livekit-server-sdk`` on npm), which
speaks Twirp in JSON where ``livekit-api`` speaks protobuf."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.harness import API_KEY, API_SECRET, ServerProcess
from tests.e2e.sdk import watching

pytestmark = pytest.mark.sdk

JS_DIR = Path(__file__).resolve().parent.parent / "js"


async def run_script(*args: str) -> dict[str, object]:
    node = shutil.which("node")
    assert node, "node is needed (tests/run.sh installs it)"
    assert (JS_DIR / "node_modules" / "livekit-server-sdk").is_dir(), (
        "run `npm ci --prefix tests/js` first (tests/run.sh does)"
    )
    proc = await asyncio.create_subprocess_exec(
        node,
        str(JS_DIR / "roomservice.mjs"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_js_server_sdk_drives_the_room_service(server: ServerProcess) -> None:
    events = ("participant_metadata_changed", "room_metadata_changed", "data_received")
    async with watching(server, "js-watcher", "js-room", *events) as (_, logs):
        result = await run_script(server.http_url, API_KEY, API_SECRET, "js-room", "js-watcher")
        created = result["created"]
        assert isinstance(created, dict)
        assert str(created["sid"]).startswith("RM_")
        assert (created["emptyTimeout"], created["metadata"]) == (42, "js")
        assert result["listed"] == ["js-room", "js-room-made"]
        assert result["roomMetadata"] == "js-room-metadata"
        assert result["participants"] == ["js-watcher"]
        assert result["updated"] == {"metadata": "from-js", "name": "JS Named"}
        assert result["unknownParticipant"] == {
            "code": "not_found",
            "status": 404,
            "message": "participant does not exist",
        }
        dispatch = result["dispatch"]
        assert isinstance(dispatch, dict)
        assert str(dispatch["id"]).startswith("AD_")
        # The room's automatic dispatch ("", LiveKit's default) is listed beside the new one.
        dispatches = result["dispatches"]
        assert isinstance(dispatches, list)
        assert sorted(dispatches) == ["", "js-agent"]
        assert result["dispatchesAfterDelete"] == 1
        deleted_again = result["deletedAgain"]
        assert isinstance(deleted_again, dict)
        assert (deleted_again["code"], deleted_again["status"]) == ("not_found", 404)
        bad_secret = result["badSecret"]
        assert isinstance(bad_secret, dict)
        assert bad_secret["status"] == 401
        # The effects, seen by a real participant.
        seen = await logs["participant_metadata_changed"].wait_for()
        assert seen[2] == "from-js"
        room_seen = await logs["room_metadata_changed"].wait_for()
        assert room_seen[1] == "js-room-metadata"
        packet = await logs["data_received"].wait_for()
        assert (packet.data, packet.topic) == (b"hello from js", "js")
