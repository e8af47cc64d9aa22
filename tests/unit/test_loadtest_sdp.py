"""The load tester's SDP writer and ICE agent, checked against our server's own SDP code and
ICE-lite registry, with no event loop."""

from __future__ import annotations

from aioice import stun

from loadtest.ice import CONNECT_TIMEOUT_S, IceAgent, IceState
from loadtest.sdp_client import (
    OfferedStream,
    host_candidate,
    parse_candidate,
    parse_remote,
    publisher_offer,
    subscriber_answer,
)
from protocol import sdp, sdp_media
from sfu.ice import IceRegistry, IceSession

CLIENT = sdp.TransportParams(
    ice_ufrag="cufr",
    ice_pwd="client-password-0123456789",
    fingerprints=(("sha-256", "AA:BB"),),
    candidates=(host_candidate("127.0.0.1", 40000),),
    setup="actpass",
)
SERVER = sdp.TransportParams(
    ice_ufrag="sufr",
    ice_pwd="server-password-0123456789",
    fingerprints=(("sha-256", "CC:DD"),),
    candidates=("candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host generation 0",),
    setup="passive",
)
ENABLED = ("audio/opus", "video/VP8")


def _offer(simulcast: bool) -> str:
    video = (
        OfferedStream("video", "1", "TR_Vcid", rids=("q", "h", "f"))
        if simulcast
        else OfferedStream("video", "1", "TR_Vcid", ssrc=2222)
    )
    audio = OfferedStream("audio", "0", "TR_Acid", ssrc=1111)
    return publisher_offer([audio, video], CLIENT, session_id=42)


def test_publisher_offer_as_our_server_reads_it() -> None:
    offer = sdp.parse(_offer(simulcast=True))
    assert offer.value("group") == "BUNDLE 0 1"
    audio, video = offer.media
    assert audio.value("msid") == "- TR_Acid"
    assert audio.values("rtpmap") == ["111 opus/48000/2"]
    assert "1111 msid:- TR_Acid" in audio.values("ssrc")
    assert video.values("rid") == ["q send", "h send", "f send"]
    assert video.value("simulcast") == "send q;h;f"
    assert video.values("ssrc") == []
    assert audio.values("candidate") == [CLIENT.candidates[0].removeprefix("candidate:")]
    answer_text = sdp_media.answer(offer, SERVER, ENABLED, session_id=1, address="127.0.0.1")
    answer = sdp.parse(answer_text)
    assert answer.media[1].value("simulcast") == "recv q;h;f"
    streams = sdp_media.incoming_streams(offer, answer)
    assert [(s.kind, s.track_id, s.codec.mime) for s in streams] == [
        ("audio", "TR_Acid", "audio/opus"),
        ("video", "TR_Vcid", "video/VP8"),
    ]
    assert streams[0].ssrcs == (1111,)
    remote = parse_remote(answer_text)
    assert (remote.ice_ufrag, remote.setup, remote.ice_lite) == ("sufr", "passive", True)
    assert remote.candidates == (("127.0.0.1", 7882, 2130706431),)


def test_single_layer_video_announces_its_ssrc() -> None:
    offer = sdp.parse(_offer(simulcast=False))
    answer = sdp.parse(sdp_media.answer(offer, SERVER, ENABLED, session_id=1, address="x"))
    video = sdp_media.incoming_streams(offer, answer)[1]
    assert video.ssrcs == (2222,)
    assert offer.media[1].values("rid") == []


def _subscriber_offer() -> str:
    opus = sdp_media.Codec(111, "audio/opus", 48000, 2, "minptime=10;useinbandfec=1")
    vp8 = sdp_media.Codec(96, "video/VP8", 90000, rtcp_fb=("nack pli", "transport-cc"))
    ext = ((1, sdp_media.MID_URI),)
    tracks = [
        sdp_media.OutgoingTrack("audio", "1", (opus,), ext, "PA_p|TR_a", "TR_a", ssrc=10),
        sdp_media.OutgoingTrack("video", "2", (vp8,), ext, "PA_p|TR_v", "TR_v", ssrc=20),
        sdp_media.OutgoingTrack("audio", "3", (opus,), ext, "PA_q|TR_x", "TR_x", 30, stopped=True),
    ]
    params = sdp.TransportParams(**{**vars(SERVER), "setup": "actpass"})
    return sdp_media.subscriber_offer(tracks, params, session_id=1, version=2, address="127.0.0.1")


def test_answer_to_our_servers_subscriber_offer() -> None:
    remote = parse_remote(_subscriber_offer())
    assert [(t.mid, t.kind, t.track_sid, t.ssrcs) for t in remote.tracks] == [
        ("1", "audio", "TR_a", (10,)),
        ("2", "video", "TR_v", (20,)),
    ]
    assert remote.sctp_port == sdp.SCTP_PORT
    client = sdp.TransportParams(**{**vars(CLIENT), "setup": "active"})
    answer = sdp.parse(subscriber_answer(remote, client, session_id=7))
    application, audio, video, stopped = answer.media
    assert answer.value("group") == "BUNDLE 0 1 2"
    assert (application.kind, application.port, application.value("setup")) == (
        "application",
        9,
        "active",
    )
    assert audio.has("recvonly") and audio.formats == ["111"]
    assert video.values("rtcp-fb") == ["96 nack pli"]  # transport-cc is not answered
    assert video.values("extmap") == [f"1 {sdp_media.MID_URI}"]
    assert stopped.port == 0
    assert sdp.remote_transport(answer) == ("cufr", CLIENT.ice_pwd, ["sha-256 AA:BB"], "active")


