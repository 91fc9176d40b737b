//! `herald-bench`: run the benchmark suite against one target, or turn results into a report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use herald_bench::proto::{Proto, Target};
use herald_bench::soak::{self, Proc, SoakOpts, SoakTarget};
use herald_bench::storm::{self, StormOpts, StormTarget};
use herald_bench::suite::{self, SuiteOpts, SuiteResult};
use herald_bench::token::SigningKey;
use herald_bench::{encode, floor, procstat, report, scenarios};

#[derive(Parser)]
#[command(
    name = "herald-bench",
    about = "Herald vs Socket.IO over real WebSockets on loopback"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Time the encoding of one roster snapshot against a copy of its bytes (no server).
    EncodeSnapshot {
        /// Entries in the roster.
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        /// Encodings timed (the mean is printed).
        #[arg(long, default_value_t = 200)]
        rounds: u32,
    },
    /// Run every scenario against one running server (or cluster) and write JSON results.
    Suite {
        /// herald, socketio or pusher (Sockudo)
        #[arg(long, value_parser = parse_proto)]
        proto: Proto,
        /// Node addresses, comma-separated (host:port, loopback).
        #[arg(long, value_delimiter = ',', required = true)]
        addr: Vec<SocketAddr>,
        /// Server process ids, comma-separated, for CPU and RSS.
        #[arg(long, value_delimiter = ',', required = true)]
        pid: Vec<u32>,
        /// Herald publishable key with presence.
        #[arg(long, default_value = "pk_bench")]
        key: String,
        /// Herald publishable key without the presence action.
        #[arg(long, default_value = "pk_bench_quiet")]
        quiet_key: String,
        /// Name in the report.
        #[arg(long)]
        label: Option<String>,
        /// JSON output file.
        #[arg(long)]
        out: PathBuf,
        /// Tiny sizes, a few seconds in all.
        #[arg(long)]
        smoke: bool,
        /// Only these scenarios (connections, fanout, presence, direct, chat).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Idle-connection counts to measure.
        #[arg(long, value_delimiter = ',')]
        connections: Vec<usize>,
        /// Fan-out subscribers.
        #[arg(long)]
        subscribers: Option<usize>,
        /// Fan-out publishers.
        #[arg(long)]
        publishers: Option<usize>,
        /// Seconds per fan-out run.
        #[arg(long)]
        fanout_secs: Option<f64>,
        /// Presence watchers (K).
        #[arg(long)]
        watchers: Option<usize>,
        /// Direct pairs.
        #[arg(long)]
        pairs: Option<usize>,
        /// Offered loads of the latency curve, as fractions of the measured max rate.
        #[arg(long, value_delimiter = ',')]
        curve: Vec<f64>,
        /// Presence churners (C).
        #[arg(long)]
        churners: Option<usize>,
        /// Fan-out flow-control window (publishes in flight per publisher at max rate).
        #[arg(long)]
        window: Option<u64>,
        /// Busy-poll: the generator never sleeps in epoll_wait (uses its whole core).
        #[arg(long)]
        spin: bool,
        /// Herald: clients connect with JWTs signed by this secret key (kid:secret), as stable
        /// peers `bench-<index>`, instead of with the publishable keys.
        #[arg(long, value_parser = SigningKey::parse)]
        signing_key: Option<SigningKey>,
        /// Chat workload member counts (one run each).
        #[arg(long, value_delimiter = ',')]
        chat: Vec<usize>,
        /// Seconds per chat run.
        #[arg(long)]
        chat_secs: Option<f64>,
        /// Seconds between a chat member's messages.
        #[arg(long)]
        chat_every: Option<f64>,
        /// Seconds between a chat member's typing indicators.
        #[arg(long)]
        typing_every: Option<f64>,
        /// Fixed fan-out loads in deliveries/s for the latency-throughput curve.
        #[arg(long, value_delimiter = ',')]
        curve_rates: Vec<f64>,
    },
    /// Hold a mixed load for a while; check rosters, deliveries, and RSS/fds for drift.
    /// Exits non-zero if anything was wrong (scripts/soak starts the servers).
    Soak {
        /// Node addresses, comma-separated (host:port, loopback).
        #[arg(long, value_delimiter = ',', required = true)]
        addr: Vec<SocketAddr>,
        /// Processes to sample, as name=pid, comma-separated (every node, redis-server).
        #[arg(long = "proc", value_delimiter = ',', value_parser = parse_proc)]
        procs: Vec<Proc>,
        /// Publishable key with presence.
        #[arg(long, default_value = "pk_bench")]
        key: String,
        /// Publishable key without presence (firehose and slow consumers).
        #[arg(long, default_value = "pk_bench_quiet")]
        quiet_key: String,
        /// Length of the run.
        #[arg(long, default_value_t = 2.0)]
        minutes: f64,
        /// Seconds between checks.
        #[arg(long)]
        check_secs: Option<f64>,
        /// Milliseconds the paused load settles before a check.
        #[arg(long)]
        settle_ms: Option<u64>,
        /// Stable peers.
        #[arg(long)]
        stable: Option<usize>,
        /// Churning connections.
        #[arg(long)]
        churners: Option<usize>,
        /// Connections that drop without a close frame.
        #[arg(long)]
        droppers: Option<usize>,
        /// Slow consumers.
        #[arg(long)]
        slow: Option<usize>,
        /// Seconds a slow consumer stops reading.
        #[arg(long)]
        stall_secs: Option<f64>,
        /// Room publishes per second.
        #[arg(long)]
        publish_rate: Option<f64>,
        /// Directs per second.
        #[arg(long)]
        direct_rate: Option<f64>,
        /// Firehose publishes per second.
        #[arg(long)]
        firehose_rate: Option<f64>,
        #[arg(long)]
        seed: Option<u64>,
        /// CSV of the samples.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// The summary text (also printed).
        #[arg(long)]
        summary: Option<PathBuf>,
        /// The whole report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Presence in a big room on one node: M members watch while J churners join at a fixed
    /// rate and leave again; per-watcher traffic, server CPU and RSS, snapshot latency and
    /// size, and whether every roster ends right. The server needs the secret key of
    /// `--secret` (bench/presence-storm.sh adds it to bench/herald.toml).
    PresenceStorm {
        /// The node's address (host:port, loopback).
        #[arg(long)]
        addr: SocketAddr,
        /// Server process ids, comma-separated, for CPU and RSS.
        #[arg(long, value_delimiter = ',', required = true)]
        pid: Vec<u32>,
        /// Secret key that signs the peers' tokens, as kid:secret.
        #[arg(long, default_value = STORM_KEY, value_parser = SigningKey::parse)]
        secret: SigningKey,
        /// Members (watchers) in the room.
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        /// Members that receive presence (default: all); the others are in the roster only.
        #[arg(long)]
        watchers: Option<usize>,
        /// Churners that join and then leave during the storm.
        #[arg(long, default_value_t = 1_000)]
        joins: usize,
        /// Joins per second, then leaves per second.
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
        /// New subscribers whose snapshot is timed.
        #[arg(long)]
        samples: Option<usize>,
        /// Approximate bytes of each peer's peerMetadata (0 = none).
        #[arg(long)]
        metadata_bytes: Option<usize>,
        /// Churners receive no presence (no snapshot, no deltas).
        #[arg(long)]
        quiet_churners: bool,
        /// Member handshakes and subscribes in flight during setup.
        #[arg(long)]
        connect_concurrency: Option<usize>,
        #[arg(long, default_value = "bench/storm")]
        channel: String,
        /// Name in the result.
        #[arg(long, default_value = "herald")]
        label: String,
        /// JSON output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check that a server speaks the protocol with the bench's credentials: connect, subscribe
    /// with presence, publish once and see it arrive. Exits non-zero otherwise (bench/run.sh
    /// runs it first, so a config that silently fell back to defaults is caught).
    Probe {
        #[arg(long, value_parser = parse_proto)]
        proto: Proto,
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "pk_bench")]
        key: String,
    },
    /// The write floor: one write(2) per delivery of the fan-out's frame to as many loopback
    /// sockets as it has subscribers, at a fixed rate, from a writer pinned to --writer-cpu.
    WriteFloor {
        #[arg(long, default_value_t = 1000)]
        sockets: usize,
        /// Offered deliveries per second, comma-separated for several runs.
        #[arg(long, value_delimiter = ',', default_value = "100000")]
        deliveries_per_sec: Vec<f64>,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Bytes per frame (the fan-out's deliveries are about 150).
        #[arg(long, default_value_t = 150)]
        frame_bytes: usize,
        /// Core the writer is pinned to (where the servers run).
        #[arg(long)]
        writer_cpu: Option<usize>,
        /// JSON output file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The writer side of write-floor (started by it).
    #[command(hide = true)]
    WriteFloorWriter {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        sockets: usize,
        #[arg(long)]
        deliveries_per_sec: f64,
        #[arg(long)]
        secs: f64,
        #[arg(long)]
        frame_bytes: usize,
    },
    /// Merge suite results into a markdown table and PNG plots.
    Report {
        /// Directory for results.md and fanout-latency.png.
        #[arg(long)]
        out_dir: PathBuf,
        /// The write-floor JSON of the same run, appended to results.md.
        #[arg(long)]
        floor: Option<PathBuf>,
        /// Suite JSON files, in column order.
        files: Vec<PathBuf>,
    },
}

/// The secret key bench/presence-storm.sh configures (a benchmark credential, loopback only).
const STORM_KEY: &str = "sk_id_bench_storm:sk_secret_bench_storm_loopback_only";

fn parse_proto(s: &str) -> Result<Proto, String> {
    match s {
        "herald" => Ok(Proto::Herald),
        "socketio" => Ok(Proto::Socketio),
        "pusher" => Ok(Proto::Pusher),
        _ => Err("herald, socketio or pusher".into()),
    }
}

fn parse_proc(s: &str) -> Result<Proc, String> {
    let (name, pid) = s.split_once('=').ok_or("name=pid")?;
    let pid = pid.parse().map_err(|_| format!("{pid}: not a pid"))?;
    Ok(Proc {
        name: name.to_string(),
        pid,
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Suite {
            proto,
            addr,
            pid,
            key,
            quiet_key,
            label,
            out,
            smoke,
            only,
            connections,
            subscribers,
            publishers,
            fanout_secs,
            watchers,
            pairs,
            curve,
            churners,
            window,
            spin,
            signing_key,
            chat,
            chat_secs,
            chat_every,
            typing_every,
            curve_rates,
        } => {
            for a in &addr {
                anyhow::ensure!(
                    a.ip().is_loopback(),
                    "{a}: the benchmark only targets loopback"
                );
            }
            let mut opts = if smoke {
                SuiteOpts::smoke()
            } else {
                SuiteOpts::full()
            };
            opts.only = only;
            if !connections.is_empty() {
                opts.connections = connections;
            }
            opts.subscribers = subscribers.unwrap_or(opts.subscribers);
            opts.publishers = publishers.unwrap_or(opts.publishers);
            opts.fanout_secs = fanout_secs.unwrap_or(opts.fanout_secs);
            opts.watchers = watchers.unwrap_or(opts.watchers);
            opts.pairs = pairs.unwrap_or(opts.pairs);
            opts.churners = churners.unwrap_or(opts.churners);
            opts.window = window.unwrap_or(opts.window);
            if !curve.is_empty() {
                opts.curve = curve;
            }
            if !chat.is_empty() {
                opts.chat = chat;
            }
            opts.chat_secs = chat_secs.unwrap_or(opts.chat_secs);
            opts.chat_every = chat_every.unwrap_or(opts.chat_every);
            opts.typing_every = typing_every.unwrap_or(opts.typing_every);
            if !curve_rates.is_empty() {
                opts.curve_rates = curve_rates;
            }
            let target = Target {
                proto,
                addrs: addr,
                key,
                quiet_key,
                pids: pid,
                signing_key,
            };
            let label = label.unwrap_or_else(|| proto.name().to_string());
            // One thread: the generator is pinned to one core, and a single-threaded runtime
            // spends nothing on cross-thread wakeups.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let cpu = procstat::cpu_ticks("self");
            let result = runtime.block_on(async {
                if spin {
                    tokio::spawn(async {
                        loop {
                            tokio::task::yield_now().await;
                        }
                    });
                }
                suite::run(&label, &target, &opts).await
            })?;
            scenarios::progress(format!(
                "{label}: done; generator used {:.1} CPU seconds",
                (procstat::cpu_ticks("self") - cpu) as f64 / 100.0
            ));
            std::fs::write(&out, serde_json::to_vec_pretty(&result)?)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        Command::Soak {
            addr,
            procs,
            key,
            quiet_key,
            minutes,
            check_secs,
            settle_ms,
            stable,
            churners,
            droppers,
            slow,
            stall_secs,
            publish_rate,
            direct_rate,
            firehose_rate,
            seed,
            csv,
            summary,
            json,
        } => {
            for a in &addr {
                anyhow::ensure!(a.ip().is_loopback(), "{a}: the soak only targets loopback");
            }
            anyhow::ensure!(minutes > 0.0, "--minutes must be positive");
            let mut opts = SoakOpts::standard(Duration::from_secs_f64(minutes * 60.0));
            if let Some(s) = check_secs {
                opts.check_every = Duration::from_secs_f64(s);
            }
            if let Some(ms) = settle_ms {
                opts.settle = Duration::from_millis(ms);
            }
            anyhow::ensure!(
                opts.check_every > opts.settle,
                "the check interval must be longer than the settle time"
            );
            opts.stable = stable.unwrap_or(opts.stable);
            opts.churners = churners.unwrap_or(opts.churners);
            opts.droppers = droppers.unwrap_or(opts.droppers);
            opts.slow_consumers = slow.unwrap_or(opts.slow_consumers);
            if let Some(s) = stall_secs {
                opts.stall = Duration::from_secs_f64(s);
            }
            opts.publish_rate = publish_rate.unwrap_or(opts.publish_rate);
            opts.direct_rate = direct_rate.unwrap_or(opts.direct_rate);
            opts.firehose_rate = firehose_rate.unwrap_or(opts.firehose_rate);
            opts.seed = seed.unwrap_or(opts.seed);
            let target = SoakTarget {
                addrs: addr,
                key,
                quiet_key,
                procs,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let result = runtime.block_on(soak::run(&target, &opts))?;
            let text = result.render();
            println!("{text}");
            if let Some(path) = csv {
                std::fs::write(&path, result.csv())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = summary {
                std::fs::write(&path, &text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&result)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if !result.passed() {
                std::process::exit(1);
            }
        }
        Command::PresenceStorm {
            addr,
            pid,
            secret,
            members,
            watchers,
            joins,
            rate,
            samples,
            metadata_bytes,
            quiet_churners,
            connect_concurrency,
            channel,
            label,
            out,
        } => {
            anyhow::ensure!(
                addr.ip().is_loopback(),
                "{addr}: the benchmark only targets loopback"
            );
            let mut opts = StormOpts::standard();
            opts.members = members;
            opts.watchers = watchers.unwrap_or(members);
            opts.joins = joins;
            opts.rate = rate;
            opts.snapshot_samples = samples.unwrap_or(opts.snapshot_samples);
            opts.metadata_bytes = metadata_bytes.unwrap_or(opts.metadata_bytes);
            opts.churner_presence = !quiet_churners;
            opts.connect_concurrency = connect_concurrency.unwrap_or(opts.connect_concurrency);
            let target = StormTarget {
                addr,
                pids: pid,
                key: secret,
                channel,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let result = runtime.block_on(storm::run(&label, &target, &opts))?;
            std::fs::write(&out, serde_json::to_vec_pretty(&result)?)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{}", result.summary());
        }
        Command::Probe { proto, addr, key } => {
            anyhow::ensure!(addr.ip().is_loopback(), "{addr}: loopback only");
            let target = Target {
                proto,
                addrs: vec![addr],
                key: key.clone(),
                quiet_key: key,
                pids: Vec::new(),
                signing_key: None,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), scenarios::probe(&target))
                    .await
                    .context("probe timed out")?
            })?;
            println!("probe: {} at {addr} OK", proto.name());
        }
        Command::WriteFloor {
            sockets,
            deliveries_per_sec,
            secs,
            frame_bytes,
            writer_cpu,
            out,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut results = Vec::new();
            for rate in deliveries_per_sec {
                let opts = floor::FloorOpts {
                    sockets,
                    deliveries_per_sec: rate,
                    secs,
                    frame_bytes,
                };
                let r = runtime.block_on(floor::run(&opts, writer_cpu))?;
                scenarios::progress(format!(
                    "write floor: {} sockets, {:.0} writes/s of {} B: {:.2} µs CPU per write ({:.2} µs system), {} of {} bytes read",
                    sockets,
                    r.writes_per_sec,
                    frame_bytes,
                    r.cpu_us_per_write,
                    r.sys_us_per_write,
                    r.bytes_received,
                    r.bytes_expected
                ));
                results.push(r);
            }
            if let Some(out) = out {
                std::fs::write(&out, serde_json::to_vec_pretty(&results)?)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
        }
        Command::WriteFloorWriter {
            addr,
            sockets,
            deliveries_per_sec,
            secs,
            frame_bytes,
        } => {
            anyhow::ensure!(addr.ip().is_loopback(), "{addr}: loopback only");
            floor::writer(
                addr,
                &floor::FloorOpts {
                    sockets,
                    deliveries_per_sec,
                    secs,
                    frame_bytes,
                },
            )?;
        }
        Command::EncodeSnapshot { members, rounds } => {
            println!("{}", encode::snapshot_cost(members, rounds.max(1)));
        }
        Command::Report {
            out_dir,
            floor,
            files,
        } => {
            let mut results = Vec::new();
            for f in &files {
                let text = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
                let r: SuiteResult = serde_json::from_slice(&text)
                    .with_context(|| format!("parsing {}", f.display()))?;
                results.push(r);
            }
            std::fs::create_dir_all(&out_dir)?;
            let mut table = report::markdown(&results);
            if let Some(path) = floor {
                let text =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let floors: Vec<floor::FloorResult> = serde_json::from_slice(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                table.push_str(&report::floor_table(&floors));
            }
            std::fs::write(out_dir.join("results.md"), &table)?;
            println!("{table}");
            let png = out_dir.join("fanout-latency.png");
            if report::plot_latency(&results, &png)? {
                println!("plot: {}", png.display());
            } else {
                println!("plot skipped (no font or no curve data)");
            }
        }
    }
    Ok(())
}
