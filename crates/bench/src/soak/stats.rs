//! Process samples for the soak: memory and open descriptors of each server process, the CSV
//! they are written to, and whether they stayed flat after warm-up.
//!
//! Memory is read twice. VmRSS is what operators see, but it includes the binary's file-backed
//! pages, which the kernel drops and reloads as the page cache comes under pressure from other
//! work on the machine (seen: -11 % in minutes while a build ran beside a soak). RssAnon, the
//! process's own heap and stacks, moves only with what the process allocates, so it is the
//! leak signal the flatness check uses; VmRSS is reported beside it.

use std::fmt::Write as _;

use serde::Serialize;

/// A process the soak watches (a Herald node, redis-server).
#[derive(Debug, Clone, Serialize)]
pub struct Proc {
    pub name: String,
    pub pid: u32,
}

/// One reading of one process, taken at a quiescent moment of the load.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub elapsed_secs: f64,
    pub process: String,
    pub pid: u32,
    /// VmRSS; 0 when the process is gone.
    pub rss_kb: u64,
    /// RssAnon (anonymous resident memory); 0 when the process is gone.
    pub anon_kb: u64,
    pub fds: u64,
    /// Connections the soak held open when the sample was taken.
    pub connections: usize,
}

fn rss_kb(pid: u32) -> u64 {
    crate::procstat::rss_kb(&[pid])
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count() as u64)
        .unwrap_or(0)
}

pub fn sample(procs: &[Proc], elapsed_secs: f64, connections: usize) -> Vec<Sample> {
    procs
        .iter()
        .map(|p| Sample {
            elapsed_secs,
            process: p.name.clone(),
            pid: p.pid,
            rss_kb: rss_kb(p.pid),
            anon_kb: crate::procstat::status_kb(p.pid, "RssAnon:"),
            fds: open_fds(p.pid),
            connections,
        })
        .collect()
}

pub fn csv(samples: &[Sample]) -> String {
    let mut out = String::from("elapsed_s,process,pid,rss_kb,anon_kb,fds,connections\n");
    for s in samples {
        let _ = writeln!(
            out,
            "{:.1},{},{},{},{},{},{}",
            s.elapsed_secs, s.process, s.pid, s.rss_kb, s.anon_kb, s.fds, s.connections
        );
    }
    out
}

/// One quantity after warm-up.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    pub samples: usize,
    pub first: u64,
    pub last: u64,
    pub min: u64,
    pub max: u64,
    pub median: u64,
    /// Every sample within ±tolerance of the median.
    pub within: bool,
}

impl Series {
    pub fn of(values: &[u64], tolerance: f64) -> Option<Series> {
        let (&first, &last) = (values.first()?, values.last()?);
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
        let low = median as f64 * (1.0 - tolerance);
        let high = median as f64 * (1.0 + tolerance);
        Some(Series {
            samples: values.len(),
            first,
            last,
            min,
            max,
            median,
            within: min as f64 >= low && max as f64 <= high,
        })
    }
}

/// RSS and descriptors of one process after warm-up.
#[derive(Debug, Clone, Serialize)]
pub struct ProcSummary {
    pub process: String,
    pub pid: u32,
    /// VmRSS, reported; not part of the verdict (see the module doc).
    pub rss_kb: Option<Series>,
    pub anon_kb: Option<Series>,
    pub fds: Option<Series>,
}

impl ProcSummary {
    /// Anonymous memory and descriptors stayed within the bound (no sample fails).
    pub fn flat(&self) -> bool {
        matches!((&self.anon_kb, &self.fds), (Some(a), Some(f)) if a.within && f.within)
    }
}

/// Summaries of every process over the samples taken at or after `warmup_secs`.
pub fn summarize(
    procs: &[Proc],
    samples: &[Sample],
    warmup_secs: f64,
    tolerance: f64,
) -> Vec<ProcSummary> {
    procs
        .iter()
        .map(|p| {
            let after: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.pid == p.pid && s.elapsed_secs >= warmup_secs)
                .collect();
            let rss: Vec<u64> = after.iter().map(|s| s.rss_kb).collect();
            let anon: Vec<u64> = after.iter().map(|s| s.anon_kb).collect();
            let fds: Vec<u64> = after.iter().map(|s| s.fds).collect();
            ProcSummary {
                process: p.name.clone(),
                pid: p.pid,
                rss_kb: Series::of(&rss, tolerance),
                anon_kb: Series::of(&anon, tolerance),
                fds: Series::of(&fds, tolerance),
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_series_within_the_bound_of_its_median() {
        let s = Series::of(&[100, 104, 98, 101, 109], 0.10).unwrap();
        assert_eq!(
            (s.first, s.last, s.min, s.max, s.median),
            (100, 109, 98, 109, 101)
        );
        assert!(s.within);
    }

    #[test]
    fn growth_beyond_the_bound_is_drift() {
        let s = Series::of(&[100, 105, 110, 115, 125], 0.10).unwrap();
        assert_eq!(s.median, 110);
        assert!(!s.within, "125 is more than 10 % above 110");
        assert!(Series::of(&[], 0.10).is_none());
    }
}
