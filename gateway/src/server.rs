//! Starting and stopping the gateway: the listening sockets (one per shard, SO_REUSEPORT on
//! one port), one pinned glommio executor per shard, the store, and the internal listener.

use crate::admin;
use crate::config::{Config, StoreKind};
use crate::error::{Error, Result};
use crate::metrics::ShardStats;
use crate::shard::{Shard, ShardMsg, Shared};
use crate::startup;
use corecast_shard_router::{mesh, ShardId};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Messages each shard's inbox holds before senders park them in their overflow.
const INBOX_CAPACITY: usize = 64 * 1024;

/// How long a shard may take from its executor's start to accepting connections.
const SHARD_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a cluster node waits at start for its store to answer before it joins the bus.
const CLUSTER_STORE_WAIT: Duration = Duration::from_secs(30);

/// Waits until `store` answers a ping, for at most `wait`.
fn wait_for_store(store: &corecast_storage::StoreHandle, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        match store.blocking().ping() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => {
                tracing::warn!(error = %e, secs = wait.as_secs(), "cluster: the store does not answer; joining the bus without it");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A running gateway.
pub struct Gateway {
    pub public_addr: SocketAddr,
    pub internal_addr: SocketAddr,
    pub nr_shards: usize,
    shared: Arc<Shared>,
    shards: Vec<glommio::ExecutorJoinHandle<()>>,
    admin: admin::AdminServer,
    ticker: Ticker,
    /// Cluster mode: the bus thread and this node's registration, stopped after the shards.
    cluster: Option<crate::cluster::Node>,
}

fn listen_socket(addr: SocketAddr) -> Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    // Accepted connections inherit it (Linux copies the listener's TCP options): frames go out
    // as soon as they are written, and accepting saves a `setsockopt` per connection.
    sock.set_tcp_nodelay(true)?;
    sock.bind(&addr.into()).map_err(|source| Error::Listen {
        addr,
        what: "",
        source,
    })?;
    sock.listen(4096)?;
    Ok(sock)
}

impl Gateway {
    /// Starts everything and returns once every shard accepts connections.
    pub fn start(config: Config) -> Result<Gateway> {
        let nr_shards = if config.server.shards == 0 {
            startup::online_cores()
        } else {
            config.server.shards
        };
        startup::check_io_uring(nr_shards)?;
        let nofile = startup::raise_nofile_limit();
        tracing::info!(nofile, "open-files limit");

        let store = match config.store.kind {
            StoreKind::Embedded | StoreKind::Scylla => {
                corecast_storage::open(&config.store.backend()).map_err(Error::Store)?
            }
        };
        let verifier = crate::auth::Verifier::from_config(&config)?;
        let pids = crate::recovery::PidKey::from_config(&config);

        // One listening socket per shard on the same port; the kernel spreads connections.
        let first = listen_socket(config.server.listen)?;
        let public_addr = first.local_addr()?.as_socket().ok_or(Error::NoIpAddress)?;
        let mut sockets = vec![first];
        for _ in 1..nr_shards {
            sockets.push(listen_socket(public_addr)?);
        }

        let (inboxes, handles) =
            mesh::<ShardMsg>(nr_shards, INBOX_CAPACITY).map_err(|source| Error::Resource {
                what: "the shards' doorbell sockets",
                source,
            })?;
        let (cluster, cluster_handle) = if config.cluster.enabled() {
            let advertise = config
                .cluster
                .advertised(public_addr)
                .map_err(Error::Cluster)?;
            // Once on the bus this node owns groups, and the others forward their events to
            // it: it joins once its store answers, so that a node joining under traffic does
            // not refuse them `storage_unavailable` while it connects (for at most
            // `CLUSTER_STORE_WAIT`: with the store down it joins anyway, as one node starts).
            wait_for_store(&store, CLUSTER_STORE_WAIT);
            let (node, handle) = crate::cluster::start(&config.cluster, handles.clone(), advertise)
                .map_err(|e| Error::Cluster(e.to_string()))?;
            (Some(node), Some(handle))
        } else {
            (None, None)
        };
        let shared = Arc::new(Shared {
            public_addr,
            verifier,
            pids,
            store,
            inboxes: handles,
            stats: (0..nr_shards)
                .map(|_| Arc::new(ShardStats::default()))
                .collect(),
            draining: std::sync::atomic::AtomicBool::new(false),
            adopt_http: crate::polling::adopt,
            cluster: cluster_handle,
            config,
        });

        let cores = startup::online_cores();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let mut shards = Vec::with_capacity(nr_shards);
        for (i, (inbox, sock)) in inboxes.into_iter().zip(sockets).enumerate() {
            let shared = shared.clone();
            let ready = ready_tx.clone();
            let fd = sock.into_raw_fd();
            let builder = LocalExecutorBuilder::new(Placement::Fixed(i % cores))
                .name(&format!("shard-{i}"))
                // No file I/O goes through glommio's DMA buffers here; keep them small.
                .io_memory(1 << 20);
            let handle = builder
                .spawn(move || async move {
                    let id = ShardId(i as u16);
                    let shard = Shard::new(id, shared);
                    // SAFETY: fd is a listening TCP socket whose ownership moves here.
                    let listener = unsafe { TcpListener::from_raw_fd(fd) };
                    run_shard(shard, listener, inbox, ready).await;
                })
                .map_err(|e| Error::Executor(e.into()))?;
            shards.push(handle);
        }
        drop(ready_tx);
        for _ in 0..nr_shards {
            if ready_rx.recv_timeout(SHARD_START_TIMEOUT).is_err() {
                return Err(Error::ShardNotReady {
                    secs: SHARD_START_TIMEOUT.as_secs(),
                });
            }
        }
        let admin = admin::AdminServer::start(shared.clone())?;
        let ticker = Ticker::start(shared.clone())?;
        Ok(Gateway {
            public_addr,
            internal_addr: admin.addr,
            nr_shards,
            shared,
            shards,
            admin,
            ticker,
            cluster,
        })
    }

    /// Closes every connection (close code 1001) at once and stops the shards and the listener.
    pub fn stop(self) {
        self.drain_and_stop(Duration::ZERO);
    }

    /// A graceful stop: `/readyz` turns false, the shards stop accepting and close their
    /// connections spread over `window` (1001), then everything stops. Every message a client
    /// was told is stored already is; the store closes after the shards.
    pub fn drain_and_stop(self, window: Duration) {
        begin_drain(&self.shared, window);
        for h in self.shards {
            let _ = h.join();
        }
        self.ticker.stop();
        self.admin.stop();
        // Deregisters this node, then stops the bus.
        drop(self.cluster);
    }

    /// The store handle (for tests and tools).
    pub fn store(&self) -> &corecast_storage::StoreHandle {
        &self.shared.store
    }
}

/// Starts a drain on every shard (see [`Gateway::drain_and_stop`]); also what the admin API's
/// `POST /api/drain` does, without stopping the process.
pub fn begin_drain(shared: &Shared, window: Duration) {
    shared
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(c) = &shared.cluster {
        c.leave();
    }
    for s in 0..shared.nr_shards() {
        shared.send_blocking(ShardId(s as u16), ShardMsg::Drain { window });
    }
}

async fn run_shard(
    shard: Rc<Shard>,
    listener: TcpListener,
    inbox: corecast_shard_router::Inbox<ShardMsg>,
    ready: std::sync::mpsc::Sender<()>,
) {
    glommio::spawn_local(shard.clone().run_inbox(inbox)).detach();
    glommio::spawn_local(flusher(shard.clone())).detach();
    glommio::spawn_local(pacer(shard.clone())).detach();
    glommio::spawn_local(crate::send::sender(shard.clone())).detach();
    let _ = ready.send(());
    let stopped = poll_fn(|cx| {
        if shard.stopping.get() {
            Poll::Ready(())
        } else {
            *shard.stop_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    });
    let accept_loop = async {
        loop {
            // Over CORECAST_ACCEPT_RATE the next connection waits in the kernel's backlog until
            // the bucket grants a token (asked again after each wait: a wait is not a token).
            loop {
                let wait = shard.accept_rate.borrow_mut().take(Instant::now());
                match wait {
                    Some(wait) => glommio::timer::sleep(wait).await,
                    None => break,
                }
            }
            match listener.accept().await {
                Ok(stream) => {
                    glommio::spawn_local(crate::polling::serve(
                        shard.clone(),
                        stream,
                        bytes::BytesMut::new(),
                    ))
                    .detach();
                }
                Err(e) => {
                    // Out of file descriptors and the like: say so, pause, go on.
                    tracing::warn!(shard = %shard.id, error = %e, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    futures_lite::future::or(accept_loop, stopped).await;
    drop(listener);
    // Connections close as the drain goes (over its window, on the shard's ticks); then they
    // get a bounded time to flush.
    let deadline = Instant::now() + shard.drain_window() + Duration::from_secs(3);
    while !shard.drained() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Pings, deadlines and housekeeping, a few times per ping interval: one thread for the
/// process sends each shard a [`ShardMsg::Tick`] through its inbox.
///
/// Not a glommio timer on each shard: while a timer is pending, glommio arms an io_uring
/// timeout each time the executor goes to sleep and cancels it when it wakes (measured at
/// 30,000 deliveries/s: `TIMEOUT` and `ASYNC_CANCEL` submissions 14,800 -> 12,000 a second
/// each; CPU per delivery unchanged within the noise). And `malloc_trim`, which can take
/// milliseconds, runs here instead of stalling a shard. A tick that finds an inbox full is
/// skipped; the next one comes.
struct Ticker {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Ticker {
    fn start(shared: Arc<Shared>) -> Result<Ticker> {
        let cfg = &shared.config.server;
        let shortest = cfg
            .ping_interval_ms
            .min(cfg.ping_timeout_ms)
            .min(cfg.connect_timeout_ms);
        let period = Duration::from_millis((shortest / 4).clamp(20, 1000));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ticker".into())
            .spawn(move || {
                let mut last_trim = Instant::now();
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(period)
                {
                    for inbox in &shared.inboxes {
                        let _ = inbox.try_send(ShardMsg::Tick);
                    }
                    if last_trim.elapsed() > TRIM_EVERY {
                        // Give freed heap pages back to the kernel: connection churn leaves
                        // freed handshake buffers scattered over the shards' malloc arenas.
                        // SAFETY: malloc_trim has no preconditions.
                        unsafe { libc::malloc_trim(0) };
                        last_trim = Instant::now();
                    }
                }
            })
            .map_err(|source| Error::Thread {
                what: "the ticker thread".into(),
                source,
            })?;
        Ok(Ticker { stop, thread })
    }

    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Ends each room-pacing window when it is due (see `Fanout::deliver`); waits without a timer
/// while no window is open.
async fn pacer(shard: Rc<Shard>) {
    loop {
        let until = poll_fn(|cx| {
            let mut p = shard.fanout.pacing.borrow_mut();
            match p.until {
                Some(t) => Poll::Ready(t),
                None => {
                    p.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        let now = Instant::now();
        if until > now {
            glommio::timer::sleep(until - now).await;
        }
        shard.fanout.end_pacing_window(&*shard);
    }
}

/// Hands what the shard's tasks produced to other shards and to the store whenever a task
/// yields (see [`Shard::flush`]), and retries messages parked because an inbox was full.
async fn flusher(shard: Rc<Shard>) {
    loop {
        poll_fn(|cx| {
            if shard.flush_ready(cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        while !shard.flush() {
            glommio::timer::sleep(Duration::from_micros(200)).await;
        }
    }
}
