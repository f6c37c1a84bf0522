//! A token bucket per key, sans-IO: callers pass `now` in milliseconds.
//!
//! One type serves both limits the gateway has: messages per user per minute (a burst of the
//! whole minute's budget) and client events per connection per second (a burst of a couple
//! of seconds' worth). Memory follows the keys that are active: [`RateLimiter::sweep`]
//! forgets buckets that have refilled, and [`RateLimiter::forget`] drops a key at once (a
//! closed connection).

use std::collections::HashMap;
use std::hash::Hash;

/// How fast tokens come back and how many a bucket holds: `amount` tokens every `period_ms`,
/// at most `burst` at once. `amount == 0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub amount: u32,
    pub period_ms: u32,
    pub burst: u32,
}

impl Rate {
    /// `n` per minute, a burst of `n` (the whole minute's budget at once).
    pub fn per_minute(n: u32) -> Rate {
        Rate {
            amount: n,
            period_ms: 60_000,
            burst: n,
        }
    }

    /// `n` per second, bursts of `burst` (at least one token, so a limit on is never a ban).
    pub fn per_second(n: u32, burst: u32) -> Rate {
        Rate {
            amount: n,
            period_ms: 1_000,
            burst: burst.max(1),
        }
    }

    /// No limit.
    pub fn off() -> Rate {
        Rate {
            amount: 0,
            period_ms: 1_000,
            burst: 0,
        }
    }

    pub fn is_off(&self) -> bool {
        self.amount == 0
    }

    /// A full bucket in units (see [`Bucket`]).
    fn capacity(&self) -> u64 {
        u64::from(self.burst) * self.token()
    }

    /// One token in units.
    fn token(&self) -> u64 {
        u64::from(self.period_ms.max(1))
    }

    /// Units earned in `elapsed_ms`, capped at a full bucket (which also keeps the product
    /// from overflowing after a long pause).
    fn earned(&self, elapsed_ms: u64) -> u64 {
        elapsed_ms
            .saturating_mul(u64::from(self.amount))
            .min(self.capacity())
    }
}

/// One bucket per key; see [`Rate`].
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    buckets: HashMap<K, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens in units of `1 / period_ms` of a token: a bucket earns exactly `amount` units
    /// a millisecond, so refill is integer arithmetic that loses nothing, however often it
    /// is asked (tokens in thousandths lost the fraction of each call, and a key hammered
    /// every millisecond at 30 per minute never refilled).
    units: u64,
    last_ms: i64,
}

