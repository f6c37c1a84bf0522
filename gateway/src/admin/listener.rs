//! The internal listener's connections. One thread (`internal-http`) accepts and reads every
//! request with mio; a fixed pool of `server.admin_threads` workers (`internal-req`) answers
//! the complete ones. Never runs on a shard.
//!
//! Why this shape: a thread per connection let any client hold a thread (and 1 MiB of body
//! read before the token check) for as long as it dripped bytes. Here an idle or slow
//! connection costs a socket and the bytes it sent, never a thread, and a worker only ever sees
//! a whole request that passed the token check ([`super::request`]). Every bound has a stated
//! policy (docs/operations.md, "Internal listener"):
//!
//! - at most `server.admin_max_connections` requests being read at once; a connection beyond
//!   that is answered 503 (with `Retry-After`) and closed;
//! - one deadline for the whole request, `server.admin_request_timeout_ms` from accept; bytes
//!   arriving do not extend it; when it passes the answer is 408 and the connection closed;
//! - at most `admin_threads` requests answered at once and [`QUEUE`] more waiting; a complete
//!   request beyond that is answered 503;
//! - a worker gives up writing an answer the client does not read after the same timeout;
//! - a refused connection (401, 413, 503, ...) is not closed at once: its write side is shut
//!   and what the client still sends is discarded for up to [`LINGER`] (at most
//!   [`LINGER_BYTES`]), so the client reads the answer instead of a reset. At most
//!   [`MAX_LINGERING`] linger; beyond that they are closed at once.

use super::request::{RequestReader, Step};
use super::{error, Request, Response};
use crate::error::{Error, Result};
use crate::shard::Shared;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Complete requests waiting for a worker.
pub const QUEUE: usize = 32;
/// How long a refused connection's input is discarded before it is closed.
pub const LINGER: Duration = Duration::from_secs(1);
/// How much of a refused connection's input is discarded at most.
pub const LINGER_BYTES: usize = 2 << 20;
/// Refused connections lingering at once.
pub const MAX_LINGERING: usize = 64;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

pub struct Listener {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A request handed to a worker.
struct Job {
    stream: std::net::TcpStream,
    request: Request,
}

enum State {
    Reading(RequestReader),
    /// Answered and write side shut; input is read and dropped until `deadline`.
    Lingering {
        discarded: usize,
    },
}

struct Conn {
    stream: TcpStream,
    deadline: Instant,
    state: State,
}

/// What reading a connection led to.
enum Outcome {
    /// Nothing more to do until the next event.
    Wait,
    /// Close it now.
    Close,
    /// Refuse it with this answer, then linger.
    Refuse(Response),
    /// Hand the request to a worker.
    Complete(Request),
}

impl Listener {
    pub fn start(shared: Arc<Shared>) -> Result<Listener> {
        let addr = shared.config.server.internal_listen;
        let std_listener = std::net::TcpListener::bind(addr).map_err(|source| Error::Listen {
            addr,
            what: " (internal)",
            source,
        })?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let mut listener = TcpListener::from_std(std_listener);
        let poll = Poll::new().map_err(|source| Error::Resource {
            what: "the internal listener's poll",
            source,
        })?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));

