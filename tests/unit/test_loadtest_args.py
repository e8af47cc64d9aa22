"""The load tester's flags: lk load-test's names and defaults, errors as argparse exits."""

from __future__ import annotations

import os

import pytest

from loadtest.params import LAYOUTS, Params, parse_args, parse_duration, plan
from server import cli, tools

BASE = ["--url", "ws://127.0.0.1:7880", "--api-key", "k", "--api-secret", "s"]


def _error(argv: list[str], capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> str:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv, env)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_defaults_are_lk_load_tests() -> None:
    params = parse_args([*BASE, "--subscribers", "2"], {})
    assert params.num_per_second == 5
    assert params.video_resolution == "high"
    assert params.simulcast
    assert params.layout == "speaker"
    assert params.duration == 0
    assert params.workers == 1
    assert params.room.startswith("loadtest-")
    assert [rid for rid, *_ in params.layers] == ["q", "h", "f"]


def test_environment_supplies_url_and_keys() -> None:
    env = {"LIVEKIT_URL": "http://h:1", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}
    params = parse_args(["--audio-publishers", "1"], env)
    assert (params.url, params.api_key, params.api_secret) == ("http://h:1", "k", "s")


@pytest.mark.parametrize("missing", ["--url", "--api-key", "--api-secret"])
def test_missing_connection_flag(missing: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = list(BASE)
    index = argv.index(missing)
    del argv[index : index + 2]
    assert missing in _error([*argv, "--subscribers", "1"], capsys, {})


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--subscribers", "-1"], "negative"),
        (["--subscribers", "two"], "whole number"),
        (["--video-resolution", "ultra", "--subscribers", "1"], "ultra"),
        (["--layout", "6x6", "--subscribers", "1"], "6x6"),
        (["--duration", "soon", "--subscribers", "1"], "duration"),
        (["--duration", "inf", "--subscribers", "1"], "finite duration"),
        (["--duration", "nan", "--subscribers", "1"], "finite duration"),
        (["--num-per-second", "0", "--subscribers", "1"], "positive"),
        (["--workers", "0", "--subscribers", "1"], "--workers"),
        ([], "nothing to do"),
        (["--server-pid", "999999999", "--subscribers", "1"], "no such process"),
    ],
)
def test_bad_flags_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert needle in _error([*BASE, *argv], capsys, {})


def test_bad_url_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--url", "ftp://h", "--api-key", "k", "--api-secret", "s", "--subscribers", "1"]
    assert "--url" in _error(argv, capsys, {})


def test_bad_url_port(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--url", "ws://h:notaport", "--api-key", "k", "--api-secret", "s", "--subscribers", "1"]
    assert "bad port" in _error(argv, capsys, {})


def test_server_pid_of_a_live_process() -> None:
    params = parse_args([*BASE, "--subscribers", "1", "--server-pid", str(os.getpid())], {})
    assert params.server_pid == os.getpid()


@pytest.mark.parametrize(
    ("text", "seconds"), [("5", 5.0), ("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_plan_publishers_first() -> None:
    params = parse_args(
        [*BASE, "--audio-publishers", "3", "--video-publishers", "1", "--subscribers", "2"], {}
    )
    specs = plan(params)
    assert [(s.audio, s.video, s.subscribe) for s in specs] == [
        (True, True, False),
        (True, False, False),
        (True, False, False),
        (False, False, True),
        (False, False, True),
    ]
    assert len({s.identity for s in specs}) == 5
    assert params.tracks_per_subscriber == 4


def test_layout_limits_video_with_media() -> None:
    params = parse_args(
        [*BASE, "--video-publishers", "12", "--subscribers", "1", "--layout", "3x3"], {}
    )
    assert params.media_tracks_per_subscriber == len(LAYOUTS["3x3"]) == 9
    assert params.tracks_per_subscriber == 12


@pytest.mark.parametrize(("flags", "rids"), [(["--no-simulcast"], ["f"]), ([], ["q", "h"])])
def test_layers(flags: list[str], rids: list[str]) -> None:
    resolution = [] if flags else ["--video-resolution", "medium"]
    params: Params = parse_args([*BASE, "--subscribers", "1", *flags, *resolution], {})
    assert [rid for rid, *_ in params.layers] == rids


def test_decrypt_sampling_only_when_large() -> None:
    small = parse_args([*BASE, "--audio-publishers", "1", "--subscribers", "3"], {})
    large = parse_args([*BASE, "--audio-publishers", "10", "--subscribers", "100"], {})
    forced = parse_args([*BASE, "--subscribers", "1", "--decrypt-every", "4"], {})
    assert (small.sample_every(), large.sample_every(), forced.sample_every()) == (1, 16, 4)


def test_subcommand_is_dispatched(capsys: pytest.CaptureFixture[str]) -> None:
    assert tools.split_subcommand(["load-test", "--room", "r"]) == (
        "load-test",
        ["--room", "r"],
        [],
    )
    with pytest.raises(SystemExit) as exited:
        cli.main(["load-test", "--video-resolution", "ultra"])
    assert exited.value.code == 2
    assert "livekit-py-server load-test" in capsys.readouterr().err
