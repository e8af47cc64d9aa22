from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ServerProcess, start_server


def _assert_clean_exit(server: ServerProcess) -> None:
    code = server.stop()
    logs = server.logs()
    assert "Traceback" not in logs, logs
    assert code == 0, f"server exited {code}:\n{logs}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module, default configuration plus the test key."""
    proc = start_server(tmp_path_factory.mktemp("server"))
    yield proc
    _assert_clean_exit(proc)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """For tests that need their own configuration; every started server is checked at the end."""
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        _assert_clean_exit(proc)
