//! The membership loads of connects, merged, sans-IO.
//!
//! Every client that logs in needs the list of its groups from the store before it can be put
//! in its rooms. When many connect at once (a node restarted, a deploy drained another node)
//! one store request per connect would crowd the store's queue ahead of live messages. A
//! shard therefore keeps at most one load in flight: users who log in while it is out wait
//! in the next batch, which goes when the answer comes back. At ordinary load a batch holds
//! one user and goes at once (nothing waits); under a storm batches grow with the store's
//! answer time, so the store sees at most one load request per shard at a time whatever the
//! connect rate, and messages queued behind it wait for one batch, not for thousands of
//! lookups.
//!
//! Connections of the same user waiting in the same batch share one lookup. A connection
//! never joins a batch already sent: the store may have read that user's groups before a
//! membership change the connection must see (the shard applies changes only to
//! connections it already knew of when the change arrived).

use std::collections::HashMap;
use std::hash::Hash;

/// Per shard: the users whose groups are being loaded (`sent`) and those waiting for the
/// next batch, each with the connections that asked.
pub struct Loads<U, C> {
    max_batch: usize,
    /// The batch at the store, in the order it was sent; `None` when nothing is in flight.
    sent: Option<Vec<(U, Vec<C>)>>,
    /// The next batch, in arrival order, and each user's place in it.
    waiting: Vec<(U, Vec<C>)>,
    place: HashMap<U, usize>,
}

impl<U: Hash + Eq + Clone, C> Loads<U, C> {
    /// `max_batch` bounds the users in one load (one store request's work).
    pub fn new(max_batch: usize) -> Self {
        Loads {
            max_batch: max_batch.max(1),
            sent: None,
            waiting: Vec::new(),
            place: HashMap::new(),
        }
    }

    /// Connection `conn` of `user` needs its groups. Returns the users to load now when no
    /// load is in flight (a batch of one, then), else `None`: the connection waits for the
    /// answer in flight and goes in the next batch.
    pub fn request(&mut self, user: U, conn: C) -> Option<Vec<U>> {
        match self.place.get(&user) {
            Some(&i) => self.waiting[i].1.push(conn),
            None => {
                self.place.insert(user.clone(), self.waiting.len());
                self.waiting.push((user, vec![conn]));
            }
        }
        if self.sent.is_some() {
            return None;
        }
        self.send_next()
    }

    /// The load in flight was answered (with success or not). Returns who asked, in the order
    /// the users were sent, and the next batch to send, if any waits.
    #[allow(clippy::type_complexity)]
    pub fn answered(&mut self) -> (Vec<(U, Vec<C>)>, Option<Vec<U>>) {
        let done = self.sent.take().unwrap_or_default();
        (done, self.send_next())
    }

    /// Connections waiting, in flight or for the next batch.
    pub fn pending(&self) -> usize {
        let count = |b: &[(U, Vec<C>)]| b.iter().map(|(_, c)| c.len()).sum::<usize>();
        self.sent.as_deref().map_or(0, count) + count(&self.waiting)
    }

    fn send_next(&mut self) -> Option<Vec<U>> {
        if self.waiting.is_empty() {
            return None;
        }
        let n = self.waiting.len().min(self.max_batch);
        let batch: Vec<(U, Vec<C>)> = self.waiting.drain(..n).collect();
        self.place.clear();
        for (i, (u, _)) in self.waiting.iter().enumerate() {
            self.place.insert(u.clone(), i);
        }
        let users = batch.iter().map(|(u, _)| u.clone()).collect();
        self.sent = Some(batch);
        Some(users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_connect_loads_at_once() {
        let mut l = Loads::new(8);
        assert_eq!(l.request(1, 'a'), Some(vec![1]));
        let (done, next) = l.answered();
        assert_eq!(done, vec![(1, vec!['a'])]);
        assert_eq!(next, None);
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn connects_during_a_load_go_in_one_batch_with_one_lookup_per_user() {
        let mut l = Loads::new(8);
        assert_eq!(l.request(1, 'a'), Some(vec![1]));
        assert_eq!(l.request(2, 'b'), None);
        assert_eq!(l.request(3, 'c'), None);
        assert_eq!(l.request(2, 'd'), None);
        assert_eq!(l.pending(), 4);
        let (done, next) = l.answered();
        assert_eq!(done, vec![(1, vec!['a'])]);
        assert_eq!(next, Some(vec![2, 3]));
        let (done, next) = l.answered();
        assert_eq!(done, vec![(2, vec!['b', 'd']), (3, vec!['c'])]);
        assert_eq!(next, None);
    }

    #[test]
    fn a_connection_never_joins_a_load_already_sent() {
        // The store may have read user 1's groups before a membership change that the second
        // connection must see: it gets a lookup of its own.
        let mut l = Loads::new(8);
        assert_eq!(l.request(1, 'a'), Some(vec![1]));
        assert_eq!(l.request(1, 'b'), None);
        let (done, next) = l.answered();
        assert_eq!(done, vec![(1, vec!['a'])]);
        assert_eq!(next, Some(vec![1]));
        assert_eq!(l.answered().0, vec![(1, vec!['b'])]);
    }

    #[test]
    fn batches_are_bounded_and_keep_arrival_order() {
        let mut l = Loads::new(3);
        assert_eq!(l.request(0, 0), Some(vec![0]));
        for u in 1..=7 {
            assert_eq!(l.request(u, u), None);
        }
        assert_eq!(l.request(5, 50), None);
        assert_eq!(l.answered().1, Some(vec![1, 2, 3]));
        let (done, next) = l.answered();
        assert_eq!(done, vec![(1, vec![1]), (2, vec![2]), (3, vec![3])]);
        assert_eq!(next, Some(vec![4, 5, 6]));
        // A repeat of a user still waiting is merged into its place after the split.
        assert_eq!(l.request(7, 70), None);
        let (done, next) = l.answered();
        assert_eq!(done, vec![(4, vec![4]), (5, vec![5, 50]), (6, vec![6])]);
        assert_eq!(next, Some(vec![7]));
        assert_eq!(l.answered().0, vec![(7, vec![7, 70])]);
        assert_eq!(l.pending(), 0);
    }
}
