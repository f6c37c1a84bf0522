//! [`ClusterPresence`]: which users have a connection on some node, kept in Redis.
//!
//! Each node tells Redis when a user's first connection on it opens ([`ClusterPresence::up`])
//! and when the last one closes ([`ClusterPresence::down`]), at once. Redis keeps, for the
//! user, the set of nodes holding a connection (`{prefix}p:{user}`, a hash of node ids), for
//! each node the users it holds (`{prefix}pn:{node}`), the users online anywhere
//! (`{prefix}online`), and whether co-members were last told the user is online
//! (`{prefix}pa:{user}`, present while they were). Each change is one script, atomic in
//! Redis, that answers whether it was the user's first node or last: exactly one node sees a
//! user come online cluster-wide and exactly one sees them go, however their tabs and phones
//! open and close on different nodes at once.
//!
//! The scripts publish what changed on [`ClusterPresence::channel`] themselves, so every
//! node hears the changes in the order Redis made them ([`parse_news`]):
//! - reachability, undebounced: the user is online somewhere now, or nowhere. Every node's
//!   replica of the online set follows it (who gets an email notice, `getOnline`).
//! - announcements (`userOnline` to co-members): online with the first connection anywhere
//!   unless co-members still think the user online; offline only once the user has stayed
//!   away for the presence debounce window ([`ClusterPresence::settle`], called by the node
//!   whose last connection it was when its window ends). A user who leaves one node and
//!   opens on another within the window is never announced at all.
//!
//! A node that dies says nothing. Once the registry reports it gone, any survivor reaps it
//! ([`ClusterPresence::reap`]): its entries are removed, and the users who had no other node
//! come back as offline (then settled). A reap is a script too, so two survivors reaping the
//! same node at once report each user once between them.
//!
//! Redis restarted empty: each node puts its own users back ([`ClusterPresence::restore`]),
//! and the replicas are reloaded from [`ClusterPresence::online`].

use crate::bus::{BusError, BusHandle, Done};
use bytes::Bytes;
use redis::Value;

/// Users per reap or restore script: a script blocks Redis while it runs, so a node of
/// 100,000 users is reaped in 100 short steps, not one long one.
pub const STEP: usize = 1000;

/// A node's view of cluster-wide presence (see the module's doc).
#[derive(Clone)]
pub struct ClusterPresence {
    bus: BusHandle,
    prefix: String,
    node: String,
}

/// Marks `user` online on `node` (ARGV[4]: the groups to tell, for an announcement).
/// 0: online elsewhere already; 1: online anywhere now, co-members still think so (nothing
/// announced); 2: online anywhere now, announced. Publishes `>` or `+` (see [`parse_news`]).
const UP: &str = r"
local p, node, user = ARGV[1], ARGV[2], ARGV[3]
local h = p .. 'p:' .. user
local new = redis.call('HSET', h, node, 1)
redis.call('SADD', p .. 'pn:' .. node, user)
if new == 0 or redis.call('HLEN', h) ~= 1 then
  return 0
end
redis.call('SADD', p .. 'online', user)
if redis.call('SET', p .. 'pa:' .. user, 1, 'NX') then
  redis.call('PUBLISH', p .. 'presence', '+' .. user .. '\n' .. ARGV[4])
  return 2
end
redis.call('PUBLISH', p .. 'presence', '>' .. user .. '\n')
return 1
";

/// Marks `user` gone from `node`; 1 if the user is now online nowhere and was before (and
/// publishes `<`).
const DOWN: &str = r"
local p, node, user = ARGV[1], ARGV[2], ARGV[3]
local h = p .. 'p:' .. user
redis.call('SREM', p .. 'pn:' .. node, user)
if redis.call('HDEL', h, node) == 1 and redis.call('HLEN', h) == 0 then
  redis.call('SREM', p .. 'online', user)
  redis.call('PUBLISH', p .. 'presence', '<' .. user .. '\n')
  return 1
end
return 0
";

/// ARGV[2..] are pairs of a user and the groups to tell: each one online nowhere and last
/// announced online is announced offline (`-` published). Answers those users.
const SETTLE: &str = r"
local p = ARGV[1]
local out = {}
for i = 2, #ARGV - 1, 2 do
  local u = ARGV[i]
  if redis.call('EXISTS', p .. 'p:' .. u) == 0 and redis.call('DEL', p .. 'pa:' .. u) == 1 then
    redis.call('PUBLISH', p .. 'presence', '-' .. u .. '\n' .. ARGV[i + 1])
    table.insert(out, u)
  end
