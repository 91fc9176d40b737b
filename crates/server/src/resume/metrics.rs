//! The resume counters (`herald_resume_*`, `herald_direct_inbox_*`, `herald_watermark_*`).
//! Sessions count what they see at once; the book's own numbers are copied in at each scrape.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::book::BookStats;

type Labels = Vec<(&'static str, String)>;

/// How a resume was asked for: by the server for a stable peer, or by the client's `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeKind {
    Transparent,
    Explicit,
}

impl ResumeKind {
    fn as_str(self) -> &'static str {
        match self {
            ResumeKind::Transparent => "transparent",
            ResumeKind::Explicit => "explicit",
        }
    }
}

#[derive(Default)]
pub struct ResumeMetrics {
    attempts: Family<Labels, Counter>,
    succeeded: Family<Labels, Counter>,
    failed: Family<Labels, Counter>,
    /// Messages queued by successful resumes.
    pub replayed: Counter,
    /// Directs held in a dropped peer's inbox.
    pub directs_queued: Counter,
    directs_expired: Counter,
    /// The book's expiry count already copied into `directs_expired`.
    directs_expired_seen: AtomicU64,
    parked_peers: Gauge,
    inbox_directs: Gauge,
    /// Watermark pings sent, and those whose pong came back.
    pub watermark_pings: Counter,
    pub watermark_confirmed: Counter,
}

impl ResumeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let families = [
            ("resume_attempts", "Subscribes that asked to resume, by kind", &self.attempts),
            ("resume_succeeded", "Resumes that replayed the whole gap, by kind", &self.succeeded),
            (
                "resume_failed",
                "Resumes whose gap could not be filled (retention passed, epoch changed, too long), by kind",
                &self.failed,
            ),
        ];
        for (name, help, family) in families {
            registry.register(name, help, family.clone());
        }
        let counters = [
            (
                "resume_replayed_messages",
                "Messages replayed by resumes",
                &self.replayed,
            ),
            (
                "direct_inbox_queued",
                "Directs held for a dropped peer inside its resume window",
                &self.directs_queued,
            ),
            (
                "direct_inbox_expired",
                "Held directs dropped unread (their time or the peer's window ran out)",
                &self.directs_expired,
            ),
            (
                "watermark_pings",
                "Watermark pings sent",
                &self.watermark_pings,
            ),
            (
                "watermark_confirmed",
                "Watermark pings whose pong confirmed delivery",
                &self.watermark_confirmed,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "resume_parked_peers",
            "Stable peers inside their resume window after a drop",
            self.parked_peers.clone(),
        );
        registry.register(
            "direct_inbox_directs",
            "Directs held for dropped peers now",
            self.inbox_directs.clone(),
        );
    }

    fn labels(kind: ResumeKind) -> Labels {
        vec![("kind", kind.as_str().to_string())]
    }

    pub fn attempted(&self, kind: ResumeKind) {
        self.attempts.get_or_create(&Self::labels(kind)).inc();
    }

    pub fn succeeded(&self, kind: ResumeKind, replayed: usize) {
        self.succeeded.get_or_create(&Self::labels(kind)).inc();
        self.replayed.inc_by(replayed as u64);
    }

    pub fn failed(&self, kind: ResumeKind) {
        self.failed.get_or_create(&Self::labels(kind)).inc();
    }

    /// Copies the engine's book in (at each scrape).
    pub fn update(&self, stats: &BookStats) {
        self.parked_peers
            .set(i64::try_from(stats.parked_peers).unwrap_or(i64::MAX));
        self.inbox_directs
            .set(i64::try_from(stats.inbox_directs).unwrap_or(i64::MAX));
        let seen = self
            .directs_expired_seen
            .fetch_max(stats.directs_expired, Ordering::Relaxed);
        if stats.directs_expired > seen {
            self.directs_expired.inc_by(stats.directs_expired - seen);
        }
    }
}
