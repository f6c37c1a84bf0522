//! The shard's sender: what the shard's tasks queued for connections goes out in one batch per
//! turn, one io_uring submission for all of them.
//!
//! A frame queued for a connection ([`Conn::push`]) marks the connection as due and wakes the
//! sender task instead of the connection's own session task. The sender runs after the tasks
//! that were already runnable (glommio runs a queue's tasks in wake order), so a broadcast to
//! a room, the acks of a batch of packets and the end of a pacing window all end up in one
//! batch. For each due connection it takes everything queued (one buffer, as the session
//! would), and hands the kernel a `SEND` per connection in one `io_uring_enter`. Measured on
//! this machine's loopback (`bench/probes/uring_send.c`, docs/benchmarks.md): ~1 µs less CPU
//! per send than one `send` system call each, and no task wake-up per delivery.
//!
//! Sends are non-blocking (`MSG_DONTWAIT`), so every completion is there when the submission
//! returns and no buffer outlives this call. A send that could not finish (socket full, a
//! partial write, an error) leaves the rest as the connection's unfinished write and wakes its
//! session, which finishes it the usual way (waiting for the socket through glommio) and, on
//! an error, ends the session. While a connection has an unfinished write, the sender leaves
//! the connection to its session, so bytes never go out of order.
//!
//! Where io_uring cannot be set up for this (an old kernel, a locked-down sandbox), or with
//! `server.send_ring = false`, the same batch goes out with one `send` system call per
//! connection.
//!
//! The sender sees its shard through [`SendSide`] (the due list, the ring, the connections)
//! on top of what each connection asks of it ([`Outbox`]); it does not know `Shard` itself.

