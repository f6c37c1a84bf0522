//! One group's room on its owner shard, sans-IO: who may use it (the members), where its
//! messages go (the subscribers), and the order they go in.
//!
//! The owner shard feeds it events (a subscribe or unsubscribe, a client's message, the store's
//! answer to it, a membership change and each place's word that it applied it, the member list
//! loading) and carries out the [`Effect`]s that come back. The room does no I/O and reads no
//! clock: callers pass `now` in milliseconds of a monotonic clock, and the message id to use.
//!
//! The guarantees it holds:
//! - **Id order.** A message is delivered only once it and every message before it have the
//!   store's answer, so every subscriber gets the group's messages in id order whatever order
//!   the store answers in ([`Room::stored`]). A read receipt takes the same queue
//!   ([`Room::receipt`]): the group's stream is its messages and receipts, in one id order.
//! - **A resend is merged.** A message whose `clientMsgId` (per user) is still being stored is
//!   not stored again; both origins get the first attempt's answer ([`Room::send`]). Once the
//!   first is stored, the store itself answers a resend with the original (`Outcome::Duplicate`),
//!   which is answered but not delivered again.
//! - **Membership changes wait on a barrier.** A change goes to every place; the caller is
//!   released ([`Effect::Released`]) only when every place has said it applied it, and each
//!   place says so after the subscribes it made for it, so they are counted first.
//! - **Counts are given back.** Each place's subscriber count goes up on a subscribe and down
//!   on an unsubscribe (a connection leaving or closing); a place with none gets no delivery.
//!
//! A *place* ([`Carrier::Place`]) is where deliveries go and memberships are applied: a shard of
//! this process. A remote node can be one more place, with its own count.

use corecast_ids::{MessageId, UserId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// The types a room's effects are carried out with. The room never looks inside them.
pub trait Carrier {
    /// Where deliveries go and membership changes are applied: a shard (later also a node).
    type Place: Copy + Eq;
    /// Where an answer goes: a connection and the ack it asked for.
    type Origin;
    /// An operation that waits while the members load.
    type Parked;
    /// What the store answers to an append, and what a delivery is made from. Cloned once per
    /// merged resend, so make it cheap to clone (an `Rc`).
    type Stored: Clone;
    /// Why the store failed.
    type Error: Clone;
    /// The caller of a membership change, released once every place applied it.
    type Done;
}

/// The store's answer to one append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<S, E> {
    /// Stored now: deliver it and answer.
    New(S),
    /// The store already had it under the same `clientMsgId`: answer with the original,
    /// deliver nothing.
    Duplicate(S),
    /// Not stored.
    Failed(E),
}

/// What the owner shard does for the room, in the order given.
pub enum Effect<C: Carrier> {
    /// Deliver a stored message to each of `to` (each place once).
    Deliver {
        to: Vec<C::Place>,
        message: C::Stored,
    },
    /// Answer `origin`: its message was stored (or was already), or not.
    Reply {
        origin: C::Origin,
        result: Result<C::Stored, C::Error>,
    },
    /// Tell `to` that `users` joined the group: their connections there subscribe, then `to`
    /// answers with [`Room::applied`] for `barrier`.
    Enroll {
        to: C::Place,
        users: Arc<[UserId]>,
        barrier: u64,
    },
    /// Tell `to` that `users` left the group: their connections there unsubscribe, then `to`
    /// answers with [`Room::applied`] for `barrier`.
    Evict {
        to: C::Place,
        users: Arc<[UserId]>,
        barrier: u64,
    },
    /// Every place applied a membership change: release its caller.
    Released(C::Done),
}

/// What [`Room::send`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Send {
    /// Hand the message to the store under `id`; `notify` are the members not online, for
    /// their email notice.
    Store { id: MessageId, notify: Vec<UserId> },
    /// A resend of a message still being stored: its origin gets that one's answer.
    Merged,
    /// The sender is not a member.
    NotMember,
}