def test_candidates_we_can_use() -> None:
    assert parse_candidate("candidate:1 1 udp 2130706431 10.0.0.1 7882 typ host") == (
        "10.0.0.1",
        7882,
        2130706431,
    )
    assert parse_candidate("candidate:2 1 tcp 1 127.0.0.1 7881 typ host tcptype passive") is None
    assert parse_candidate("candidate:3 1 udp 1 ::1 7882 typ host") is None
    assert parse_candidate("candidate:4 1 udp 1 abc.local 7882 typ host") is None
    assert parse_candidate("candidate:5 2 udp 1 127.0.0.1 7882 typ host") is None
    assert parse_candidate("garbage") is None


class _Path:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def attach(self, session: IceSession) -> None:
        pass

    def detach(self, session: IceSession) -> None:
        pass

    def udp_destination(self) -> None:
        return None


def test_controlling_agent_against_our_ice_lite_server() -> None:
    registry = IceRegistry()
    session = registry.create_session("subscriber")
    agent = IceAgent(controlling=False, now=0.0)
    agent.set_remote(session.local_ufrag, session.local_pwd, lite=True)
    assert agent.controlling  # against ICE-lite the full agent controls
    assert agent.poll(0.0) == []  # no candidate yet
    agent.add_candidate(("127.0.0.1", 7882))
    [(request, address)] = agent.poll(0.0)
    assert address == ("127.0.0.1", 7882)
    message = stun.parse_message(request)
    assert "USE-CANDIDATE" in message.attributes and "ICE-CONTROLLING" in message.attributes
    response = registry.handle_stun(request, ("127.0.0.1", 40000), _Path())
    assert response is not None
    assert session.state.value == "connected"
    assert agent.handle(response, address) == []
    assert (agent.state, agent.selected) == (IceState.CONNECTED, address)
    assert agent.poll(1.0) == []
    [(keepalive, _)] = agent.poll(3.0)
    assert registry.handle_stun(keepalive, ("127.0.0.1", 40000), _Path()) is not None


def _request(agent: IceAgent, *, pwd: str, controlling: bool, tie_breaker: int) -> bytes:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{agent.local_ufrag}:server"
    message.attributes["ICE-CONTROLLING" if controlling else "ICE-CONTROLLED"] = tie_breaker
    if controlling:
        message.attributes["USE-CANDIDATE"] = None
    message.add_message_integrity(pwd.encode())
    message.add_fingerprint()
    return bytes(message)


def test_controlled_agent_answers_and_is_nominated() -> None:
    agent = IceAgent(controlling=False, now=0.0)
    agent.set_remote("server", "server-password-0123456789", lite=False)
    server = ("127.0.0.1", 7882)
    wrong = _request(agent, pwd="not-the-password-at-all", controlling=True, tie_breaker=1)
    assert agent.handle(wrong, server) == []
    replies = agent.handle(
        _request(agent, pwd=agent.local_pwd, controlling=True, tie_breaker=1), server
    )
    response = stun.parse_message(replies[0][0])
    assert response.message_class == stun.Class.RESPONSE
    assert response.attributes["XOR-MAPPED-ADDRESS"] == server
    assert response.check_message_integrity(agent.local_pwd.encode())
    assert (agent.selected, agent.controlling) == (server, False)


def test_role_conflict_resolution() -> None:
    agent = IceAgent(controlling=True, now=0.0)
    agent.set_remote("server", "server-password-0123456789", lite=False)
    agent.tie_breaker = 10
    server = ("127.0.0.1", 7882)
    [(error, _)] = agent.handle(
        _request(agent, pwd=agent.local_pwd, controlling=True, tie_breaker=5), server
    )
    assert stun.parse_message(error).attributes["ERROR-CODE"][0] == 487
    assert agent.controlling
    agent.handle(_request(agent, pwd=agent.local_pwd, controlling=True, tie_breaker=50), server)
    assert not agent.controlling


def test_agent_gives_up() -> None:
    agent = IceAgent(controlling=True, now=0.0)
    agent.set_remote("server", "pwd-pwd-pwd-pwd-pwd-pwd", lite=True)
    agent.add_candidate(("127.0.0.1", 9))
    assert len(agent.poll(0.0)) == 1
    assert agent.poll(0.1) == []  # not yet time to retry
    assert len(agent.poll(0.3)) == 1
    assert agent.poll(CONNECT_TIMEOUT_S + 1) == []
    assert agent.state is IceState.FAILED
