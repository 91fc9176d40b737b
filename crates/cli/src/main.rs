//! `herald`: run the server, mint tokens, print configuration.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use herald_protocol::claims::Claims;
use herald_protocol::jwt;
use herald_server::config::{Config, DEFAULT_CONFIG_TOML};
use herald_server::devkeys::{DevKeys, DEV_KEYS_PATH};
use serde_json::value::RawValue;

mod shell;

#[derive(Parser)]
#[command(
    name = "herald",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("HERALD_GIT_COMMIT"), ")"),
    about = "A self-hosted Metered Realtime Messaging server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArgs {
    /// TOML config file. Without one, Herald runs the embedded default in dev mode.
    #[arg(long, short, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Where dev-mode keys are kept (used only when the config defines no apps).
    #[arg(long, default_value = DEV_KEYS_PATH)]
    dev_keys: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGINT/SIGTERM, then shut down gracefully. With `[tls]`, SIGHUP
    /// reloads the certificate and key.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Listen address (overrides config and HERALD_LISTEN).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Allow dev mode on a non-loopback address. Dev mode signs tokens for anyone who asks
        /// (POST /dev/token) and prints its secret, so by default it listens on loopback only.
        #[arg(long, env = "HERALD_DEV_PUBLIC")]
        dev_public: bool,
    },
    /// Mint a connect JWT for a peer with a configured secret key (the stand-in for a
    /// backend's mintJwt).
    Token(TokenArgs),
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) to stdout.
    Completions { shell: clap_complete::Shell },
    /// Print the herald(1) man page (roff) to stdout, or a subcommand's (`herald man serve`).
    Man {
        /// The subcommand whose page to print.
        subcommand: Option<String>,
    },
}

#[derive(clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The peer id (JWT `sub`).
    #[arg(long)]
    sub: String,
    /// Channel patterns the peer may use, comma-separated (default: the key's patterns).
    #[arg(long, value_delimiter = ',')]
    channels: Option<Vec<String>>,
    /// Actions, comma-separated: publish,subscribe,presence,send (default: the key's actions).
    #[arg(long, value_delimiter = ',')]
    permissions: Option<Vec<String>>,
    /// Public identity as a JSON object, e.g. '{"username":"Ana","avatarUrl":"..."}'.
    #[arg(long)]
    peer_metadata: Option<String>,
    /// Private connection metadata as a JSON object (welcome.metadata).
    #[arg(long)]
    metadata: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: i64,
    /// Secret key id to sign with (default: the first live secret key).
    #[arg(long)]
    key_id: Option<String>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the commented default configuration.
    Default,
    /// Load, validate and print the effective configuration.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// The effective config: file (or embedded default), then environment, then dev keys.
fn load_config(args: &ConfigArgs) -> Result<(Config, Option<(DevKeys, bool)>)> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::from_toml(DEFAULT_CONFIG_TOML)?,
    };
    config.apply_env(std::env::vars().filter(|(k, _)| k.starts_with("HERALD_")))?;
    let mut dev = None;
    if config.apps.is_empty() {
        let (keys, created) = DevKeys::load_or_create(&args.dev_keys)
            .with_context(|| format!("dev keys at {}", args.dev_keys.display()))?;
        config.apps.push(keys.app_config());
        config.web.dev_tokens = true;
        config.history.enable_for_dev();
        dev = Some((keys, created));
    }
    config.validate()?;
    Ok((config, dev))
}

/// Log lines waiting for stderr at most; beyond, new lines are dropped (and counted).
const LOG_BUFFER_LINES: usize = 16_384;

