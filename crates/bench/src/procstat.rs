//! Process CPU time and RSS from /proc, for the server under test and for the generator itself.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Linux reports utime/stime in clock ticks of 1/100 s (USER_HZ) on every mainstream arch.
const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime of `pid` in ticks (`self` for the calling process), or 0 if unreadable.
pub fn cpu_ticks(pid: &str) -> u64 {
    let (user, sys) = cpu_ticks_split(pid);
    user + sys
}

/// (utime, stime) of `pid` in ticks, or zeros if unreadable.
pub fn cpu_ticks_split(pid: &str) -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0, 0);
    };
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return (0, 0);
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field(14), field(15))
}

/// Nanoseconds `pid` has run on a CPU (`/proc/<pid>/schedstat`), or 0: finer than the
/// 10 ms ticks of `stat` for short runs.
pub fn run_ns(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Sum of VmRSS over `pids`, in KiB.
pub fn rss_kb(pids: &[u32]) -> u64 {
    pids.iter().map(|pid| status_kb(*pid, "VmRSS:")).sum()
}

/// One `… kB` field of `/proc/<pid>/status` (0 when the process or the field is gone).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU used during one measurement, in cores (1.0 = one core busy the whole time).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuUse {
    pub wall_secs: f64,
    /// CPU seconds of the server processes.
    pub server_cpu_secs: f64,
    pub server_util: f64,
    /// CPU seconds of the load generator.
    pub bench_cpu_secs: f64,
    pub bench_util: f64,
    /// The generator, not the server, limited the run: it used ≥ 90 % of its core while the
    /// server (pinned to one core, every node of a cluster on it) had headroom.
    pub generator_bound: bool,
}

pub struct CpuSampler {
    pids: Vec<u32>,
    server: u64,
    me: u64,
    at: Instant,
}

impl CpuSampler {
    pub fn start(pids: &[u32]) -> CpuSampler {
        CpuSampler {
            pids: pids.to_vec(),
            server: pids.iter().map(|p| cpu_ticks(&p.to_string())).sum(),
            me: cpu_ticks("self"),
            at: Instant::now(),
        }
    }

    pub fn finish(self) -> CpuUse {
        let wall = self.at.elapsed().as_secs_f64();
        let server: u64 = self.pids.iter().map(|p| cpu_ticks(&p.to_string())).sum();
        let server_cpu_secs = server.saturating_sub(self.server) as f64 / TICKS_PER_SEC;
        let bench_cpu_secs = cpu_ticks("self").saturating_sub(self.me) as f64 / TICKS_PER_SEC;
        let server_util = server_cpu_secs / wall;
        let bench_util = bench_cpu_secs / wall;
        CpuUse {
            wall_secs: wall,
            server_cpu_secs,
            server_util,
            bench_cpu_secs,
            bench_util,
            generator_bound: bench_util >= 0.9 && server_util < 0.9,
        }
    }
}

/// Seconds the threads of `pid` (`self` for the caller) have spent runnable but waiting for a
/// CPU (`/proc/<pid>/task/*/schedstat`, second field): a measure of how much other load on the
/// machine slowed a run down. 0 if unreadable.
pub fn runqueue_wait_secs(pid: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}
