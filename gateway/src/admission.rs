//! Admission of connections that have not logged in yet, per shard and sans-IO: a TCP
//! connection waiting for its HTTP request head, and an Engine.IO session (WebSocket or
//! long-polling) waiting for its Socket.IO CONNECT. Such connections cost the server a file
//! descriptor and memory while proving nothing, so they are bounded:
//!
//! - **in total** (`CORECAST_MAX_PENDING_CONNECTIONS`, split evenly over the shards): a new one
//!   at the cap evicts the oldest, so a flood of sockets that never log in cannot lock out a
//!   real client, whose handshake takes milliseconds while the flood's wait for their deadline;
//! - **per client IP** (`CORECAST_MAX_PENDING_PER_IP`, per shard the same split): a new one over
//!   it is refused at once, so one address cannot take the whole total;
//! - by the **accept rate** (`CORECAST_ACCEPT_RATE` per second, split over the shards): a token
//!   bucket paces `accept`, and what waits beyond it waits in the kernel's backlog.
//!
//! Nothing here does I/O or reads a clock: callers pass `now` and carry out the evictions.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A place in the admission queue, held until the connection logs in or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

/// Who holds a ticket, so that an eviction reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A TCP connection's HTTP task, waiting for a request head (its task id).
    Http(u64),
    /// An Engine.IO session waiting for CONNECT (its connection number).
    Session(u64),
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its address already has the most connections waiting to log in.
    PerIp,
}

#[derive(Debug)]
struct Entry {
    ip: IpAddr,
    holder: Holder,
}

/// One shard's connections waiting to log in.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: u32,
    next: u64,
    /// Oldest first.
    pending: BTreeMap<Ticket, Entry>,
    per_ip: HashMap<IpAddr, u32>,
}

impl Admission {
    /// `max_total` and `max_per_ip` are this shard's shares (at least 1 each).
    pub fn new(max_total: usize, max_per_ip: u32) -> Admission {
        Admission {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            next: 0,
            pending: BTreeMap::new(),
            per_ip: HashMap::new(),
        }
    }

    /// Admits a connection from `ip`. At the total cap the oldest waiting connection is
    /// evicted: its holder is returned, for the caller to close.
    pub fn admit(
        &mut self,
        ip: IpAddr,
        holder: Holder,
    ) -> Result<(Ticket, Option<Holder>), Refused> {
        let count = self.per_ip.get(&ip).copied().unwrap_or(0);
        if count >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        let evicted = if self.pending.len() >= self.max_total {
            self.pending
                .keys()
                .next()
                .copied()
                .and_then(|oldest| self.release(oldest))
        } else {
            None
        };
        let ticket = Ticket(self.next);
        self.next += 1;
        *self.per_ip.entry(ip).or_insert(0) += 1;
        self.pending.insert(ticket, Entry { ip, holder });
        Ok((ticket, evicted))
    }

    /// The ticket passes to another holder (an HTTP connection's handshake became a session).
    pub fn transfer(&mut self, ticket: Ticket, holder: Holder) {
        if let Some(e) = self.pending.get_mut(&ticket) {
            e.holder = holder;
        }
    }

    /// The connection logged in or ended; returns who held the ticket (None if it was
    /// already released, say by an eviction).
    pub fn release(&mut self, ticket: Ticket) -> Option<Holder> {
        let e = self.pending.remove(&ticket)?;
        if let Some(n) = self.per_ip.get_mut(&e.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&e.ip);
            }
        }
        Some(e.holder)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// A token bucket for accepts: `rate` per second, bursts of up to one second's worth.
#[derive(Debug)]
pub struct AcceptRate {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl AcceptRate {
    /// `rate` accepts per second; 0 means no limit.
    pub fn new(rate: u32, now: Instant) -> AcceptRate {
        AcceptRate {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    /// Takes a token: `None` to accept now, or how long to wait for the next token.
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        if self.rate == 0.0 {
            return None;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn the_oldest_is_evicted_at_the_total_cap() {
        let mut a = Admission::new(3, 10);
        let (t1, e) = a.admit(ip(2), Holder::Http(1)).unwrap();
        assert_eq!(e, None);
        a.admit(ip(2), Holder::Http(2)).unwrap();
        a.admit(ip(3), Holder::Session(7)).unwrap();
        let (_, evicted) = a.admit(ip(1), Holder::Http(4)).unwrap();
        assert_eq!(evicted, Some(Holder::Http(1)), "the oldest goes");
        assert_eq!(a.len(), 3);
        assert_eq!(a.release(t1), None, "already released by the eviction");
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share() {
        let mut a = Admission::new(100, 2);
        let (t, _) = a.admit(ip(2), Holder::Http(1)).unwrap();
        a.admit(ip(2), Holder::Http(2)).unwrap();
        assert_eq!(a.admit(ip(2), Holder::Http(3)), Err(Refused::PerIp));
        assert!(
            a.admit(ip(1), Holder::Http(4)).is_ok(),
            "other addresses still get in"
        );
        assert_eq!(a.release(t), Some(Holder::Http(1)));
        assert!(
            a.admit(ip(2), Holder::Http(5)).is_ok(),
            "a freed place is free again"
        );
    }

    #[test]
    fn a_transferred_ticket_names_its_new_holder() {
        let mut a = Admission::new(1, 1);
        let (t, _) = a.admit(ip(2), Holder::Http(1)).unwrap();
        a.transfer(t, Holder::Session(9));
        let (_, evicted) = a.admit(ip(3), Holder::Http(2)).unwrap();
        assert_eq!(evicted, Some(Holder::Session(9)));
        assert!(!a.per_ip.contains_key(&ip(2)), "counts are given back");
    }

    #[test]
    fn accepts_are_paced_by_the_bucket() {
        let t0 = Instant::now();
        let mut r = AcceptRate::new(10, t0);
        for _ in 0..10 {
            assert_eq!(r.take(t0), None, "a second's burst");
        }
        let wait = r.take(t0).expect("the bucket is empty");
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert_eq!(r.take(t0 + Duration::from_millis(100)), None);
        let mut off = AcceptRate::new(0, t0);
        for _ in 0..1000 {
            assert_eq!(off.take(t0), None);
        }
    }
}
