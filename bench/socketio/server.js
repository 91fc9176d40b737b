// Socket.IO 4 reference server for herald-bench, written the idiomatic way: one room per
// channel, acknowledgements on every request, the default in-memory adapter, no cluster.
//
// Events (client → server, each with an ack callback):
//   "subscribe"   {channel, presence}  join the room; with presence, the ack carries the
//                                      other members and the room gets {joined:[id]}
//   "unsubscribe" {channel, presence}  leave the room; with presence, the room gets {left:[id]}
//   "publish"     {channel, data}      socket.to(room).emit("message", {channel, from, data})
//   "send"        {to, data}           io.to(socketId).emit("direct", {from, data})
// The connection's id (socket.id) is the peer id; the client learns it from the "40" packet.
//
// Usage: node server.js [port]   (prints "listening <port>" once ready; port 0 = any free one)
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || process.env.PORT || 0);
const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  maxHttpBufferSize: 1e6,
  // Like Herald's, with room for benchmark runs that keep sockets idle.
  pingInterval: 25000,
  pingTimeout: 20000,
});

io.on("connection", (socket) => {
  // Rooms joined with presence announce this socket's departure when it disconnects.
  socket.data.presenceRooms = new Set();
  socket.on("subscribe", (req, ack) => {
    const room = String(req && req.channel);
    let others = [];
    if (req && req.presence) {
      const members = io.sockets.adapter.rooms.get(room);
      if (members) others = [...members].filter((id) => id !== socket.id);
      socket.to(room).emit("presence", { channel: room, joined: [socket.id], left: [] });
    }
    socket.join(room);
    if (req && req.presence) socket.data.presenceRooms.add(room);
    if (typeof ack === "function") ack({ ok: true, joined: others });
  });
  socket.on("unsubscribe", (req, ack) => {
    const room = String(req && req.channel);
    socket.leave(room);
    socket.data.presenceRooms.delete(room);
    if (req && req.presence) {
      socket.to(room).emit("presence", { channel: room, joined: [], left: [socket.id] });
    }
    if (typeof ack === "function") ack({ ok: true });
  });
  socket.on("publish", (req, ack) => {
    const room = String(req && req.channel);
    socket.to(room).emit("message", { channel: room, from: socket.id, data: req.data });
    if (typeof ack === "function") ack({ ok: true });
  });
  socket.on("send", (req, ack) => {
    io.to(String(req && req.to)).emit("direct", { from: socket.id, data: req.data });
    if (typeof ack === "function") ack({ ok: true });
  });
  socket.on("disconnecting", () => {
    for (const room of socket.data.presenceRooms) {
      {
        socket.to(room).emit("presence", { channel: room, joined: [], left: [socket.id] });
      }
    }
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`listening ${httpServer.address().port}`);
});
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
