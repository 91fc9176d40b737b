//! The whole comparison for one target: every scenario at the sizes the issue sets, in an order
//! that keeps the measurements independent (idle connections first, on a fresh server).

use serde::{Deserialize, Serialize};

use crate::proto::Target;
use crate::scenarios::{
    self, progress, ConnectionsOpts, ConnectionsResult, DirectOpts, DirectResult, FanoutOpts,
    FanoutResult, PresenceOpts, PresenceResult,
};

/// Sizes of one suite run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteOpts {
    /// Idle-connection counts, measured in order on the same server.
    pub connections: Vec<usize>,
    pub connect_concurrency: usize,
    pub subscribers: usize,
    pub publishers: usize,
    pub fanout_secs: f64,
    pub payload_bytes: usize,
    pub window: u64,
    /// Offered loads for the latency curve, as fractions of this target's max publish rate.
    pub curve: Vec<f64>,
    pub watchers: usize,
    pub churners: usize,
    pub presence_secs: f64,
    pub pairs: usize,
    pub direct_window: u64,
    pub direct_secs: f64,
    /// Which scenarios run (`connections`, `fanout`, `presence`, `direct`, `chat`); empty = all.
    pub only: Vec<String>,
    /// Chat workload: member counts, one run each (see [`crate::chat`]).
    #[serde(default)]
    pub chat: Vec<usize>,
    #[serde(default)]
    pub chat_secs: f64,
    /// Seconds between a member's chat messages, and between its typing indicators (0 = the
    /// scenario's standard).
    #[serde(default)]
    pub chat_every: f64,
    #[serde(default)]
    pub typing_every: f64,
    /// Fixed offered fan-out loads in deliveries/s (the latency-throughput curve); rates above
    /// twice this target's max are skipped (the first one past its max already shows it).
    #[serde(default)]
    pub curve_rates: Vec<f64>,
}

impl SuiteOpts {
    /// The sizes of the targets.
    pub fn full() -> SuiteOpts {
        SuiteOpts {
            connections: vec![15_000],
            connect_concurrency: 256,
            subscribers: 1000,
            publishers: 1,
            fanout_secs: 5.0,
            payload_bytes: 64,
            window: 64,
            curve: vec![0.1, 0.25, 0.5, 0.75, 0.9],
            watchers: 200,
            churners: 8,
            presence_secs: 5.0,
            pairs: 100,
            direct_window: 32,
            direct_secs: 5.0,
            only: Vec::new(),
            chat: vec![5_000, 15_000],
            chat_secs: 10.0,
            chat_every: 0.0,
            typing_every: 0.0,
            curve_rates: vec![
                10_000.0,
                50_000.0,
                100_000.0,
                200_000.0,
                400_000.0,
                800_000.0,
                1_600_000.0,
            ],
        }
    }

    /// A few seconds in all, for the test suite: it proves the tool works, not how fast.
    pub fn smoke() -> SuiteOpts {
        SuiteOpts {
            connections: vec![20],
            connect_concurrency: 8,
            subscribers: 10,
            publishers: 1,
            fanout_secs: 0.3,
            payload_bytes: 32,
            window: 4,
            curve: vec![0.5],
            watchers: 4,
            churners: 2,
            presence_secs: 0.3,
            pairs: 3,
            direct_window: 4,
            direct_secs: 0.3,
            only: Vec::new(),
            chat: vec![40],
            chat_secs: 1.0,
            chat_every: 0.0,
            typing_every: 0.0,
            curve_rates: vec![200.0, 1_000.0],
        }
    }

    fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteResult {
    /// `herald`, `socketio`, `herald-cluster`, ...
    pub label: String,
    pub proto: crate::proto::Proto,
    pub nodes: usize,
    pub opts: SuiteOpts,
    pub connections: Vec<ConnectionsResult>,
    pub fanout_max: Option<FanoutResult>,
    pub fanout_curve: Vec<FanoutResult>,
    /// Light-load latency: a few subscribers at a low fixed rate, and pairs with one message in
    /// flight, so the path (through Redis on a cluster) rather than a 1,000-socket pass shows.
    #[serde(default)]
    pub fanout_probe: Option<FanoutResult>,
    #[serde(default)]
    pub direct_probe: Option<DirectResult>,
    pub presence: Option<PresenceResult>,
    pub direct: Option<DirectResult>,
    /// The latency-throughput curve at fixed offered deliveries/s (`curve_rates`).
    #[serde(default)]
    pub fanout_fixed: Vec<FanoutResult>,
    #[serde(default)]
    pub chat: Vec<crate::chat::ChatResult>,
}

pub async fn run(label: &str, target: &Target, opts: &SuiteOpts) -> anyhow::Result<SuiteResult> {
    let mut result = SuiteResult {
        label: label.to_string(),
        proto: target.proto,
        nodes: target.addrs.len(),
        opts: opts.clone(),
        connections: Vec::new(),
        fanout_max: None,
        fanout_curve: Vec::new(),
        fanout_probe: None,
        direct_probe: None,
        presence: None,
        direct: None,
        fanout_fixed: Vec::new(),
        chat: Vec::new(),
    };
    if opts.runs("connections") {
        for &count in &opts.connections {
            let c = ConnectionsOpts {
                count,
                concurrency: opts.connect_concurrency,
                settle_secs: if count > 100 { 2.0 } else { 0.2 },
            };
            result
                .connections
                .push(scenarios::connections(target, &c).await?);
        }
    }
    if opts.runs("fanout") {
        let base = FanoutOpts {
            subscribers: opts.subscribers,
            publishers: opts.publishers,
            rate: None,
            duration_secs: opts.fanout_secs,
            payload_bytes: opts.payload_bytes,
            window: opts.window,
        };
        let max = scenarios::fanout(target, &base).await?;
        let max_publishes = max.published as f64 / max.cpu.wall_secs.max(1e-9);
        for &fraction in &opts.curve {
            let at = FanoutOpts {
                rate: Some((max_publishes * fraction).max(1.0)),
                ..base.clone()
            };
            progress(format!(
                "{label}: fan-out at {:.0} % of max ({:.0} publishes/s)",
                fraction * 100.0,
                max_publishes * fraction
            ));
            result
                .fanout_curve
                .push(scenarios::fanout(target, &at).await?);
        }
        let max_deliveries = max.deliveries_per_sec;
        let fan = max.subscribers_connected.max(1) as f64;
        for &rate in &opts.curve_rates {
            if rate > 2.0 * max_deliveries {
                progress(format!(
                    "{label}: fan-out at {rate:.0} deliveries/s skipped (over twice the max)"
                ));
                continue;
            }
            let at = FanoutOpts {
                rate: Some(rate / fan),
                ..base.clone()
            };
            result
                .fanout_fixed
                .push(scenarios::fanout(target, &at).await?);
        }
        result.fanout_max = Some(max);
        let probe = FanoutOpts {
            subscribers: opts.subscribers.min(10),
            rate: Some(100.0),
            duration_secs: (opts.fanout_secs * 0.6).max(0.2),
            ..base.clone()
        };
        progress(format!(
            "{label}: fan-out latency probe (S={}, 100 publishes/s)",
            probe.subscribers
        ));
        result.fanout_probe = Some(scenarios::fanout(target, &probe).await?);
    }
    if opts.runs("presence") {
        let p = PresenceOpts {
            watchers: opts.watchers,
            churners: opts.churners,
            duration_secs: opts.presence_secs,
        };
        result.presence = Some(scenarios::presence(target, &p).await?);
    }
    if opts.runs("direct") {
        let d = DirectOpts {
            pairs: opts.pairs,
            duration_secs: opts.direct_secs,
            payload_bytes: opts.payload_bytes,
            window: opts.direct_window,
        };
        result.direct = Some(scenarios::direct(target, &d).await?);
        let probe = DirectOpts {
            pairs: opts.pairs.min(10),
            window: 1,
            duration_secs: (opts.direct_secs * 0.6).max(0.2),
            ..d
        };
        progress(format!(
            "{label}: direct latency probe ({} pairs, 1 in flight)",
            probe.pairs
        ));
        result.direct_probe = Some(scenarios::direct(target, &probe).await?);
    }
    if opts.runs("chat") {
        for &members in &opts.chat {
            let mut c = crate::chat::ChatOpts::standard(members);
            c.duration_secs = opts.chat_secs;
            if members < 100 {
                c.churners = 2;
                c.churn_per_sec = 20.0;
                c.chat_secs = 0.5;
                c.typing_secs = 0.3;
                c.directs_per_sec = 20.0;
            }
            if opts.chat_every > 0.0 {
                c.chat_secs = opts.chat_every;
            }
            if opts.typing_every > 0.0 {
                c.typing_secs = opts.typing_every;
            }
            result.chat.push(crate::chat::chat(target, &c).await?);
        }
    }
    Ok(result)
}
