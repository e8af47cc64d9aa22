#!/bin/sh
# Installs everything the tests need on a fresh Debian machine, then lints and tests.
# Extra arguments go to pytest (e.g. `sh tests/run.sh -k data`).
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # iproute2 and util-linux for the test namespace, nftables to block UDP in it,
    # redis-server for the multi-node tests (each starts its own on a free port), chromium for
    # the browser tier (tests/browser: livekit-client driven by playwright-core), coturn for
    # media relayed through TURN.
    if ! command -v ip >/dev/null || ! command -v unshare >/dev/null || ! command -v nft >/dev/null \
        || ! command -v redis-server >/dev/null || [ ! -x /usr/bin/chromium ] \
        || ! command -v turnserver >/dev/null
    then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 util-linux nftables \
            redis-server chromium coturn >/dev/null
    fi
fi

# Node.js runs the official JS server SDK (livekit-server-sdk) against the server API, and
# drives Debian's Chromium with playwright-core (which never downloads a browser of its own).
if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1
then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if command -v npm >/dev/null 2>&1; then
    npm ci --prefix tests/js --no-audit --no-fund --loglevel=error >/dev/null
else
    echo "note: npm missing; the JS server SDK test will fail (install nodejs and npm)" >&2
fi

python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# The agent tests run the real livekit-agents framework as a worker; it pins its own livekit
# SDK, so it gets a virtual environment of its own (tests/e2e/test_agents.py).
python3 -m venv .venv-agents
.venv-agents/bin/pip install -q --disable-pip-version-check -r tests/agents/requirements.txt

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# The C fan-out under AddressSanitizer and UndefinedBehaviorSanitizer (a few seconds).
if command -v cc >/dev/null 2>&1 && [ $# -eq 0 ]; then
    sanitized=$(mktemp)
    if ! sh tests/sanitized_fanout.sh >"$sanitized" 2>&1; then
        cat "$sanitized"
        exit 1
    fi
    echo "sanitized C fan-out: $(tail -1 "$sanitized")"
    rm -f "$sanitized"
fi

# SDK tests need a non-loopback adapter carrying the advertised address; a private network
# namespace gives one without touching the machine's own network (needs root).
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
    exec unshare -n sh tests/netns.sh .venv/bin/pytest "$@"
fi
echo "note: not root or no unshare; SDK tests run against this machine's own interfaces" >&2
exec .venv/bin/pytest "$@"
