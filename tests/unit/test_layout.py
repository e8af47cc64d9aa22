"""Repository habits: the README's commands, the Dockerfile, CI, and the import direction."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: protocol <- config <- routing <- sfu <- signaling <- server: nothing imports up the chain.
LAYERS = ["protocol", "config", "routing", "sfu", "signaling", "server"]
#: The load tester is a client: it builds on the layers up to sfu, and only the CLI's
#: ``load-test`` subcommand imports it.
LOADTEST_MAY_IMPORT = {"protocol", "config", "routing", "sfu", "loadtest"}


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_readme_gives_exactly_two_setup_commands() -> None:
    run_server, run_tests = _setup_commands()
    assert run_server.endswith("livekit-py-server --dev")
    assert run_tests == "sh tests/run.sh"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci/run").read_text()
    assert _setup_commands()[1] in ci


def test_dockerfile_installs_as_the_readme_does() -> None:
    install = _setup_commands()[0].rsplit("&&", 1)[0].strip()
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = dockerfile.replace("\\\n", " ").splitlines()  # join continuation lines
    run_lines = [" ".join(line.split()) for line in instructions if line.startswith("RUN ")]
    assert any(install in line for line in run_lines), (install, run_lines)
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "EXPOSE 7880/tcp 7881/tcp 7882/udp" in dockerfile
    assert 'ENTRYPOINT ["livekit-py-server"]' in dockerfile
    for package in LAYERS:
        assert f"COPY {package} " in dockerfile


def _imported_layers(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in LAYERS)
    return found


def _imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_load_tester_is_a_client_of_its_own() -> None:
    ours = {*LAYERS, "loadtest"}
    for path in (ROOT / "loadtest").rglob("*.py"):
        imported = _imported_packages(path) & ours
        assert imported <= LOADTEST_MAY_IMPORT, f"{path} imports {imported - LOADTEST_MAY_IMPORT}"
    importers = [
        path.relative_to(ROOT)
        for layer in LAYERS
        for path in (ROOT / layer).rglob("*.py")
        if "loadtest" in _imported_packages(path)
    ]
    assert importers == [Path("server/cli.py")], importers
    # The server's packages hold no client code: no DTLS client link, no client certificate.
    for path in (ROOT / "sfu").rglob("*.py"):
        text = path.read_text()
        assert "class DtlsLink" not in text and "def local_fingerprints" not in text, path


def test_nothing_imports_up_the_chain() -> None:
    for rank, layer in enumerate(LAYERS):
        for path in (ROOT / layer).rglob("*.py") if (ROOT / layer).exists() else []:
            for imported in _imported_layers(path):
                assert LAYERS.index(imported) <= rank, f"{path} imports {imported}"
