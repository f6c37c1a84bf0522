//! Presence of the users one shard owns, debounced: how many connections each user has across
//! all shards, and what co-members (and the store) are told of it.
//!
//! A user's first connection is announced online at once. When their last connection closes,
//! the offline announcement waits `debounce_ms`; if they come back within it, nothing is
//! announced at all. So a client that reconnects in a loop costs its co-members at most one
//! `userOnline` pair per window instead of one per reconnect (issue 15: one client flapping in
//! a room of 200 made about 33,000 deliveries a second), and the final state is always the
//! right one: offline is announced once they have stayed away for a window, online as soon as
//! they return after that.
//!
//! Why at most one pair per window: an offline announcement needs the user gone for the whole
//! window before it, so it comes at least `debounce_ms` after the online one before it. Only
//! offline-then-online can be closer together, and that is one pair.
//!
//! Besides the announcements, [`Change::reachable`] says when the user's real connectivity
//! flips (first connection, last connection gone), undebounced: the gateway's "who is online"
//! replica follows it, so a member who left a second ago gets their email notice for a message
//! sent now even though co-members have not been told yet.
//!
//! Sans-IO: callers pass `now` in milliseconds of a monotonic clock and carry out what comes
//! back. Memory follows the users who are online or whose offline announcement is due.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// What to tell co-members and the store: `user` is now `online` (or not), as of `at_ms`
/// (for offline, when the last connection closed). `groups` are the groups the announcing
/// connection was in: of the first connection for online, of the last one for offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce<K, G> {
    pub user: K,
    pub online: bool,
    pub at_ms: u64,
    pub groups: G,
}

/// What one connection opening or closing changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<K, G> {
    /// `Some(online)` when the user's real connectivity flipped (first connection opened, or
    /// last one closed).
    pub reachable: Option<bool>,
    /// An announcement to make now.
    pub announce: Option<Announce<K, G>>,
}

impl<K, G> Change<K, G> {
    fn none() -> Self {
        Change {
            reachable: None,
            announce: None,
        }
    }
}

struct Entry<G> {
    conns: u32,
    /// Whether co-members were last told "online".
    announced: bool,
    /// The offline announcement waiting for its window to end.
    leaving: Option<Leaving<G>>,
}

struct Leaving<G> {
    due_ms: u64,
    left_ms: u64,
    groups: G,
}

/// The debounced presence of the users one shard owns.
pub struct Presence<K, G> {
    debounce_ms: u64,
    users: HashMap<K, Entry<G>>,
    /// Offline announcements by due time. The window is the same for everyone, so pushing at
    /// the back keeps it sorted. An entry whose user came back (or left again, later) is
    /// stale and skipped: its due time no longer matches the user's.
    due: VecDeque<(u64, K)>,
}

impl<K: Hash + Eq + Copy, G: Clone> Presence<K, G> {
    pub fn new(debounce_ms: u64) -> Self {
        Presence {
            debounce_ms,
            users: HashMap::new(),
            due: VecDeque::new(),
        }
    }

    /// One of `user`'s connections is up (its rooms are `groups`).
    pub fn up(&mut self, user: K, groups: G, now_ms: u64) -> Change<K, G> {
        let e = self.users.entry(user).or_insert(Entry {
            conns: 0,
            announced: false,
            leaving: None,
        });
        e.conns += 1;
        if e.conns > 1 {
            return Change::none();
        }
        let mut change = Change {
            reachable: Some(true),
            announce: None,
        };
        if e.leaving.take().is_none() && !e.announced {
            e.announced = true;
            change.announce = Some(Announce {
                user,
                online: true,
                at_ms: now_ms,
                groups,
            });
        }
        // Else they came back within the window: co-members still think them online.
        change
    }

    /// One of `user`'s connections closed (its rooms were `groups`).
    pub fn down(&mut self, user: K, groups: G, now_ms: u64) -> Change<K, G> {
        let Some(e) = self.users.get_mut(&user) else {
            return Change::none();
        };
        if e.conns == 0 {
            return Change::none(); // already leaving: a down without an up
        }
        e.conns -= 1;
        if e.conns > 0 {
            return Change::none();
        }
        let mut change = Change {
            reachable: Some(false),
            announce: None,
        };
        if !e.announced {
            self.users.remove(&user);
        } else if self.debounce_ms == 0 {
            self.users.remove(&user);
            change.announce = Some(Announce {
                user,
                online: false,
                at_ms: now_ms,
                groups,
            });
        } else {
            let due_ms = now_ms + self.debounce_ms;
            e.leaving = Some(Leaving {
                due_ms,
                left_ms: now_ms,
                groups,
            });
            self.due.push_back((due_ms, user));
        }
        change
    }

