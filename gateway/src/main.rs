//! `corecast`: the gateway binary. Parses flags and calls the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use corecast_gateway::config::{Flags, Keys, StoreKind};
use corecast_gateway::server::Gateway;

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
    Serve {
        #[command(flatten)]
        keys: Keys<ServeFlags>,
    },
    /// Mint a development token (HS256, with the configured secret).
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: u64,
        /// Seconds until it expires.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        #[command(flatten)]
        keys: Keys<TokenFlags>,
    },
    /// Create the store's schema (keyspace and tables for ScyllaDB) and exit.
    Migrate {
        #[command(flatten)]
        keys: Keys<ServeFlags>,
    },
}

/// The keys `serve` and `migrate` take as flags (docs/operations.md); every key is read from
/// its variable.
struct ServeFlags;

impl Flags for ServeFlags {
    const VARIABLES: &'static [&'static str] = &[
        "CORECAST_LISTEN",
        "CORECAST_INTERNAL_LISTEN",
        "CORECAST_SHARDS",
        "CORECAST_DATA_DIR",
        "CORECAST_STORE",
        "CORECAST_SCYLLA_NODES",
        "CORECAST_ADMIN_TOKEN",
        "CORECAST_ALLOWED_ORIGINS",
        "CORECAST_RATE_LIMIT_PER_MIN",
        "CORECAST_JWT_SECRET",
    ];
}

/// The keys `token` takes as flags.
struct TokenFlags;

impl Flags for TokenFlags {
    const VARIABLES: &'static [&'static str] = &["CORECAST_JWT_SECRET"];
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

fn serve(keys: Keys<ServeFlags>) -> Result<()> {
    let config = keys.load()?;
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
    let gateway = Gateway::start(config.clone()).context("cannot start the gateway")?;
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
    match corecast_gateway::config::parse::<Cli>().command {
        Command::Serve { keys } => serve(keys),
        Command::Token { sub, ttl, keys } => {
            let config = keys.load()?;
            let (secret, dev) = config.jwt_secret();
            if dev {
                eprintln!(
                    "note: signing with the development secret (CORECAST_JWT_SECRET is not set)"
                );
            }
            let token = corecast_gateway::auth::mint(secret, corecast_storage::UserId(sub), ttl)
                .context("cannot mint the token")?;
            println!("{token}");
            Ok(())
        }
        Command::Migrate { keys } => {
            let config = keys.load()?;
            corecast_storage::migrate(&config.store.backend()).context("migration failed")?;
            eprintln!("corecast: schema is up to date");
            Ok(())
        }
    }
}
