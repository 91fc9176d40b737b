//! A terminal presence & chat client: a live roster with names, lobby chat, direct messages,
//! a typing indicator and a connection-state line.
//!
//! Run a local Herald in dev mode, then this example in two terminals from the same directory
//! (it signs its own tokens with the dev keys Herald stored in `.herald/dev-keys.json`, as
//! your backend would with its secret key):
//!
//! ```sh
//! cargo run -p herald -- serve                                # terminal 0
//! cargo run -p herald-client --example presence_chat -- Alice # terminal 1
//! cargo run -p herald-client --example presence_chat -- Bob   # terminal 2
//! ```
//!
//! Type to chat in the lobby; `/dm Bob see you` sends a direct message; `/who` lists who is
//! online; `/quit` (or Ctrl-D, Ctrl-C) leaves. Restart Herald while chatting: the client
//! reconnects, rejoins the lobby and rebuilds the roster by itself.
//!
//! Options: `--url ws://127.0.0.1:8080` (or `HERALD_URL`), `--keys .herald/dev-keys.json`.
//!
//! Wire conventions: chat is `{"type":"chat","text":…}` and typing is
//! `{"type":"typing","typing":bool}`, both published to `lobby`; a direct message is
//! `{"type":"dm","text":…}`. Names come from the JWT's `peerMetadata.username`, which Herald
//! stamps on presence entries and, because the lobby is joined with `include_sender_metadata`,
//! on every message.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald_client::{
    ConnectionEvent, ConnectionState, Metadata, SignallingClient, SignallingClientOptions,
    SubscribeOptions,
};
use herald_protocol::{jwt, Claims};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

const LOBBY: &str = "lobby";
/// Someone stops showing as typing after this long without news (a lost `typing:false`).
const TYPING_TTL: Duration = Duration::from_secs(5);
/// `typing:true` is repeated at most this often while the user keeps typing.
const TYPING_REFRESH: Duration = Duration::from_secs(3);

/// The dev keys `herald serve` writes in dev mode.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DevKeys {
    secret_key_id: String,
    secret: String,
}

struct Args {
    name: String,
    url: String,
    keys: String,
}

fn parse_args() -> Result<Args, AnyError> {
    let mut name = None;
    let mut url = std::env::var("HERALD_URL").unwrap_or_else(|_| "ws://127.0.0.1:8080".into());
    let mut keys = ".herald/dev-keys.json".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--url" => url = args.next().ok_or("--url needs a value")?,
            "--keys" => keys = args.next().ok_or("--keys needs a value")?,
            other if other.starts_with("--") => {
                return Err(format!("unknown option {other}").into())
            }
            other => name = Some(other.to_string()),
        }
    }
    let name = name.ok_or(
        "usage: presence_chat NAME [--url ws://127.0.0.1:8080] [--keys .herald/dev-keys.json]",
    )?;
    Ok(Args { name, url, keys })
}

/// Mints a one-hour JWT for `name`, the way a backend would. The client calls this again on
/// every reconnect, so an expired token is simply replaced.
fn mint(keys: &DevKeys, name: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let peer_id: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect::<String>()
        .to_lowercase();
    let metadata = serde_json::value::to_raw_value(&json!({ "username": name })).ok();
    let claims = Claims {
        sub: if peer_id.is_empty() {
            "guest".into()
        } else {
            peer_id
        },
        exp: Some(now + 3600),
        iat: Some(now),
        peer_metadata: metadata,
        ..Claims::default()
    };
    jwt::sign(&keys.secret_key_id, keys.secret.as_bytes(), &claims)
}

fn username(metadata: Option<&Metadata>, peer_id: &str) -> String {
    metadata
        .and_then(|m| m.get("username"))
        .and_then(Value::as_str)
        .unwrap_or(peer_id)
        .to_string()
}

/// Puts the terminal in character mode (no line buffering, no echo) for the typing indicator
/// and puts it back on drop. Uses `stty`, so no terminal library is needed; when stdin is not
/// a terminal the example reads whole lines instead.
struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    fn enter() -> RawTerminal {
        let active = std::io::stdin().is_terminal()
            && std::process::Command::new("stty")
                .args(["-icanon", "-echo", "min", "1"])
                .stdin(std::process::Stdio::inherit())
                .status()
                .is_ok_and(|s| s.success());
        RawTerminal { active }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            let _ = std::process::Command::new("stty")
                .args(["icanon", "echo"])
                .stdin(std::process::Stdio::inherit())
                .status();
        }
    }
}

