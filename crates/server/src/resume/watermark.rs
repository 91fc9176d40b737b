//! The ping/pong watermark of one connection: which channel positions the client is known to
//! have read.
//!
//! The session reads the positions of its history channels (each under its channel's lock, so
//! every message up to them is already in the connection's queue), writes out the whole
//! queue, then sends a WebSocket ping carrying a number. TCP keeps order, so the pong with that
//! number proves the client read every message up to those positions: they become
//! *confirmed*. What is written after the ping is unconfirmed until the next pong, which is
//! why a ping follows unconfirmed traffic within `confirm_after` (about 1 s).
//!
//! Cost: at most one watermark ping per `confirm_after` per connection, only while traffic
//! flows, and only for connections that can resume (stable peer id, a channel with history).
//! This type is pure state on `tokio::time`, driven by the session.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::Since;
use crate::ids::ChannelName;

/// Pings sent and not yet answered that are remembered; an older one is forgotten (its pong,
/// if it ever comes, confirms nothing: a later pong confirms more).
const MAX_OUTSTANDING: usize = 4;

/// The payload of watermark pings starts with this, so a pong to the keepalive ping (empty)
/// or anything else is never taken for one.
const TAG: &[u8; 2] = b"wm";

#[derive(Debug)]
pub struct Watermark {
    confirm_after: Duration,
    /// When the next watermark ping is due: set by unconfirmed traffic, cleared when sent.
    due: Option<Instant>,
    next_id: u64,
    outstanding: VecDeque<(u64, Vec<(ChannelName, Since)>)>,
    confirmed: HashMap<ChannelName, Since>,
}

impl Watermark {
    pub fn new(confirm_after: Duration) -> Self {
        Watermark {
            confirm_after,
            due: None,
            next_id: 0,
            outstanding: VecDeque::new(),
            confirmed: HashMap::new(),
        }
    }

    /// Frames were written: ping within `confirm_after` unless a ping is already due.
    pub fn written(&mut self) {
        if self.due.is_none() {
            self.due = Some(Instant::now() + self.confirm_after);
        }
    }

    /// When the next ping is due, if any traffic is unconfirmed.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The due ping was not needed (nothing to confirm).
    pub fn skip(&mut self) {
        self.due = None;
    }

    /// Records the positions read for the ping about to be sent; returns its payload.
    pub fn ping(&mut self, positions: Vec<(ChannelName, Since)>) -> Vec<u8> {
        self.due = None;
        self.next_id += 1;
        if self.outstanding.len() == MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((self.next_id, positions));
        let mut payload = TAG.to_vec();
        payload.extend_from_slice(&self.next_id.to_be_bytes());
        payload
    }

    /// A pong arrived. When it answers a remembered watermark ping, its positions (and those
    /// of older pings, which it proves too) become confirmed. True when it did.
    pub fn pong(&mut self, payload: &[u8]) -> bool {
        let Some(id) = payload
            .strip_prefix(TAG.as_slice())
            .and_then(|rest| <[u8; 8]>::try_from(rest).ok())
            .map(u64::from_be_bytes)
        else {
            return false;
        };
        if !self.outstanding.iter().any(|(i, _)| *i == id) {
            return false;
        }
        while let Some((i, positions)) = self.outstanding.pop_front() {
            self.confirmed.extend(positions);
            if i == id {
                break;
            }
        }
        true
    }

    /// The client has everything up to `since` on `channel` (it resumed from there): true
    /// until a pong confirms more, so a second drop before that still resumes.
    pub fn seed(&mut self, channel: ChannelName, since: Since) {
        self.confirmed.insert(channel, since);
    }

    /// The channel is no longer subscribed: its position means nothing now.
    pub fn forget(&mut self, channel: &ChannelName) {
        self.confirmed.remove(channel);
        for (_, positions) in &mut self.outstanding {
            positions.retain(|(c, _)| c != channel);
        }
    }

    /// Everything confirmed, for parking when the connection drops.
    pub fn confirmed(&self) -> Vec<(ChannelName, Since)> {
        self.confirmed
            .iter()
            .map(|(c, s)| (c.clone(), s.clone()))
            .collect()
    }
}

#[cfg(test)]
#[path = "watermark_tests.rs"]
mod tests;
