//! Results → a markdown table (Herald beside Socket.IO) and PNG plots of latency against
//! offered load.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

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

type Row = (
    &'static str,
    &'static str,
    Box<dyn Fn(&SuiteResult) -> Option<(f64, String)>>,
);

/// One markdown table: a row per metric, a column per result.
pub fn markdown(results: &[SuiteResult]) -> String {
    let rows: Vec<Row> = vec![
        (
            "Fan-out S×P, max: deliveries/s",
            "≥ 1,000,000; ≥ 15× Socket.IO",
            Box::new(|r| {
                r.fanout_max.as_ref().map(|f| {
                    (
                        f.deliveries_per_sec,
                        format!(
                            "{}/s (S={} P={})",
                            fmt_rate(f.deliveries_per_sec),
                            f.subscribers_connected,
                            f.opts.publishers
                        ),
                    )
                })
            }),
        ),
        (
            "Fan-out max: server CPU per delivery (server, generator CPU use)",
            "≤ 1 µs",
            Box::new(|r| {
                r.fanout_max.as_ref().map(|f| {
                    (
                        f.server_cpu_us_per_delivery,
                        format!(
                            "{:.2} µs ({:.0} %, {:.0} %)",
                            f.server_cpu_us_per_delivery,
                            f.cpu.server_util * 100.0,
                            f.cpu.bench_util * 100.0
                        ),
                    )
                })
            }),
        ),
        (
            "Fan-out max: latency p50 / p99",
            "",
            Box::new(|r| {
                r.fanout_max.as_ref().map(|f| {
                    (
                        f.latency.p99_us,
                        format!(
                            "{} / {}",
                            fmt_ms(f.latency.p50_us),
                            fmt_ms(f.latency.p99_us)
                        ),
                    )
                })
            }),
        ),
        (
            "Fan-out max: missing after drain",
            "0",
            Box::new(|r| {
                r.fanout_max
                    .as_ref()
                    .map(|f| (f.missing as f64, format!("{} of {}", f.missing, f.expected)))
            }),
        ),
        (
            "Fan-out at ½ max rate: p99 (p999, max)",
            "p99 ≤ 5 ms",
            Box::new(|r| {
                half_rate(r).map(|f| {
                    (
                        f.latency.p99_us,
                        format!(
                            "{} ({}, {}) at {}/s",
                            fmt_ms(f.latency.p99_us),
                            fmt_ms(f.latency.p999_us),
                            fmt_ms(f.latency.max_us),
                            fmt_rate(f.offered_deliveries_per_sec.unwrap_or(0.0))
                        ),
                    )
                })
            }),
        ),
        (
            "Fan-out latency probe, S ≤ 10 at 100 publishes per second: p50 / p99",
            "",
            Box::new(|r| {
                r.fanout_probe.as_ref().map(|f| {
                    (
                        f.latency.p99_us,
                        format!(
                            "{} / {}",
                            fmt_ms(f.latency.p50_us),
                            fmt_ms(f.latency.p99_us)
                        ),
                    )
                })
            }),
        ),
        (
            "Idle connections: RSS per connection",
            "≤ 8 KB at N=15,000",
            Box::new(|r| {
                r.connections.last().map(|c| {
                    (
                        c.bytes_per_connection,
                        format!(
                            "{:.1} KB (N={}, {} failed)",
                            c.bytes_per_connection / 1024.0,
                            c.connected,
                            c.failures
                        ),
                    )
                })
            }),
        ),
        (
            "Connect rate (server, generator CPU use)",
            "≥ 10,000/s",
            Box::new(|r| {
                r.connections.last().map(|c| {
                    (
                        c.connects_per_sec,
                        format!(
                            "{}/s ({:.0} %, {:.0} %)",
                            fmt_rate(c.connects_per_sec),
                            c.cpu.server_util * 100.0,
                            c.cpu.bench_util * 100.0
                        ),
                    )
                })
            }),
        ),
        (
            "Presence churn: cycles/s",
            "≥ 1,000 (K=200)",
            Box::new(|r| {
                r.presence.as_ref().map(|p| {
                    (
                        p.cycles_per_sec,
                        format!(
                            "{}/s (K={} C={})",
                            fmt_rate(p.cycles_per_sec),
                            p.opts.watchers,
                            p.opts.churners
                        ),
                    )
                })
            }),
        ),
        (
            "Presence: join-visible p99",
            "≤ 5 ms",
            Box::new(|r| {
                r.presence.as_ref().map(|p| {
                    (
                        p.join_visible.p99_us,
                        format!(
                            "{} ({} of {} seen)",
                            fmt_ms(p.join_visible.p99_us),
                            p.joins_seen,
                            p.joins_expected
                        ),
                    )
                })
            }),
        ),
        (
            "Direct: messages/s (server, generator CPU use)",
            "≥ 300,000",
            Box::new(|r| {
                r.direct.as_ref().map(|d| {
                    (
                        d.messages_per_sec,
                        format!(
                            "{}/s ({} pairs; {:.0} %, {:.0} %)",
                            fmt_rate(d.messages_per_sec),
                            d.opts.pairs,
                            d.cpu.server_util * 100.0,
                            d.cpu.bench_util * 100.0
                        ),
                    )
                })
            }),
        ),
        (
            "Direct: latency p50 / p99",
            "",
            Box::new(|r| {
                r.direct.as_ref().map(|d| {
                    (
                        d.latency.p99_us,
                        format!(
                            "{} / {}",
                            fmt_ms(d.latency.p50_us),
                            fmt_ms(d.latency.p99_us)
                        ),
                    )
                })
            }),
        ),
        (
            "Direct latency probe, ≤ 10 pairs, 1 in flight: p50 / p99",
            "",
            Box::new(|r| {
                r.direct_probe.as_ref().map(|d| {
                    (
                        d.latency.p99_us,
                        format!(
                            "{} / {}",
                            fmt_ms(d.latency.p50_us),
                            fmt_ms(d.latency.p99_us)
                        ),
                    )
                })
            }),
        ),
        (
            "Chat workload #1 (members): latency p50 / p99 / p999",
            "p99 ≤ 10 ms at 15,000",
            Box::new(|r| {
                r.chat.first().map(|c| {
                    (
                        c.latency.p99_us,
                        format!(
                            "{} / {} / {} (N={}, {} missing of {})",
                            fmt_ms(c.latency.p50_us),
                            fmt_ms(c.latency.p99_us),
                            fmt_ms(c.latency.p999_us),
                            c.members_connected,
                            c.missing,
                            c.expected
                        ),
                    )
                })
            }),
        ),
        (
            "Chat workload #1: delivery rate, server CPU per delivery, RSS",
            "",
            Box::new(|r| {
                r.chat.first().map(|c| {
                    (
                        c.deliveries_per_sec,
                        format!(
                            "{}/s, {:.2} µs ({:.0} % of the core), {} MB",
                            fmt_rate(c.deliveries_per_sec),
                            c.server_cpu_us_per_delivery,
                            c.cpu.server_util * 100.0,
                            c.rss_kb / 1024
                        ),
                    )
                })
            }),
        ),
        (
            "Chat workload #2 (members): latency p50 / p99 / p999",
            "p99 ≤ 10 ms at 15,000",
            Box::new(|r| {
                r.chat.get(1).map(|c| {
                    (
                        c.latency.p99_us,
                        format!(
                            "{} / {} / {} (N={}, {} missing of {})",
                            fmt_ms(c.latency.p50_us),
                            fmt_ms(c.latency.p99_us),
                            fmt_ms(c.latency.p999_us),
                            c.members_connected,
                            c.missing,
                            c.expected
                        ),
                    )
                })
            }),
        ),
        (
            "Chat workload #2: delivery rate, server CPU per delivery, RSS",
            "",
            Box::new(|r| {
                r.chat.get(1).map(|c| {
                    (
                        c.deliveries_per_sec,
                        format!(
                            "{}/s, {:.2} µs ({:.0} % of the core), {} MB",
                            fmt_rate(c.deliveries_per_sec),
                            c.server_cpu_us_per_delivery,
                            c.cpu.server_util * 100.0,
                            c.rss_kb / 1024
                        ),
                    )
                })
            }),
        ),
        (
            "Generator-bound runs",
            "none",
            Box::new(|r| {
                let mut flagged = Vec::new();
                if r.connections.iter().any(|c| c.cpu.generator_bound) {
                    flagged.push("connections");
                }
                if r.fanout_max.as_ref().is_some_and(|f| f.cpu.generator_bound) {
                    flagged.push("fan-out");
                }
                if r.direct.as_ref().is_some_and(|d| d.cpu.generator_bound) {
                    flagged.push("direct");
                }
                if r.presence.as_ref().is_some_and(|p| p.cpu.generator_bound) {
                    flagged.push("presence");
                }
                if r.chat.iter().any(|c| c.cpu.generator_bound) {
                    flagged.push("chat");
                }
                if r.fanout_fixed.iter().any(|f| f.cpu.generator_bound) {
                    flagged.push("curve");
                }
                Some((
                    flagged.len() as f64,
                    if flagged.is_empty() {
                        "none".to_string()
                    } else {
                        flagged.join(", ")
                    },
                ))
            }),
        ),
    ];
    let mut out = String::new();
    let _ = write!(out, "| Metric | Target |");
    for r in results {
        let _ = write!(out, " {} |", r.label);
    }
    let ratio = results.len() >= 2;
    if ratio {
        let _ = write!(out, " {} ÷ {} |", results[0].label, results[1].label);
    }
    out.push('\n');
    let _ = write!(out, "|---|---|");
    for _ in results {
        out.push_str("---|");
    }
    if ratio {
        out.push_str("---|");
    }
    out.push('\n');
    for (name, target, cell) in &rows {
        let _ = write!(out, "| {name} | {target} |");
        let values: Vec<_> = results.iter().map(cell).collect();
        for v in &values {
            let _ = write!(out, " {} |", v.as_ref().map_or("–", |(_, s)| s.as_str()));
        }
        if ratio {
            match (&values[0], &values[1]) {
                (Some((a, _)), Some((b, _))) if *b > 0.0 && name.contains("/s") => {
                    let _ = write!(out, " {:.1}× |", a / b);
                }
                _ => out.push_str(" |"),
            }
        }
        out.push('\n');
    }
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
