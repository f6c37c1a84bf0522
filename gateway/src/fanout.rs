//! Fan-out: how a room's frame reaches its members' sockets.
//!
//! Two steps. On the group's owner shard, `Shard::deliver_to_shards` (shard.rs) hands the frame
//! (framed once, one shared `Bytes`) to every shard that has subscribers, one
//! `ShardMsg::Deliver` each. On each of those shards, [`Fanout`] writes it to the shard's own connections in the
//! room: a reference count and a queue push per connection, and for large rooms the pacing
//! window ([`Pacing`]) that makes each socket write carry several frames.
//!
//! It sees its shard through [`Outbox`], as a connection does, and imports nothing of shard.rs.
//! Everything here is the shard's thread's own; no `RefCell` borrow is held across an
//! `.await`, and nothing blocks: writing to a connection only queues for its writer task.

use crate::conn::{Conn, ConnId};
use crate::outbox::Outbox;
use crate::recovery::Event;
use bytes::Bytes;
use corecast_storage::{GroupId, UserId};
use std::cell::{RefCell, RefMut};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::task::Waker;
use std::time::{Duration, Instant};

/// This shard's connections in each room, and the pacing window of its large rooms.
#[derive(Default)]
pub struct Fanout {
    /// This shard's connections in each room; a delivery to the shard is written to these.
    rooms: RefCell<HashMap<GroupId, Vec<Rc<Conn>>>>,
    /// Room pacing (see [`Fanout::deliver`]); its window is ended by the pacer task
    /// (server.rs).
    pub pacing: RefCell<Pacing>,
}

/// What a frame to a room does under pacing (see [`Pacing::frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Written now: a small room, or pacing is off.
    Now,
    /// Written now, and it opened a window: frames to large rooms wait until it ends.
    Opened,
    /// Queued until the open window ends.
    Wait,
}

/// Frames of large rooms that wait for the end of the current pacing window. The decisions
/// are sans-IO ([`Pacing::frame`], [`Pacing::end`]: the caller passes the time); `C` is a
/// connection (generic so the decisions are tested without sockets).
pub struct Pacing<C = Rc<Conn>> {
    /// End of the open window; `None` when no window is open.
    pub until: Option<Instant>,
    /// Connections with frames queued for the window's end.
    pub conns: Vec<C>,
    /// The pacer task, waiting for a window to open.
    pub waker: Option<Waker>,
}

impl<C> Default for Pacing<C> {
    fn default() -> Self {
        Pacing {
            until: None,
            conns: Vec::new(),
            waker: None,
        }
    }
}

impl<C> Pacing<C> {
    /// A frame for a room with `members` connections on this shard: rooms of `threshold`
    /// members or more (0: pacing off) are paced. The first frame that finds no window open
    /// goes out now and opens one of `window` from `now()` (read only then); the frames that
    /// follow while it is open wait for its end.
    pub fn frame(
        &mut self,
        members: usize,
        threshold: usize,
        window: Duration,
        now: impl FnOnce() -> Instant,
    ) -> Pace {
        if threshold == 0 || members < threshold {
            return Pace::Now;
        }
        if self.until.is_some() {
            return Pace::Wait;
        }
        self.until = Some(now() + window);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        Pace::Opened
    }

    /// Ends the open window, returning the connections with frames waiting. The window stays
    /// open for another period when frames were waiting (traffic goes on), and closes when
    /// none were.
    pub fn end(&mut self, window: Duration, now: Instant) -> Vec<C> {
        let conns = std::mem::take(&mut self.conns);
        self.until = (!conns.is_empty()).then(|| now + window);
        conns
    }
}

impl Fanout {
    /// `conn` is in `group`'s room on this shard from now on.
    pub fn add(&self, group: &GroupId, conn: &Rc<Conn>) {
        self.rooms
            .borrow_mut()
            .entry(group.clone())
            .or_default()
            .push(conn.clone());
    }

