//! [`ClusterPresence`]: which users have a connection on some node, kept in Redis.
//!
//! Each node tells Redis when a user's first connection on it opens ([`ClusterPresence::up`])
//! and when the last one closes ([`ClusterPresence::down`]). Redis keeps, for the user, the
//! set of nodes holding a connection (`{prefix}p:{user}`, a hash of node ids), for each node
//! the users it holds (`{prefix}pn:{node}`), and the users online anywhere
//! (`{prefix}online`). Each change is one script, atomic in Redis, that answers whether it
//! was the user's first node or last: exactly one node sees a user come online cluster-wide
//! and exactly one sees them go, however their tabs and phones open and close on different
//! nodes at once. That node announces it (`userOnline`) and publishes it to the other nodes'
//! replicas of the online set ([`change_payload`] on [`ClusterPresence::channel`]).
//!
//! A node that dies says nothing. Once the registry reports it gone, any survivor reaps it
//! ([`ClusterPresence::reap`]): its entries are removed, and the users who had no other node
//! come back as offline. A reap is a script too, so two survivors reaping the same node at
//! once report each user once between them.
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

/// Marks `user` online on `node`; 1 if the user is now online anywhere and was not before.
const UP: &str = r"
local p, node, user = ARGV[1], ARGV[2], ARGV[3]
local h = p .. 'p:' .. user
redis.call('HSET', h, node, 1)
redis.call('SADD', p .. 'pn:' .. node, user)
if redis.call('HLEN', h) == 1 then
  return redis.call('SADD', p .. 'online', user)
end
return 0
";

/// Marks `user` gone from `node`; 1 if the user is now online nowhere and was before.
const DOWN: &str = r"
local p, node, user = ARGV[1], ARGV[2], ARGV[3]
local h = p .. 'p:' .. user
redis.call('HDEL', h, node)
redis.call('SREM', p .. 'pn:' .. node, user)
if redis.call('HLEN', h) == 0 then
  return redis.call('SREM', p .. 'online', user)
end
return 0
";

/// Takes up to `step` users off node `dead`: the first item is how many it still holds, the
/// rest are the users who are now online nowhere.
const REAP: &str = r"
local p, dead, step = ARGV[1], ARGV[2], tonumber(ARGV[3])
local pn = p .. 'pn:' .. dead
local out = {0}
for _, u in ipairs(redis.call('SPOP', pn, step)) do
  local h = p .. 'p:' .. u
  redis.call('HDEL', h, dead)
  if redis.call('HLEN', h) == 0 and redis.call('SREM', p .. 'online', u) == 1 then
    table.insert(out, u)
  end
end
out[1] = redis.call('SCARD', pn)
return out
";

/// Puts users back on `node` (after Redis lost them): ARGV[3..] are the users.
const RESTORE: &str = r"
local p, node = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  local u = ARGV[i]
  redis.call('HSET', p .. 'p:' .. u, node, 1)
  redis.call('SADD', p .. 'pn:' .. node, u)
  redis.call('SADD', p .. 'online', u)
end
return #ARGV - 2
";

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

    /// This node holds its first connection of `user`: `true` when the user was online on no
    /// node before (announce them online).
    pub fn up(&self, user: u64, done: Done<bool>) {
        let mut cmd = self.script(UP, &self.node);
        cmd.arg(user);
        self.bus
            .command(cmd, Box::new(move |r| done(r.map(is_one))));
    }

    /// This node's last connection of `user` closed: `true` when no node holds one now
    /// (announce them offline).
    pub fn down(&self, user: u64, done: Done<bool>) {
        let mut cmd = self.script(DOWN, &self.node);
        cmd.arg(user);
        self.bus
            .command(cmd, Box::new(move |r| done(r.map(is_one))));
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
    /// call). Nothing is announced: they were online before.
    pub fn restore(&self, users: &[u64], done: Done<()>) {
        let mut cmd = self.script(RESTORE, &self.node);
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

/// A presence change as published on [`ClusterPresence::channel`]: `+<user>` or `-<user>`.
pub fn change_payload(user: u64, online: bool) -> Bytes {
    Bytes::from(format!("{}{user}", if online { '+' } else { '-' }))
}

/// The change a [`change_payload`] says, if it is one.
pub fn parse_change(payload: &[u8]) -> Option<(u64, bool)> {
    let (&sign, digits) = payload.split_first()?;
    let online = match sign {
        b'+' => true,
        b'-' => false,
        _ => return None,
    };
    let user = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((user, online))
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
    fn changes_read_back_as_written_and_nothing_else_parses() {
        for (user, online) in [(1, true), (77, false), (u64::MAX, true)] {
            assert_eq!(
                parse_change(&change_payload(user, online)),
                Some((user, online))
            );
        }
        for bad in [
            &b""[..],
            b"+",
            b"*5",
            b"+5x",
            b"-18446744073709551616",
            b"+-1",
        ] {
            assert_eq!(parse_change(bad), None, "{bad:?}");
        }
    }
}
