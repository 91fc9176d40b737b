//! The human-readable summary of a presence-storm run.

use std::fmt::Write as _;

use super::StormResult;

fn kb(bytes: f64) -> String {
    if bytes >= 1e6 {
        format!("{:.2} MB", bytes / 1e6)
    } else if bytes >= 1e3 {
        format!("{:.1} kB", bytes / 1e3)
    } else {
        format!("{bytes:.0} B")
    }
}

impl StormResult {
    /// A few lines for the terminal (the JSON holds everything).
    pub fn summary(&self) -> String {
        let o = &self.opts;
        let s = &self.storm;
        let c = &self.completeness;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "presence-storm [{}]: M={} members ({} failed; {} watch presence), J={} churners at {:.0}/s, metadata ~{} B",
            self.label,
            self.members_connected,
            self.member_failures,
            o.watchers.min(o.members),
            o.joins,
            o.rate,
            o.metadata_bytes
        );
        let _ = writeln!(
            out,
            "  setup: {:.1} s, {} of {} watchers' rosters complete, server {:.1} CPU s, RSS {} → {} MB",
            self.setup_secs,
            self.setup_converged,
            o.watchers.min(o.members),
            self.setup_cpu.server_cpu_secs,
            self.rss_before_kb / 1024,
            self.rss_members_kb / 1024
        );
        let lat: Vec<String> = self
            .snapshots
            .iter()
            .map(|x| x.latency_ms.map_or("none".into(), |l| format!("{l:.1} ms")))
            .collect();
        if let Some(first) = self.snapshots.first() {
            let _ = writeln!(
                out,
                "  snapshot for a new subscriber: {} ({} entries{}); latency {}",
                kb(first.bytes as f64),
                first.entries,
                first
                    .occupancy
                    .map_or(String::new(), |n| format!(", occupancy {n}")),
                lat.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "  storm: {} of {} joins acked ({:.0}/s achieved, ack p50 {:.1} ms, p99 {:.1} ms); {:.2} s to quiet (nominal {:.2} s)",
            s.joins_acked,
            s.joins_attempted,
            s.achieved_join_rate,
            s.join_ack.p50_us / 1e3,
            s.join_ack.p99_us / 1e3,
            s.secs,
            s.nominal_secs
        );
        let _ = writeln!(
            out,
            "  per watcher: {}/s (max {}/s), {:.0} frames/s (max {:.0}); {} and {:.0} frames in all; {:.2} entries per presence frame; churn events {:.0} (expected {})",
            kb(s.watcher_bytes_per_sec.median),
            kb(s.watcher_bytes_per_sec.max),
            s.watcher_frames_per_sec.median,
            s.watcher_frames_per_sec.max,
            kb(s.watcher_bytes.median),
            s.watcher_frames.median,
            s.entries_per_presence_frame,
            s.watcher_churn_events.median,
            2 * s.joins_acked
        );
        let _ = writeln!(
            out,
            "  server: {:.2} CPU s in the storm ({:.0} % of a core), {:.0} µs per join (join + leave); RSS peak {} MB, after {} MB; generator CPU {:.0} %; waiting for a CPU: server {:.2} s, generator {:.2} s",
            s.cpu.server_cpu_secs,
            s.cpu.server_util * 100.0,
            s.server_cpu_us_per_join,
            s.rss_peak_kb / 1024,
            self.rss_after_kb / 1024,
            s.cpu.bench_util * 100.0,
            s.server_runqueue_wait_secs,
            s.generator_runqueue_wait_secs
        );
        let _ = write!(
            out,
            "  completeness: {} of {} rosters exact ({} missing, {} extra entries; {} duplicate joins, {} lefts for absent peers); occupancy on {} watchers ({} exact); closed by server: {:?}",
            c.watchers_exact,
            c.watchers_checked,
            c.missing_entries,
            c.extra_entries,
            c.duplicate_joins,
            c.absent_lefts,
            c.watchers_with_occupancy,
            c.occupancy_exact,
            c.watchers_closed_by_server
        );
        out
    }
}