/// Logs go to stderr from a thread of their own, through a bounded buffer that drops lines when
/// full: a log sink that stops reading (a pipe nobody drains, a stalled collector) must never
/// block the runtime's threads, or a stream of refused connects, each logged, would stall the
/// node. The guard flushes what is buffered when dropped at exit.
fn init_logging(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("herald-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}

/// Prints the dev banner. A stdout that is closed or gone (`herald serve | head -1`) loses the
/// banner, not the node: `println!` would panic on the failed write.
fn print_dev_banner(
    config: &Config,
    keys: &DevKeys,
    keys_path: &std::path::Path,
    created: bool,
    listen: std::net::SocketAddr,
) {
    use std::io::Write as _;
    let (ws, http) = if config.tls.enabled() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let origin = format!("{ws}://{listen}");
    let state = if created { "created" } else { "loaded" };
    let demo = if config.web.demo {
        format!("Open {http}://{listen}/ in two browser tabs for the demo.\n")
    } else {
        String::new()
    };
    let keys_path = keys_path.display();
    let _ = writeln!(
        std::io::stdout().lock(),
        r#"Herald is running in dev mode: in-memory engine, WebSocket at {origin}/v1
{demo}Dev keys ({state} {keys_path}; keep them out of production):
  app id           {app}
  publishable key  {pk}
  secret key id    {kid}
  secret           {secret}

Mint a JWT for a peer:   herald token --sub alice --peer-metadata '{{"username":"Alice"}}'

Connect with the official JS SDK (npm install @metered-ca/realtime ws):
  import {{ SignallingClient }} from "@metered-ca/realtime";
  import WebSocket from "ws";
  const client = new SignallingClient({{
    url: "{origin}",
    apiKey: "{pk}",
    webSocketFactory: (url) => new WebSocket(url),
  }});
  client.on("message", (m) => console.log(m.from, m.data));
  await client.connect();
  await client.subscribe("lobby");
  await client.publish("lobby", {{ text: "hello" }});
"#,
        app = keys.app_id,
        pk = keys.publishable_key,
        kid = keys.secret_key_id,
        secret = keys.secret,
    );
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Pending connections the kernel queues before `accept` (capped by `net.core.somaxconn`).
/// `TcpListener::bind` uses 128. A burst of reconnects, after a restart for example, then
/// overflows the queue, and the dropped SYNs are retried only after a second. With 256
/// concurrent connects, 127 of 15,000 waited 1 s (BENCHMARKS.md).
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted node can listen while old sockets linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Dev mode hands out tokens to anyone who can reach it; on anything but loopback that is
/// everyone on the network, so it takes an explicit `--dev-public`.
fn check_dev_listen(listen: std::net::SocketAddr, dev_public: bool) -> Result<()> {
    if dev_public || listen.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    bail!(
        "refusing to run dev mode on {listen}: dev mode (no [[apps]] in the config) lets anyone \
         who can reach this address mint tokens with POST /dev/token, and its keys are \
         development keys. Listen on a loopback address (e.g. --listen 127.0.0.1:8080), \
         configure [[apps]] for a real deployment, or pass --dev-public if exposing dev mode \
         to the network is really what you want."
    )
}

async fn serve(
    args: ConfigArgs,
    listen: Option<std::net::SocketAddr>,
    dev_public: bool,
) -> Result<()> {
    let (mut config, dev) = load_config(&args)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if dev.is_some() {
        check_dev_listen(config.listen, dev_public)?;
    }
    let _log_guard = init_logging(&config);
    if dev.is_some() && !config.listen.ip().to_canonical().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "dev mode is reachable beyond this host (--dev-public): anyone who can connect can mint tokens"
        );
    }
    let listener =
        bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener.local_addr()?;
    if let Some((keys, created)) = &dev {
        print_dev_banner(&config, keys, &args.dev_keys, *created, bound);
    }
    tracing::info!(
        listen = %bound,
        tls = config.tls.enabled(),
        apps = config.apps.len(),
        "herald listening"
    );
    herald_server::run(listener, config, shutdown_signal()).await?;
    tracing::info!("bye");
    Ok(())
}

fn parse_object(flag: &str, text: Option<String>) -> Result<Option<Box<RawValue>>> {
    let Some(text) = text else { return Ok(None) };
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("--{flag} is not JSON"))?;
    if !value.is_object() {
        bail!("--{flag} must be a JSON object");
    }
    Ok(Some(serde_json::value::to_raw_value(&value)?))
}

fn token(args: TokenArgs) -> Result<()> {
    let (config, _) = load_config(&args.config)?;
    let key = config
        .apps
        .iter()
        .flat_map(|a| a.secret_keys.iter())
        .find(|k| !k.revoked && args.key_id.as_ref().is_none_or(|id| *id == k.id))
        .context("no matching live secret key in the configuration")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    if args.ttl <= 0 {
        bail!("--ttl must be positive");
    }
    let claims = Claims {
        sub: args.sub,
        exp: Some(now + args.ttl),
        iat: Some(now),
        nbf: None,
        channels: args.channels,
        permissions: args.permissions,
        metadata: parse_object("metadata", args.metadata)?,
        peer_metadata: parse_object("peer-metadata", args.peer_metadata)?,
    };
    claims
        .validate(now, 0)
        .map_err(|e| anyhow::anyhow!("invalid claims: {e}"))?;
    println!("{}", jwt::sign(&key.id, key.secret.as_bytes(), &claims));
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            dev_public,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(config, listen, dev_public)),
        Command::Token(args) => token(args),
        Command::Completions { shell } => {
            shell::completions(Cli::command(), shell, &mut std::io::stdout().lock());
            Ok(())
        }
        Command::Man { subcommand } => shell::man(
            Cli::command(),
            subcommand.as_deref(),
            &mut std::io::stdout().lock(),
        ),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{DEFAULT_CONFIG_TOML}");
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let (config, _) = load_config(&config)?;
            print!("{}", toml::to_string(&config)?);
            Ok(())
        }
    }
}
