// Rust SDK interop, SignallingClient side (JS half). Started by crates/client/tests/interop.rs
// at the same time as a Rust `herald_client::SignallingClient` named "rust-client".
// Each side sees the other's presence with metadata, then sends one broadcast and one direct,
// and waits for the other's, checking the server-stamped sender and fromMetadata. The JS side
// ends when it sees rust-client leave (which the Rust side does after receiving both).
import { assert, connect, makeClient, mintToken, roster, scenario } from "./helpers.mjs";

const CHAT = "interop/rust-chat";
const JS_META = { username: "Node", sdk: "js" };
const RUST_META = { username: "Rust", sdk: "rust" };

scenario("rust interop: SignallingClient", async () => {
  const js = makeClient("js-client", { token: mintToken({ sub: "js-client", peerMetadata: JS_META }) });
  await connect(js);
  await js.subscribe(CHAT, { includeSenderMetadata: true });

  await js.rec.until(() => roster(js.rec, CHAT).has("rust-client"), "rust-client in the roster", 30_000);
  assert.deepEqual(roster(js.rec, CHAT).get("rust-client"), RUST_META);

  await js.publish(CHAT, { from_sdk: "js", kind: "broadcast", n: 1.5, list: [1, "two", null] });
  await js.send("rust-client", { from_sdk: "js", kind: "direct" });

  const m = await js.rec.waitFor("message", (m) => m.channel === CHAT && m.data?.from_sdk === "rust", "rust broadcast", 20_000);
  assert.equal(m.from, "rust-client");
  assert.deepEqual(m.fromMetadata, RUST_META);
  assert.deepEqual(m.data, { from_sdk: "rust", kind: "broadcast", text: "héllo ✓" });
  const d = await js.rec.waitFor("direct", (d) => d.data?.from_sdk === "rust", "rust direct", 20_000);
  assert.equal(d.from, "rust-client");
  assert.deepEqual(d.fromMetadata, RUST_META);
  assert.deepEqual(d.data, { from_sdk: "rust", kind: "direct" });

  await js.rec.until(() => !roster(js.rec, CHAT).has("rust-client"), "rust-client left", 20_000);
  assert.equal(js.rec.all("server-error").length, 0);
  await js.close();
});
