// Drives the server API with the official livekit-server-sdk (npm), as a Node backend would.
// Usage: node roomservice.mjs <http url> <api key> <api secret> <room> <watcher identity>
// Prints one JSON object with what each call returned, for the Python test to check.
import {
  AgentDispatchClient,
  DataPacket_Kind,
  RoomServiceClient,
} from "livekit-server-sdk";

const [url, key, secret, room, watcher] = process.argv.slice(2);
const rooms = new RoomServiceClient(url, key, secret);
const dispatches = new AgentDispatchClient(url, key, secret);
const result = {};

async function failure(call) {
  try {
    await call();
    return { code: "none" };
  } catch (error) {
    return { code: error.code, status: error.status, message: error.message };
  }
}

const created = await rooms.createRoom({ name: `${room}-made`, emptyTimeout: 42, metadata: "js" });
result.created = { sid: created.sid, emptyTimeout: created.emptyTimeout, metadata: created.metadata };
result.listed = (await rooms.listRooms([room, `${room}-made`])).map((r) => r.name).sort();
const updatedRoom = await rooms.updateRoomMetadata(room, "js-room-metadata");
result.roomMetadata = updatedRoom.metadata;
result.participants = (await rooms.listParticipants(room)).map((p) => p.identity);
const updated = await rooms.updateParticipant(room, watcher, { metadata: "from-js", name: "JS Named" });
result.updated = { metadata: updated.metadata, name: updated.name };
await rooms.sendData(room, new TextEncoder().encode("hello from js"), DataPacket_Kind.RELIABLE, {
  topic: "js",
});
result.unknownParticipant = await failure(() => rooms.getParticipant(room, "nobody"));
const dispatch = await dispatches.createDispatch(room, "js-agent", { metadata: "m" });
result.dispatch = { id: dispatch.id, agentName: dispatch.agentName };
result.dispatches = (await dispatches.listDispatch(room)).map((d) => d.agentName);
await dispatches.deleteDispatch(dispatch.id, room);
result.dispatchesAfterDelete = (await dispatches.listDispatch(room)).length;
await rooms.deleteRoom(`${room}-made`);
result.deletedAgain = await failure(() => rooms.deleteRoom(`${room}-made`));
const stranger = new RoomServiceClient(url, key, "a-secret-that-is-not-the-right-one-at-all");
result.badSecret = await failure(() => stranger.listRooms());
console.log(JSON.stringify(result));
