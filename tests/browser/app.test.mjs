// The demo app at `/`, in headless Chromium, against a real `herald serve` in dev mode.
//
// Alice and Bob sign in from two browser contexts and the tests build on each other: roster,
// chat both ways, rooms, a direct message, typing, a reaction, Carol leaving, a server restart,
// hostile input, and a video call made with the app's own WebRTC code. A last test starts a
// production-style Herald where dev tokens are off and checks the sign-in says so.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import {
  Herald,
  MEDIA_FLAGS,
  launchChromium,
  log,
  requirePrerequisites,
  screenshotPath,
  sleep,
  until,
  watchPage,
} from "./lib/harness.mjs";

/**
 * The roster must drop a user who left within a second (the requirement). Measured
 * from the moment the leaver's browser context starts closing until both remaining pages have
 * removed the entry; the suite runs alone (see .config/nextest.toml), so this is not a race
 * against other test processes. HERALD_LEAVE_BOUND_MS can loosen it on a very slow machine.
 */
const LEAVE_BOUND_MS = Number(process.env.HERALD_LEAVE_BOUND_MS || 1000);

let herald;
let browser;
const users = [];

async function signIn(name, { color = 0, avatarUrl = "" } = {}) {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 800 },
    permissions: ["camera", "microphone"],
  });
  const page = await context.newPage();
  const problems = watchPage(page, name);
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws.url()));
  // Any CSP violation means something tried to run or load that should not have.
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  await page.goto(`${herald.origin}/`);
  await page.locator("#signin-name").fill(name);
  await page.locator(`label[for="swatch-${color}"]`).click();
  if (avatarUrl) await page.locator("#signin-avatar").fill(avatarUrl);
  await page.locator("#signin-submit").click();
  await page.waitForSelector('#conn-status[data-state="connected"]', { timeout: 10_000 });
  const peerId = await page.evaluate(() => JSON.parse(sessionStorage.getItem("herald-demo-profile")).peerId);
  const user = { name, context, page, peerId, problems, sockets };
  users.push(user);
  log(`${name} signed in as ${peerId}`);
  return user;
}

const rosterEntry = (user, other) => user.page.locator(`#roster li[data-peer="${other.peerId}"]`);

async function waitInRoster(user, other) {
  await rosterEntry(user, other).waitFor({ timeout: 10_000 });
}

async function say(user, text) {
  await user.page.locator("#composer-input").fill(text);
  await user.page.locator("#composer-send").click();
}

/** The last message in the open conversation from `from`, with the given text. */
function messageFrom(user, from, text) {
  return user.page.locator(`#messages li.msg[data-from="${from.peerId}"]`).filter({ hasText: text }).last();
}

async function openRoom(user, room) {
  await user.page.locator(`#rooms button[data-room="${room}"]`).click();
  await user.page.waitForFunction((r) => document.getElementById("conv-title").textContent === `# ${r}`, room);
}

let alice;
let bob;
let carol;

