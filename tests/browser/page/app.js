// The page the browser tier drives: a thin layer over livekit-client that records what happens
// and answers in JSON. Tests call these functions through tests/js/browser_driver.mjs.
"use strict";

const LK = window.LivekitClient;
const state = { room: null, events: [], data: [], texts: [], rpcCalls: [], elements: new Map() };

function record(type, detail) {
  state.events.push({ type, at: Date.now(), ...detail });
}

function trackKey(identity, source) {
  return `${identity}/${source}`;
}

function onSubscribed(track, publication, participant) {
  record("trackSubscribed", { identity: participant.identity, source: publication.source });
  // Attached to a visible element, as an app does: adaptive stream pauses hidden video.
  const element = track.attach();
  element.muted = track.kind === "audio" ? false : true;
  document.getElementById("media").appendChild(element);
  state.elements.set(trackKey(participant.identity, publication.source), element);
}

function onUnsubscribed(track, publication, participant) {
  record("trackUnsubscribed", { identity: participant.identity, source: publication.source });
  track.detach().forEach((element) => element.remove());
  state.elements.delete(trackKey(participant.identity, publication.source));
}

function watch(room) {
  const E = LK.RoomEvent;
  room
    .on(E.TrackSubscribed, onSubscribed)
    .on(E.TrackUnsubscribed, onUnsubscribed)
    .on(E.ParticipantConnected, (p) => record("participantConnected", { identity: p.identity }))
    .on(E.ParticipantDisconnected, (p) =>
      record("participantDisconnected", { identity: p.identity }),
    )
    .on(E.TrackMuted, (pub, p) => record("trackMuted", { identity: p.identity, source: pub.source }))
    .on(E.TrackUnmuted, (pub, p) =>
      record("trackUnmuted", { identity: p.identity, source: pub.source }),
    )
    .on(E.TrackPublished, (pub, p) =>
      record("trackPublished", { identity: p.identity, source: pub.source }),
    )
    .on(E.TrackUnpublished, (pub, p) =>
      record("trackUnpublished", { identity: p.identity, source: pub.source }),
    )
    .on(E.TrackStreamStateChanged, (pub, streamState, p) =>
      record("streamState", { identity: p.identity, source: pub.source, state: streamState }),
    )
    .on(E.Reconnecting, () => record("reconnecting", {}))
    .on(E.Reconnected, () => record("reconnected", {}))
    .on(E.Disconnected, (reason) => record("disconnected", { reason }))
    .on(E.MediaDevicesError, (error) => record("mediaDevicesError", { message: String(error) }))
    .on(E.DataReceived, (payload, participant, kind, topic) => {
      state.data.push({
        text: new TextDecoder().decode(payload),
        from: participant ? participant.identity : null,
        kind: kind === LK.DataPacket_Kind.RELIABLE ? "reliable" : "lossy",
        topic: topic ?? null,
      });
    });
  room.registerTextStreamHandler("chat", async (reader, info) => {
    const text = await reader.readAll();
    state.texts.push({ text, from: info.identity, topic: "chat" });
  });
}

function trackSummary(publication) {
  return {
    sid: publication.trackSid,
    kind: publication.kind,
    source: publication.source,
    muted: publication.isMuted,
    subscribed: publication.isSubscribed ?? true,
    simulcasted: publication.simulcasted ?? false,
    mimeType: publication.mimeType ?? "",
  };
}

async function inboundStats(track) {
  const report = track.getRTCStatsReport
    ? await track.getRTCStatsReport()
    : await track.receiver.getStats();
  const found = [];
  report?.forEach((entry) => {
    if (entry.type !== "inbound-rtp") return;
    found.push({
      kind: entry.kind,
      bytesReceived: entry.bytesReceived ?? 0,
      packetsReceived: entry.packetsReceived ?? 0,
      framesDecoded: entry.framesDecoded ?? 0,
      frameWidth: entry.frameWidth ?? 0,
      frameHeight: entry.frameHeight ?? 0,
      totalAudioEnergy: entry.totalAudioEnergy ?? 0,
      codecId: entry.codecId ?? "",
      packetsLost: entry.packetsLost ?? 0,
    });
  });
  return found;
}

