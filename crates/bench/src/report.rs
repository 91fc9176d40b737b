//! Results → a markdown table (Herald beside Socket.IO) and PNG plots of latency against
//! offered load.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::procstat::CpuUse;
use crate::scenarios::Latency;
use crate::suite::SuiteResult;

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0} k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn fmt_ms(us: f64) -> String {
    if us >= 100_000.0 {
        format!("{:.0} ms", us / 1000.0)
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// The fan-out run closest to half of the max rate.
fn half_rate(r: &SuiteResult) -> Option<&crate::scenarios::FanoutResult> {
    r.fanout_curve.iter().min_by(|a, b| {
        let d = |f: &crate::scenarios::FanoutResult| {
            let max = r
                .fanout_max
                .as_ref()
                .map_or(1.0, |m| m.published as f64 / m.cpu.wall_secs);
            (f.opts.rate.unwrap_or(0.0) / max - 0.5).abs()
        };
        d(a).total_cmp(&d(b))
    })
}

/// A cell: the number the ratio column divides, and the text shown.
type Cell = (f64, String);

/// A markdown table with a row per metric and a column per result; with two results or more,
/// a last column holds the first ÷ the second on rows whose name has a rate (`/s`).
struct Table<'a> {
    results: &'a [SuiteResult],
    out: String,
}

impl<'a> Table<'a> {
    fn new(results: &'a [SuiteResult]) -> Table<'a> {
        let mut out = String::from("| Metric | Target |");
        for r in results {
            let _ = write!(out, " {} |", r.label);
        }
        let mut table = Table { results, out };
        if table.ratio() {
            let _ = write!(table.out, " {} ÷ {} |", results[0].label, results[1].label);
        }
        table.out.push_str("\n|---|---|");
        for _ in results {
            table.out.push_str("---|");
        }
        if table.ratio() {
            table.out.push_str("---|");
        }
        table.out.push('\n');
        table
    }

    fn ratio(&self) -> bool {
        self.results.len() >= 2
    }

    /// One row: `cell` per result (`–` where it gives none).
    fn row(&mut self, name: &str, target: &str, cell: impl Fn(&SuiteResult) -> Option<Cell>) {
        let _ = write!(self.out, "| {name} | {target} |");
        let values: Vec<_> = self.results.iter().map(cell).collect();
        for v in &values {
            let _ = write!(
                self.out,
                " {} |",
                v.as_ref().map_or("–", |(_, s)| s.as_str())
            );
        }
        if self.ratio() {
            match (&values[0], &values[1]) {
                (Some((a, _)), Some((b, _))) if *b > 0.0 && name.contains("/s") => {
                    let _ = write!(self.out, " {:.1}× |", a / b);
                }
                _ => self.out.push_str(" |"),
            }
        }
        self.out.push('\n');
    }
}

/// p50 / p99, compared on p99.
fn p50_p99(l: &Latency) -> Cell {
    (
        l.p99_us,
        format!("{} / {}", fmt_ms(l.p50_us), fmt_ms(l.p99_us)),
    )
}

/// The server's and the generator's CPU use, in percent of a core.
fn cpu_use(c: &CpuUse) -> String {
    format!(
        "{:.0} %, {:.0} %",
        c.server_util * 100.0,
        c.bench_util * 100.0
    )
}

/// The names of the runs whose generator was the bottleneck.
fn generator_bound(r: &SuiteResult) -> Cell {
    let flagged: Vec<&str> = [
        (
            "connections",
            r.connections.iter().any(|c| c.cpu.generator_bound),
        ),
        (
            "fan-out",
            r.fanout_max.as_ref().is_some_and(|f| f.cpu.generator_bound),
        ),
        (
            "direct",
            r.direct.as_ref().is_some_and(|d| d.cpu.generator_bound),
        ),
        (
            "presence",
            r.presence.as_ref().is_some_and(|p| p.cpu.generator_bound),
        ),
        ("chat", r.chat.iter().any(|c| c.cpu.generator_bound)),
        (
            "curve",
            r.fanout_fixed.iter().any(|f| f.cpu.generator_bound),
        ),
    ]
    .into_iter()
    .filter_map(|(name, bound)| bound.then_some(name))
    .collect();
    let text = if flagged.is_empty() {
        "none".to_string()
    } else {
        flagged.join(", ")
    };
    (flagged.len() as f64, text)
}

/// One markdown table: a row per metric, a column per result.
pub fn markdown(results: &[SuiteResult]) -> String {
    let mut t = Table::new(results);
    t.row(
        "Fan-out S×P, max: deliveries/s",
        "≥ 1,000,000; ≥ 15× Socket.IO",
        |r| {
            let f = r.fanout_max.as_ref()?;
            let text = format!(
                "{}/s (S={} P={})",
                fmt_rate(f.deliveries_per_sec),
                f.subscribers_connected,
                f.opts.publishers
            );
            Some((f.deliveries_per_sec, text))
        },
    );
    t.row(
        "Fan-out max: server CPU per delivery (server, generator CPU use)",
        "≤ 1 µs",
        |r| {
            let f = r.fanout_max.as_ref()?;
            let us = f.server_cpu_us_per_delivery;
            Some((us, format!("{us:.2} µs ({})", cpu_use(&f.cpu))))
        },
    );
    t.row("Fan-out max: latency p50 / p99", "", |r| {
        Some(p50_p99(&r.fanout_max.as_ref()?.latency))
    });
    t.row("Fan-out max: missing after drain", "0", |r| {
        let f = r.fanout_max.as_ref()?;
        Some((f.missing as f64, format!("{} of {}", f.missing, f.expected)))
    });
    t.row(
        "Fan-out at ½ max rate: p99 (p999, max)",
        "p99 ≤ 5 ms",
        |r| {
            let f = half_rate(r)?;
            let l = &f.latency;
            let text = format!(
                "{} ({}, {}) at {}/s",
                fmt_ms(l.p99_us),
                fmt_ms(l.p999_us),
                fmt_ms(l.max_us),
                fmt_rate(f.offered_deliveries_per_sec.unwrap_or(0.0))
            );
            Some((l.p99_us, text))
        },
    );
    t.row(
        "Fan-out latency probe, S ≤ 10 at 100 publishes per second: p50 / p99",
        "",
        |r| Some(p50_p99(&r.fanout_probe.as_ref()?.latency)),
    );
    t.row(
        "Idle connections: RSS per connection",
        "≤ 8 KB at N=15,000",
        |r| {
            let c = r.connections.last()?;
            let text = format!(
                "{:.1} KB (N={}, {} failed)",
                c.bytes_per_connection / 1024.0,
                c.connected,
                c.failures
            );
            Some((c.bytes_per_connection, text))
        },
    );
    t.row(
        "Connect rate (server, generator CPU use)",
        "≥ 10,000/s",
        |r| {
            let c = r.connections.last()?;
            let text = format!("{}/s ({})", fmt_rate(c.connects_per_sec), cpu_use(&c.cpu));
            Some((c.connects_per_sec, text))
        },
    );
    t.row("Presence churn: cycles/s", "≥ 1,000 (K=200)", |r| {
        let p = r.presence.as_ref()?;
        let text = format!(
            "{}/s (K={} C={})",
            fmt_rate(p.cycles_per_sec),
            p.opts.watchers,
            p.opts.churners
        );
        Some((p.cycles_per_sec, text))
    });
    t.row("Presence: join-visible p99", "≤ 5 ms", |r| {
        let p = r.presence.as_ref()?;
        let text = format!(
            "{} ({} of {} seen)",
            fmt_ms(p.join_visible.p99_us),
            p.joins_seen,
            p.joins_expected
        );
        Some((p.join_visible.p99_us, text))
    });
    t.row(
        "Direct: messages/s (server, generator CPU use)",
        "≥ 300,000",
        |r| {
            let d = r.direct.as_ref()?;
            let text = format!(
                "{}/s ({} pairs; {})",
                fmt_rate(d.messages_per_sec),
                d.opts.pairs,
                cpu_use(&d.cpu)
            );
            Some((d.messages_per_sec, text))
        },
    );
    t.row("Direct: latency p50 / p99", "", |r| {
        Some(p50_p99(&r.direct.as_ref()?.latency))
    });
    t.row(
        "Direct latency probe, ≤ 10 pairs, 1 in flight: p50 / p99",
        "",
        |r| Some(p50_p99(&r.direct_probe.as_ref()?.latency)),
    );
    for run in 0..2 {
        let n = run + 1;
        t.row(
            &format!("Chat workload #{n} (members): latency p50 / p99 / p999"),
            "p99 ≤ 10 ms at 15,000",
            |r| {
                let c = r.chat.get(run)?;
                let l = &c.latency;
                let text = format!(
                    "{} / {} / {} (N={}, {} missing of {})",
                    fmt_ms(l.p50_us),
                    fmt_ms(l.p99_us),
                    fmt_ms(l.p999_us),
                    c.members_connected,
                    c.missing,
                    c.expected
                );
                Some((l.p99_us, text))
            },
        );
        t.row(
            &format!("Chat workload #{n}: delivery rate, server CPU per delivery, RSS"),
            "",
            |r| {
                let c = r.chat.get(run)?;
                let text = format!(
                    "{}/s, {:.2} µs ({:.0} % of the core), {} MB",
                    fmt_rate(c.deliveries_per_sec),
                    c.server_cpu_us_per_delivery,
                    c.cpu.server_util * 100.0,
                    c.rss_kb / 1024
                );
                Some((c.deliveries_per_sec, text))
            },
        );
    }
    t.row("Generator-bound runs", "none", |r| Some(generator_bound(r)));
    let mut out = t.out;
    out.push_str(&curve_table(results));
    out
}

/// The latency-throughput curve as a table: one row per offered rate, p99 (achieved rate,
/// server CPU per delivery) per result.
fn curve_table(results: &[SuiteResult]) -> String {
    let mut rates: Vec<f64> = results
        .iter()
        .flat_map(|r| r.fanout_fixed.iter())
        .filter_map(|f| f.offered_deliveries_per_sec)
        .collect();
    if rates.is_empty() {
        return String::new();
    }
    rates.sort_by(f64::total_cmp);
    rates.dedup_by(|a, b| (*a - *b).abs() < 1.0);
    let mut out = String::from(
        "\nFan-out S=1000 at fixed offered loads: p99 (achieved deliveries/s; server CPU per delivery)\n\n| Offered deliveries/s |",
    );
    for r in results {
        let _ = write!(out, " {} |", r.label);
    }
    out.push_str("\n|---|");
    for _ in results {
        out.push_str("---|");
    }
    out.push('\n');
    for rate in rates {
        let _ = write!(out, "| {}/s |", fmt_rate(rate));
        for r in results {
            let cell = r.fanout_fixed.iter().find(|f| {
                f.offered_deliveries_per_sec
                    .is_some_and(|o| (o - rate).abs() < 1.0)
            });
            match cell {
                Some(f) => {
                    let _ = write!(
                        out,
                        " {} ({}/s; {:.2} µs{}) |",
                        fmt_ms(f.latency.p99_us),
                        fmt_rate(f.deliveries_per_sec),
                        f.server_cpu_us_per_delivery,
                        if f.missing > 0 {
                            format!("; {} missing", f.missing)
                        } else {
                            String::new()
                        }
                    );
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out
}

/// The write floor: one write(2) per delivery from a bare writer on the servers' core.
pub fn floor_table(floors: &[crate::floor::FloorResult]) -> String {
    let mut out = String::from(
        "\nWrite floor (one write(2) per delivery, same frames and socket count as the fan-out)\n\n| Offered writes/s | Achieved | CPU per write (system) | Bytes read of written |\n|---|---|---|---|\n",
    );
    for f in floors {
        let _ = writeln!(
            out,
            "| {}/s ({} sockets, {} B) | {}/s | {:.2} µs ({:.2} µs) | {} of {} |",
            fmt_rate(f.opts.deliveries_per_sec),
            f.opts.sockets,
            f.opts.frame_bytes,
            fmt_rate(f.writes_per_sec),
            f.cpu_us_per_write,
            f.sys_us_per_write,
            f.bytes_received,
            f.bytes_expected
        );
    }
    out
}

/// Loads a TTF font for plot labels; plots are skipped without one.
fn register_font() -> bool {
    const CANDIDATES: &[&str] = &[
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    ];
    for path in CANDIDATES {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Fan-out latency (p50 dashed, p99 solid) against offered deliveries/s, log-log, per result.
pub fn plot_latency(results: &[SuiteResult], path: &Path) -> anyhow::Result<bool> {
    if !register_font() {
        return Ok(false);
    }
    // The fixed-rate curve (same offered loads for every server) when there is one.
    let runs = |r: &SuiteResult| {
        if r.fanout_fixed.is_empty() {
            r.fanout_curve.clone()
        } else {
            r.fanout_fixed.clone()
        }
    };
    let points = |r: &SuiteResult, p99: bool| -> Vec<(f64, f64)> {
        runs(r)
            .iter()
            .filter_map(|f| {
                let x = f.offered_deliveries_per_sec?;
                let y = if p99 {
                    f.latency.p99_us
                } else {
                    f.latency.p50_us
                } / 1000.0;
                (x > 0.0 && y > 0.0).then_some((x, y))
            })
            .collect()
    };
    let all: Vec<(f64, f64)> = results
        .iter()
        .flat_map(|r| points(r, true).into_iter().chain(points(r, false)))
        .collect();
    if all.is_empty() {
        return Ok(false);
    }
    let (xmin, xmax) = all
        .iter()
        .fold((f64::MAX, 0f64), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ymin, ymax) = all
        .iter()
        .fold((f64::MAX, 0f64), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Fan-out to 1,000: latency vs offered load (p99 solid, p50 dashed; hollow = saturated)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (xmin / 1.5..xmax * 1.5).log_scale(),
            (ymin / 1.5..ymax * 1.5).log_scale(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("offered deliveries per second")
        .y_desc("latency (ms)")
        .x_label_formatter(&|v| fmt_rate(*v))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, r) in results.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let p99 = points(r, true);
        chart
            .draw_series(LineSeries::new(p99.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(format!("{} p99", r.label))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        // Filled: the server kept up (≥ 95 % of the offered rate); hollow: saturated.
        let kept: Vec<bool> = runs(r)
            .iter()
            .filter(|f| f.offered_deliveries_per_sec.is_some_and(|x| x > 0.0))
            .map(|f| f.deliveries_per_sec >= 0.95 * f.offered_deliveries_per_sec.unwrap_or(0.0))
            .collect();
        chart
            .draw_series(
                p99.iter()
                    .zip(kept.iter().chain(std::iter::repeat(&true)))
                    .map(|(p, ok)| {
                        let style = if *ok {
                            color.filled()
                        } else {
                            color.stroke_width(2)
                        };
                        Circle::new(*p, 5, style)
                    }),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let p50 = points(r, false);
        chart
            .draw_series(DashedLineSeries::new(p50, 6, 4, color.stroke_width(1)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/report");

    fn load<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let text = std::fs::read(format!("{DIR}/{name}")).expect("fixture");
        serde_json::from_slice(&text).expect("fixture parses")
    }

    /// results.md as `herald-bench report` writes it, from the stored results of one
    /// `bench/run.sh --smoke --no-cluster` run, is byte for byte what the report code wrote
    /// before its rows were folded into `Table` (`expected.md`, written then).
    #[test]
    fn results_md_is_unchanged() {
        let results: Vec<SuiteResult> = ["herald.json", "sockudo.json", "socketio.json"]
            .iter()
            .map(|name| load(name))
            .collect();
        let floors: Vec<crate::floor::FloorResult> = load("floor.json");
        let mut got = markdown(&results);
        got.push_str(&floor_table(&floors));
        let want = std::fs::read_to_string(format!("{DIR}/expected.md")).expect("expected.md");
        assert_eq!(got, want);
    }
}