describe("Herald demo app in Chromium", () => {
  before(async () => {
    await requirePrerequisites();
    herald = new Herald({ name: "herald-app" });
    await herald.start();
    browser = await launchChromium(MEDIA_FLAGS);
  });

  after(async () => {
    for (const u of users) {
      if (u.problems.length) log(`${u.name} page problems:`, u.problems);
    }
    await browser?.close();
    await herald?.stop();
  });

  test("the page is served with a strict CSP and loads nothing from elsewhere", async () => {
    const res = await fetch(`${herald.origin}/`);
    assert.equal(res.status, 200);
    const csp = res.headers.get("content-security-policy");
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self';/);
    const context = await browser.newContext();
    const page = await context.newPage();
    const requested = [];
    page.on("request", (req) => requested.push(req.url()));
    await page.goto(`${herald.origin}/`);
    await page.waitForSelector("#signin-form");
    await page.waitForLoadState("networkidle");
    const foreign = requested.filter((u) => !u.startsWith(herald.origin));
    assert.deepEqual(foreign, [], "every request goes to Herald itself");
    await context.close();
  });

  test("two people see each other in the roster, with name and avatar", async () => {
    alice = await signIn("Alice", { color: 0 });
    bob = await signIn("Bob", { color: 2 });
    await waitInRoster(alice, bob);
    await waitInRoster(bob, alice);
    assert.equal(await rosterEntry(alice, bob).locator(".name").textContent(), "Bob");
    assert.equal(await rosterEntry(bob, alice).locator(".name").textContent(), "Alice");
    // The avatar: the initial on the colour picked at sign-in (the palette's 1st and 3rd).
    const bobAvatar = rosterEntry(alice, bob).locator(".avatar");
    assert.equal(await bobAvatar.locator(".avatar-initial").textContent(), "B");
    assert.equal(await bobAvatar.evaluate((n) => getComputedStyle(n).backgroundColor), "rgb(5, 150, 105)");
    const aliceAvatar = rosterEntry(bob, alice).locator(".avatar");
    assert.equal(await aliceAvatar.evaluate((n) => getComputedStyle(n).backgroundColor), "rgb(79, 70, 229)");
    // Each sees themself too, marked "you", and the count covers both.
    assert.equal(await alice.page.locator("#roster li.me .name").textContent(), "Alice");
    assert.equal(await alice.page.locator("#roster-count").textContent(), "2");
  });

  test("lobby chat both ways, names from sender metadata, one WebSocket for all rooms", async () => {
    await say(alice, "Hi Bob, welcome to the lobby!");
    const atBob = messageFrom(bob, alice, "Hi Bob, welcome to the lobby!");
    await atBob.waitFor();
    assert.equal(await atBob.locator(".author").textContent(), "Alice");
    await say(bob, "Thanks Alice. Nice and fast.");
    const atAlice = messageFrom(alice, bob, "Thanks Alice. Nice and fast.");
    await atAlice.waitFor();
    assert.equal(await atAlice.locator(".author").textContent(), "Bob");
    // Alice's own message is confirmed (acked), not left "sending".
    await alice.page.locator("#messages li.msg.mine.sent").first().waitFor();

    // A second room on the same connection: messages stay in their room.
    await openRoom(alice, "random");
    await openRoom(bob, "random");
    await say(bob, "Over in #random now");
    await messageFrom(alice, bob, "Over in #random now").waitFor();
    await openRoom(alice, "lobby");
    assert.equal(await alice.page.locator("#messages").getByText("Over in #random now").count(), 0);
    // Bob posts in #random while Alice is in the lobby: an unread badge.
    await say(bob, "Anyone?");
    await alice.page.locator('#rooms button[data-room="random"] .badge').waitFor();
    await openRoom(bob, "lobby");
    assert.equal(alice.sockets.length, 1, "lobby and #random share one WebSocket");
    assert.match(alice.sockets[0], /\/v1\?token=/);
  });

  test("a direct message opens in its own pane", async () => {
    await rosterEntry(alice, bob).hover();
    await rosterEntry(alice, bob).locator(".dm-btn").click();
    await alice.page.waitForFunction(() => document.getElementById("conv-title").textContent === "Bob");
    await say(alice, "Psst, this one is just for you");
    // Bob gets a new conversation in the sidebar with an unread badge; the lobby does not show it.
    const dmButton = bob.page.locator(`#dms button[data-dm="${alice.peerId}"]`);
    await dmButton.locator(".badge").waitFor();
    assert.equal(await bob.page.locator("#messages").getByText("Psst, this one is just for you").count(), 0);
    await dmButton.click();
    await bob.page.waitForFunction(() => document.getElementById("conv-title").textContent === "Alice");
    await messageFrom(bob, alice, "Psst, this one is just for you").waitFor();
    await say(bob, "Got it");
    await messageFrom(alice, bob, "Got it").waitFor();
    await openRoom(alice, "lobby");
    await openRoom(bob, "lobby");
  });

  test("a typing indicator appears, then expires", async () => {
    await alice.page.locator("#composer-input").pressSequentially("I am typ", { delay: 20 });
    await bob.page.waitForFunction(() => document.getElementById("typing").textContent === "Alice is typing…", null, {
      timeout: 5_000,
    });
    const shownAt = Date.now();
    await bob.page.waitForFunction(() => document.getElementById("typing").textContent === "", null, { timeout: 8_000 });
    const gone = Date.now() - shownAt;
    log(`typing indicator expired after ${gone} ms`);
    assert.ok(gone >= 2_000, `the indicator lingers while it is fresh (${gone} ms)`);
    await alice.page.locator("#composer-input").fill("");
  });

  test("an emoji reaction reaches the other person", async () => {
    const msg = messageFrom(bob, alice, "Hi Bob, welcome to the lobby!");
    await msg.hover();
    await msg.locator('.msg-actions button[data-emoji="🎉"]').click();
    await msg.locator('.reactions button.reaction.mine[data-emoji="🎉"]').waitFor();
    const atAlice = alice.page.locator("#messages li.msg.mine").filter({ hasText: "Hi Bob, welcome to the lobby!" });
    const chip = atAlice.locator('.reactions button.reaction[data-emoji="🎉"]');
    await chip.waitFor();
    assert.equal(await chip.locator(".reaction-count").textContent(), "1");
    assert.equal(await chip.getAttribute("title"), "Bob");
    // Alice adds hers: both see 2.
    await chip.click();
    await bob.page.waitForFunction(
      () => [...document.querySelectorAll('#messages .reaction[data-emoji="🎉"] .reaction-count')].some((n) => n.textContent === "2"),
    );
  });

  test("a third person joins and leaves; the roster updates within a second", async () => {
    carol = await signIn("Carol", { color: 5 });
    await waitInRoster(alice, carol);
    await waitInRoster(bob, carol);
    await say(carol, "Hello both! Just passing through.");
    await messageFrom(alice, carol, "Hello both! Just passing through.").waitFor();
    await say(alice, "Hi Carol 👋 the roster updated the moment you joined");
    const hi = messageFrom(carol, alice, "Hi Carol");
    await hi.hover();
    await hi.locator('.msg-actions button[data-emoji="❤️"]').click();
    await alice.page.locator('#messages li.msg.mine .reaction[data-emoji="❤️"]').waitFor();
    await bob.page.locator("#composer-input").pressSequentially("Hi Carol", { delay: 15 });
    await alice.page.waitForFunction(() => document.getElementById("typing").textContent === "Bob is typing…");

    // The screenshot for the README: three people, chat, a reaction, and someone typing.
    await alice.page.mouse.move(640, 790);
    await alice.page.screenshot({ path: screenshotPath("chat.png") });

    const gone = (user) =>
      user.page.waitForFunction((id) => !document.querySelector(`#roster li[data-peer="${id}"]`), carol.peerId, {
        timeout: 10_000,
        polling: 10,
      });
    const t0 = Date.now();
    const closing = carol.context.close();
    await Promise.all([gone(alice), gone(bob)]);
    const elapsed = Date.now() - t0;
    await closing;
    users.splice(users.indexOf(carol), 1);
    log(`roster dropped Carol after ${elapsed} ms (bound ${LEAVE_BOUND_MS} ms)`);
    assert.ok(elapsed <= LEAVE_BOUND_MS, `roster updated after ${elapsed} ms, more than ${LEAVE_BOUND_MS} ms`);
    await alice.page.locator("#messages li.note").filter({ hasText: "Carol left" }).waitFor();
    assert.equal(await alice.page.locator("#roster-count").textContent(), "2");
    await bob.page.locator("#composer-input").fill("");
  });

  test("a server restart: both pages show reconnecting, recover, and chat again", async () => {
    await herald.stop();
    for (const user of [alice, bob]) {
      // State, countdown and banner, read together (the state flips to "connecting" at each try).
      await user.page.waitForFunction(
        () =>
          document.getElementById("conn-status").dataset.state === "reconnecting" &&
          /^Reconnecting in \d+ s…$/.test(document.getElementById("conn-text").textContent) &&
          /Reconnecting in \d+ s…/.test(document.getElementById("conn-banner-text").textContent) &&
          !document.getElementById("conn-banner").hidden,
        null,
        { timeout: 10_000 },
      );
    }
    await alice.page.screenshot({ path: screenshotPath("reconnecting.png") });
    await sleep(1_000);
    await herald.start();
    for (const user of [alice, bob]) {
      await user.page.waitForSelector('#conn-status[data-state="connected"]', { timeout: 20_000 });
    }
    await waitInRoster(alice, bob);
    await waitInRoster(bob, alice);
    assert.ok(await alice.page.locator("#conn-banner").isHidden());
    await say(bob, "Back after the restart");
    await messageFrom(alice, bob, "Back after the restart").waitFor();
    await say(alice, "Welcome back");
    await messageFrom(bob, alice, "Welcome back").waitFor();
  });

  test("hostile names and messages render as text", async () => {
    const evilName = `<img src=x onerror="window.__pwned=1">`;
    const evilText = `<script>window.__pwned=2</script><b>bold?</b><img src=x onerror=window.__pwned=3>`;
    const mallory = await signIn(evilName, { color: 4 });
    await waitInRoster(alice, mallory);
    await say(mallory, evilText);

    // A raw-protocol attacker skips the UI: hand-signed metadata and hostile payload shapes.
    const keys = herald.devKeys();
    const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
    const now = Math.floor(Date.now() / 1000);
    const body = `${b64({ alg: "HS256", typ: "JWT", kid: keys.secretKeyId })}.${b64({
      sub: "raw-attacker",
      exp: now + 600,
      peerMetadata: {
        username: "<svg onload=window.__pwned=4>",
        avatarUrl: "javascript:window.__pwned=5",
        color: "red;background:url(http://127.0.0.1:1/leak)",
      },
    })}`;
    const token = `${body}.${crypto.createHmac("sha256", keys.secret).update(body).digest("base64url")}`;
    const ws = new WebSocket(`${herald.wsOrigin}/v1?token=${token}`, { allowSynchronousEvents: false });
    const frames = [];
    ws.on("message", (m) => frames.push(JSON.parse(m.toString())));
    await new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    });
    await until(() => frames.some((f) => f.type === "welcome"), { message: "attacker welcome" });
    const sendFrame = (f) => ws.send(JSON.stringify(f));
    sendFrame({ type: "subscribe", channel: "demo/lobby", requestId: "s1" });
    await until(() => frames.some((f) => f.type === "ack" && f.requestId === "s1"), { message: "attacker subscribed" });
    sendFrame({ type: "publish", channel: "demo/lobby", requestId: "p1", data: { kind: "chat", id: `"><img src=x onerror=window.__pwned=6>`, text: "<iframe src=javascript:window.__pwned=7></iframe>" } });
    sendFrame({ type: "publish", channel: "demo/lobby", requestId: "p2", data: { kind: "reaction", target: "x", emoji: "<img src=x onerror=window.__pwned=8>" } });
    sendFrame({ type: "publish", channel: "demo/lobby", requestId: "p3", data: { kind: "chat", id: 7, text: { html: "<b>" } } });
    sendFrame({ type: "send", to: alice.peerId, requestId: "d1", data: { kind: "chat", id: "dm-evil", text: "<a href=javascript:window.__pwned=9>click</a>" } });
    await until(() => ["p1", "p2", "p3", "d1"].every((id) => frames.some((f) => f.requestId === id)), { message: "attacker acks" });

    await waitInRoster(alice, { peerId: "raw-attacker" });
    await messageFrom(alice, mallory, "window.__pwned=2").waitFor();
    await messageFrom(alice, { peerId: "raw-attacker" }, "<iframe").waitFor();
    await alice.page.locator('#dms button[data-dm="raw-attacker"]').waitFor();

    for (const user of [alice, bob]) {
      const page = user.page;
      const evilMsg = messageFrom(user, mallory, "window.__pwned=2");
      assert.equal(await evilMsg.locator(".author").textContent(), evilName);
      assert.equal(await evilMsg.locator(".text").textContent(), evilText);
      assert.equal(await rosterEntry(user, mallory).locator(".name").textContent(), evilName);
      const raw = rosterEntry(user, { peerId: "raw-attacker" });
      assert.equal(await raw.locator(".name").textContent(), "<svg onload=window.__pwned=4>");
      assert.equal(await raw.locator("img").count(), 0, "a javascript: avatar URL is not loaded");
      const verdict = await page.evaluate(() => ({
        pwned: window.__pwned,
        csp: window.__csp,
        // No element was built from user content: only the app's own avatar images exist.
        injected: document.querySelectorAll(
          "#messages img, #messages script, #messages iframe, #messages b, #messages a, #roster img, #roster svg, #dms img, #dms a",
        ).length,
      }));
      assert.deepEqual(verdict, { pwned: undefined, csp: [], injected: 0 }, `${user.name}: nothing ran or was injected`);
    }
    await alice.page.screenshot({ path: screenshotPath("xss.png") });
    ws.close();
    await mallory.context.close();
    users.splice(users.indexOf(mallory), 1);
    await alice.page.waitForFunction(() => !document.querySelector('#roster li[data-peer="raw-attacker"]'));
  });

  test("a video call between two people, signalled through Herald", async () => {
    await rosterEntry(alice, bob).hover();
    await rosterEntry(alice, bob).locator(".call-btn").click();
    await bob.page.locator("#incoming-call").waitFor();
    assert.equal(await bob.page.locator("#incoming-name").textContent(), "Alice");
    await bob.page.locator("#accept-call").click();
    for (const user of [alice, bob]) {
      await user.page.waitForSelector('#call-panel[data-phase="active"]', { timeout: 15_000 });
      await user.page.waitForFunction(
        () => {
          const v = document.getElementById("remote-video");
          return v.videoWidth > 0 && v.readyState >= 2 && !v.paused;
        },
        null,
        { timeout: 15_000 },
      );
    }
    await sleep(500); // a few frames of the fake camera
    await alice.page.screenshot({ path: screenshotPath("call-app.png") });
    await alice.page.locator("#hangup").click();
    await bob.page.waitForSelector("#call-panel", { state: "hidden", timeout: 5_000 });
    await alice.page.waitForSelector("#call-panel", { state: "hidden" });
  });

  test("an admin kick closes the page's connection for good, and it says why", async () => {
    const keys = herald.devKeys();
    const res = await fetch(`${herald.origin}/v1/peers/${bob.peerId}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${keys.secretKeyId}:${keys.secret}` },
    });
    assert.equal(res.status, 200, await res.text());
    await bob.page.waitForSelector('#conn-status[data-state="closed"]', { timeout: 5_000 });
    assert.equal(await bob.page.locator("#conn-text").textContent(), "Closed: disconnected by admin");
    assert.match(await bob.page.locator("#conn-banner-text").textContent(), /disconnected by admin \(code 4020\)/);
    // 4020 is terminal: no reconnect, and Alice sees Bob leave.
    await alice.page.waitForFunction((id) => !document.querySelector(`#roster li[data-peer="${id}"]`), bob.peerId);
    const socketsAtKick = bob.sockets.length;
    await bob.page.waitForTimeout(1_500);
    assert.equal(await bob.page.locator("#conn-status").getAttribute("data-state"), "closed");
    assert.equal(bob.sockets.length, socketsAtKick, "no new WebSocket after the kick");
  });

  test("no page errors along the way", () => {
    for (const u of users) assert.deepEqual(u.problems, [], `${u.name}`);
  });
});