impl<K: Hash + Eq + Copy> RateLimiter<K> {
    pub fn new(rate: Rate) -> Self {
        RateLimiter {
            rate,
            buckets: HashMap::new(),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn level(&self, b: &Bucket, now_ms: i64) -> u64 {
        let elapsed = (now_ms - b.last_ms).max(0) as u64;
        b.units
            .saturating_add(self.rate.earned(elapsed))
            .min(self.rate.capacity())
    }

    /// Takes one token for `key` at `now_ms`; false when the key is over its limit.
    pub fn try_acquire(&mut self, key: K, now_ms: i64) -> bool {
        if self.rate.is_off() {
            return true;
        }
        let rate = self.rate;
        let b = self.buckets.entry(key).or_insert(Bucket {
            units: rate.capacity(),
            last_ms: now_ms,
        });
        let elapsed = (now_ms - b.last_ms).max(0) as u64;
        let have = b
            .units
            .saturating_add(rate.earned(elapsed))
            .min(rate.capacity());
        // A clock that went back keeps the later reading: time is never counted twice.
        b.last_ms = b.last_ms.max(now_ms);
        let ok = have >= rate.token();
        b.units = if ok { have - rate.token() } else { have };
        ok
    }

    /// Milliseconds until `key` has a token again (0 if it has one now).
    pub fn retry_after_ms(&self, key: K, now_ms: i64) -> u64 {
        if self.rate.is_off() {
            return 0;
        }
        let Some(b) = self.buckets.get(&key) else {
            return 0;
        };
        let have = self.level(b, now_ms);
        let token = self.rate.token();
        if have >= token {
            return 0;
        }
        (token - have).div_ceil(u64::from(self.rate.amount))
    }

    /// Forgets buckets that are full again at `now_ms`.
    pub fn sweep(&mut self, now_ms: i64) {
        let cap = self.rate.capacity();
        let rate = self.rate;
        self.buckets.retain(|_, b| {
            let elapsed = (now_ms - b.last_ms).max(0) as u64;
            b.units.saturating_add(rate.earned(elapsed)) < cap
        });
    }

    /// Forgets `key` (its owner is gone).
    pub fn forget(&mut self, key: &K) {
        self.buckets.remove(key);
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
        let mut l = RateLimiter::new(Rate::per_minute(30));
        let t = 1_000_000;
        for _ in 0..30 {
            assert!(l.try_acquire(1u64, t));
        }
        assert!(!l.try_acquire(1, t));
        assert!(l.try_acquire(2, t), "other keys have their own budget");
        let wait = l.retry_after_ms(1, t);
        assert!((1900..=2100).contains(&wait), "{wait}");
        assert_eq!(wait, 2000, "30 a minute: one every 2 s");
        assert!(!l.try_acquire(1, t + wait as i64 - 5));
        assert!(l.try_acquire(1, t + wait as i64));
        // Asked every millisecond, the bucket still refills at its rate.
        let mut ok = 0;
        for ms in 1..=10_000 {
            if l.try_acquire(1, t + wait as i64 + ms) {
                ok += 1;
            }
        }
        assert_eq!(ok, 5);
        l.sweep(t + 120_000);
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn zero_means_unlimited() {
        let mut l = RateLimiter::new(Rate::per_minute(0));
        assert!((0..10_000).all(|_| l.try_acquire(1u64, 0)));
        let mut l = RateLimiter::new(Rate::off());
        assert!((0..10_000).all(|_| l.try_acquire(1u64, 0)));
        assert_eq!(
            l.tracked_keys(),
            0,
            "no bucket is kept when the limit is off"
        );
        assert_eq!(l.retry_after_ms(1, 0), 0);
    }

    #[test]
    fn per_second_with_a_burst_holds_the_sustained_rate() {
        let mut l = RateLimiter::new(Rate::per_second(20, 40));
        let t0 = 5_000;
        // The burst first.
        assert_eq!((0..100).filter(|_| l.try_acquire(7u32, t0)).count(), 40);
        assert_eq!(l.retry_after_ms(7, t0), 50, "one token every 50 ms");
        // Then, hammering every millisecond for ten seconds, 20 a second get through.
        let mut ok = 0;
        for ms in 1..=10_000 {
            for _ in 0..5 {
                if l.try_acquire(7, t0 + ms) {
                    ok += 1;
                }
            }
        }
        assert!((199..=201).contains(&ok), "{ok}");
    }

    #[test]
    fn the_clock_going_back_neither_refills_nor_panics() {
        let mut l = RateLimiter::new(Rate::per_second(1, 1));
        assert!(l.try_acquire(1u8, 10_000));
        assert!(!l.try_acquire(1, 9_000));
        assert!(!l.try_acquire(1, 10_500));
        assert!(l.try_acquire(1, 11_000));
    }

    #[test]
    fn a_long_pause_refills_to_the_burst_only() {
        let mut l = RateLimiter::new(Rate::per_second(u32::MAX, 3));
        assert!(l.try_acquire(1u8, 0));
        let later = i64::MAX / 2;
        assert_eq!((0..10).filter(|_| l.try_acquire(1, later)).count(), 3);
    }

    #[test]
    fn forget_and_sweep_bound_memory() {
        let mut l = RateLimiter::new(Rate::per_second(10, 10));
        for k in 0..1000u32 {
            l.try_acquire(k, 0);
        }
        assert_eq!(l.tracked_keys(), 1000);
        l.forget(&3);
        assert_eq!(l.tracked_keys(), 999);
        l.sweep(99);
        assert_eq!(l.tracked_keys(), 999, "not yet refilled");
        l.sweep(100);
        assert_eq!(l.tracked_keys(), 0);
    }
}
