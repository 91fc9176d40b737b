//! The write floor: what the kernel charges for one small socket write on loopback, measured
//! the way the fan-out scenario loads a server. A writer process (pinned where the server
//! runs) holds the same number of loopback sockets as the fan-out has subscribers and, at the
//! same offered rate, writes the same WebSocket frame to each of them, one `write(2)` per
//! delivery, with no runtime, no queue and no parsing: a server that pays one write per
//! delivery cannot go below this. The reader (the generator's core) drains every socket.
//!
//! `herald-bench write-floor` is the reader; it starts the writer as a child
//! (`herald-bench write-floor-writer`) under `taskset` and reads its CPU use back as JSON.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorOpts {
    pub sockets: usize,
    /// Offered deliveries (writes) per second across all sockets.
    pub deliveries_per_sec: f64,
    pub secs: f64,
    /// Bytes of the WebSocket frame written per delivery.
    pub frame_bytes: usize,
}

/// What the writer measured about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriterReport {
    pub writes: u64,
    pub wall_secs: f64,
    /// From the 10 ms ticks of /proc/self/stat (the split between user and system).
    pub user_secs: f64,
    pub sys_secs: f64,
    /// From /proc/self/schedstat (ns resolution): the total the per-write cost uses.
    #[serde(default)]
    pub cpu_secs: f64,
    /// Writes that did not take the whole frame at once (should be 0).
    pub short_writes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorResult {
    pub opts: FloorOpts,
    pub writer: WriterReport,
    pub bytes_received: u64,
    pub bytes_expected: u64,
    pub writes_per_sec: f64,
    /// Writer CPU (user + system) per write, in microseconds: the floor per delivery.
    pub cpu_us_per_write: f64,
    pub sys_us_per_write: f64,
}

/// A server-to-client WebSocket text frame of `size` bytes carrying a message shaped like
/// Herald's fan-out deliveries (at least its ~106-byte minimum; 128 and 129 cannot be framed
/// exactly and come out as 130).
pub fn frame(size: usize) -> Vec<u8> {
    let mut body = br#"{"type":"message","channel":"bench/fanout","from":"p0000000000000000","data":{"t":1234567890123,"p":""#.to_vec();
    let tail = br#""}}"#;
    let header = if size - 2 < 126 { 2 } else { 4 };
    while body.len() + tail.len() + header < size {
        body.push(b'x');
    }
    body.extend_from_slice(tail);
    let mut out = vec![0x81];
    if body.len() < 126 {
        out.push(body.len() as u8);
    } else {
        out.push(126);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&body);
    out
}

/// The writer: connects `sockets` times to `addr`, then writes `frame` to every socket once
/// per publish at the offered rate, and prints its report as JSON on stdout.
pub fn writer(addr: SocketAddr, opts: &FloorOpts) -> anyhow::Result<()> {
    let mut socks = Vec::with_capacity(opts.sockets);
    for _ in 0..opts.sockets {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        socks.push(s);
    }
    // Wait for the reader's go byte on the first socket, so setup is not measured.
    let mut go = [0u8; 1];
    socks[0].read_exact(&mut go)?;
    let frame = frame(opts.frame_bytes);
    let publishes_per_sec = opts.deliveries_per_sec / opts.sockets as f64;
    let cpu0 = crate::procstat::cpu_ticks_split("self");
    let run0 = crate::procstat::run_ns("self");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(opts.secs);
    let mut done: u64 = 0;
    let mut writes: u64 = 0;
    let mut short = 0;
    while Instant::now() < deadline {
        let due = (started.elapsed().as_secs_f64() * publishes_per_sec) as u64;
        if due <= done {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        for _ in done..due {
            for s in &mut socks {
                let n = s.write(&frame)?;
                if n < frame.len() {
                    short += 1;
                    s.write_all(&frame[n..])?;
                }
                writes += 1;
            }
        }
        done = due;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu1 = crate::procstat::cpu_ticks_split("self");
    let run1 = crate::procstat::run_ns("self");
    let report = WriterReport {
        writes,
        wall_secs: wall,
        user_secs: (cpu1.0 - cpu0.0) as f64 / 100.0,
        sys_secs: (cpu1.1 - cpu0.1) as f64 / 100.0,
        cpu_secs: run1.saturating_sub(run0) as f64 / 1e9,
        short_writes: short,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The reader: listens on loopback, starts the writer pinned to `writer_cpu`, drains every
/// socket until the writer closes them, and combines both sides' numbers.
pub async fn run(opts: &FloorOpts, writer_cpu: Option<usize>) -> anyhow::Result<FloorResult> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let exe = std::env::current_exe()?;
    let mut cmd = match writer_cpu {
        Some(cpu) => {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(&exe);
            c
        }
        None => tokio::process::Command::new(&exe),
    };
    cmd.arg("write-floor-writer")
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--sockets")
        .arg(opts.sockets.to_string())
        .arg("--deliveries-per-sec")
        .arg(opts.deliveries_per_sec.to_string())
        .arg("--secs")
        .arg(opts.secs.to_string())
        .arg("--frame-bytes")
        .arg(opts.frame_bytes.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    let mut accepted = Vec::with_capacity(opts.sockets);
    while accepted.len() < opts.sockets {
        let (s, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept()).await??;
        accepted.push(s);
    }
    use tokio::io::AsyncWriteExt as _;
    accepted[0].write_all(b"g").await?;
    let mut readers = tokio::task::JoinSet::new();
    for mut s in accepted {
        readers.spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            total
        });
    }
    let output = tokio::time::timeout(
        Duration::from_secs_f64(opts.secs + 30.0),
        child.wait_with_output(),
    )
    .await??;
    anyhow::ensure!(output.status.success(), "writer failed: {}", output.status);
    let writer: WriterReport = serde_json::from_slice(&output.stdout)?;
    let mut bytes_received = 0;
    while let Some(n) = readers.join_next().await {
        bytes_received += n.unwrap_or(0);
    }
    let frame_len = frame(opts.frame_bytes).len() as u64;
    let writes = writer.writes.max(1) as f64;
    let ticks = writer.user_secs + writer.sys_secs;
    let cpu = if writer.cpu_secs > 0.0 {
        writer.cpu_secs
    } else {
        ticks
    };
    // The system share from the ticks, applied to the precise total.
    let sys_share = if ticks > 0.0 {
        writer.sys_secs / ticks
    } else {
        1.0
    };
    Ok(FloorResult {
        opts: opts.clone(),
        bytes_received,
        bytes_expected: writer.writes * frame_len,
        writes_per_sec: writer.writes as f64 / writer.wall_secs.max(1e-9),
        cpu_us_per_write: cpu * 1e6 / writes,
        sys_us_per_write: cpu * sys_share * 1e6 / writes,
        writer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_asked_size() {
        assert_eq!(frame(60).len(), 106, "the smallest frame");
        for size in [127, 130, 150, 300] {
            let f = frame(size);
            assert_eq!(f.len(), size, "size {size}");
            assert_eq!(f[0], 0x81);
        }
    }
}
