# livekit-py-server on slim Debian; the install step is the README's own `pip install .`.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 livekit
WORKDIR /opt/livekit-py-server
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY config ./config
COPY routing ./routing
COPY sfu ./sfu
COPY signaling ./signaling
COPY server ./server
# gcc builds the C fan-out (sfu/_fastsend.c) and leaves with the build.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && python3 -m venv .venv && .venv/bin/pip install . \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && ln -s /opt/livekit-py-server/.venv/bin/livekit-py-server /usr/local/bin/livekit-py-server

USER livekit
# One worker's ports; --workers N uses 7881..7880+N/tcp and 7882..7881+N/udp.
EXPOSE 7880/tcp 7881/tcp 7882/udp
ENTRYPOINT ["livekit-py-server"]
CMD ["--config", "/etc/livekit.yaml"]
