// Lossless reconnect as an official SDK client lives it (crates/server/tests/sdk_resume.rs).
// One SignallingClient with a JWT (a stable peer id) joins RESUME_CHANNEL as RESUME_PEER and
// prints `@READY`. The Rust side publishes, cuts the socket under it (a TCP proxy: no close
// frame), publishes more and sends a direct while it is away, then lets it back. The SDK
// reconnects and resubscribes on its own, knowing nothing of resume. A `dump` line on stdin
// waits for message n = RESUME_LAST and one direct after the reconnect, then prints `@RESULT`
// with every `n` received in arrival order, and `@DONE` after a clean close.
import readline from "node:readline";
import { assert, connect, makeClient, mintToken, scenario } from "./helpers.mjs";

const peer = process.env.RESUME_PEER;
const channel = process.env.RESUME_CHANNEL;
const last = Number(process.env.RESUME_LAST);

const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

scenario("js resume", async () => {
  const client = makeClient(peer, { token: mintToken({ sub: peer }) });
  await connect(client);
  await client.subscribe(channel);
  console.log("@READY");
  assert.equal(await nextLine(), "dump");
  const back = await client.rec.waitFor("connected", (c) => c.isReconnect, "the reconnect", 20_000);
  const backIdx = client.rec.indexOf("connected", (c) => c === back);
  await client.rec.waitFor("message", (m) => m.channel === channel && m.data?.n === last, `message ${last}`, 20_000);
  await client.rec.until(() => client.rec.since(backIdx, "direct").length >= 1, "the held direct", 20_000);
  const ns = client.rec.all("message", (m) => m.channel === channel).map((m) => m.data.n);
  const directs = client.rec.since(backIdx, "direct").map((d) => d.data);
  console.log("@RESULT " + JSON.stringify({ ns, directs }));
  await client.close();
  console.log("@DONE");
});
