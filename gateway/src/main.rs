//! `corecast`: the gateway binary. Parses flags and calls the library.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use corecast_gateway::config::{Config, StoreKind};
use corecast_gateway::server::Gateway;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "corecast",
    version,
    about = "Thread-per-core Socket.IO chat gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Mint a development token (HS256, with the configured secret).
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: u64,
        /// Seconds until it expires.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Create the store's schema (keyspace and tables for ScyllaDB) and exit.
    Migrate(ServeArgs),
}

#[derive(Args)]
struct CommonArgs {
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// HS256 secret (CORECAST_JWT_SECRET).
    #[arg(long)]
    jwt_secret: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Public Socket.IO address (CORECAST_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// Internal admin/metrics address (CORECAST_INTERNAL_LISTEN).
    #[arg(long)]
    internal_listen: Option<String>,
    /// Number of shards, default one per core (CORECAST_SHARDS).
    #[arg(long)]
    shards: Option<String>,
    /// Embedded store folder (CORECAST_DATA_DIR).
    #[arg(long)]
    data_dir: Option<String>,
    /// `embedded` or `scylla` (CORECAST_STORE).
    #[arg(long)]
    store: Option<String>,
    /// ScyllaDB contact points, comma-separated host:port (CORECAST_SCYLLA_NODES).
    #[arg(long)]
    scylla_nodes: Option<String>,
    /// Admin API bearer token (CORECAST_ADMIN_TOKEN).
    #[arg(long)]
    admin_token: Option<String>,
    /// Allowed WebSocket origins, comma-separated (CORECAST_ALLOWED_ORIGINS).
    #[arg(long)]
    allowed_origins: Option<String>,
    /// Messages per user per minute, 0 for no limit (CORECAST_RATE_LIMIT_PER_MIN).
    #[arg(long)]
    rate_limit_per_min: Option<String>,
}

impl CommonArgs {
    fn flags(&self) -> Vec<(&'static str, String)> {
        self.jwt_secret
            .iter()
            .map(|v| ("CORECAST_JWT_SECRET", v.clone()))
            .collect()
    }
}

impl ServeArgs {
    fn load(&self) -> Result<Config> {
        let mut flags = self.common.flags();
        for (name, v) in [
            ("CORECAST_LISTEN", &self.listen),
            ("CORECAST_INTERNAL_LISTEN", &self.internal_listen),
            ("CORECAST_SHARDS", &self.shards),
            ("CORECAST_DATA_DIR", &self.data_dir),
            ("CORECAST_STORE", &self.store),
            ("CORECAST_SCYLLA_NODES", &self.scylla_nodes),
            ("CORECAST_ADMIN_TOKEN", &self.admin_token),
            ("CORECAST_ALLOWED_ORIGINS", &self.allowed_origins),
            ("CORECAST_RATE_LIMIT_PER_MIN", &self.rate_limit_per_min),
        ] {
            if let Some(v) = v {
                flags.push((name, v.clone()));
            }
        }
        Config::load(self.common.config.as_deref(), &flags)
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts), then waits for one.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: set is initialized and the signals are blocked in this thread.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

fn serve(args: ServeArgs) -> Result<()> {
    let config = args.load()?;
    // Before anything is opened or printed; Gateway::start checks it again for library users.
    if let Some(problem) = corecast_gateway::auth::secret_problem(&config) {
        anyhow::bail!(problem);
    }
    let (_, dev_secret) = config.jwt_secret();
    if dev_secret {
        eprintln!(
            "WARNING: CORECAST_JWT_SECRET is not set; using the DEVELOPMENT secret {:?}. \
             Anyone can mint tokens for it, so it is only accepted on a loopback listener. \
             Set CORECAST_JWT_SECRET in production.",
            corecast_gateway::config::DEV_JWT_SECRET
        );
    }
    if config.server.allowed_origins.is_empty() {
        eprintln!("note: CORECAST_ALLOWED_ORIGINS is not set; requests from any origin are accepted (set it to the web app's origins)");
    }
    if config.auth.admin_token.is_none() {
        eprintln!("note: CORECAST_ADMIN_TOKEN is not set; the admin API is disabled");
    }
    let store = match config.store.kind {
        StoreKind::Embedded => format!("embedded ({})", config.store.data_dir.display()),
        StoreKind::Scylla => format!("scylla ({})", config.store.scylla_nodes.join(",")),
    };
    let signals = block_signals();
    let gateway = Gateway::start(config.clone())?;
    eprintln!(
        "corecast: Socket.IO on http://{}{} (polling and WebSocket), admin/metrics on http://{} , {} shards, store {store}",
        gateway.public_addr, config.server.path, gateway.internal_addr, gateway.nr_shards
    );
    println!(
        "corecast listening public={} internal={} shards={} store={}",
        gateway.public_addr,
        gateway.internal_addr,
        gateway.nr_shards,
        match config.store.kind {
            StoreKind::Embedded => "embedded",
            StoreKind::Scylla => "scylla",
        }
    );
    let sig = wait_for_signal(&signals);
    eprintln!("corecast: signal {sig}, shutting down");
    let window = std::time::Duration::from_secs(config.server.drain_secs);
    if !window.is_zero() {
        eprintln!(
            "corecast: draining: connections close over {} s",
            window.as_secs()
        );
    }
    gateway.drain_and_stop(window);
    Ok(())
}

fn main() -> Result<()> {
    corecast_gateway::config::init_logging();
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Token { sub, ttl, common } => {
            let config = Config::load(common.config.as_deref(), &common.flags())?;
            let (secret, dev) = config.jwt_secret();
            if dev {
                eprintln!(
                    "note: signing with the development secret (CORECAST_JWT_SECRET is not set)"
                );
            }
            let token = corecast_gateway::auth::mint(secret, corecast_storage::UserId(sub), ttl)?;
            println!("{token}");
            Ok(())
        }
        Command::Migrate(args) => {
            let config = args.load()?;
            corecast_storage::migrate(&config.store.backend())
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("migration failed")?;
            eprintln!("corecast: schema is up to date");
            Ok(())
        }
    }
}