    /// Connection `id` is no longer in `group`'s room on this shard.
    pub fn remove(&self, group: &GroupId, id: ConnId) {
        let mut rooms = self.rooms.borrow_mut();
        if let Some(list) = rooms.get_mut(group) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                rooms.remove(group);
            }
        }
    }

    /// Writes `frame` to this shard's connections in the room (but `except_user`'s); returns
    /// how many. A connection that keeps recovery offsets gets a copy with its own offset
    /// (`Conn::frame_for`): the event is encoded once, not per recipient.
    ///
    /// Large rooms (`server.paced_room_members` members or more on this shard) are paced, like
    /// Nagle's algorithm for a room: a frame that finds no pacing window open is written at
    /// once and opens one (`server.pacing_window_ms`); frames that arrive while it is open are
    /// queued, and each connection writes all of them in one send when it ends. At low rates
    /// nothing waits; at high rates each send carries several frames, which is what a
    /// 5,000-member room needs (one send costs several microseconds of kernel time;
    /// docs/benchmarks.md). `userOnline` frames to such rooms are paced the same way
    /// ([`Fanout::deliver_presence`]).
    pub fn deliver(
        &self,
        shard: &impl Outbox,
        group: &GroupId,
        frame: &Bytes,
        event: Event,
        except_user: Option<UserId>,
    ) -> u64 {
        let rooms = self.rooms.borrow();
        let Some(list) = rooms.get(group) else {
            return 0;
        };
        let mut pacing = self.pacing_for(shard, list.len());
        let mut n = 0;
        for c in list {
            if except_user.is_some() && c.user() == except_user {
                continue;
            }
            if let Some(f) = c.frame_for(shard, group, event, frame) {
                write_or_queue(shard, c, f, pacing.as_deref_mut());
                n += 1;
            }
        }
        n
    }

    /// Writes `user`'s `userOnline` frame to their co-members' connections on this shard in
    /// `groups`: each connection once, however many groups they share. Returns how many.
    pub fn deliver_presence(
        &self,
        shard: &impl Outbox,
        user: UserId,
        groups: &[GroupId],
        frame: &Bytes,
    ) -> u64 {
        let rooms = self.rooms.borrow();
        let mut seen: HashSet<ConnId> = HashSet::new();
        let mut n = 0;
        for g in groups {
            let Some(list) = rooms.get(g) else { continue };
            // Large rooms pace presence like messages: a member coming online is news for
            // every other member, so connecting a room of n costs n² frames, and without pacing
            // as many sends.
            let mut pacing = self.pacing_for(shard, list.len());
            for c in list {
                if c.user() != Some(user) && seen.insert(c.id) {
                    write_or_queue(shard, c, frame.clone(), pacing.as_deref_mut());
                    n += 1;
                }
            }
        }
        n
    }

    /// `Some` (the window, to queue into) when a frame for a room with `members` connections
    /// here waits for the pacing window; `None` when it goes out now. Borrows the pacing state
    /// only for a paced room.
    fn pacing_for(&self, shard: &impl Outbox, members: usize) -> Option<RefMut<'_, Pacing>> {
        let s = &shard.config().server;
        if s.paced_room_members == 0 || members < s.paced_room_members {
            return None;
        }
        let mut p = self.pacing.borrow_mut();
        match p.frame(members, s.paced_room_members, window(shard), Instant::now) {
            Pace::Wait => Some(p),
            Pace::Now | Pace::Opened => None,
        }
    }

    /// Ends the open pacing window: every connection with frames waiting writes them.
    pub fn end_pacing_window(&self, shard: &impl Outbox) {
        let conns = self.pacing.borrow_mut().end(window(shard), Instant::now());
        for c in conns {
            c.paced.set(false);
            c.schedule(shard);
        }
    }
}

fn window(shard: &impl Outbox) -> Duration {
    Duration::from_millis(shard.config().server.pacing_window_ms)
}

/// Writes `frame` to `c` with its next send or, inside an open pacing window, queues it for
/// the window's end.
fn write_or_queue(shard: &impl Outbox, c: &Rc<Conn>, frame: Bytes, pacing: Option<&mut Pacing>) {
    match pacing {
        None => c.push(shard, frame),
        Some(p) => {
            if c.queue(shard, frame) && !c.paced.replace(true) {
                p.conns.push(c.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(50);

    #[test]
    fn small_rooms_are_never_paced() {
        let mut p: Pacing<u32> = Pacing::default();
        let t = Instant::now();
        for _ in 0..10 {
            assert_eq!(p.frame(999, 1000, W, || t), Pace::Now);
        }
        assert_eq!(p.until, None, "no window opened");
        assert_eq!(p.frame(5000, 0, W, || t), Pace::Now, "0 turns pacing off");
    }

    #[test]
    fn large_rooms_are_paced_one_window_at_a_time() {
        let mut p: Pacing<u32> = Pacing::default();
        let t = Instant::now();
        assert_eq!(
            p.frame(1000, 1000, W, || t),
            Pace::Opened,
            "the first goes at once"
        );
        assert_eq!(p.until, Some(t + W));
        let clock_read = std::cell::Cell::new(false);
        let later = || {
            clock_read.set(true);
            t
        };
        assert_eq!(p.frame(5000, 1000, W, later), Pace::Wait, "later ones wait");
        assert!(!clock_read.get(), "no clock read while a window is open");
        assert_eq!(
            p.frame(10, 1000, W, || t),
            Pace::Now,
            "a small room does not wait"
        );
        // Frames waited: the window ends with them and stays open for another period.
        p.conns.extend([1, 2]);
        assert_eq!(p.end(W, t + W), vec![1, 2]);
        assert_eq!(p.until, Some(t + 2 * W));
        // Nothing waited in that one: the window closes, and the next frame goes at once.
        assert!(p.end(W, t + 2 * W).is_empty());
        assert_eq!(p.until, None);
        assert_eq!(p.frame(1000, 1000, W, || t + 3 * W), Pace::Opened);
    }
}
