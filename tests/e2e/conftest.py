from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ServerProcess, start_server
from tests.e2e.redis_server import RedisProcess, start_redis


def assert_clean_exit(server: ServerProcess) -> None:
    code = server.stop()
    logs = server.logs()
    assert "Traceback" not in logs, logs
    assert code == 0, f"server exited {code}:\n{logs}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module, default configuration plus the test key."""
    proc = start_server(tmp_path_factory.mktemp("server"))
    yield proc
    assert_clean_exit(proc)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts servers with their own configuration; each is checked for a clean exit."""
    started: list[ServerProcess] = []

    def start_with(config_yaml: str = "", **kwargs: object) -> ServerProcess:
        proc = start_server(tmp_path, config_yaml, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start_with
    for proc in started:
        assert_clean_exit(proc)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    process = start_redis(tmp_path)
    yield process
    process.stop()


@pytest.fixture
def nodes(redis: RedisProcess, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts nodes of one cluster; each is checked for a clean exit."""
    started: list[ServerProcess] = []

    def start_node(extra: str = "") -> ServerProcess:
        config = f"redis:\n  address: {redis.address}\n{extra}"
        node = start_server(tmp_path, config)
        started.append(node)
        return node

    yield start_node
    for node in started:
        if node.proc.poll() is None:
            assert_clean_exit(node)