end
return out
";

/// Takes up to `step` users off node `dead`: the first item is how many it still holds, the
/// rest are the users who are now online nowhere (each published `<`).
const REAP: &str = r"
local p, dead, step = ARGV[1], ARGV[2], tonumber(ARGV[3])
local pn = p .. 'pn:' .. dead
local out = {0}
for _, u in ipairs(redis.call('SPOP', pn, step)) do
  local h = p .. 'p:' .. u
  redis.call('HDEL', h, dead)
  if redis.call('HLEN', h) == 0 and redis.call('SREM', p .. 'online', u) == 1 then
    redis.call('PUBLISH', p .. 'presence', '<' .. u .. '\n')
    table.insert(out, u)
  end
end
out[1] = redis.call('SCARD', pn)
return out
";

/// Puts users back (after Redis lost them), all announced online: with ARGV[3] '1' as
/// being on `node`, with '0' only as announced (their offline announcement is due on
/// `node`). ARGV[4..] are the users.
const RESTORE: &str = r"
local p, node, here = ARGV[1], ARGV[2], ARGV[3] == '1'
for i = 4, #ARGV do
  local u = ARGV[i]
  if here then
    redis.call('HSET', p .. 'p:' .. u, node, 1)
    redis.call('SADD', p .. 'pn:' .. node, u)
    redis.call('SADD', p .. 'online', u)
  end
  redis.call('SET', p .. 'pa:' .. u, 1)
end
return #ARGV - 3
";

/// What Redis answered to a node's first connection of a user ([`ClusterPresence::up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    /// Another node holds a connection of the user: nothing changed cluster-wide.
    Elsewhere,
    /// Online anywhere again, within the window after their last connection anywhere
    /// closed: co-members were never told otherwise, so nothing is announced.
    Back,
    /// Online anywhere, announced (`+` published): store it as their presence.
    Announced,
}

impl ClusterPresence {
    /// Presence for `node`, keys under `prefix` (the registry's).
    pub fn new(
        bus: BusHandle,
        prefix: impl Into<String>,
        node: impl Into<String>,
    ) -> ClusterPresence {
        ClusterPresence {
            bus,
            prefix: prefix.into(),
            node: node.into(),
        }
    }

    /// The channel where nodes publish presence changes for each other's replicas.
    pub fn channel(&self) -> String {
        format!("{}presence", self.prefix)
    }

    fn script(&self, script: &str, node: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(0).arg(&self.prefix).arg(node);
        cmd
    }

    /// This node holds its first connection of `user`, whose rooms here are `groups` (the
    /// announcement's extra, told to co-members if it is one).
    pub fn up(&self, user: u64, groups: &[u8], done: Done<Up>) {
        let mut cmd = self.script(UP, &self.node);
        cmd.arg(user).arg(groups);
        self.bus.command(
            cmd,
            Box::new(move |r| {
                done(r.and_then(|v| match v {
                    Value::Int(0) => Ok(Up::Elsewhere),
                    Value::Int(1) => Ok(Up::Back),
                    Value::Int(2) => Ok(Up::Announced),
                    _ => Err(unexpected("not 0, 1 or 2")),
                }))
            }),
        );
    }

    /// This node's last connection of `user` closed: `true` when no node holds one now
    /// (every replica hears it at once; the announcement waits for [`Self::settle`]).
    pub fn down(&self, user: u64, done: Done<bool>) {
        let mut cmd = self.script(DOWN, &self.node);
        cmd.arg(user);
        self.bus
            .command(cmd, Box::new(move |r| done(r.map(is_one))));
    }

