"""Sessions of livekit-client in Chromium: a page reload rejoins, ICE over TCP when UDP is
blocked, a network blackout survived."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from livekit import rtc

from tests.browser.conftest import Pages
from tests.browser.driver import COLOUR, TONE_HZ
from tests.browser.test_media import close_to
from tests.e2e.conftest import assert_clean_exit
from tests.e2e.harness import ServerProcess, free_udp_port, make_token, start_server
from tests.e2e.netfilter import blackout, needs_nftables, udp_dropped
from tests.e2e.sdk import watching
from tests.e2e.test_media import (
    SAMPLE_RATE,
    centre_colour,
    dominant_frequency,
    first_frames,
    hear,
    publishing_colour,
)
from tests.e2e.test_transport import tcp_established_on

UDP_PORT = free_udp_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on a known UDP port, so a test can drop UDP to it."""
    config = f"rtc:\n  udp_port: {UDP_PORT}\n"
    proc = start_server(tmp_path_factory.mktemp("server"), config, udp_port=False)
    yield proc
    assert_clean_exit(proc)


async def test_page_reload_rejoins_with_the_same_identity(
    server: ServerProcess, pages: Pages
) -> None:
    events = ("track_subscribed", "participant_connected", "participant_disconnected")
    async with watching(server, "python", "reload", *events) as (python, logs):
        page = await pages.join("chromium", "reload")
        first = await page.lk("local")
        await page.lk("enableCameraAndMicrophone")
        await logs["track_subscribed"].wait_for()

        await page.reload()  # livekit-client leaves on pagehide; the new page joins again
        rejoined = await page.lk("connect", server.ws_url, make_token("chromium", "reload"), {})
        assert rejoined["identity"] == "chromium"
        assert rejoined["sid"] != first["sid"]
        await page.lk("enableCameraAndMicrophone")
        track, _, _ = await logs["track_subscribed"].wait_for(
            lambda i: i[2].sid == rejoined["sid"] and i[0].kind == rtc.TrackKind.KIND_VIDEO
        )
        assert [p.sid for p in python.remote_participants.values()] == [rejoined["sid"]]
        frames = await first_frames(track, 10)
        assert close_to(centre_colour(frames[-1]), COLOUR)


@needs_nftables
async def test_ice_tcp_when_udp_to_the_media_port_is_dropped(
    server: ServerProcess, pages: Pages
) -> None:
    with udp_dropped(UDP_PORT):
        async with (
            watching(server, "python", "tcp-only", "track_subscribed") as (python, logs),
            publishing_colour(python),
        ):
            page = await pages.join("chromium", "tcp-only")
            await page.lk("enableCameraAndMicrophone")
            track, _, _ = await logs["track_subscribed"].wait_for(
                lambda i: i[0].kind == rtc.TrackKind.KIND_VIDEO, within_s=30
            )
            frames = await first_frames(track, 10)
            assert close_to(centre_colour(frames[-1]), COLOUR)

            def decoding(stats: list[dict[str, Any]]) -> bool:
                return any(s["kind"] == "video" and s["framesDecoded"] > 10 for s in stats)

            await page.wait_for("inbound", decoding, "python", within_s=30)
            # The browser's peer connection and the SDK's (one each, /rtc/v1) run over ICE-TCP.
            assert tcp_established_on(server.proc.pid, server.tcp_port) >= 2


async def test_signal_reconnect_resumes_the_page(server: ServerProcess, pages: Pages) -> None:
    events = ("track_subscribed", "participant_disconnected")
    async with watching(server, "python", "browser-resume", *events) as (_, logs):
        page = await pages.join("chromium", "browser-resume")
        await page.lk("setMicrophone", True)
        track, _, _ = await logs["track_subscribed"].wait_for()
        sid = (await page.lk("local"))["sid"]
        await page.lk("simulate", "signal-reconnect")
        await page.wait_for("events", lambda e: any(x["type"] == "reconnected" for x in e))
        assert (await page.lk("local"))["sid"] == sid, "resumed, not rejoined"
        assert not logs["participant_disconnected"].items
        assert "participant resumed: chromium" in server.logs()
        samples = await hear(track, 1.0)
        assert abs(dominant_frequency(samples[SAMPLE_RATE // 2 :], SAMPLE_RATE) - TONE_HZ) < 15


@needs_nftables
async def test_five_seconds_without_a_network_keeps_the_page(
    server: ServerProcess, pages: Pages
) -> None:
    """Everything to and from the server dropped for 5 s (signal, media, ICE-TCP): the page
    stays the same participant, nobody sees it leave, and its microphone is heard again."""
    events = ("track_subscribed", "participant_disconnected")
    async with watching(server, "python", "browser-blackout", *events) as (_, logs):
        page = await pages.join("chromium", "browser-blackout")
        await page.lk("setMicrophone", True)
        track, _, _ = await logs["track_subscribed"].wait_for()
        sid = (await page.lk("local"))["sid"]
        with blackout(server.port, UDP_PORT, server.tcp_port):
            await asyncio.sleep(5.0)
        await page.wait_for("connectionState", lambda state: state == "connected", within_s=30)
        assert (await page.lk("local"))["sid"] == sid, "the same participant"
        assert not logs["participant_disconnected"].items
        samples = await hear(track, 1.0)
        assert abs(dominant_frequency(samples[SAMPLE_RATE // 2 :], SAMPLE_RATE) - TONE_HZ) < 15