window.lk = {
  async connect(url, token, options = {}) {
    // What LiveKit's own examples and components use: adaptive stream and dynacast on.
    const room = new LK.Room({ adaptiveStream: true, dynacast: true, ...options });
    watch(room);
    state.room = room;
    await room.connect(url, token);
    const engine = room.engine;
    return {
      sid: room.localParticipant.sid,
      identity: room.localParticipant.identity,
      url: engine?.client?.ws?.url ?? "",
    };
  },

  async disconnect() {
    if (state.room) await state.room.disconnect();
    return null;
  },

  connectionState() {
    return state.room ? state.room.state : "none";
  },

  events() {
    return state.events;
  },

  data() {
    return state.data;
  },

  texts() {
    return state.texts;
  },

  rpcCalls() {
    return state.rpcCalls;
  },

  async enableCameraAndMicrophone() {
    await state.room.localParticipant.enableCameraAndMicrophone();
    return this.local();
  },

  async setMicrophone(enabled) {
    await state.room.localParticipant.setMicrophoneEnabled(enabled);
    return this.local();
  },

  async setCamera(enabled) {
    await state.room.localParticipant.setCameraEnabled(enabled);
    return this.local();
  },

  async screenShare(enabled) {
    await state.room.localParticipant.setScreenShareEnabled(enabled);
    return this.local();
  },

  async unpublish(source) {
    const publication = state.room.localParticipant.getTrackPublication(source);
    await state.room.localParticipant.unpublishTrack(publication.track);
    return this.local();
  },

  local() {
    const participant = state.room.localParticipant;
    return {
      sid: participant.sid,
      identity: participant.identity,
      tracks: [...participant.trackPublications.values()].map(trackSummary),
    };
  },

  remotes() {
    return [...state.room.remoteParticipants.values()].map((participant) => ({
      sid: participant.sid,
      identity: participant.identity,
      tracks: [...participant.trackPublications.values()].map(trackSummary),
    }));
  },

  async inbound(identity) {
    const participant = state.room.remoteParticipants.get(identity);
    if (!participant) return [];
    const stats = [];
    for (const publication of participant.trackPublications.values()) {
      if (!publication.track) continue;
      for (const entry of await inboundStats(publication.track)) {
        stats.push({ source: publication.source, ...entry });
      }
    }
    return stats;
  },

  // The local UDP port of the transport media arrives on (the subscriber's, or the only one
  // on /rtc/v1): where a test shapes this page's downlink.
  async mediaPort() {
    const manager = state.room.engine.pcManager;
    for (const transport of [manager.subscriber, manager.publisher]) {
      const report = await transport?.getStats();
      if (!report) continue;
      const entries = [...report.values()];
      const pair = entries.find(
        (e) => e.type === "candidate-pair" && e.nominated && e.state === "succeeded",
      );
      const local = pair && entries.find((e) => e.id === pair.localCandidateId);
      if (local && entries.some((e) => e.type === "inbound-rtp")) return local.port;
    }
    return 0;
  },

  async outbound() {
    const stats = [];
    for (const publication of state.room.localParticipant.trackPublications.values()) {
      const sender = publication.track?.sender;
      if (!sender) continue;
      (await sender.getStats()).forEach((entry) => {
        if (entry.type !== "outbound-rtp") return;
        stats.push({
          source: publication.source,
          kind: entry.kind,
          rid: entry.rid ?? null,
          ssrc: entry.ssrc,
          active: entry.active ?? null,
          packetsSent: entry.packetsSent ?? 0,
          framesEncoded: entry.framesEncoded ?? 0,
          frameWidth: entry.frameWidth ?? 0,
          frameHeight: entry.frameHeight ?? 0,
          limitation: entry.qualityLimitationReason ?? null,
        });
      });
    }
    return stats;
  },

  // Resize the element showing a remote video, as a page layout would: with adaptive stream
  // livekit-client asks the server for a layer that fits it.
  resizeVideo(identity, source, width, height) {
    const element = state.elements.get(trackKey(identity, source));
    if (!element) return false;
    element.style.width = `${width}px`;
    element.style.height = `${height}px`;
    return true;
  },

  // The colour at the centre of a remote video as the page shows it.
  centreColour(identity, source) {
    const element = state.elements.get(trackKey(identity, source));
    if (!element || !element.videoWidth) return null;
    const canvas = document.createElement("canvas");
    canvas.width = element.videoWidth;
    canvas.height = element.videoHeight;
    const context = canvas.getContext("2d");
    context.drawImage(element, 0, 0);
    const pixel = context.getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data;
    return { rgb: [pixel[0], pixel[1], pixel[2]], width: canvas.width, height: canvas.height };
  },

  async simulate(scenario) {
    await state.room.simulateScenario(scenario);
    return null;
  },

  async publishData(text, options = {}) {
    const payload = new TextEncoder().encode(text);
    await state.room.localParticipant.publishData(payload, options);
    return null;
  },

  registerRpc(method) {
    state.room.registerRpcMethod(method, async (invocation) => {
      state.rpcCalls.push({ from: invocation.callerIdentity, payload: invocation.payload });
      return `browser got ${invocation.payload}`;
    });
    return null;
  },

  async performRpc(destinationIdentity, method, payload) {
    return state.room.localParticipant.performRpc({ destinationIdentity, method, payload });
  },

  async sendText(text, topic) {
    await state.room.localParticipant.sendText(text, { topic });
    return null;
  },
};
