# livekit-py-server on slim Debian; the install step is the README's own `pip install .`.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# One worker by default, so the published ports below are all it uses. For N workers set
# LIVEKIT_WORKERS=N and publish 7881..7880+N/tcp and 7882..7881+N/udp (README, "Docker").
ENV LIVEKIT_WORKERS=1

RUN useradd --create-home --uid 1000 livekit
WORKDIR /opt/livekit-py-server
# Dependencies first, in a layer of their own: a change to the sources does not reinstall them.
COPY pyproject.toml README.md ./
RUN python3 -m venv .venv && .venv/bin/python -c 'import tomllib; \
    print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    > /tmp/requirements.txt && .venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY protocol ./protocol
COPY config ./config
COPY routing ./routing
COPY sfu ./sfu
COPY signaling ./signaling
COPY server ./server
# gcc builds the C fan-out (sfu/_fastsend.c) and leaves with the build; redis-server stays:
# with LIVEKIT_WORKERS above 1 and no redis section, the workers meet in one the server starts.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev redis-server \
    && python3 -m venv .venv && .venv/bin/pip install . --no-cache-dir --no-deps \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && ln -s /opt/livekit-py-server/.venv/bin/livekit-py-server /usr/local/bin/livekit-py-server

USER livekit
# One worker's ports; LIVEKIT_WORKERS=N uses 7881..7880+N/tcp and 7882..7881+N/udp.
EXPOSE 7880/tcp 7881/tcp 7882/udp
# No curl in the image: Python asks the health check (503 while draining, 406 when stale).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7880/', timeout=4)"]
# Draining waits for the last participant: give `docker stop` time (docker stop -t 3600, or
# stop_grace_period in compose); a second SIGTERM closes the rooms at once.
STOPSIGNAL SIGTERM
ENTRYPOINT ["livekit-py-server"]
CMD ["--config", "/etc/livekit.yaml"]
