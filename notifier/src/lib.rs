//! corecast's notifier: a separate process that emails offline members about the messages they
//! missed, so that mail never slows the gateway.
//!
//! The hand-off is the store's notification outbox: the gateway writes one notice per offline
//! member in the same atomic write as the message (`AppendMessage { notify }`), and this process
//! drains it. Notices leave the outbox only once their email was accepted by the SMTP server, or
//! recorded as failed, or need no email any more, so a crash or restart of either process loses
//! none (see `docs/notifier.md`).
//!
//! Threads: one worker (store reads and writes, SMTP; all blocking, see [`worker`]) and one
//! internal HTTP listener for metrics and health ([`http`]). Nothing here runs on a glommio
//! reactor and nothing is kept only in memory except retry timers.

pub mod compose;
pub mod http;
pub mod mailer;
pub mod metrics;
pub mod plan;
pub mod worker;

use corecast_config::Config;
use metrics::Metrics;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the worker polls the outbox when idle.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Why the notifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is unusable; the message names the key.
    #[error("invalid notifier configuration: {0}")]
    Config(String),
    /// The templates folder or a template in it cannot be read.
    #[error("invalid notifier templates: {0}")]
    Templates(String),
    /// The store could not be opened.
    #[error(
        "cannot open the store (check store.kind and store.data_dir / CORECAST_DATA_DIR): {0}"
    )]
    Store(#[from] corecast_storage::Error),
    /// The internal listener could not be bound.
    #[error("cannot listen on notifier.listen {addr} (CORECAST_NOTIFIER_LISTEN): {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a notifier thread: {0}")]
    Thread(std::io::Error),
}

/// A one-shot stop signal that threads can wait on with a timeout. Cheap to clone.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal; every waiter wakes.
    pub fn trigger(&self) {
        let (lock, cv) = &*self.inner;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }

    pub fn is_set(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the signal fires or `d` passes; returns whether it fired.
    pub fn wait_timeout(&self, d: Duration) -> bool {
        let (lock, cv) = &*self.inner;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, d, |set| !*set)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    /// Waits until the signal fires.
    pub fn wait(&self) {
        let (lock, cv) = &*self.inner;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let _guard = cv
            .wait_while(guard, |set| !*set)
            .unwrap_or_else(|e| e.into_inner());
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A started notifier: its threads run until [`Running::stop`].
pub struct Running {
    internal: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    worker: Option<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
}

impl Running {
    /// The address the internal listener is bound to (useful with port 0).
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops both threads; the worker finishes the email it is sending first.
    pub fn stop(mut self) {
        self.shutdown_threads();
    }

    fn shutdown_threads(&mut self) {
        self.shutdown.trigger();
        if let Some(h) = self.http.take() {
            // Wake the blocking accept so the listener sees the signal.
            let _ = std::net::TcpStream::connect_timeout(&self.internal, Duration::from_secs(1));
            let _ = h.join();
        }
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown_threads();
    }
}

/// Validates `[notifier]`, opens the store, binds the internal listener and starts the threads.
pub fn start(config: &Config) -> Result<Running, Error> {
    let n = &config.notifier;
    if n.retry_initial_ms == 0 || n.retry_max_ms < n.retry_initial_ms {
        return Err(Error::Config(format!(
            "notifier.retry_initial_ms (CORECAST_NOTIFY_RETRY_INITIAL_MS) must be above 0 and at most \
             notifier.retry_max_ms (CORECAST_NOTIFY_RETRY_MAX_MS); got {} and {}",
            n.retry_initial_ms, n.retry_max_ms
        )));
    }
    let templates = match &n.templates_dir {
        Some(dir) => compose::Templates::load(dir)?,
        None => compose::Templates::default(),
    };
    let mailer = mailer::Mailer::new(n)?;
    let store = corecast_storage::open(&config.store.backend())?;
    let listener = TcpListener::bind(n.listen).map_err(|source| Error::Listen {
        addr: n.listen,
        source,
    })?;
    let internal = listener.local_addr().map_err(|source| Error::Listen {
        addr: n.listen,
        source,
    })?;

    let metrics = Arc::new(Metrics::default());
    let shutdown = Shutdown::new();
    let worker = worker::Worker::new(
        store,
        mailer,
        templates,
        worker::WorkerConfig {
            coalesce: Duration::from_secs(n.coalesce_secs),
            retry_initial: Duration::from_millis(n.retry_initial_ms),
            retry_max: Duration::from_millis(n.retry_max_ms),
            poll_interval: POLL_INTERVAL,
            app_url: n.app_url.clone(),
        },
        metrics.clone(),
    );
    let sd = shutdown.clone();
    let worker = std::thread::Builder::new()
        .name("notifier-worker".into())
        .spawn(move || worker.run(sd))
        .map_err(Error::Thread)?;
    let (m, sd) = (metrics.clone(), shutdown.clone());
    let http = std::thread::Builder::new()
        .name("notifier-http".into())
        .spawn(move || http::serve(listener, m, move || sd.is_set()))
        .map_err(Error::Thread)?;
    tracing::info!(%internal, smtp = %format!("{}:{}", n.smtp_host, n.smtp_port), "notifier started");
    Ok(Running {
        internal,
        metrics,
        shutdown,
        worker: Some(worker),
        http: Some(http),
    })
}

/// Starts the notifier, prints `corecast-notifier ready internal=ADDR` on stdout, and runs until
/// `shutdown` fires.
pub fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let running = start(&config)?;
    println!(
        "corecast-notifier ready internal={}",
        running.internal_addr()
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    shutdown.wait();
    running.stop();
    Ok(())
}
