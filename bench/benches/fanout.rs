//! Cross-shard fan-out (`cargo bench -p corecast-bench --bench fanout`): a group's owner shard
//! hands one stored message to another shard, which writes it to that shard's members in the
//! room. Two threads, as in the gateway: the sender frames `newMessage` once and puts one
//! `ShardMsg::Deliver` per message into the receiver's inbox (`corecast_shard_router::mesh`,
//! the gateway's own message type), one `ShardMsg::Batch` per flush as the shard sender does at
//! the end of a turn; the receiver drains its inbox and queues the frame (a `Bytes` clone) for
//! each of its 5 members of the room (a group of 10 over 2 shards), then goes back to sleep on
//! its doorbell when the inbox is empty, exactly as a shard with nothing to do.
//!
//! Each iteration is one flush of `n` messages, timed until the receiver has queued them all,
//! so the figure per message includes the receiver's wake-up shared by the flush: `n = 1` is a
//! quiet gateway (every message wakes the other shard), `n = 256` a busy one.

use bytes::Bytes;
use corecast_gateway::recovery::Event;
use corecast_gateway::shard::ShardMsg;
use corecast_shard_router::{mesh, GroupId, Inbox, InboxHandle};
use corecast_wire::packet;
use corecast_wire::ws::Role;
use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    divan::main();
}

const NEW_MESSAGE: &[u8] = br#"{"id":"7301264578127134720","senderId":42,"groupId":"team-7","text":"hello everyone, this is a chat message of ordinary length","attachments":[],"timestamp":"2025-11-26T00:00:00.000Z","readBy":[42]}"#;

/// The receiving shard's members of the room.
const LOCAL_MEMBERS: usize = 5;

/// The receiving shard: drains its inbox, queues each delivered frame for its members, counts
/// the messages it handled, and sleeps on its doorbell when there is nothing to do.
fn receiver(mut inbox: Inbox<ShardMsg>, handled: Arc<AtomicU64>) {
    let mut bell = inbox.take_doorbell().expect("invariant: taken once");
    bell.set_nonblocking(false).expect("doorbell socket");
    let mut queues: Vec<VecDeque<Bytes>> = vec![VecDeque::new(); LOCAL_MEMBERS];
    let mut out = Vec::with_capacity(256);
    let mut ring = [0u8; 64];
    loop {
        out.clear();
        if inbox.drain(&mut out, 256) == 0 {
            if inbox.arm() {
                let _ = bell.read(&mut ring);
            }
            continue;
        }
        let mut n = 0;
        for msg in out.drain(..) {
            let msgs = match msg {
                ShardMsg::Batch { msgs } => msgs,
                ShardMsg::Shutdown => return,
                other => vec![other],
            };
            for m in msgs {
                if let ShardMsg::Deliver { frame, .. } = m {
                    for q in &mut queues {
                        q.push_back(frame.clone());
                    }
                    n += 1;
                }
            }
        }
        // The shard sender writes each queue out at the end of the turn.
        for q in &mut queues {
            black_box(q.drain(..).count());
        }
        handled.fetch_add(n, Ordering::Release);
    }
}

struct Pair {
    to: InboxHandle<ShardMsg>,
    handled: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pair {
    fn new() -> Self {
        let (mut inboxes, mut handles) = mesh::<ShardMsg>(1, 4096).expect("mesh");
        let inbox = inboxes.pop().expect("one inbox");
        let handled = Arc::new(AtomicU64::new(0));
        let h = handled.clone();
        let thread = std::thread::spawn(move || receiver(inbox, h));
        Pair {
            to: handles.pop().expect("one handle"),
            handled,
            thread: Some(thread),
        }
    }

    /// One flush: frames `n` messages, hands them over in one batch, and waits until the
    /// receiver has queued them all.
    fn flush(&self, n: usize) {
        let target = self.handled.load(Ordering::Acquire) + n as u64;
        let stored_at = Instant::now();
        // One id, cloned per message (a reference count), as the owner shard does.
        let group = GroupId::new("team-7");
        let msgs: Vec<ShardMsg> = (0..n)
            .map(|_| ShardMsg::Deliver {
                group: group.clone(),
                frame: packet::event_frame(Role::Server, "newMessage", &[black_box(NEW_MESSAGE)]),
                event: Event::Unstored,
                except_user: None,
                stored_at,
                ingress: Some(stored_at),
            })
            .collect();
        let mut msg = if n == 1 {
            msgs.into_iter().next().expect("one")
        } else {
            ShardMsg::Batch { msgs }
        };
        while let Err(m) = self.to.try_send(msg) {
            msg = m;
            std::hint::spin_loop();
        }
        while self.handled.load(Ordering::Acquire) < target {
            std::hint::spin_loop();
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let mut msg = ShardMsg::Shutdown;
        while let Err(m) = self.to.try_send(msg) {
            msg = m;
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("receiver thread");
        }
    }
}

/// One flush of `n` messages from a group's owner shard to another shard, until that shard has
/// queued each message for its 5 members; per message.
#[divan::bench(args = [1, 16, 256])]
fn deliver_to_other_shard(b: Bencher, n: usize) {
    let pair = Pair::new();
    b.counter(ItemsCount::new(n)).bench_local(|| pair.flush(n));
}