/// Everything on screen: the roster, who is typing, the connection state, the input line.
struct Screen {
    me: String,
    state: String,
    /// peer id → display name.
    roster: BTreeMap<String, String>,
    typing: HashMap<String, Instant>,
    input: Vec<u8>,
    /// The next presence frame of the lobby is the full snapshot (after a reconnect).
    expect_snapshot: bool,
}

impl Screen {
    fn prompt(&self) -> String {
        let now = Instant::now();
        let mut typing: Vec<&str> = self
            .typing
            .iter()
            .filter(|(_, at)| now.duration_since(**at) < TYPING_TTL)
            .filter_map(|(id, _)| self.roster.get(id).map(String::as_str))
            .collect();
        typing.sort_unstable();
        let typing = match typing.as_slice() {
            [] => String::new(),
            [one] => format!(" · {one} is typing…"),
            many => format!(" · {} are typing…", many.join(", ")),
        };
        format!(
            "[{} · {} online{typing}] {}> {}",
            self.state,
            self.roster.len() + 1,
            self.me,
            String::from_utf8_lossy(&self.input)
        )
    }

    /// Prints a line above the prompt, then redraws the prompt.
    fn say(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r\x1b[K{line}\n{}", self.prompt());
        let _ = out.flush();
    }

    fn redraw(&self) {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r\x1b[K{}", self.prompt());
        let _ = out.flush();
    }

    fn who(&self) -> String {
        let mut names: Vec<&str> = self.roster.values().map(String::as_str).collect();
        names.push(&self.me);
        names.sort_unstable();
        format!("online: {}", names.join(", "))
    }

    fn find(&self, name: &str) -> Option<String> {
        self.roster
            .iter()
            .find(|(id, n)| n.eq_ignore_ascii_case(name) || id.as_str() == name)
            .map(|(id, _)| id.clone())
    }
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let args = parse_args()?;
    let keys: DevKeys =
        serde_json::from_str(&std::fs::read_to_string(&args.keys).map_err(|e| {
            format!(
                "{}: {e} (run `herald serve` in this directory first)",
                args.keys
            )
        })?)?;
    let name = args.name.clone();
    let client = SignallingClient::new(
        SignallingClientOptions::token_provider(move || {
            let token = mint(&keys, &name);
            async move { Ok::<_, std::io::Error>(token) }
        })
        .with_url(&args.url),
    )?;
    let mut presence = client.presence();
    let mut messages = client.messages();
    let mut directs = client.directs();
    let mut connection = client.connection_events();
    let mut going_away = client.going_away();

    client.connect().await?;
    let lobby = SubscribeOptions {
        include_sender_metadata: true,
    };
    client.subscribe(LOBBY, lobby).await?;

    let terminal = RawTerminal::enter();
    let mut screen = Screen {
        me: args.name.clone(),
        state: "connected".into(),
        roster: BTreeMap::new(),
        typing: HashMap::new(),
        input: Vec::new(),
        expect_snapshot: false,
    };
    screen.say(&format!(
        "joined #{LOBBY} at {} as {} — /dm NAME TEXT, /who, /quit",
        args.url, args.name
    ));
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    let mut last_typing_sent: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));

