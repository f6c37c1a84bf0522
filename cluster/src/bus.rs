//! [`Bus`]: Redis pub/sub and commands on a thread of their own (see the crate's doc).

use bytes::Bytes;
use futures_lite::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, RedisResult, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

/// How a [`Bus`] reaches Redis, and its bounds.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Calls waiting for the bus thread, at most; past it a call fails at once with
    /// [`BusError::Overloaded`].
    pub queue: usize,
    /// How often the pub/sub connection is pinged while idle, so a silent loss is noticed.
    pub ping_every: Duration,
    /// Connect and answer timeout: a connection that takes longer counts as lost.
    pub timeout: Duration,
    /// The longest wait between two reconnect attempts (the wait doubles from 50 ms).
    pub max_backoff: Duration,
}

impl BusConfig {
    pub fn new(url: impl Into<String>) -> BusConfig {
        BusConfig {
            url: url.into(),
            queue: 65_536,
            ping_every: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// Why a call to the bus did not do what it asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("the cluster bus URL is not valid: {0}")]
    BadUrl(String),
    /// Not connected to Redis (or the connection was lost while the call was in flight: a
    /// publish may then have reached Redis or not).
    #[error("the cluster bus is not connected to Redis")]
    Down,
    #[error("the cluster bus queue is full")]
    Overloaded,
    #[error("the cluster bus has stopped")]
    Closed,
    /// Redis answered the command with an error.
    #[error("Redis answered with an error: {0}")]
    Redis(String),
}

/// What the bus tells its handler, on the bus thread, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// A message on a subscribed channel. One may still arrive for a channel just unsubscribed.
    Message { channel: String, payload: Bytes },
    /// Connected to Redis, with every wanted channel subscribed. `epoch` counts connections
    /// from 1; an `Up` after a `Down` means messages published in between were missed.
    Up { epoch: u64 },
    /// The connection of `epoch` was lost; calls fail with [`BusError::Down`] until the next
    /// `Up`.
    Down { epoch: u64 },
}

/// Receives every [`BusEvent`]. It runs on the bus thread: it must hand the event over (to a
/// queue) and return, not block.
pub type Handler = Arc<dyn Fn(BusEvent) + Send + Sync>;

/// Called once with a call's outcome: on the bus thread, or on the caller's when the call
/// could not be queued.
pub type Done<T> = Box<dyn FnOnce(Result<T, BusError>) + Send>;

enum Call {
    Subscribe {
        channel: String,
        done: Done<()>,
    },
    Unsubscribe {
        channel: String,
        done: Done<()>,
    },
    Publish {
        channel: String,
        payload: Bytes,
        done: Option<Done<u64>>,
    },
    Command {
        cmd: redis::Cmd,
        done: Done<Value>,
    },
}

impl Call {
    fn fail(self, err: BusError) {
        match self {
            Call::Subscribe { done, .. } | Call::Unsubscribe { done, .. } => done(Err(err)),
            Call::Publish { done, .. } => {
                if let Some(done) = done {
                    done(Err(err))
                }
            }
            Call::Command { done, .. } => done(Err(err)),
        }
    }
}

/// The bus: owns its thread, which stops when the `Bus` is dropped. Calls go through a
/// [`BusHandle`].
pub struct Bus {
    handle: BusHandle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A cheap, cloneable way into the bus, usable from any thread (a reactor included): no call
/// blocks.
#[derive(Clone)]
pub struct BusHandle {
    calls: mpsc::Sender<Call>,
    up: Arc<AtomicBool>,
}

impl Bus {
    /// Starts the bus thread. It connects in the background (and again whenever the connection
    /// is lost): the handler hears [`BusEvent::Up`] once it is connected. Fails only on a URL
    /// that cannot be a Redis address.
    pub fn start(config: BusConfig, handler: Handler) -> Result<Bus, BusError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| BusError::BadUrl(e.to_string()))?;
        let (calls, rx) = mpsc::channel(config.queue.max(1));
        let (stop, stopped) = oneshot::channel();
        let up = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            client,
            config,
            handler,
            up: up.clone(),
            wanted: HashMap::new(),
            epoch: 0,
        };
        let thread = std::thread::Builder::new()
            .name("cc-bus".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a single-threaded tokio runtime starts");
                rt.block_on(worker.run(rx, stopped));
            })
            .map_err(|_| BusError::Closed)?;
        Ok(Bus {
            handle: BusHandle { calls, up },
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> BusHandle {
        self.handle.clone()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl BusHandle {
    /// True while connected to Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Wants `channel`. `done(Ok)` once Redis confirmed the subscription: every message
    /// published on it after that reaches the handler. Subscriptions are counted: a channel
    /// already wanted is confirmed at once. `Err(Down)` while disconnected: the channel is
    /// still wanted, and subscribed before the next [`BusEvent::Up`]. `Err(Redis)` when Redis
    /// refuses it (an ACL without the channel): not wanted, and the connection stays up.
    pub fn subscribe(&self, channel: impl Into<String>, done: Done<()>) {
        self.call(Call::Subscribe {
            channel: channel.into(),
            done,
        });
    }

    /// Gives back one [`BusHandle::subscribe`]; the last one unsubscribes in Redis.
    pub fn unsubscribe(&self, channel: impl Into<String>, done: Done<()>) {
        self.call(Call::Unsubscribe {
            channel: channel.into(),
            done,
        });
    }

    /// Publishes `payload` on `channel`, after every earlier publish and command of this bus.
    /// `done`, if given, hears how many subscribers Redis handed it to.
    pub fn publish(&self, channel: impl Into<String>, payload: Bytes, done: Option<Done<u64>>) {
        self.call(Call::Publish {
            channel: channel.into(),
            payload,
            done,
        });
    }

    /// Runs any command, in order with the publishes.
    pub fn command(&self, cmd: redis::Cmd, done: Done<Value>) {
        self.call(Call::Command { cmd, done });
    }

    /// `done(Ok)` once Redis answered every publish and command this handle's bus was given
    /// before (a PING in their order): a publish made before it has reached its subscribers.
    pub fn flushed(&self, done: Done<()>) {
        self.command(redis::cmd("PING"), Box::new(move |r| done(r.map(|_| ()))));
    }

    fn call(&self, call: Call) {
        match self.calls.try_send(call) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(call)) => call.fail(BusError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(call)) => call.fail(BusError::Closed),
        }
    }
}

/// The bus thread's state.
struct Worker {
    client: redis::Client,
    config: BusConfig,
    handler: Handler,
    up: Arc<AtomicBool>,
    /// Wanted channels, each with how many subscribes it has.
    wanted: HashMap<String, usize>,
    epoch: u64,
}

/// One connection's worth of Redis: pub/sub and commands.
struct Link {
    sink: PubSubSink,
    conn: MultiplexedConnection,
    /// Fires when the pub/sub stream ends (the connection closed).
    closed: oneshot::Receiver<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Publishes and commands gathered into one pipeline, with whom to tell.
#[derive(Default)]
struct Pipeline {
    pipe: redis::Pipeline,
    dones: Vec<PipeDone>,
}

enum PipeDone {
    Publish(Option<Done<u64>>),
    Command(Done<Value>),
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Calls taken off the queue per turn (one pipeline at most this long).
const BATCH: usize = 1024;
/// Channels per SUBSCRIBE when subscribing again after a reconnect.
const RESUBSCRIBE_CHUNK: usize = 1000;

impl Worker {
    async fn run(mut self, mut calls: mpsc::Receiver<Call>, mut stop: oneshot::Receiver<()>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            // Connect, failing calls at once meanwhile.
            let open = open_link(
                self.client.clone(),
                self.config.clone(),
                self.handler.clone(),
            );
            tokio::pin!(open);
            let opened = loop {
                tokio::select! {
                    biased;
                    _ = &mut stop => return,
                    r = &mut open => break r,
                    call = calls.recv() => match call {
                        None => return,
                        Some(call) => self.while_down(call),
                    },
                }
            };
            let mut link = match opened {
                Ok(link) => link,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cluster bus: cannot reach Redis");
                    if !self.wait_out(backoff, &mut calls, &mut stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    continue;
                }
            };
            if let Err(e) = self.resubscribe(&mut link).await {
                tracing::warn!(error = %e, retry_in = ?backoff, "cluster bus: subscribing again failed");
                drop(link);
                if !self.wait_out(backoff, &mut calls, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(self.config.max_backoff);
                continue;
            }
            backoff = FIRST_BACKOFF;
            self.epoch += 1;
            self.up.store(true, Ordering::Relaxed);
            tracing::info!(epoch = self.epoch, "cluster bus: connected to Redis");
            (self.handler)(BusEvent::Up { epoch: self.epoch });

            let mut ping = tokio::time::interval(self.config.ping_every);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ping.tick().await;
            let lost = loop {
                tokio::select! {
                    biased;
                    _ = &mut stop => return,
                    _ = &mut link.closed => break "the pub/sub connection closed".to_string(),
                    call = calls.recv() => {
                        let Some(call) = call else { return };
                        let mut batch = vec![call];
                        while batch.len() < BATCH {
                            match calls.try_recv() {
                                Ok(call) => batch.push(call),
                                Err(_) => break,
                            }
                        }
                        if let Err(e) = self.apply(&mut link, batch).await {
                            break e;
                        }
                    }
                    _ = ping.tick() => {
                        match timeout(self.config.timeout, link.sink.ping::<Value>()).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => break e.to_string(),
                            Err(_) => break "a ping went unanswered".to_string(),
                        }
                    }
                }
            };
            self.up.store(false, Ordering::Relaxed);
            tracing::warn!(epoch = self.epoch, reason = %lost, "cluster bus: lost Redis");
            (self.handler)(BusEvent::Down { epoch: self.epoch });
        }
    }

    /// Waits `backoff` before the next connect, answering calls as down meanwhile; false
    /// when the bus stops.
    async fn wait_out(
        &mut self,
        backoff: Duration,
        calls: &mut mpsc::Receiver<Call>,
        stop: &mut oneshot::Receiver<()>,
    ) -> bool {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                _ = &mut *stop => return false,
                _ = &mut sleep => return true,
                call = calls.recv() => match call {
                    None => return false,
                    Some(call) => self.while_down(call),
                },
            }
        }
    }

    /// A call while disconnected: counted if it is a (un)subscribe, failed otherwise.
    fn while_down(&mut self, call: Call) {
        match call {
            Call::Subscribe { channel, done } => {
                *self.wanted.entry(channel).or_insert(0) += 1;
                done(Err(BusError::Down));
            }
            Call::Unsubscribe { channel, done } => {
                self.release(&channel);
                done(Ok(()));
            }
            call => call.fail(BusError::Down),
        }
    }

    /// Takes one subscribe of `channel` back; true when it was the last.
    fn release(&mut self, channel: &str) -> bool {
        match self.wanted.get_mut(channel) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.wanted.remove(channel);
                true
            }
            None => false,
        }
    }

    async fn resubscribe(&self, link: &mut Link) -> Result<(), String> {
        let channels: Vec<&String> = self.wanted.keys().collect();
        for chunk in channels.chunks(RESUBSCRIBE_CHUNK) {
            answered(self.config.timeout, link.sink.subscribe(chunk)).await?;
        }
        Ok(())
    }

    /// Carries out `batch` in order: runs of publishes and commands as one pipeline, each
    /// (un)subscribe on its own. An error means the link is lost; every call not answered
    /// yet has then been failed with [`BusError::Down`].
    async fn apply(&mut self, link: &mut Link, batch: Vec<Call>) -> Result<(), String> {
        let mut calls = batch.into_iter();
        let mut pipeline = Pipeline::default();
        while let Some(call) = calls.next() {
            let step = match call {
                Call::Publish {
                    channel,
                    payload,
                    done,
                } => {
                    pipeline
                        .pipe
                        .cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload.as_ref());
                    pipeline.dones.push(PipeDone::Publish(done));
                    Ok(())
                }
                Call::Command { cmd, done } => {
                    pipeline.pipe.add_command(cmd);
                    pipeline.dones.push(PipeDone::Command(done));
                    Ok(())
                }
                Call::Subscribe { channel, done } => match self.flush(link, &mut pipeline).await {
                    Err(e) => {
                        *self.wanted.entry(channel).or_insert(0) += 1;
                        done(Err(BusError::Down));
                        Err(e)
                    }
                    Ok(()) => {
                        let n = self.wanted.entry(channel.clone()).or_insert(0);
                        *n += 1;
                        if *n > 1 {
                            done(Ok(()));
                            Ok(())
                        } else {
                            match timeout(self.config.timeout, link.sink.subscribe(&channel)).await
                            {
                                Ok(Ok(())) => {
                                    done(Ok(()));
                                    Ok(())
                                }
                                // Refused (say, an ACL without the channel): the link is fine.
                                Ok(Err(e)) if refused(&e) => {
                                    self.release(&channel);
                                    done(Err(BusError::Redis(e.to_string())));
                                    Ok(())
                                }
                                Ok(Err(e)) => {
                                    done(Err(BusError::Down));
                                    Err(e.to_string())
                                }
                                Err(_) => {
                                    done(Err(BusError::Down));
                                    Err("Redis did not answer in time".into())
                                }
                            }
                        }
                    }
                },
                Call::Unsubscribe { channel, done } => {
                    match self.flush(link, &mut pipeline).await {
                        Err(e) => {
                            self.release(&channel);
                            done(Ok(()));
                            Err(e)
                        }
                        Ok(()) => {
                            if self.release(&channel) {
                                let r =
                                    answered(self.config.timeout, link.sink.unsubscribe(&channel))
                                        .await;
                                // Not wanted any more either way: a lost link forgets it too.
                                done(Ok(()));
                                r
                            } else {
                                done(Ok(()));
                                Ok(())
                            }
                        }
                    }
                }
            };
            if let Err(e) = step {
                for call in calls {
                    self.while_down(call);
                }
                return Err(e);
            }
        }
        self.flush(link, &mut pipeline).await
    }

    /// Sends the gathered pipeline, if any, and tells each call its answer.
    async fn flush(&self, link: &mut Link, pipeline: &mut Pipeline) -> Result<(), String> {
        if pipeline.dones.is_empty() {
            return Ok(());
        }
        let Pipeline { mut pipe, dones } = std::mem::take(pipeline);
        pipe.ignore_errors();
        let answers = match timeout(
            self.config.timeout,
            pipe.query_async::<Vec<RedisResult<Value>>>(&mut link.conn),
        )
        .await
        {
            Ok(Ok(answers)) => answers,
            Ok(Err(e)) => return Err(fail_all(dones, e.to_string())),
            Err(_) => return Err(fail_all(dones, "a pipeline went unanswered".into())),
        };
        let mut answers = answers.into_iter();
        for done in dones {
            let answer = answers
                .next()
                .unwrap_or_else(|| Ok(Value::Nil))
                .map_err(|e| BusError::Redis(e.to_string()));
            match done {
                PipeDone::Publish(None) => {}
                PipeDone::Publish(Some(done)) => done(answer.map(|v| match v {
                    Value::Int(n) => n.max(0) as u64,
                    _ => 0,
                })),
                PipeDone::Command(done) => done(answer),
            }
        }
        Ok(())
    }
}