use crate::conn::{Conn, ConnId};
use crate::metrics::Hop;
use crate::outbox::Outbox;
use bytes::Bytes;
use corecast_shard_router::ShardId;
use io_uring::{opcode, types, IoUring};
use std::cell::{Ref, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

/// Submission queue entries of a shard's send ring: a larger batch goes in several submissions.
const RING_ENTRIES: u32 = 512;

const SEND_FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// What the sender uses of its shard, besides what each connection asks of it.
pub trait SendSide: Outbox {
    /// The connections listed for the next batch, and the sender task's waker.
    fn due(&self) -> &RefCell<Due>;
    /// The shard's send ring.
    fn ring(&self) -> &RefCell<Sender>;
    /// The shard's connections, by id (borrowed while a batch is collected).
    fn conns(&self) -> Ref<'_, HashMap<ConnId, Rc<Conn>>>;
}

/// Connections with frames due, and the sender task's waker.
#[derive(Default)]
pub struct Due {
    conns: Vec<ConnId>,
    waker: Option<Waker>,
    /// When the oldest room delivery of the next batch was queued (for [`Hop::Socket`]).
    since: Option<Instant>,
}

impl Due {
    /// A room's frames were queued at `now` (the batch's first such time is kept).
    pub fn queued_at(&mut self, now: Instant) {
        if !self.conns.is_empty() {
            self.since.get_or_insert(now);
        }
    }

    /// Adds a connection (once per batch; the connection keeps the flag) and wakes the sender.
    pub fn add(&mut self, id: ConnId) {
        self.conns.push(id);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// The shard's send ring, if io_uring could be set up.
pub struct Sender {
    ring: Option<IoUring>,
    /// The batch being sent: reused, so a turn allocates nothing.
    batch: Vec<(Rc<Conn>, Bytes)>,
    due: Vec<ConnId>,
    /// Which sends of the chunk in flight have completed.
    done: Vec<bool>,
}

impl Sender {
    /// The sender of `shard`; `use_ring` is the `server.send_ring` setting.
    pub fn open(shard: ShardId, use_ring: bool) -> Sender {
        let ring = if use_ring {
            // One thread submits (the shard's), and completions are only ever reaped right
            // after the submission: no interrupt-style task work needed.
            let ring = IoUring::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .build(RING_ENTRIES)
                .or_else(|_| IoUring::new(RING_ENTRIES));
            match ring {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(shard = shard.0, error = %e, "no io_uring for sends; sending with one system call per connection");
                    None
                }
            }
        } else {
            tracing::info!(
                shard = shard.0,
                "sending with one system call per connection (server.send_ring = false)"
            );
            None
        };
        Sender {
            ring,
            batch: Vec::new(),
            due: Vec::new(),
            done: Vec::new(),
        }
    }
}

/// The shard's sender task.
pub async fn sender(shard: Rc<impl SendSide>) {
    loop {
        poll_fn(|cx| {
            let mut due = shard.due().borrow_mut();
            if due.conns.is_empty() {
                due.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        send_due(&*shard);
    }
}

/// Sends what is queued for every due connection.
fn send_due(shard: &impl SendSide) {
    let mut sender = shard.ring().borrow_mut();
    let sender = &mut *sender;
    let since = {
        let mut due = shard.due().borrow_mut();
        std::mem::swap(&mut sender.due, &mut due.conns);
        due.since.take()
    };
    {
        let conns = shard.conns();
        for id in sender.due.drain(..) {
            let Some(conn) = conns.get(&id) else { continue };
            conn.set_due(false);
            if conn.fd() < 0 {
                continue;
            }
            if conn.has_unfinished_write() {
                // Its session owns the socket until that write is done.
                conn.wake();
                continue;
            }
            if let Some(buf) = conn.take_queued() {
                sender.batch.push((conn.clone(), buf));
            } else if conn.is_closing() {
                conn.wake();
            }
        }
    }
    if sender.batch.is_empty() {
        return;
    }
    let mut done = std::mem::take(&mut sender.done);
    let mut failed = false;
    if let Some(ring) = sender.ring.as_mut() {
        for chunk in sender.batch.chunks(RING_ENTRIES as usize) {
            if failed {
                // Later chunks after a failure: each is left to its session.
                for (conn, buf) in chunk {
                    finish(shard, conn, buf, -libc::EAGAIN);
                }
                continue;
            }
            done.clear();
            done.resize(chunk.len(), false);
            if let Err(e) = submit(shard, ring, chunk, &mut done) {
                // Not seen in practice. The ring goes (closing it drops whatever it still
                // holds), and every send not completed is left to its session.
                tracing::error!(error = %e, "send ring failed; sending with system calls from now on");
                for ((conn, buf), _) in chunk.iter().zip(&done).filter(|(_, d)| !**d) {
                    finish(shard, conn, buf, -libc::EAGAIN);
                }
                failed = true;
            }
        }
    } else {
        for (conn, buf) in &sender.batch {
            // SAFETY: `buf` is valid for its length; the socket belongs to `conn`'s open
            // session (fd() is -1 once it ends).
            let n = unsafe { libc::send(conn.fd(), buf.as_ptr().cast(), buf.len(), SEND_FLAGS) };
            let n = match n {
                n if n >= 0 => n as i32,
                _ => -std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO),
            };
            finish(shard, conn, buf, n);
        }
    }
    if failed {
        sender.ring = None;
    }
    sender.done = done;
    sender.batch.clear();
    if let Some(since) = since {
        shard.stats().hop(Hop::Socket, since.elapsed());
    }
}

/// One submission for `chunk`, then every completion (marked in `done`).
fn submit(
    shard: &impl Outbox,
    ring: &mut IoUring,
    chunk: &[(Rc<Conn>, Bytes)],
    done: &mut [bool],
) -> std::io::Result<()> {
    {
        let mut sq = ring.submission();
        for (i, (conn, buf)) in chunk.iter().enumerate() {
            let sqe = opcode::Send::new(types::Fd(conn.fd()), buf.as_ptr(), buf.len() as u32)
                .flags(SEND_FLAGS)
                .build()
                .user_data(i as u64);
            // SAFETY: the buffers stay alive (in `chunk`) until their completions are reaped
            // below, before this function returns (or the ring is closed on an error).
            if unsafe { sq.push(&sqe) }.is_err() {
                unreachable!("invariant: a chunk fits the submission queue");
            }
        }
    }
    let mut left = chunk.len();
    let mut want = 0;
    while left > 0 {
        if let Err(e) = ring.submit_and_wait(want) {
            match e.raw_os_error() {
                Some(libc::EINTR | libc::EBUSY | libc::EAGAIN) => continue,
                _ => return Err(e),
            }
        }
        for cqe in ring.completion() {
            let i = cqe.user_data() as usize;
            let (conn, buf) = &chunk[i];
            done[i] = true;
            finish(shard, conn, buf, cqe.result());
            left -= 1;
        }
        // Non-blocking sends complete within the submission; should one not have, wait for it.
        want = left;
    }
    Ok(())
}

/// Books the outcome of one send: `n` bytes written, or a negative errno.
fn finish(shard: &impl Outbox, conn: &Conn, buf: &Bytes, n: i32) {
    if n >= 0 && n as usize == buf.len() {
        conn.wrote(shard, buf.len());
        if conn.is_closing() {
            conn.wake();
        }
        return;
    }
    // Socket full, partly written or failed: the session finishes (or fails) the rest.
    conn.set_unfinished_write(buf.clone(), n.max(0) as usize);
    conn.wake();
}