/// What the store said about the member list (see [`Room::loaded`]).
pub enum Load<M> {
    Found(M),
    /// No such group.
    Missing,
    /// The store failed.
    Failed,
}

/// What to do with the operations that waited for the member list.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded<W> {
    /// The members are known: carry the operations out, in arrival order.
    Ready(Vec<W>),
    /// The answer is stale (the group was created while it loaded): load again; the operations
    /// keep waiting.
    Reload,
    /// No such group: refuse them (`not_member`).
    Missing(Vec<W>),
    /// The store failed: refuse them (retry later).
    Failed(Vec<W>),
}

struct Pending<C: Carrier> {
    id: MessageId,
    key: Option<(UserId, String)>,
    origins: Vec<C::Origin>,
    outcome: Option<Outcome<C::Stored, C::Error>>,
}

struct Barrier<D> {
    id: u64,
    answers_left: usize,
    done: D,
}

/// A group's room (see the module's doc).
pub struct Room<C: Carrier> {
    /// `None` while the member list loads; operations wait in `waiting` meanwhile.
    members: Option<HashSet<UserId>>,
    waiting: Vec<C::Parked>,
    /// A waiting operation says the group exists (a membership change).
    waiting_creates: bool,
    /// The members were loaded a second time; a second "no such group" is final.
    reloaded: bool,
    /// Subscribers per place, every place listed (with 0 when it has none).
    subscribers: Vec<(C::Place, u32)>,
    /// Messages handed to the store and not yet delivered, in id order.
    pending: VecDeque<Pending<C>>,
    /// `clientMsgId`s of pending messages.
    inflight: HashMap<(UserId, String), MessageId>,
    barriers: Vec<Barrier<C::Done>>,
    next_barrier: u64,
    last_used_ms: u64,
    /// The newest id this room handed out (see [`Room::settled`]).
    last_id: Option<MessageId>,
}

impl<C: Carrier> Room<C> {
    /// A room whose members are still to load, with every place it may deliver to.
    pub fn new(places: impl IntoIterator<Item = C::Place>, now_ms: u64) -> Self {
        Room {
            members: None,
            waiting: Vec::new(),
            waiting_creates: false,
            reloaded: false,
            subscribers: places.into_iter().map(|p| (p, 0)).collect(),
            pending: VecDeque::new(),
            inflight: HashMap::new(),
            barriers: Vec::new(),
            next_barrier: 0,
            last_used_ms: now_ms,
            last_id: None,
        }
    }

    /// Something asked for the room at `now_ms` (see [`Room::expired`]).
    pub fn touch(&mut self, now_ms: u64) {
        self.last_used_ms = now_ms;
    }

    pub fn is_loaded(&self) -> bool {
        self.members.is_some()
    }

    /// Parks `op` until the members are known. Returns true when it is the first to wait: the
    /// caller then loads the members. `creates`: the operation says the group exists now.
    pub fn park(&mut self, op: C::Parked, creates: bool) -> bool {
        self.waiting.push(op);
        self.waiting_creates |= creates;
        self.waiting.len() == 1
    }

    /// The store's answer to the member list's load.
    pub fn loaded(&mut self, load: Load<impl IntoIterator<Item = UserId>>) -> Loaded<C::Parked> {
        match load {
            Load::Found(members) => {
                self.members = Some(members.into_iter().collect());
                self.waiting_creates = false;
                Loaded::Ready(std::mem::take(&mut self.waiting))
            }
            Load::Missing if self.waiting_creates && !self.reloaded => {
                self.reloaded = true;
                Loaded::Reload
            }
            Load::Missing => {
                self.waiting_creates = false;
                Loaded::Missing(std::mem::take(&mut self.waiting))
            }
            Load::Failed => {
                self.waiting_creates = false;
                Loaded::Failed(std::mem::take(&mut self.waiting))
            }
        }
    }