        let (jobs, queue) = crossbeam_channel::bounded::<Job>(QUEUE);
        for i in 0..shared.config.server.admin_threads {
            let shared = shared.clone();
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("internal-req".into())
                .spawn(move || work(&shared, &queue))
                .map_err(|source| Error::Thread {
                    what: format!("internal worker {i}"),
                    source,
                })?;
        }
        let reader = Reader {
            poll,
            listener,
            conns: HashMap::new(),
            next: FIRST_CONN,
            reading: 0,
            lingering: 0,
            jobs,
            admin_token: shared.config.auth.admin_token.clone(),
            max_conns: shared.config.server.admin_max_connections,
            timeout: Duration::from_millis(shared.config.server.admin_request_timeout_ms),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("internal-http".into())
            .spawn(move || reader.run())?;
        Ok(Listener {
            addr,
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// Stops reading and joins the reading thread. Workers finish the request in hand and
    /// exit (the queue closes with the reading thread); they are not waited for, because a
    /// membership change can wait up to 10 s on shards that are already gone.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn work(shared: &Shared, queue: &Receiver<Job>) {
    let timeout = Duration::from_millis(shared.config.server.admin_request_timeout_ms);
    while let Ok(Job {
        mut stream,
        request,
    }) = queue.recv()
    {
        let response = super::route(shared, &request);
        write_by(
            &mut stream,
            &response_bytes(&response, ""),
            Instant::now() + timeout,
        );
        let _ = stream.shutdown(Shutdown::Write);
    }
}

/// Writes `bytes` on a blocking stream unless `deadline` passes first.
fn write_by(stream: &mut std::net::TcpStream, mut bytes: &[u8], deadline: Instant) {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_write_timeout(Some(left)).is_err() {
            return;
        }
        match stream.write(bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// One write attempt on a non-blocking stream. The answers written this way are a few hundred
/// bytes, which an empty socket buffer always takes; if it does not, the client gets less.
fn write_now(stream: &mut TcpStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// The whole HTTP/1.1 answer; `extra` is more header lines, each ending in CRLF.
fn response_bytes(r: &Response, extra: &str) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(&r.body);
    out
}

fn busy() -> Vec<u8> {
    response_bytes(
        &error(503, "the internal listener is busy; retry shortly"),
        "Retry-After: 1\r\n",
    )
}

/// The reading thread's state.
struct Reader {
    poll: Poll,
    listener: TcpListener,
    conns: HashMap<usize, Conn>,
    next: usize,
    /// Connections in `State::Reading`, bounded by `max_conns`.
    reading: usize,
    /// Connections in `State::Lingering`, bounded by `MAX_LINGERING`.
    lingering: usize,
    jobs: Sender<Job>,
    admin_token: Option<String>,
    max_conns: usize,
    timeout: Duration,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            let wait = self
                .conns
                .values()
                .map(|c| c.deadline.saturating_duration_since(now))
                .min();
            if let Err(e) = self.poll.poll(&mut events, wait) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(error = %e, "internal listener: poll failed; it stops");
                    return;
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(id) => self.on_readable(id),
                }
            }
            self.expire(Instant::now());
        }
    }

    fn accept(&mut self) {
        loop {
            let mut stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors, most likely; the next readiness retries.
                    tracing::warn!(error = %e, "internal listener: accept failed");
                    return;
                }
            };
            if self.reading >= self.max_conns {
                write_now(&mut stream, &busy());
                self.linger(stream);
                continue;
            }
            let deadline = Instant::now() + self.timeout;
            if self.watch(stream, deadline, State::Reading(RequestReader::new())) {
                self.reading += 1;
            }
        }
    }

    /// Shuts the write side of an answered connection and keeps draining it for a while, if
    /// there is room; otherwise closes it.
    fn linger(&mut self, stream: TcpStream) {
        let _ = stream.shutdown(Shutdown::Write);
        if self.lingering >= MAX_LINGERING {
            return;
        }
        let deadline = Instant::now() + LINGER;
        if self.watch(stream, deadline, State::Lingering { discarded: 0 }) {
            self.lingering += 1;
        }
    }

    /// Registers a connection for reading until `deadline`; false if the poller refused it
    /// (the stream is then closed).
    fn watch(&mut self, mut stream: TcpStream, deadline: Instant, state: State) -> bool {
        let id = self.next;
        self.next += 1;
        if self
            .poll
            .registry()
            .register(&mut stream, Token(id), Interest::READABLE)
            .is_err()
        {
            return false;
        }
        self.conns.insert(
            id,
            Conn {
                stream,
                deadline,
                state,
            },
        );
        true
    }

    /// Removes a connection from the books (the caller closes or hands on its stream).
    fn take(&mut self, id: usize) -> Option<TcpStream> {
        let mut conn = self.conns.remove(&id)?;
        match conn.state {
            State::Reading(_) => self.reading -= 1,
            State::Lingering { .. } => self.lingering -= 1,
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        Some(conn.stream)
    }

    fn on_readable(&mut self, id: usize) {
        let outcome = match self.conns.get_mut(&id) {
            Some(conn) => read(conn, self.admin_token.as_deref()),
            None => return,
        };
        match outcome {
            Outcome::Wait => {}
            Outcome::Close => drop(self.take(id)),
            Outcome::Refuse(response) => {
                if let Some(mut stream) = self.take(id) {
                    write_now(&mut stream, &response_bytes(&response, ""));
                    self.linger(stream);
                }
            }
            Outcome::Complete(request) => {
                let Some(stream) = self.take(id) else { return };
                self.hand_over(stream, request);
            }
        }
    }

    fn hand_over(&mut self, stream: TcpStream, request: Request) {
        let stream = std::net::TcpStream::from(OwnedFd::from(stream));
        if stream.set_nonblocking(false).is_err() {
            return;
        }
        match self.jobs.try_send(Job { stream, request }) {
            Ok(()) => {}
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                // The whole request was read, so closing after the answer is clean.
                let mut stream = job.stream;
                write_by(
                    &mut stream,
                    &busy(),
                    Instant::now() + Duration::from_millis(100),
                );
                let _ = stream.shutdown(Shutdown::Write);
            }
        }
    }

    /// Answers 408 to requests past their deadline and closes lingering connections past
    /// theirs.
    fn expire(&mut self, now: Instant) {
        let due: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let reading = matches!(
                self.conns.get(&id).map(|c| &c.state),
                Some(State::Reading(_))
            );
            if let Some(mut stream) = self.take(id) {
                if reading {
                    let ms = self.timeout.as_millis();
                    let answer = error(408, &format!("the request did not arrive within {ms} ms"));
                    write_now(&mut stream, &response_bytes(&answer, ""));
                    let _ = stream.shutdown(Shutdown::Write);
                }
            }
        }
    }
}

/// Reads what the socket has (mio is edge-triggered: until it would block) and feeds it on.
fn read(conn: &mut Conn, admin_token: Option<&str>) -> Outcome {
    let mut chunk = [0u8; 8192];
    loop {
        let n = match conn.stream.read(&mut chunk) {
            Ok(0) => return Outcome::Close,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Outcome::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Outcome::Close,
        };
        match &mut conn.state {
            State::Lingering { discarded } => {
                *discarded += n;
                if *discarded > LINGER_BYTES {
                    return Outcome::Close;
                }
            }
            State::Reading(reader) => match reader.feed(&chunk[..n], admin_token) {
                Step::More => {}
                Step::Continue => {
                    let answer = b"HTTP/1.1 100 Continue\r\n\r\n";
                    write_now(&mut conn.stream, answer);
                }
                Step::Complete(request) => return Outcome::Complete(request),
                Step::Refuse(response) => return Outcome::Refuse(response),
            },
        }
    }
}
