//! A token bucket per key, sans-IO: callers pass `now` in milliseconds.

use std::collections::HashMap;
use std::hash::Hash;

/// Allows `per_minute` events per key per minute, with bursts up to `per_minute`.
/// `per_minute == 0` allows everything. Buckets that have refilled completely are forgotten by
/// [`RateLimiter::sweep`], so memory follows the active keys only.
#[derive(Debug)]
pub struct RateLimiter<K> {
    per_minute: u32,
    buckets: HashMap<K, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens, in thousandths, so refill needs no floating point.
    milli_tokens: u64,
    last_ms: i64,
}

impl<K: Hash + Eq + Copy> RateLimiter<K> {
    pub fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute,
            buckets: HashMap::new(),
        }
    }

    fn capacity(&self) -> u64 {
        self.per_minute as u64 * 1000
    }

    /// Takes one token for `key` at `now_ms`; false when the key is over its limit.
    pub fn try_acquire(&mut self, key: K, now_ms: i64) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let cap = self.capacity();
        let per_minute = self.per_minute as u64;
        let b = self.buckets.entry(key).or_insert(Bucket {
            milli_tokens: cap,
            last_ms: now_ms,
        });
        let elapsed = (now_ms - b.last_ms).max(0) as u64;
        // per_minute tokens per 60,000 ms = per_minute milli-tokens per 60 ms.
        b.milli_tokens = (b.milli_tokens + elapsed * per_minute * 1000 / 60_000).min(cap);
        b.last_ms = now_ms;
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Milliseconds until `key` has a token again (0 if it has one now).
    pub fn retry_after_ms(&self, key: K, now_ms: i64) -> u64 {
        match self.buckets.get(&key) {
            None => 0,
            Some(b) if self.per_minute == 0 => {
                let _ = b;
                0
            }
            Some(b) => {
                let elapsed = (now_ms - b.last_ms).max(0) as u64;
                let have = b.milli_tokens + elapsed * self.per_minute as u64 * 1000 / 60_000;
                if have >= 1000 {
                    0
                } else {
                    (1000 - have) * 60_000 / (self.per_minute as u64 * 1000) + 1
                }
            }
        }
    }

    /// Forgets buckets that are full again at `now_ms`.
    pub fn sweep(&mut self, now_ms: i64) {
        let cap = self.capacity();
        let per_minute = self.per_minute as u64;
        self.buckets.retain(|_, b| {
            let elapsed = (now_ms - b.last_ms).max(0) as u64;
            b.milli_tokens + elapsed * per_minute * 1000 / 60_000 < cap
        });
    }

    pub fn tracked_keys(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_budget_then_refuses_then_refills() {
        let mut l = RateLimiter::new(30);
        let t = 1_000_000;
        for _ in 0..30 {
            assert!(l.try_acquire(1u64, t));
        }
        assert!(!l.try_acquire(1, t));
        assert!(l.try_acquire(2, t), "other keys have their own budget");
        let wait = l.retry_after_ms(1, t);
        assert!((1900..=2100).contains(&wait), "{wait}");
        assert!(l.try_acquire(1, t + wait as i64));
        l.sweep(t + 120_000);
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn zero_means_unlimited() {
        let mut l = RateLimiter::new(0);
        assert!((0..10_000).all(|_| l.try_acquire(1u64, 0)));
    }
}
