//! The Rust side of the call tests: peers joined to the driver's Herald, waiting on their
//! events, and the data-channel exchange both ways checked byte for byte.

use herald_client::rtc::{RtcEvent, RtcOptions, RtcPeer};
use herald_client::{PeerOptions, SignallingClientOptions};
use serde_json::{json, Value};

use super::driver::{Driver, WAIT};

pub type Events = herald_client::EventStream<RtcEvent>;

pub async fn rust_peer(driver: &Driver, name: &str, rtc: RtcOptions) -> RtcPeer {
    let http = driver.http.clone();
    let name = name.to_owned();
    let provider = move || {
        let (http, name) = (http.clone(), name.clone());
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
    let options =
        PeerOptions::new(SignallingClientOptions::token_provider(provider).with_url(&driver.ws));
    RtcPeer::new(options, rtc).unwrap()
}

/// Joins a Rust peer whose perfect-negotiation role against `browser_id` is `polite`. Peer ids
/// are random, so it joins again (a fresh id each time) until the role is the one asked for.
/// With the browser's id in the middle of the range (see [`middle_id`]) each join has at least
/// one chance in four, so 100 joins all missing is out of reach (0.75^100).
pub async fn join_as(
    driver: &Driver,
    room: &str,
    browser_id: &str,
    polite: bool,
) -> (RtcPeer, Events) {
    for _ in 0..100 {
        let peer = rust_peer(driver, "rust", RtcOptions::default()).await;
        let events = peer.events();
        peer.join(room).await.unwrap();
        let id = peer.peer().peer_id().unwrap();
        if (id.as_str() < browser_id) == polite {
            return (peer, events);
        }
        peer.leave().await;
    }
    panic!("no peer id with polite={polite} in 100 joins");
}

/// True when the peer id (`u-` and random hex) starts with 4…b: a quarter or more of all ids
/// then sort on each side of it.
pub fn middle_id(id: &str) -> bool {
    matches!(id.as_bytes().get(2), Some(b'4'..=b'9' | b'a' | b'b'))
}

/// Waits for a matching event.
pub async fn next_event<T>(
    events: &mut Events,
    what: &str,
    mut pick: impl FnMut(&RtcEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(event)) => {
                if let Some(found) = pick(&event) {
                    return found;
                }
            }
            Ok(None) => panic!("event stream ended waiting for {what}"),
            Err(_) => panic!("{what} did not happen within {WAIT:?}"),
        }
    }
}

pub async fn channel_open(events: &mut Events, from: &str) {
    next_event(events, &format!("a data channel to {from}"), |e| match e {
        RtcEvent::ChannelOpen { peer_id, .. } if peer_id == from => Some(()),
        _ => None,
    })
    .await
}

pub async fn message_from(events: &mut Events, from: &str) -> (Vec<u8>, bool) {
    next_event(events, &format!("a message from {from}"), |e| match e {
        RtcEvent::Message {
            peer_id,
            data,
            is_string,
            ..
        } if peer_id == from => Some((data.to_vec(), *is_string)),
        _ => None,
    })
    .await
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The browser's received messages from `from`, as (bytes, is_string).
pub async fn browser_received(
    driver: &mut Driver,
    page: &str,
    from: &str,
    count: usize,
) -> Vec<(Vec<u8>, bool)> {
    use base64::Engine;
    let expr = format!("window.rtc.received.filter((m) => m.from === {from:?}).length >= {count}");
    driver
        .until(page, &expr, &format!("{count} messages from {from}"))
        .await;
    let all = driver
        .eval(
            page,
            &format!("window.rtc.received.filter((m) => m.from === {from:?})"),
        )
        .await;
    all.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let data = m["data"].as_str().unwrap();
            if m["isString"] == true {
                (data.as_bytes().to_vec(), true)
            } else {
                (
                    base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .unwrap(),
                    false,
                )
            }
        })
        .collect()
}

/// Messages both ways on the default channel: text, small binary, and binary near each
/// direction's negotiated maximum; all compared byte for byte.
pub async fn exchange(
    driver: &mut Driver,
    page: &str,
    browser_id: &str,
    rust: &RtcPeer,
    events: &mut Events,
) {
    let rust_id = rust.peer().peer_id().unwrap();
    driver
        .until(
            page,
            &format!("window.rtc.remotes[{rust_id:?}]?.openChannels.includes('herald')"),
            "the herald channel open in the browser",
        )
        .await;
    let link = rust.link(browser_id).unwrap();
    let channel = link.channel("herald").unwrap();
    let max = channel.max_message_size();
    // The remote's a=max-message-size, or RFC 8841's 64 KiB when its SDP has none.
    assert!(max >= 65_536, "max message size {max}");
    let text = "héllo from Rust 🎉";
    let small = pattern(1000, 7);
    let big = pattern(max - 16, 3);
    rust.send_text_to(browser_id, text).await.unwrap();
    rust.send_to(browser_id, &small).await.unwrap();
    rust.send_to(browser_id, &big).await.unwrap();
    let too_big = rust.send_to(browser_id, &pattern(max + 1, 1)).await;
    assert!(
        matches!(too_big, Err(herald_client::rtc::RtcError::TooLarge { .. })),
        "{too_big:?}"
    );
    let got = browser_received(driver, page, &rust_id, 3).await;
    assert_eq!(got.len(), 3, "exactly the three messages sent");
    assert_eq!(got[0], (text.as_bytes().to_vec(), true));
    assert_eq!(got[1], (small.clone(), false));
    assert_eq!(got[2].0.len(), big.len());
    assert!(
        got[2] == (big.clone(), false),
        "the near-maximum message differs"
    );

    // Browser -> Rust: Chromium may send what it believes this side accepts.
    let browser_max = driver
        .eval(page, &format!("window.maxMessageSize({rust_id:?})"))
        .await
        .as_u64()
        .unwrap() as usize;
    assert!(browser_max >= 65_536, "browser max {browser_max}");
    let back_text = "ünïcode back from the browser ✓";
    let back_big = pattern(browser_max - 16, 11);
    driver
        .eval(
            page,
            &format!("window.sendTo({rust_id:?}, 'herald', {back_text:?}, true)"),
        )
        .await;
    driver
        .eval(
            page,
            &format!(
                "window.sendTo({rust_id:?}, 'herald', {:?}, false)",
                b64(&back_big)
            ),
        )
        .await;
    assert_eq!(
        message_from(events, browser_id).await,
        (back_text.as_bytes().to_vec(), true)
    );
    let (bytes, is_string) = message_from(events, browser_id).await;
    assert!(!is_string);
    assert_eq!(bytes.len(), back_big.len());
    assert!(
        bytes == back_big,
        "the near-maximum message from the browser differs"
    );
}

/// Whole frames in the one `.ivf` file in `dir` (its 32-byte header, then per frame a 12-byte
/// header with the frame's length).
pub fn ivf_frames(dir: &std::path::Path) -> usize {
    let file = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "ivf"))
        .expect("an .ivf recording");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..4], b"DKIF", "{}", file.display());
    let (mut at, mut frames) = (32, 0);
    while at + 12 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if at + 12 + len > bytes.len() {
            break;
        }
        at += 12 + len;
        frames += 1;
    }
    frames
}
