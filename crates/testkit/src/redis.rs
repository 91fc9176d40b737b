//! A real `redis-server` for tests, started on a free port and killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts `redis-server` (from the system) with no persistence on a free loopback port.
    pub fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> RedisServer {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/bin/valkey-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("redis-server is not installed: `apt-get install redis-server` (scripts/test and .ci/run do this)");
        let dir = std::env::temp_dir().join(format!("herald-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(binary)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--protected-mode", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = RedisServer {
            port,
            child: Some(child),
            dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL): its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills and starts a fresh, empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let fresh = RedisServer::start_on(self.port);
        *self = fresh;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real Redis Cluster for tests: three masters (`redis-server --cluster-enabled yes`), and
/// optionally replicas, on free loopback ports, joined by `redis-cli --cluster create`, killed
/// on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

/// A port that is free together with its cluster-bus port (port + 10000), both below the
/// kernel's ephemeral range (32768 and up on Linux by default). A port in that range can be
/// taken, between this check and the node's bind, by any outgoing connection of a test running
/// beside this one, and the node then fails to start.
fn free_cluster_port(taken: &[u16]) -> u16 {
    use std::net::TcpListener;
    let mut seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    loop {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // 10000..22000, so the bus port stays below 32000.
        let port = 10_000 + (seed >> 33) as u16 % 12_000;
        if !taken.contains(&port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

fn cluster_binary() -> &'static str {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("redis-server is not installed: `apt-get install redis-server`")
}

fn spawn_cluster_node(binary: &str, port: u16, dir: &std::path::Path) -> Child {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
        // Replicas sync at once (the default waits 5 s for more replicas to batch with).
        .args(["--repl-diskless-sync-delay", "0"])
        .args(["--cluster-config-file", "nodes.conf", "--dir"])
        .arg(&node_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_with_replicas(0)
    }

    /// Three masters, each with `replicas` replicas (which take over when a master dies).
    pub fn start_with_replicas(replicas: usize) -> RedisCluster {
        let binary = cluster_binary();
        let mut ports = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            ports.push(free_cluster_port(&ports));
        }
        let dir = std::env::temp_dir().join(format!(
            "herald-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let children = ports
            .iter()
            .map(|port| spawn_cluster_node(binary, *port, &dir))
            .collect();
        let cluster = RedisCluster {
            ports,
            children,
            dir,
        };
        cluster.wait_listening();
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is not installed (it comes with redis-server)");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_state_ok();
        cluster
    }

    fn wait_listening(&self) {
        for port in &self.ports {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "redis cluster node {port} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills every master (SIGKILL): all data is gone; each node's cluster config stays.
    pub fn kill(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }

    /// Kills and restarts every master on its port. Without persistence the data is lost;
    /// the nodes rejoin as the same cluster from their saved cluster config.
    pub fn restart(&mut self) {
        self.kill();
        let binary = cluster_binary();
        self.children = self
            .ports
            .iter()
            .map(|port| spawn_cluster_node(binary, *port, &self.dir))
            .collect();
        self.wait_listening();
        self.wait_state_ok();
    }

    /// Kills one node (SIGKILL), leaving the others running.
    pub fn kill_node(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).unwrap();
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }

    /// The port of the master serving `key`'s slot, as `asked` (a live node) sees it.
    pub fn master_of(&self, asked: u16, key: &str) -> Option<u16> {
        let slot: u16 = self
            .cli_on(asked, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .ok()?;
        for line in self.cli_on(asked, &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
            });
            if serves {
                let port = fields[1].split(['@', ':']).nth(1)?;
                return port.parse().ok();
            }
        }
        None
    }

    /// Waits until every replica has synced with its master (and so can take over from it).
    pub fn wait_replicas_synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &self.ports {
            loop {
                let info = self.cli_on(*port, &["info", "replication"]);
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "replica {port} never synced");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Waits until every node reports `cluster_state:ok` and knows every node.
    fn wait_state_ok(&self) {
        let known = format!("cluster_known_nodes:{}", self.ports.len());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self.ports.iter().all(|port| {
                let out = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                text.contains("cluster_state:ok") && text.contains(&known)
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "redis cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Seed URLs for `engine.redis_url` with `redis_cluster = true`.
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs a redis-cli command against one master (no redirects) and returns its output.
    pub fn cli_on(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a redis-cli command against the cluster (`-c` follows redirects) and returns its
    /// output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-c", "-p", &self.ports[0].to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a test's Herald nodes keep their shared state: one `redis-server`, or a Redis Cluster.
pub enum Backend {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Backend {
    /// The `[engine]` lines that point a node at it.
    pub fn engine_config(&self) -> String {
        match self {
            Backend::Single(redis) => format!("redis_url = \"{}\"", redis.url()),
            Backend::Cluster(cluster) => {
                format!("redis_url = \"{}\"\nredis_cluster = true", cluster.urls())
            }
        }
    }
}
