//! `corecast-notifier`: emails offline members. Parses flags, loads the shared config (file,
//! then `CORECAST_*` variables, then flags), installs logging and calls
//! [`corecast_notifier::run`]. SIGINT and SIGTERM stop it gracefully (the email being sent
//! finishes first); any harder stop is safe too, because notices leave the store only after
//! their email was accepted.

use anyhow::Context;
use clap::Parser;
use corecast_config::{Flags, Keys};
use corecast_notifier::Shutdown;

#[derive(Parser)]
#[command(
    name = "corecast-notifier",
    version,
    about = "Emails offline corecast members about missed messages"
)]
struct Args {
    /// The config file (the same as the gateway's), the variables and the flags below.
    #[command(flatten)]
    keys: Keys<NotifierFlags>,
}

/// The keys the notifier takes as flags (docs/operations.md); every key is read from its
/// variable.
struct NotifierFlags;

impl Flags for NotifierFlags {
    const VARIABLES: &'static [&'static str] = &[
        "CORECAST_NOTIFIER_LISTEN",
        "CORECAST_DATA_DIR",
        "CORECAST_SMTP_HOST",
        "CORECAST_SMTP_PORT",
    ];
}

fn main() -> anyhow::Result<()> {
    corecast_config::init_logging();
    let args: Args = corecast_config::parse();
    let config = args.keys.load().context("cannot load the configuration")?;
    let shutdown = Shutdown::new();
    stop_on_signals(shutdown.clone()).context("cannot install signal handling")?;
    corecast_notifier::run(config, shutdown).context("the notifier failed")
}

/// Blocks SIGINT and SIGTERM in every thread (threads started later inherit the mask) and waits
/// for them on a thread of its own, which then fires `shutdown`.
fn stop_on_signals(shutdown: Shutdown) -> std::io::Result<()> {
    // SAFETY: plain libc calls on a locally owned, initialised signal set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        set
    };
    std::thread::Builder::new()
        .name("notifier-signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid signal set owned by this closure.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 {
                tracing::info!(signal = sig, "notifier: stopping");
            }
            shutdown.trigger();
        })?;
    Ok(())
}
