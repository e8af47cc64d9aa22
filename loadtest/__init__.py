"""``livekit-py-server load-test``: a load generator speaking the LiveKit protocol.

It drives any LiveKit-compatible server (ours or LiveKit's own) with many lightweight
participants per process: signalling over the ``/rtc`` WebSocket, a full ICE agent, DTLS and
SRTP per peer connection, pre-encoded VP8 and Opus looped by one pacer per process, and
subscribers that count packets without decoding. Modules, bottom up:

- ``params``: command-line flags (as ``lk load-test`` has them) and the participant plan;
- ``media``: test clips encoded once with PyAV and cached;
- ``packetizer`` and ``pacer``: RTP packets from the clips, paced by one timer per process;
- ``sdp_client``: the client's offers and answers;
- ``ice``: the client's ICE agent (sans-IO);
- ``dtls``: DTLS, SRTP keys and SCTP, on ``sfu/rtc_adapter.py``'s ``DtlsSession`` (the
  project's one module touching aiortc private APIs);
- ``sink``: ``--sink``'s socket filter that drops RTP in the kernel;
- ``peer``: one peer connection (socket, ICE, DTLS, SRTP, RTCP, counters);
- ``tester``: one participant's signalling and negotiation;
- ``runner``: a process's participants, the ramp, the measurement window;
- ``control``: worker processes and the parent that merges their results;
- ``stats``, ``report``, ``procstat``: results, the table, the server's CPU time;
- ``cli``: the subcommand.
"""
