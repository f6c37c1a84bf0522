//! Property tests of [`Room`]: whatever the interleaving of messages, store answers (in any
//! order, some failing), resends, subscribes and closes, every stored message reaches every
//! place subscribed when it became due, exactly once and in id order, and every sender gets
//! exactly one answer. And whatever the interleaving of membership changes and the places'
//! answers, each change's caller is released once, only after every place applied it.

use corecast_shard_router::room::{Carrier, Effect, Load, Loaded, Outcome, Send};
use corecast_shard_router::Room;
use corecast_shard_router::{MessageId, UserId};
use proptest::prelude::*;
use std::collections::HashMap;

/// Places are shard numbers, origins are numbered, a stored message is its id's number.
struct P;
impl Carrier for P {
    type Place = u16;
    type Origin = u32;
    type Parked = ();
    type Stored = u64;
    type Error = ();
    type Done = u32;
}

const PLACES: u16 = 3;

#[derive(Debug, Clone)]
enum Op {
    /// A client's message; users 1 to 3 are members, 4 is not.
    Send {
        user: u64,
        key: Option<u8>,
    },
    /// The store answers one of the messages it holds (picked by `pick`), or fails it.
    Answer {
        pick: usize,
        fail: bool,
    },
    Subscribe {
        user: u64,
        place: u16,
    },
    /// A connection at `place` closes (if it has one).
    Close {
        place: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..=4u64, prop::option::of(0..3u8)).prop_map(|(user, key)| Op::Send { user, key }),
        3 => (any::<usize>(), prop::bool::weighted(0.15))
            .prop_map(|(pick, fail)| Op::Answer { pick, fail }),
        2 => (1..=4u64, 0..PLACES).prop_map(|(user, place)| Op::Subscribe { user, place }),
        1 => (0..PLACES).prop_map(|place| Op::Close { place }),
    ]
}

/// The test's side of the world: the store, the places' connections, what arrived.
#[derive(Default)]
struct World {
    next_id: u64,
    next_origin: u32,
    /// Messages the store holds and has not answered: (id, user, key).
    at_store: Vec<(u64, u64, Option<u8>)>,
    /// What the store answered, by id.
    answered: HashMap<u64, Outcome<u64, ()>>,
    /// The first message stored under each (user, key): the store's idempotency.
    stored_keys: HashMap<(u64, u8), u64>,
    /// Connections per place.
    subscribed: [u32; PLACES as usize],
    /// Deliveries as they happened: (message, places).
    delivered: Vec<(u64, Vec<u16>)>,
    /// Answers per origin.
    replies: HashMap<u32, Vec<Result<u64, ()>>>,
    /// Each origin that asked, and the message it was stored or merged under.
    asked: HashMap<u32, u64>,
    /// Pending message of each (user, key) from the room's point of view (for merges).
    inflight: HashMap<(u64, u8), u64>,
}

impl World {
    fn carry_out(&mut self, effects: Vec<Effect<P>>) {
        for e in effects {
            match e {
                Effect::Deliver { to, message } => {
                    let expected: Vec<u16> = (0..PLACES)
                        .filter(|&p| self.subscribed[p as usize] > 0)
                        .collect();
                    assert_eq!(to, expected, "message {message}: every subscribed place");
                    self.delivered.push((message, to));
                }
                Effect::Reply { origin, result } => {
                    self.replies.entry(origin).or_default().push(result)
                }
                _ => panic!("no membership change here"),
            }
        }
    }