    /// The members, once loaded (in no particular order).
    pub fn members(&self) -> impl Iterator<Item = UserId> + '_ {
        self.members.iter().flatten().copied()
    }

    pub fn is_member(&self, user: UserId) -> bool {
        self.members.as_ref().is_some_and(|m| m.contains(&user))
    }

    /// A connection of `user` at `place` subscribes; refused when `user` is not a member.
    pub fn subscribe(&mut self, user: UserId, place: C::Place) -> bool {
        if !self.is_member(user) {
            return false;
        }
        if let Some((_, n)) = self.subscribers.iter_mut().find(|(p, _)| *p == place) {
            *n += 1;
        } else {
            self.subscribers.push((place, 1));
        }
        true
    }

    /// A connection at `place` left the room (it left, was evicted or closed).
    pub fn unsubscribe(&mut self, place: C::Place) {
        if let Some((_, n)) = self.subscribers.iter_mut().find(|(p, _)| *p == place) {
            *n = n.saturating_sub(1);
        }
    }

    /// Connections subscribed at `place`.
    pub fn subscribers_at(&self, place: C::Place) -> u32 {
        self.subscribers
            .iter()
            .find(|(p, _)| *p == place)
            .map_or(0, |&(_, n)| n)
    }

    /// The room's settled id at `now_ms`: every message of the group with an id up to it has
    /// been answered by the store (it is stored, or it never will be), and every message with a
    /// greater id is still to be delivered, to the places subscribed when it is. So a
    /// connection that subscribes now and reads the store up to this id, then takes the
    /// deliveries that follow, sees each message once (connection state recovery).
    ///
    /// With messages waiting for the store, it is just below the oldest of them. With none, it
    /// is the newest id handed out, or, if that is older (a room loaded since its last
    /// message), just below the first id of `now_ms`: ids handed out later are greater.
    pub fn settled(&self, now_ms: u64) -> MessageId {
        if let Some(p) = self.pending.front() {
            return MessageId(p.id.0.saturating_sub(1));
        }
        let now = MessageId::new(now_ms as i64, 0, 0).0.saturating_sub(1);
        MessageId(self.last_id.map_or(now, |l| l.0.max(now)))
    }

    /// The places with subscribers: where a delivery goes.
    pub fn fanout(&self) -> Vec<C::Place> {
        self.subscribers
            .iter()
            .filter(|&&(_, n)| n > 0)
            .map(|&(p, _)| p)
            .collect()
    }

    /// A client's message from `user` (`key`: its `clientMsgId`). `next_id` is called only
    /// when the message is to be stored; ids it gives must grow (the room delivers in the
    /// order they are handed out). `online` tells who is connected anywhere.
    pub fn send(
        &mut self,
        user: UserId,
        key: Option<String>,
        origin: C::Origin,
        next_id: impl FnOnce() -> MessageId,
        online: impl Fn(UserId) -> bool,
    ) -> Send {
        let Some(members) = &self.members else {
            return Send::NotMember;
        };
        if !members.contains(&user) {
            return Send::NotMember;
        }
        let key = key.map(|k| (user, k));
        if let Some(id) = key.as_ref().and_then(|k| self.inflight.get(k)) {
            if let Some(p) = self.pending.iter_mut().find(|p| p.id == *id) {
                p.origins.push(origin);
                return Send::Merged;
            }
        }
        let id = next_id();
        self.last_id = Some(id);
        let notify = members
            .iter()
            .copied()
            .filter(|&m| m != user && !online(m))
            .collect();
        if let Some(k) = &key {
            self.inflight.insert(k.clone(), id);
        }
        self.pending.push_back(Pending {
            id,
            key,
            origins: vec![origin],
            outcome: None,
        });
        Send::Store { id, notify }
    }

    /// A read receipt from `user`, refused (`None`) when `user` is not a member. It is an event
    /// of the group's stream like a message: it takes the next id from `next_id`, waits in the
    /// same queue, is answered and delivered in id order with the messages (an `Outcome::New`
    /// is delivered; a `Duplicate`, a receipt that added nothing, only answered), and
    /// [`Room::settled`] counts it. Connection state recovery replays it by that id.
    pub fn receipt(
        &mut self,
        user: UserId,
        origin: C::Origin,
        next_id: impl FnOnce() -> MessageId,
    ) -> Option<MessageId> {
        match self.send(user, None, origin, next_id, |_| true) {
            Send::Store { id, .. } => Some(id),
            Send::Merged | Send::NotMember => None,
        }
    }

    /// The store answered for message `id`. Returns the deliveries and answers that are now
    /// due: of `id` and of every later message already answered, in id order; nothing while an
    /// earlier message still waits for its answer.
    pub fn stored(
        &mut self,
        id: MessageId,
        outcome: Outcome<C::Stored, C::Error>,
    ) -> Vec<Effect<C>> {
        if let Some(p) = self.pending.iter_mut().find(|p| p.id == id) {
            p.outcome = Some(outcome);
        }
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|p| p.outcome.is_some()) {
            let p = self.pending.pop_front().expect("invariant: front checked");
            if let Some(k) = &p.key {
                self.inflight.remove(k);
            }
            let result = match p
                .outcome
                .expect("invariant: only answered messages are ready")
            {
                Outcome::New(s) => {
                    out.push(Effect::Deliver {
                        to: self.fanout(),
                        message: s.clone(),
                    });
                    Ok(s)
                }
                Outcome::Duplicate(s) => Ok(s),
                Outcome::Failed(e) => Err(e),
            };
            for origin in p.origins {
                out.push(Effect::Reply {
                    origin,
                    result: result.clone(),
                });
            }
        }
        out
    }

    /// Members were added and removed. Every place hears of each kind of change that is not
    /// empty; `done` is released once all of them said they applied it.
    pub fn members_changed(
        &mut self,
        added: &[UserId],
        removed: &[UserId],
        done: C::Done,
    ) -> Vec<Effect<C>> {
        if let Some(members) = self.members.as_mut() {
            members.extend(added.iter().copied());
            for u in removed {
                members.remove(u);
            }
        }
        let barrier = self.next_barrier;
        self.next_barrier += 1;
        let mut out = Vec::new();
        if !added.is_empty() {
            let users: Arc<[UserId]> = added.into();
            out.extend(self.subscribers.iter().map(|&(to, _)| Effect::Enroll {
                to,
                users: users.clone(),
                barrier,
            }));
        }
        if !removed.is_empty() {
            let users: Arc<[UserId]> = removed.into();
            out.extend(self.subscribers.iter().map(|&(to, _)| Effect::Evict {
                to,
                users: users.clone(),
                barrier,
            }));
        }
        if out.is_empty() {
            out.push(Effect::Released(done));
        } else {
            self.barriers.push(Barrier {
                id: barrier,
                answers_left: out.len(),
                done,
            });
        }
        out
    }

    /// A place applied its part of membership change `barrier` (after its subscribes).
    pub fn applied(&mut self, barrier: u64) -> Option<Effect<C>> {
        let i = self.barriers.iter().position(|b| b.id == barrier)?;
        let b = &mut self.barriers[i];
        b.answers_left = b.answers_left.saturating_sub(1);
        if b.answers_left > 0 {
            return None;
        }
        Some(Effect::Released(self.barriers.swap_remove(i).done))
    }

    /// Whether an event of the room still waits for the store's answer (or for an earlier
    /// one's): what it minted is not all delivered yet.
    pub fn awaiting_store(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Nothing depends on the room staying in memory: no subscriber, nothing waiting, nothing
    /// being stored, no membership change in flight. Forgetting it loses nothing; the store
    /// has its members. (A room still loading counts once its waiting operations are answered.)
    pub fn unused(&self) -> bool {
        self.waiting.is_empty()
            && self.pending.is_empty()
            && self.barriers.is_empty()
            && self.subscribers.iter().all(|&(_, n)| n == 0)
    }

    /// Whether the room is unused, loaded, and was last asked for `idle_ms` before `now_ms`
    /// or earlier: the periodic sweep forgets it.
    pub fn expired(&self, now_ms: u64, idle_ms: u64) -> bool {
        self.is_loaded() && self.unused() && now_ms.saturating_sub(self.last_used_ms) >= idle_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Places are shard numbers, origins strings, a stored message is its id's number.
    pub(crate) struct T;
    impl Carrier for T {
        type Place = u16;
        type Origin = &'static str;
        type Parked = &'static str;
        type Stored = u64;
        type Error = &'static str;
        type Done = &'static str;
    }

    fn room(members: &[u64]) -> Room<T> {
        let mut r = Room::new(0..3u16, 0);
        let members: Vec<UserId> = members.iter().map(|&u| UserId(u)).collect();
        assert_eq!(r.loaded(Load::Found(members)), Loaded::Ready(vec![]));
        r
    }

    fn send(r: &mut Room<T>, user: u64, key: Option<&str>, origin: &'static str, id: u64) -> Send {
        r.send(
            UserId(user),
            key.map(String::from),
            origin,
            || MessageId(id),
            |_| true,
        )
    }

    /// What the effects deliver, as (message, places), and answer, as (origin, result).
    #[allow(clippy::type_complexity)]
    fn split(
        effects: Vec<Effect<T>>,
    ) -> (
        Vec<(u64, Vec<u16>)>,
        Vec<(&'static str, Result<u64, &'static str>)>,
    ) {
        let (mut d, mut a) = (Vec::new(), Vec::new());
        for e in effects {
            match e {
                Effect::Deliver { to, message } => d.push((message, to)),
                Effect::Reply { origin, result } => a.push((origin, result)),
                _ => panic!("not a message effect"),
            }
        }
        (d, a)
    }

    #[test]
    fn messages_are_delivered_in_id_order_when_the_store_answers_out_of_order() {
        let mut r = room(&[1]);
        assert!(r.subscribe(UserId(1), 2));
        for id in 1..=3 {
            assert!(matches!(send(&mut r, 1, None, "c", id), Send::Store { .. }));
        }
        assert!(
            r.stored(MessageId(3), Outcome::New(3)).is_empty(),
            "1 and 2 first"
        );
        assert!(
            r.stored(MessageId(2), Outcome::New(2)).is_empty(),
            "1 first"
        );
        let (delivered, answered) = split(r.stored(MessageId(1), Outcome::New(1)));
        assert_eq!(delivered, vec![(1, vec![2]), (2, vec![2]), (3, vec![2])]);
        assert_eq!(answered.len(), 3);
    }

    /// A subscriber that reads the store up to the settled id and then takes the deliveries
    /// sees each message once: everything up to it is answered, everything after is delivered
    /// later.
    #[test]
    fn the_settled_id_splits_the_store_from_the_deliveries_to_come() {
        let ms = 1_800_000_000_000u64;
        let id = |t: u64, seq: u16| MessageId::new(t as i64, 1, seq);
        let below_first_of = |t: u64| MessageId(MessageId::new(t as i64, 0, 0).0 - 1);
        let mut r = room(&[1]);
        // A room loaded since its last message: just below the first id of now.
        assert_eq!(r.settled(ms), below_first_of(ms));
        assert!(r.settled(ms) > id(ms - 1, 500), "older ids are settled");
        // Messages waiting for the store: just below the oldest.
        let (a, b) = (id(ms, 3), id(ms, 4));
        r.send(UserId(1), None, "a", || a, |_| true);
        r.send(UserId(1), None, "b", || b, |_| true);
        assert_eq!(r.settled(ms), MessageId(a.0 - 1));
        r.stored(b, Outcome::New(2));
        assert_eq!(r.settled(ms), MessageId(a.0 - 1), "b waits for a");
        r.stored(a, Outcome::New(1));
        // All answered in the same millisecond: the newest id handed out, not below now's first.
        assert_eq!(r.settled(ms), b);
        assert_eq!(r.settled(ms + 5), below_first_of(ms + 5));
    }

    /// A receipt waits in the messages' queue: delivered after the message before it, before
    /// the one after it, whatever order the store answers in; one that added nothing is only
    /// answered; settled stays below it while it waits.
    #[test]
    fn receipts_are_ordered_with_the_messages() {
        let mut r = room(&[1, 2]);
        r.subscribe(UserId(2), 1);
        assert_eq!(r.receipt(UserId(3), "stranger", || MessageId(9)), None);
        send(&mut r, 1, None, "m1", 10);
        assert_eq!(
            r.receipt(UserId(2), "read", || MessageId(11)),
            Some(MessageId(11))
        );
        send(&mut r, 1, None, "m2", 12);
        assert_eq!(
            r.receipt(UserId(2), "again", || MessageId(13)),
            Some(MessageId(13))
        );
        assert!(r.stored(MessageId(12), Outcome::New(12)).is_empty());
        assert!(
            r.stored(MessageId(11), Outcome::New(11)).is_empty(),
            "after m1"
        );
        let (delivered, answered) = split(r.stored(MessageId(10), Outcome::New(10)));
        assert_eq!(delivered, vec![(10, vec![1]), (11, vec![1]), (12, vec![1])]);
        assert_eq!(
            answered,
            vec![("m1", Ok(10)), ("read", Ok(11)), ("m2", Ok(12))]
        );
        assert_eq!(r.settled(0), MessageId(12), "the receipt 13 still waits");
        let (delivered, answered) = split(r.stored(MessageId(13), Outcome::Duplicate(13)));
        assert_eq!(delivered, vec![], "it added nothing");
        assert_eq!(answered, vec![("again", Ok(13))]);
    }

    #[test]
    fn a_failed_message_is_answered_in_its_turn_and_not_delivered() {
        let mut r = room(&[1]);
        r.subscribe(UserId(1), 0);
        send(&mut r, 1, None, "a", 1);
        send(&mut r, 1, None, "b", 2);
        assert!(r.stored(MessageId(2), Outcome::New(2)).is_empty());
        let (delivered, answered) = split(r.stored(MessageId(1), Outcome::Failed("down")));
        assert_eq!(delivered, vec![(2, vec![0])]);
        assert_eq!(answered, vec![("a", Err("down")), ("b", Ok(2))]);
    }

    #[test]
    fn a_resend_is_merged_with_the_first_attempt() {
        let mut r = room(&[1, 2]);
        r.subscribe(UserId(2), 1);
        assert!(matches!(
            send(&mut r, 1, Some("k"), "first", 1),
            Send::Store { .. }
        ));
        assert_eq!(
            send(&mut r, 1, Some("k"), "again", 2),
            Send::Merged,
            "not stored twice"
        );
        // Another user's key, or no key, is another message.
        assert!(matches!(
            send(&mut r, 2, Some("k"), "other", 3),
            Send::Store { .. }
        ));
        let (delivered, answered) = split(r.stored(MessageId(1), Outcome::New(1)));
        assert_eq!(delivered, vec![(1, vec![1])], "delivered once");
        assert_eq!(answered, vec![("first", Ok(1)), ("again", Ok(1))]);
        // Once stored, a resend is the store's to recognise: answered, not delivered.
        assert!(matches!(
            send(&mut r, 1, Some("k"), "later", 4),
            Send::Store { .. }
        ));
        r.stored(MessageId(3), Outcome::New(3));
        let (delivered, answered) = split(r.stored(MessageId(4), Outcome::Duplicate(1)));
        assert!(delivered.is_empty());
        assert_eq!(answered, vec![("later", Ok(1))]);
    }

    #[test]
    fn only_members_send_and_subscribe_and_offline_members_are_notified() {
        let mut r = room(&[1, 2, 3]);
        assert_eq!(send(&mut r, 9, None, "x", 1), Send::NotMember);
        assert!(!r.subscribe(UserId(9), 0));
        let sent = r.send(UserId(1), None, "x", || MessageId(1), |u| u == UserId(2));
        assert_eq!(
            sent,
            Send::Store {
                id: MessageId(1),
                notify: vec![UserId(3)]
            }
        );
    }

    #[test]
    fn subscriber_counts_are_given_back_and_a_place_without_any_gets_nothing() {
        let mut r = room(&[1, 2]);
        r.subscribe(UserId(1), 0);
        r.subscribe(UserId(2), 0);
        r.subscribe(UserId(2), 1);
        assert_eq!(r.fanout(), vec![0, 1]);
        // The connection on place 1 closes; one of place 0's leaves.
        r.unsubscribe(1);
        r.unsubscribe(0);
        assert_eq!((r.subscribers_at(0), r.subscribers_at(1)), (1, 0));
        assert_eq!(r.fanout(), vec![0]);
        r.unsubscribe(0);
        r.unsubscribe(0); // an extra one (a late answer) cannot go below zero
        assert!(r.fanout().is_empty());
        assert!(r.unused());
        assert!(r.expired(1000, 1000));
        assert!(!r.expired(999, 1000));
    }

    #[test]
    fn a_membership_change_is_released_when_every_place_applied_it() {
        let mut r = room(&[1]);
        let effects = r.members_changed(&[UserId(2)], &[UserId(1)], "admin");
        let barriers: Vec<(u16, u64)> = effects
            .iter()
            .map(|e| match e {
                Effect::Enroll { to, barrier, .. } | Effect::Evict { to, barrier, .. } => {
                    (*to, *barrier)
                }
                _ => panic!("only enroll and evict"),
            })
            .collect();
        assert_eq!(barriers.len(), 6, "each of 3 places, both kinds");
        assert!(r.is_member(UserId(2)) && !r.is_member(UserId(1)));
        // Place 1 enrolls user 2's connection there, then says it applied the change.
        assert!(r.subscribe(UserId(2), 1));
        for &(_, b) in &barriers[..5] {
            assert!(r.applied(b).is_none(), "a place has not answered yet");
            assert!(!r.unused(), "the room stays while a change is in flight");
        }
        assert!(matches!(
            r.applied(barriers[5].1),
            Some(Effect::Released("admin"))
        ));
        assert_eq!(
            r.subscribers_at(1),
            1,
            "counted before the caller was released"
        );
        assert!(r.applied(barriers[5].1).is_none(), "released once");
        assert!(matches!(
            r.members_changed(&[], &[], "noop")[..],
            [Effect::Released("noop")]
        ));
    }

    #[test]
    fn operations_wait_for_the_members_and_a_stale_missing_answer_is_loaded_again() {
        let mut r: Room<T> = Room::new(0..2u16, 0);
        assert!(r.park("subscribe", false), "the first starts the load");
        assert!(!r.park("change", true));
        assert_eq!(r.loaded(Load::<Vec<UserId>>::Missing), Loaded::Reload);
        assert_eq!(
            r.loaded(Load::<Vec<UserId>>::Missing),
            Loaded::Missing(vec!["subscribe", "change"]),
            "a second answer is final"
        );
        let mut r: Room<T> = Room::new(0..2u16, 0);
        r.park("send", false);
        assert_eq!(
            r.loaded(Load::<Vec<UserId>>::Failed),
            Loaded::Failed(vec!["send"])
        );
        assert!(
            !r.is_loaded() && r.unused(),
            "forgotten, loaded again when next used"
        );
        r.park("send", false);
        assert_eq!(
            r.loaded(Load::Found([UserId(1)])),
            Loaded::Ready(vec!["send"])
        );
        assert!(r.is_member(UserId(1)));
    }
}