    loop {
        tokio::select! {
            Some(p) = presence.next() => {
                if p.channel != LOBBY { continue; }
                if screen.expect_snapshot {
                    screen.roster.clear();
                    screen.expect_snapshot = false;
                }
                for j in &p.joined {
                    let n = username(j.metadata.as_ref(), &j.peer_id);
                    screen.say(&format!("→ {n} is online"));
                    screen.roster.insert(j.peer_id.clone(), n);
                }
                for l in &p.left {
                    if let Some(n) = screen.roster.remove(&l.peer_id) {
                        screen.typing.remove(&l.peer_id);
                        screen.say(&format!("← {n} left"));
                    }
                }
                screen.redraw();
            }
            Some(m) = messages.next() => {
                let who = username(m.from_metadata.as_ref(), &m.from);
                match m.data["type"].as_str() {
                    Some("chat") => {
                        screen.typing.remove(&m.from);
                        screen.say(&format!("<{who}> {}", m.data["text"].as_str().unwrap_or("")));
                    }
                    Some("typing") => {
                        if m.data["typing"].as_bool() == Some(true) {
                            screen.typing.insert(m.from.clone(), Instant::now());
                        } else {
                            screen.typing.remove(&m.from);
                        }
                        screen.redraw();
                    }
                    _ => {}
                }
            }
            Some(d) = directs.next() => {
                let who = username(d.from_metadata.as_ref(), &d.from);
                if d.data["type"] == "dm" {
                    screen.say(&format!("*{who} → you* {}", d.data["text"].as_str().unwrap_or("")));
                }
            }
            Some(g) = going_away.next() => {
                screen.say(&format!("· the server is restarting (retry hint {:?})", g.retry_after));
            }
            Some(event) = connection.next() => {
                match event {
                    ConnectionEvent::StateChanged { to, .. } => {
                        screen.state = match to {
                            ConnectionState::Connected => "connected".into(),
                            ConnectionState::Reconnecting => "reconnecting…".into(),
                            ConnectionState::Closed => "offline".into(),
                            other => format!("{other:?}").to_lowercase(),
                        };
                        screen.redraw();
                    }
                    ConnectionEvent::Connected { is_reconnect: true, .. } => {
                        // The lobby subscription is replayed; its snapshot rebuilds the roster.
                        screen.expect_snapshot = true;
                        screen.say("· reconnected");
                    }
                    ConnectionEvent::Disconnected { code, reason, will_reconnect } => {
                        // Report the drop of a live connection, not every failed retry.
                        if screen.state != "connected" && will_reconnect {
                            continue;
                        }
                        screen.say(&format!(
                            "· disconnected ({code}{}){}",
                            if reason.is_empty() { String::new() } else { format!(": {reason}") },
                            if will_reconnect { ", reconnecting" } else { "" }
                        ));
                        if !will_reconnect { break; }
                    }
                    _ => {}
                }
            }
            read = stdin.read(&mut buf) => {
                let n = match read { Ok(0) | Err(_) => break, Ok(n) => n };
                let mut lines = Vec::new();
                for &b in &buf[..n] {
                    match b {
                        b'\n' | b'\r' => lines.push(String::from_utf8_lossy(&std::mem::take(&mut screen.input)).into_owned()),
                        0x7f | 0x08 => {
                            while screen.input.last().is_some_and(|c| c & 0xc0 == 0x80) {
                                screen.input.pop();
                            }
                            screen.input.pop();
                        }
                        0x04 if terminal.active && screen.input.is_empty() => lines.push("/quit".into()),
                        b if b >= 0x20 => screen.input.push(b),
                        _ => {}
                    }
                }
                // Typing: announce when the line starts (and now and then while it grows).
                let typing_now = !screen.input.is_empty();
                if typing_now && last_typing_sent.is_none_or(|at| at.elapsed() >= TYPING_REFRESH) {
                    last_typing_sent = Some(Instant::now());
                    let _ = client.publish(LOBBY, json!({"type": "typing", "typing": true})).await;
                }
                if terminal.active { screen.redraw(); }
                for line in lines {
                    if last_typing_sent.take().is_some() {
                        let _ = client.publish(LOBBY, json!({"type": "typing", "typing": false})).await;
                    }
                    let line = line.trim();
                    if line.is_empty() {
                        screen.redraw();
                        continue;
                    }
                    if line == "/quit" {
                        screen.say("bye");
                        client.dispose().await;
                        drop(terminal);
                        println!();
                        return Ok(());
                    }
                    if line == "/who" {
                        screen.say(&screen.who());
                        continue;
                    }
                    if let Some(rest) = line.strip_prefix("/dm ") {
                        let (to, text) = rest.split_once(' ').unwrap_or((rest, ""));
                        match screen.find(to) {
                            Some(peer_id) => match client.send(&peer_id, json!({"type": "dm", "text": text})).await {
                                Ok(()) => screen.say(&format!("*you → {to}* {text}")),
                                Err(e) => screen.say(&format!("· could not send: {e}")),
                            },
                            None => screen.say(&format!("· nobody called {to} is online")),
                        }
                        continue;
                    }
                    match client.publish(LOBBY, json!({"type": "chat", "text": line})).await {
                        Ok(()) => screen.say(&format!("<{}> {line}", screen.me)),
                        Err(e) => screen.say(&format!("· not sent ({e})")),
                    }
                }
            }
            _ = tick.tick() => {
                // Expire stale typing indicators.
                let before = screen.typing.len();
                screen.typing.retain(|_, at| at.elapsed() < TYPING_TTL);
                if screen.typing.len() != before { screen.redraw(); }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.dispose().await;
    drop(terminal);
    println!();
    Ok(())
}