    /// The presence debounce window of these users' last connection ended (or they were
    /// reaped): each one still online nowhere, and last announced online, is announced
    /// offline with its groups. `done` gets those users (store their presence).
    pub fn settle(&self, users: &[(u64, Bytes)], done: Done<Vec<u64>>) {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SETTLE).arg(0).arg(&self.prefix);
        for (user, groups) in users {
            cmd.arg(*user).arg(groups.as_ref());
        }
        self.bus
            .command(cmd, Box::new(move |r| done(r.and_then(integers))));
    }

    /// Node `dead` is gone: takes up to `STEP` of its users off it. `done` gets how many it
    /// still holds (call again while that is not 0) and the users who are now online nowhere.
    pub fn reap(&self, dead: &str, done: Done<(u64, Vec<u64>)>) {
        let mut cmd = self.script(REAP, dead);
        cmd.arg(STEP);
        self.bus.command(
            cmd,
            Box::new(move |r| {
                done(r.and_then(|v| {
                    let mut n = integers(v)?.into_iter();
                    let left = n.next().ok_or_else(|| unexpected("an empty reap"))?;
                    Ok((left, n.collect()))
                }))
            }),
        );
    }

    /// Redis lost its data (a restart): puts `users`, this node's, back (at most `STEP` per
    /// call), as announced online; with `here`, as held by this node, else only announced
    /// (their last connection here closed, the offline announcement is still due). Nothing
    /// is announced: they were online before.
    pub fn restore(&self, users: &[u64], here: bool, done: Done<()>) {
        let mut cmd = self.script(RESTORE, &self.node);
        cmd.arg(if here { "1" } else { "0" });
        for u in users {
            cmd.arg(*u);
        }
        self.bus
            .command(cmd, Box::new(move |r| done(r.map(|_| ()))));
    }

    /// Every user online on some node now (to load a replica).
    pub fn online(&self, done: Done<Vec<u64>>) {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(format!("{}online", self.prefix));
        self.bus
            .command(cmd, Box::new(move |r| done(r.and_then(integers))));
    }
}

/// A presence change as the scripts publish it on [`ClusterPresence::channel`] (see
/// [`parse_news`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct News<'a> {
    pub user: u64,
    /// Online anywhere now, or nowhere.
    pub online: bool,
    /// For an announcement, the groups whose co-members are told (the caller's encoding,
    /// as given to [`ClusterPresence::up`] or [`ClusterPresence::settle`]); `None` for a
    /// change of reachability alone.
    pub announce: Option<&'a [u8]>,
}

/// Reads a presence payload: `+<user>` or `-<user>` (announced online or offline), or `>`
/// or `<` (reachable or not, nothing announced), then a newline and, for an announcement,
/// its groups.
pub fn parse_news(payload: &[u8]) -> Option<News<'_>> {
    let (&sign, rest) = payload.split_first()?;
    let (online, announced) = match sign {
        b'+' => (true, true),
        b'-' => (false, true),
        b'>' => (true, false),
        b'<' => (false, false),
        _ => return None,
    };
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let user = std::str::from_utf8(&rest[..nl]).ok()?.parse().ok()?;
    let extra = &rest[nl + 1..];
    Some(News {
        user,
        online,
        announce: announced.then_some(extra),
    })
}

fn is_one(v: Value) -> bool {
    matches!(v, Value::Int(1))
}

fn unexpected(what: &str) -> BusError {
    BusError::Redis(format!("presence: unexpected answer: {what}"))
}

/// An array of integers, as Redis answers them (numbers, or members as text).
fn integers(v: Value) -> Result<Vec<u64>, BusError> {
    let Value::Array(items) = v else {
        return Err(unexpected("not an array"));
    };
    items
        .into_iter()
        .map(|i| match i {
            Value::Int(n) => u64::try_from(n).map_err(|_| unexpected("a negative count")),
            Value::BulkString(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| unexpected("a member that is not a user id")),
            _ => Err(unexpected("an item that is not a number")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_reads_each_kind_and_nothing_else_parses() {
        let good: [(&[u8], News); 4] = [
            (
                b"+1\n[\"g\"]",
                News {
                    user: 1,
                    online: true,
                    announce: Some(b"[\"g\"]"),
                },
            ),
            (
                b"-77\n[]\n",
                News {
                    user: 77,
                    online: false,
                    announce: Some(b"[]\n"),
                },
            ),
            (
                b">18446744073709551615\n",
                News {
                    user: u64::MAX,
                    online: true,
                    announce: None,
                },
            ),
            (
                b"<5\n",
                News {
                    user: 5,
                    online: false,
                    announce: None,
                },
            ),
        ];
        for (payload, news) in good {
            assert_eq!(parse_news(payload), Some(news), "{payload:?}");
        }
        let bad: [&[u8]; 7] = [
            b"",
            b"+",
            b"+5",
            b"*5\n",
            b"+5x\n",
            b"-18446744073709551616\n",
            b"<-1\n",
        ];
        for bad in bad {
            assert_eq!(parse_news(bad), None, "{bad:?}");
        }
    }
}
