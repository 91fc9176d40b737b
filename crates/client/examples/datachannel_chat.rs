//! Chat over WebRTC data channels with every peer in a room, browsers running the official
//! `MeteredPeer` included: the Rust peer opens a data channel (label `herald`) to each remote
//! and takes any channel a remote opens; lines you type go to everyone over those channels.
//!
//! ```sh
//! cargo run -p herald -- serve                                            # dev mode
//! cargo run -p herald-client --features webrtc --example datachannel_chat -- Alice calls/room-1
//! ```
//!
//! Then open a `MeteredPeer` page in the same room (the demo app's call, or
//! tests/browser/rtc-page), or run the example again as Bob. Tokens come from Herald's dev
//! endpoint `POST /dev/token`, so this needs a Herald in dev mode; set `HERALD_URL`
//! (default `ws://127.0.0.1:8080`). Typed lines are sent as text messages; received binary
//! messages are shown as their length. The remote's video RTP is counted and shown by `/stats`;
//! with `HERALD_RECORD=<dir>`, every remote track is also recorded there (VP8/VP9 video as
//! `.ivf`, Opus audio as `.ogg`, playable with ffplay or VLC).
//! `/quit` or Ctrl-D leaves.

use herald_client::rtc::{RtcEvent, RtcOptions, RtcPeer};
use herald_client::{PeerOptions, SignallingClientOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "rust".into());
    let room = args.next().unwrap_or_else(|| "calls/room-1".into());
    let ws = std::env::var("HERALD_URL").unwrap_or_else(|_| "ws://127.0.0.1:8080".into());
    let http = ws.replacen("ws", "http", 1);

    let token_name = name.clone();
    let provider = move || {
        let (http, name) = (http.clone(), token_name.clone());
        async move {
            let body: Value = reqwest::Client::new()
                .post(format!("{http}/dev/token"))
                .json(&json!({"username": name}))
                .send()
                .await?
                .json()
                .await?;
            Ok::<_, reqwest::Error>(body["token"].as_str().unwrap_or_default().to_owned())
        }
    };
    let options = PeerOptions::new(SignallingClientOptions::token_provider(provider).with_url(ws));
    let rtc = RtcOptions {
        record_dir: std::env::var_os("HERALD_RECORD").map(std::path::PathBuf::from),
        ..RtcOptions::default()
    };
    if let Some(dir) = &rtc.record_dir {
        std::fs::create_dir_all(dir)?;
    }
    let peer = RtcPeer::new(options, rtc)?;
    let mut events = peer.events();
    peer.join(&room).await?;
    println!(
        "joined {room} as {name} ({}); type to chat, /stats, /quit",
        peer.peer().peer_id().unwrap_or_default()
    );

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                match line.trim() {
                    "/quit" => break,
                    "/stats" => {
                        for link in peer.links() {
                            println!(
                                "{}: {} polite={} channels={} rtp={} packets / {} bytes",
                                link.peer_id(), link.state(), link.polite(),
                                link.channels().len(), link.rtp_packets(), link.rtp_bytes()
                            );
                        }
                    }
                    "" => {}
                    text => {
                        for link in peer.links() {
                            if let Err(e) = peer.send_text_to(link.peer_id(), text).await {
                                println!("! {}: {e}", link.peer_id());
                            }
                        }
                    }
                }
            }
            event = events.recv() => {
                let Some(event) = event else { break };
                match event {
                    RtcEvent::ChannelOpen { peer_id, channel } => println!(
                        "* channel \"{}\" to {peer_id} open (max message {} bytes)",
                        channel.label(), channel.max_message_size()
                    ),
                    RtcEvent::ChannelClosed { peer_id, label } => {
                        println!("* channel \"{label}\" to {peer_id} closed")
                    }
                    RtcEvent::Message { peer_id, data, is_string: true, .. } => {
                        println!("{peer_id}: {}", String::from_utf8_lossy(&data))
                    }
                    RtcEvent::Message { peer_id, data, .. } => {
                        println!("{peer_id}: <{} bytes>", data.len())
                    }
                    RtcEvent::Track { peer_id, kind, mime_type, .. } => {
                        println!("* {kind} track ({mime_type}) from {peer_id}")
                    }
                    RtcEvent::State { peer_id, state } => println!("* {peer_id}: {state}"),
                    RtcEvent::NegotiationError { peer_id, error } => {
                        println!("! {peer_id}: {error}")
                    }
                    _ => {}
                }
            }
        }
    }
    peer.leave().await;
    Ok(())
}