    /// The offline announcements whose window has ended by `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Announce<K, G>> {
        let mut out = Vec::new();
        while let Some(&(due_ms, user)) = self.due.front() {
            if due_ms > now_ms {
                break;
            }
            self.due.pop_front();
            self.take_leaving(user, Some(due_ms), &mut out);
        }
        out
    }

    /// Every offline announcement still waiting, now (the shard is stopping: nobody will be
    /// around to make them later).
    pub fn flush(&mut self) -> Vec<Announce<K, G>> {
        let mut out = Vec::new();
        while let Some((_, user)) = self.due.pop_front() {
            self.take_leaving(user, None, &mut out);
        }
        out
    }

    /// Announces `user` offline if they are still leaving (and, with `due_ms`, leaving since
    /// that window: a stale queue entry does nothing).
    fn take_leaving(&mut self, user: K, due_ms: Option<u64>, out: &mut Vec<Announce<K, G>>) {
        let Some(e) = self.users.get(&user) else {
            return;
        };
        let Some(l) = &e.leaving else { return };
        if due_ms.is_some_and(|d| d != l.due_ms) {
            return;
        }
        let Some(e) = self.users.remove(&user) else {
            return;
        };
        let l = e.leaving.expect("invariant: checked above");
        out.push(Announce {
            user,
            online: false,
            at_ms: l.left_ms,
            groups: l.groups,
        });
    }

    /// Connections of `user` across all shards.
    pub fn conns(&self, user: &K) -> u32 {
        self.users.get(user).map_or(0, |e| e.conns)
    }

    /// Whether `user`'s last connection closed and their offline announcement is still due.
    pub fn leaving(&self, user: &K) -> bool {
        self.users.get(user).is_some_and(|e| e.leaving.is_some())
    }

    /// Users tracked: online, or with an offline announcement due.
    pub fn tracked(&self) -> usize {
        self.users.len()
    }

    /// The users last announced online (and not offline since): the ones this shard has
    /// said are here (a cluster's record of them is restored from this after it was lost).
    pub fn announced(&self) -> impl Iterator<Item = K> + '_ {
        self.users
            .iter()
            .filter(|(_, e)| e.announced)
            .map(|(&u, _)| u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_lists_who_was_last_announced_online() {
        let mut p: Presence<u32, ()> = Presence::new(100);
        p.up(1, (), 0);
        p.up(2, (), 0);
        p.down(2, (), 10);
        let sorted = |p: &Presence<u32, ()>| {
            let mut got: Vec<u32> = p.announced().collect();
            got.sort_unstable();
            got
        };
        assert_eq!(
            sorted(&p),
            vec![1, 2],
            "2's offline announcement is not due yet"
        );
        assert!(p.leaving(&2) && !p.leaving(&1));
        assert_eq!(p.tick(200).len(), 1);
        assert_eq!(sorted(&p), vec![1], "2 was announced offline");
        assert!(!p.leaving(&2));
    }

    type P = Presence<u64, &'static str>;

    fn online(a: &Option<Announce<u64, &'static str>>) -> Option<bool> {
        a.as_ref().map(|a| a.online)
    }

    #[test]
    fn first_connection_is_announced_at_once_and_others_are_not() {
        let mut p = P::new(1500);
        let c = p.up(1, "g", 0);
        assert_eq!(c.reachable, Some(true));
        assert_eq!(
            c.announce,
            Some(Announce {
                user: 1,
                online: true,
                at_ms: 0,
                groups: "g"
            })
        );
        let c = p.up(1, "h", 10);
        assert_eq!((c.reachable, c.announce), (None, None), "a second tab");
        assert_eq!(p.down(1, "h", 20), Change::none(), "one tab left");
        assert_eq!(p.conns(&1), 1);
    }

    #[test]
    fn devices_on_several_shards_count_as_one_user() {
        // A phone whose connection landed on shard 0 and two browser tabs on shard 1: every
        // shard reports to the user's owner, which counts them all.
        let mut p = P::new(0);
        let mut told = Vec::new();
        for (shard_groups, at) in [("phone@0", 0), ("tab@1", 1), ("tab@1", 2)] {
            told.extend(online(&p.up(1, shard_groups, at).announce));
        }
        assert_eq!(p.conns(&1), 3);
        for (shard_groups, at) in [("tab@1", 3), ("phone@0", 4)] {
            told.extend(online(&p.down(1, shard_groups, at).announce));
        }
        assert_eq!(told, vec![true], "online while one device is");
        let last = p
            .down(1, "tab@1", 5)
            .announce
            .expect("the last device left");
        assert_eq!((last.online, last.groups), (false, "tab@1"));
    }

    #[test]
    fn leaving_is_announced_after_the_window_with_when_they_left() {
        let mut p = P::new(1500);
        p.up(1, "g", 0);
        let c = p.down(1, "last", 100);
        assert_eq!(c.reachable, Some(false), "the replica learns at once");
        assert_eq!(c.announce, None, "co-members wait for the window");
        assert!(p.tick(1599).is_empty());
        assert_eq!(
            p.tick(1600),
            vec![Announce {
                user: 1,
                online: false,
                at_ms: 100,
                groups: "last"
            }]
        );
        assert!(p.tick(10_000).is_empty(), "announced once");
        assert_eq!(p.tracked(), 0, "nothing kept for an offline user");
    }

    #[test]
    fn a_flapping_user_makes_one_pair_per_window_and_ends_right() {
        let mut p = P::new(1500);
        let mut told = Vec::new();
        let mut now = 0;
        // 50 reconnects 100 ms apart, each connection up for 50 ms, ticking every 10 ms.
        for _ in 0..50 {
            told.extend(online(&p.up(1, "g", now).announce));
            told.extend(p.tick(now).iter().map(|a| a.online));
            now += 50;
            told.extend(online(&p.down(1, "g", now).announce));
            told.extend(p.tick(now).iter().map(|a| a.online));
            now += 50;
        }
        assert_eq!(told, vec![true], "one online, nothing while flapping");
        // They stay away: offline, once, one window after the last close.
        let last_close = now - 50;
        while now < last_close + 3000 {
            for a in p.tick(now) {
                assert_eq!(a.at_ms, last_close);
                assert!(now >= last_close + 1500);
                told.push(a.online);
            }
            now += 10;
        }
        assert_eq!(told, vec![true, false]);
    }

    #[test]
    fn a_flapping_user_who_comes_back_ends_online() {
        let mut p = P::new(1500);
        let mut told = Vec::new();
        for i in 0..20u64 {
            told.extend(online(&p.up(1, "g", i * 100).announce));
            told.extend(online(&p.down(1, "g", i * 100 + 50).announce));
            told.extend(p.tick(i * 100 + 60).iter().map(|a| a.online));
        }
        told.extend(online(&p.up(1, "g", 2100).announce));
        told.extend(p.tick(100_000).iter().map(|a| a.online));
        assert_eq!(told, vec![true], "still online, as they are");
        assert_eq!(p.conns(&1), 1);
    }

    #[test]
    fn slower_flapping_is_at_most_one_pair_per_window() {
        // Away for just over a window each time: every cycle is announced, but no window of
        // 1500 ms ever holds more than one online and one offline.
        let mut p = P::new(1500);
        let mut at = Vec::new(); // (time told, online)
        let mut now = 0u64;
        for _ in 0..10 {
            if let Some(a) = p.up(1, "g", now).announce {
                at.push((now, a.online));
            }
            now += 10;
            p.down(1, "g", now);
            for _ in 0..170 {
                now += 10;
                at.extend(p.tick(now).iter().map(|a| (now, a.online)));
            }
        }
        assert!(at.len() >= 18, "{at:?}");
        for (i, &(t, _)) in at.iter().enumerate() {
            let within: Vec<bool> = at[i..]
                .iter()
                .take_while(|&&(u, _)| u < t + 1500)
                .map(|&(_, o)| o)
                .collect();
            assert!(
                within.iter().filter(|&&o| o).count() <= 1
                    && within.iter().filter(|&&o| !o).count() <= 1,
                "window at {t}: {within:?}"
            );
        }
        for w in at.windows(2) {
            assert_ne!(w[0].1, w[1].1, "announcements alternate: {at:?}");
        }
    }

    #[test]
    fn leaving_again_after_coming_back_restarts_the_window() {
        let mut p = P::new(1000);
        p.up(1, "g", 0);
        p.down(1, "g", 100); // due at 1100
        p.up(1, "g", 900);
        p.down(1, "g2", 1000); // due at 2000
        assert!(p.tick(1100).is_empty(), "the first window's entry is stale");
        let a = p.tick(2000);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].online, a[0].at_ms, a[0].groups), (false, 1000, "g2"));
    }

    #[test]
    fn zero_debounce_announces_at_once() {
        let mut p = P::new(0);
        assert_eq!(online(&p.up(1, "g", 0).announce), Some(true));
        assert_eq!(online(&p.down(1, "g", 5).announce), Some(false));
        assert_eq!(online(&p.up(1, "g", 6).announce), Some(true));
        assert_eq!(p.tracked(), 1);
    }

    #[test]
    fn flush_announces_everyone_leaving_now() {
        let mut p = P::new(60_000);
        for u in 0..5 {
            p.up(u, "g", 0);
            p.down(u, "g", 10);
        }
        p.up(9, "g", 0);
        let mut flushed: Vec<u64> = p.flush().iter().map(|a| a.user).collect();
        flushed.sort();
        assert_eq!(flushed, vec![0, 1, 2, 3, 4]);
        assert_eq!(p.tracked(), 1, "the user still online stays");
    }

    #[test]
    fn a_down_without_an_up_changes_nothing() {
        let mut p = P::new(1000);
        assert_eq!(p.down(1, "g", 0), Change::none());
        p.up(2, "g", 0);
        p.down(2, "g", 1);
        assert_eq!(p.down(2, "g", 2), Change::none(), "already leaving");
        assert_eq!(p.tick(1001).len(), 1);
    }
}