    fn answer(&mut self, room: &mut Room<P>, pick: usize, fail: bool) {
        if self.at_store.is_empty() {
            return;
        }
        let (id, user, key) = self.at_store.remove(pick % self.at_store.len());
        let outcome = match key.and_then(|k| self.stored_keys.get(&(user, k))) {
            Some(&original) => Outcome::Duplicate(original),
            None if fail => Outcome::Failed(()),
            None => {
                if let Some(k) = key {
                    self.stored_keys.insert((user, k), id);
                }
                Outcome::New(id)
            }
        };
        self.answered.insert(id, outcome.clone());
        let effects = room.stored(MessageId(id), outcome);
        self.carry_out(effects);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_stored_message_reaches_every_subscriber_once_in_id_order(
        ops in prop::collection::vec(op(), 1..120),
        finish in prop::collection::vec(any::<usize>(), 120),
    ) {
        let mut room: Room<P> = Room::new(0..PLACES, 0);
        let members = [UserId(1), UserId(2), UserId(3)];
        prop_assert_eq!(room.loaded(Load::Found(members)), Loaded::Ready(vec![]));
        let mut w = World::default();
        for op in ops {
            match op {
                Op::Send { user, key } => {
                    let origin = w.next_origin;
                    w.next_origin += 1;
                    let id = w.next_id + 1;
                    let sent = room.send(
                        UserId(user),
                        key.map(|k| k.to_string()),
                        origin,
                        || MessageId(id),
                        |_| true,
                    );
                    match sent {
                        Send::Store { id: MessageId(got), .. } => {
                            prop_assert_eq!(got, id);
                            w.next_id = id;
                            w.at_store.push((id, user, key));
                            w.asked.insert(origin, id);
                            if let Some(k) = key {
                                w.inflight.insert((user, k), id);
                            }
                        }
                        Send::Merged => {
                            let k = key.expect("only a keyed message merges");
                            // The first attempt is answered or not, but not yet delivered.
                            let first = w.inflight[&(user, k)];
                            prop_assert!(!w.delivered.iter().any(|d| d.0 == first));
                            w.asked.insert(origin, first);
                        }
                        Send::NotMember => prop_assert_eq!(user, 4),
                    }
                }
                Op::Answer { pick, fail } => w.answer(&mut room, pick, fail),
                Op::Subscribe { user, place } => {
                    if room.subscribe(UserId(user), place) {
                        w.subscribed[place as usize] += 1;
                    } else {
                        prop_assert_eq!(user, 4);
                    }
                }
                Op::Close { place } => {
                    if w.subscribed[place as usize] > 0 {
                        w.subscribed[place as usize] -= 1;
                        room.unsubscribe(place);
                    }
                }
            }
        }
        // The store answers what it still holds, in some order.
        for pick in finish {
            w.answer(&mut room, pick, false);
        }
        while !w.at_store.is_empty() {
            w.answer(&mut room, 0, false);
        }

        // In id order, each once.
        let ids: Vec<u64> = w.delivered.iter().map(|d| d.0).collect();
        prop_assert!(ids.windows(2).all(|p| p[0] < p[1]), "id order: {:?}", ids);
        // Exactly the messages stored anew.
        let mut new: Vec<u64> = w
            .answered
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::New(_)))
            .map(|(&id, _)| id)
            .collect();
        new.sort();
        prop_assert_eq!(ids, new);
        // Every origin answered once, with its message's (or its first attempt's) outcome.
        for (origin, id) in &w.asked {
            let expected = match &w.answered[id] {
                Outcome::New(s) | Outcome::Duplicate(s) => Ok(*s),
                Outcome::Failed(()) => Err(()),
            };
            prop_assert_eq!(w.replies.get(origin), Some(&vec![expected]), "origin {}", origin);
        }
        prop_assert_eq!(w.replies.len(), w.asked.len());
        // Close every connection: nothing is left to keep the room.
        for p in 0..PLACES {
            for _ in 0..w.subscribed[p as usize] {
                room.unsubscribe(p);
            }
        }
        prop_assert!(room.unused());
    }
}

/// The places' side of membership changes: each place's answers still to give, in order.
struct Places {
    queues: Vec<Vec<u64>>,
    /// Answers each caller still waits for.
    left: HashMap<u32, usize>,
    barrier_of: HashMap<u64, u32>,
    released: Vec<u32>,
}

impl Places {
    /// `place` answers the oldest change it has not answered yet.
    fn answer(&mut self, room: &mut Room<P>, place: usize) -> Result<(), TestCaseError> {
        if self.queues[place].is_empty() {
            return Ok(());
        }
        let b = self.queues[place].remove(0);
        let caller = self.barrier_of[&b];
        let n = self
            .left
            .get_mut(&caller)
            .expect("answered after its release");
        *n -= 1;
        match room.applied(b) {
            Some(Effect::Released(c)) => {
                prop_assert_eq!(c, caller);
                prop_assert_eq!(*n, 0, "released only after its last answer");
                self.released.push(c);
            }
            None => prop_assert!(*n > 0, "the last answer releases it"),
            _ => panic!("only a release"),
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn each_membership_change_is_released_once_after_every_place_applied_it(
        changes in prop::collection::vec((any::<bool>(), any::<bool>()), 1..8),
        picks in prop::collection::vec(any::<usize>(), 0..200),
    ) {
        let mut room: Room<P> = Room::new(0..PLACES, 0);
        room.loaded(Load::Found([UserId(1)]));
        // Each place's answers queue in the order it got the changes (inboxes are FIFO per
        // pair of shards); places answer in any order among themselves.
        let mut queues: Vec<Vec<u64>> = vec![Vec::new(); PLACES as usize];
        let mut left: HashMap<u32, usize> = HashMap::new();
        let mut barrier_of: HashMap<u64, u32> = HashMap::new();
        let mut released: Vec<u32> = Vec::new();
        for (caller, &(add, remove)) in changes.iter().enumerate() {
            let caller = caller as u32;
            let added: Vec<UserId> = if add { vec![UserId(10 + caller as u64)] } else { vec![] };
            let removed: Vec<UserId> = if remove { vec![UserId(1)] } else { vec![] };
            let mut n = 0;
            for e in room.members_changed(&added, &removed, caller) {
                match e {
                    Effect::Enroll { to, barrier, .. } | Effect::Evict { to, barrier, .. } => {
                        queues[to as usize].push(barrier);
                        barrier_of.insert(barrier, caller);
                        n += 1;
                    }
                    Effect::Released(c) => released.push(c),
                    _ => panic!("only membership effects"),
                }
            }
            prop_assert_eq!(n == 0, !add && !remove, "a change with nothing in it is released at once");
            if n > 0 {
                left.insert(caller, n);
            }
        }
        let mut places = Places { queues, left, barrier_of, released };
        for p in picks {
            places.answer(&mut room, p % PLACES as usize)?;
            prop_assert_eq!(room.unused(), places.queues.iter().all(|q| q.is_empty()));
        }
        for place in 0..PLACES as usize {
            while !places.queues[place].is_empty() {
                places.answer(&mut room, place)?;
            }
        }
        let mut released = places.released;
        released.sort();
        prop_assert_eq!(released, (0..changes.len() as u32).collect::<Vec<_>>(), "each once");
        prop_assert!(room.unused());
    }
}