fn fail_all(dones: Vec<PipeDone>, reason: String) -> String {
    for done in dones {
        match done {
            PipeDone::Publish(Some(done)) => done(Err(BusError::Down)),
            PipeDone::Publish(None) => {}
            PipeDone::Command(done) => done(Err(BusError::Down)),
        }
    }
    reason
}

/// Redis answered, refusing: not a lost or slow connection.
fn refused(e: &redis::RedisError) -> bool {
    !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal())
}

/// A Redis future under the bus's timeout; either failure as a reason.
async fn answered<T>(
    limit: Duration,
    f: impl std::future::Future<Output = RedisResult<T>>,
) -> Result<T, String> {
    match timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("Redis did not answer in time".into()),
    }
}

async fn open_link(
    client: redis::Client,
    config: BusConfig,
    handler: Handler,
) -> Result<Link, String> {
    let pubsub = answered(config.timeout, client.get_async_pubsub()).await?;
    let conn = client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout)),
        )
        .await
        .map_err(|e| e.to_string())?;
    let (sink, mut stream) = pubsub.split();
    let (closed_tx, closed) = oneshot::channel();
    let reader = tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            handler(BusEvent::Message {
                channel: msg.get_channel_name().to_owned(),
                payload: Bytes::copy_from_slice(msg.get_payload_bytes()),
            });
        }
        let _ = closed_tx.send(());
    });
    Ok(Link {
        sink,
        conn,
        closed,
        reader,
    })
}