describe("dev tokens switched off in a production config", () => {
  let prod;
  let prodBrowser;
  before(async () => {
    await requirePrerequisites();
    prod = new Herald({
      name: "herald-prod",
      config: [
        "[web]",
        "demo = true",
        "dev_tokens = false",
        "",
        "[[apps]]",
        'id = "app_prod"',
        "[[apps.secret_keys]]",
        'id = "sk_id_prod"',
        'secret = "sk_secret_prod_0123456789abcdef"',
        "",
      ].join("\n"),
    });
    await prod.start();
    prodBrowser = await launchChromium();
  });
  after(async () => {
    await prodBrowser?.close();
    await prod?.stop();
  });

  test("sign-in explains that the dev token endpoint is disabled", async () => {
    const res = await prod.devToken({ username: "Eve" });
    assert.equal(res.status, 403);
    assert.equal(res.body.error, "dev_tokens_disabled");
    const page = await prodBrowser.newPage();
    await page.goto(`${prod.origin}/`);
    await page.locator("#signin-name").fill("Eve");
    await page.locator("#signin-submit").click();
    const error = page.locator("#signin-error");
    await error.waitFor();
    assert.match(await error.textContent(), /disabled on this server/);
    assert.ok(await page.locator("#app").isHidden());
    await page.screenshot({ path: screenshotPath("dev-tokens-disabled.png") });
  });
});
