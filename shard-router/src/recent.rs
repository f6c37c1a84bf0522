//! A bounded set of keys that expire: "seen recently", sans-IO (callers pass `now` in
//! milliseconds of a monotonic clock).
//!
//! The gateway keeps one per shard of the group ids the store said do not exist, so a client
//! asking again and again for a group that is not there costs a hash lookup, not a store read
//! (issue 15: one socket ran 13k-32k such requests a second). Bounded both ways: at most
//! `capacity` keys (the oldest goes first) and each for `ttl_ms` at most, so a group created
//! behind the gateway's back (another node, the store edited by hand) is seen after the TTL.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub struct Recent<K> {
    capacity: usize,
    ttl_ms: u64,
    /// Each key's expiry.
    expires: HashMap<K, u64>,
    /// Keys in insertion order with the expiry they were inserted with; an entry whose key
    /// was removed (or inserted again later) no longer matches `expires` and is skipped.
    order: VecDeque<(u64, K)>,
}

impl<K: Hash + Eq + Clone> Recent<K> {
    pub fn new(capacity: usize, ttl_ms: u64) -> Self {
        Recent {
            capacity: capacity.max(1),
            ttl_ms,
            expires: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Remembers `key` until `now_ms + ttl`, forgetting the oldest key if full.
    pub fn insert(&mut self, key: K, now_ms: u64) {
        self.sweep(now_ms);
        let expiry = now_ms + self.ttl_ms;
        if self.expires.insert(key.clone(), expiry).is_none() {
            while self.expires.len() > self.capacity {
                self.pop_oldest();
            }
        }
        self.order.push_back((expiry, key));
        // Stale entries (removed or re-inserted keys) are bounded too.
        while self.order.len() > 2 * self.capacity {
            self.pop_oldest();
        }
    }

    /// Whether `key` was inserted less than the TTL ago (and not removed since).
    pub fn contains(&self, key: &K, now_ms: u64) -> bool {
        self.expires.get(key).is_some_and(|&e| e > now_ms)
    }

    pub fn remove(&mut self, key: &K) {
        self.expires.remove(key);
    }

    /// Forgets expired keys.
    pub fn sweep(&mut self, now_ms: u64) {
        while self.order.front().is_some_and(|(e, _)| *e <= now_ms) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((expiry, key)) = self.order.pop_front() {
            if self.expires.get(&key) == Some(&expiry) {
                self.expires.remove(&key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.expires.len()
    }

    pub fn is_empty(&self) -> bool {
        self.expires.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_expire_after_the_ttl() {
        let mut r = Recent::new(10, 1000);
        r.insert("a", 0);
        assert!(r.contains(&"a", 999));
        assert!(!r.contains(&"a", 1000));
        r.sweep(1000);
        assert!(r.is_empty());
    }

    #[test]
    fn the_oldest_goes_first_when_full() {
        let mut r = Recent::new(3, 60_000);
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            r.insert(k, i as u64);
        }
        assert_eq!(r.len(), 3);
        assert!(!r.contains(&"a", 10));
        assert!(["b", "c", "d"].iter().all(|k| r.contains(k, 10)));
    }

    #[test]
    fn removed_keys_are_gone_and_stale_entries_stay_bounded() {
        let mut r = Recent::new(4, 60_000);
        for i in 0..10_000u64 {
            r.insert(i % 3, i);
            r.remove(&(i % 3));
            assert!(!r.contains(&(i % 3), i));
        }
        assert!(r.is_empty());
        assert!(r.order.len() <= 8, "{}", r.order.len());
        // A key inserted again lives from its last insertion.
        r.insert(7, 0);
        r.insert(7, 50_000);
        assert!(r.contains(&7, 100_000));
        r.sweep(100_000);
        assert!(r.contains(&7, 100_000), "the first entry's expiry is stale");
    }
}
