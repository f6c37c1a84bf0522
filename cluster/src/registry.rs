//! [`Registry`]: which nodes are alive.
//!
//! Each node keeps a key `{prefix}node:{id}` in Redis (its `info`: where to reach it) with a
//! time to live of `dead_after`, and its id in the set `{prefix}nodes`. Every `check_every` it
//! refreshes both and reads the set in one script (one round trip), and tells its handler who
//! joined and who left. A node stopping gracefully deletes its key, and is seen leaving at the
//! second check after; one that dies stops refreshing it, and is seen leaving once the key
//! expired: within `dead_after` plus two checks. A node is taken as gone only when two checks in a row miss it, so a Redis restart
//! (which loses every key; each node puts its own back at its next check) reports no one
//! leaving. While Redis cannot be reached nothing is reported: the live set is unknown, not
//! empty.
//!
//! [`Membership`] is the decision part, sans-IO; [`Registry`] runs it on a thread of its own
//! over a [`BusHandle`].

use crate::bus::{BusError, BusHandle};
use redis::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a node registers itself.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Prefix of every key (several clusters can share one Redis).
    pub prefix: String,
    /// This node's id (stable across restarts when the operator sets it).
    pub id: String,
    /// What other nodes learn of this one (where to reach it), as the caller encodes it.
    pub info: String,
    /// A node that stopped refreshing its key this long ago is gone.
    pub dead_after: Duration,
    /// How often the key is refreshed and the set read; at most a third of `dead_after`.
    pub check_every: Duration,
    /// The block of id generators this node holds (see [`claim_generators`]): the first and
    /// how many; refreshed with the node's key. `(0, 0)`: none.
    pub generators: (u16, u16),
}

impl RegistryConfig {
    pub fn new(prefix: impl Into<String>, id: impl Into<String>, info: impl Into<String>) -> Self {
        RegistryConfig {
            prefix: prefix.into(),
            id: id.into(),
            info: info.into(),
            dead_after: Duration::from_secs(30),
            check_every: Duration::from_secs(1),
            generators: (0, 0),
        }
    }
}

/// A change in the set of live nodes (this node is never in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node is live with this info: new, or with info other than the last seen.
    Joined {
        id: String,
        info: String,
    },
    Left {
        id: String,
    },
}

/// The live nodes as the checks saw them, and what changed (sans-IO).
#[derive(Debug)]
pub struct Membership {
    me: String,
    live: BTreeMap<String, String>,
    /// Live nodes the last check missed (gone if the next one misses them too).
    missed: BTreeSet<String>,
}

impl Membership {
    pub fn new(me: impl Into<String>) -> Membership {
        Membership {
            me: me.into(),
            live: BTreeMap::new(),
            missed: BTreeSet::new(),
        }
    }

    /// One check's answer: the nodes registered now, each with its info.
    pub fn observe(&mut self, seen: BTreeMap<String, String>) -> Vec<Change> {
        let mut changes = Vec::new();
        let gone: Vec<String> = self
            .live
            .keys()
            .filter(|id| !seen.contains_key(*id))
            .cloned()
            .collect();
        let mut missed = BTreeSet::new();
        for id in gone {
            if self.missed.contains(&id) {
                self.live.remove(&id);
                changes.push(Change::Left { id });
            } else {
                missed.insert(id);
            }
        }
        self.missed = missed;
        for (id, info) in seen {
            if id == self.me {
                continue;
            }
            // New, or back under the same id with other info (restarted elsewhere).
            if self.live.get(&id) != Some(&info) {
                changes.push(Change::Joined {
                    id: id.clone(),
                    info: info.clone(),
                });
            }
            self.live.insert(id, info);
        }
        changes
    }

    /// The other live nodes, each with its info.
    pub fn live(&self) -> &BTreeMap<String, String> {
        &self.live
    }
}

/// Refreshes this node's key and its generators' (ARGV[5], the first, and ARGV[6], how many:
/// keys `{prefix}gen:{n}`), then lists the live nodes (removing the expired from the set):
/// `conflicts, id1, info1, id2, info2, ...`, where `conflicts` counts this node's generators
/// that another node holds (it took them while they were missing: Redis restarted empty).
const CHECK: &str = r#"
redis.call('SET', ARGV[1] .. ARGV[2], ARGV[3], 'PX', ARGV[4])
redis.call('SADD', KEYS[1], ARGV[2])
local conflicts = 0
for g = tonumber(ARGV[5]), tonumber(ARGV[5]) + tonumber(ARGV[6]) - 1 do
  local key = ARGV[1] .. 'gen:' .. g
  local holder = redis.call('GET', key)
  if holder == false or holder == ARGV[2] then
    redis.call('SET', key, ARGV[2], 'PX', ARGV[4])
  else
    conflicts = conflicts + 1
  end
end
local out = {conflicts}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local info = redis.call('GET', ARGV[1] .. id)
  if info then
    table.insert(out, id)
    table.insert(out, info)
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
"#;

/// Takes the first block of `count` consecutive id generators (aligned on `count`) that no
/// other node holds, for `ttl_ms`: `{prefix}gen:{n}` holds the node's id. Answers the block's
/// first generator, or -1 when all are held.
const CLAIM: &str = r#"
local count = tonumber(ARGV[3])
for base = 0, tonumber(ARGV[5]) - count, count do
  local free = true
  for g = base, base + count - 1 do
    local holder = redis.call('GET', ARGV[1] .. 'gen:' .. g)
    if holder and holder ~= ARGV[2] then
      free = false
      break
    end
  end
  if free then
    for g = base, base + count - 1 do
      redis.call('SET', ARGV[1] .. 'gen:' .. g, ARGV[2], 'PX', ARGV[4])
    end
    return base
  end
end
return -1
"#;

/// Gives back this node's generators (those it still holds).
const RELEASE: &str = r#"
for g = tonumber(ARGV[3]), tonumber(ARGV[3]) + tonumber(ARGV[4]) - 1 do
  local key = ARGV[1] .. 'gen:' .. g
  if redis.call('GET', key) == ARGV[2] then
    redis.call('DEL', key)
  end
end
return 0
"#;

/// Why no block of generators could be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("every block of {count} id generators (of {total}) is held by another node")]
    Full { count: u16, total: u16 },
    #[error("the bus: {0}")]
    Bus(#[from] BusError),
    #[error("unexpected answer from Redis: {0:?}")]
    Answer(Value),
}

/// Claims a block of `count` id generators among `total` for this node (`config`'s prefix,
/// id and `dead_after`), so that no two live nodes mint the same message id: the block's
/// first generator. Blocking, for at most `wait`. The registry, given the block in
/// [`RegistryConfig::generators`], keeps it from then on; a node that stops refreshing it
/// loses it after `dead_after`, as its registration.
pub fn claim_generators(
    bus: &BusHandle,
    config: &RegistryConfig,
    count: u16,
    total: u16,
    wait: Duration,
) -> Result<u16, ClaimError> {
    let mut claim = redis::cmd("EVAL");
    claim
        .arg(CLAIM)
        .arg(0)
        .arg(&config.prefix)
        .arg(&config.id)
        .arg(count)
        .arg(config.dead_after.as_millis() as u64)
        .arg(total);
    match call(bus, claim, wait)? {
        Value::Int(base) if (0..i64::from(total)).contains(&base) => Ok(base as u16),
        Value::Int(_) => Err(ClaimError::Full { count, total }),
        other => Err(ClaimError::Answer(other)),
    }
}

/// Receives every [`Change`], on the registry's thread.
pub type ChangeHandler = Arc<dyn Fn(Change) + Send + Sync>;

/// This node's registration, kept on a thread of its own until dropped (which deregisters it).
pub struct Registry {
    stop: Option<mpsc::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Registry {
    /// Registers this node and starts checking. Returns once the first check has been
    /// answered (or has failed, or a few seconds passed), so that the handler has already
    /// heard of every node alive then: a node does not start as if it were alone.
    pub fn start(bus: BusHandle, config: RegistryConfig, handler: ChangeHandler) -> Registry {
        let (stop, stopped) = mpsc::channel();
        let (checked, first) = mpsc::sync_channel(1);
        let wait = config.check_every.max(Duration::from_millis(500)) * 4;
        let thread = std::thread::Builder::new()
            .name("cc-registry".into())
            .spawn(move || run(bus, config, handler, stopped, checked))
            .expect("the registry thread starts");
        let _ = first.recv_timeout(wait);
        Registry {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops without deregistering, as a node that dies would (for tests of node loss).
    pub fn abandon(mut self) {
        self.halt(false);
    }

    fn halt(&mut self, deregister: bool) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(deregister);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.halt(true);
    }
}

fn run(
    bus: BusHandle,
    config: RegistryConfig,
    handler: ChangeHandler,
    stopped: mpsc::Receiver<bool>,
    checked: mpsc::SyncSender<()>,
) {
    let every = config
        .check_every
        .min(config.dead_after / 3)
        .max(Duration::from_millis(1));
    let set = format!("{}nodes", config.prefix);
    let key_prefix = format!("{}node:", config.prefix);
    let mut members = Membership::new(config.id.clone());
    let mut next = Instant::now();
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match stopped.recv_timeout(wait) {
            Ok(deregister) => {
                if deregister {
                    let mut del = redis::cmd("DEL");
                    del.arg(format!("{key_prefix}{}", config.id));
                    let mut srem = redis::cmd("SREM");
                    srem.arg(&set).arg(&config.id);
                    let mut release = redis::cmd("EVAL");
                    release
                        .arg(RELEASE)
                        .arg(0)
                        .arg(&config.prefix)
                        .arg(&config.id)
                        .arg(config.generators.0)
                        .arg(config.generators.1);
                    let _ = call(&bus, del, every);
                    let _ = call(&bus, srem, every);
                    let _ = call(&bus, release, every);
                }
                return;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        next += every;
        let mut check = redis::cmd("EVAL");
        check
            .arg(CHECK)
            .arg(1)
            .arg(&set)
            .arg(&key_prefix)
            .arg(&config.id)
            .arg(&config.info)
            .arg(config.dead_after.as_millis() as u64)
            .arg(config.generators.0)
            .arg(config.generators.1);
        match call(&bus, check, every) {
            Ok(Value::Array(items)) => {
                let mut seen = BTreeMap::new();
                let mut it = items.into_iter();
                if let Some(Value::Int(conflicts @ 1..)) = it.next() {
                    // Two nodes mint from the same generators: ids can collide. Only a Redis
                    // restart, with a node starting within a check of it, leads here.
                    tracing::error!(
                        conflicts,
                        first = config.generators.0,
                        "node registry: another node holds some of this node's id generators; \
                         restart this node to claim a block of its own"
                    );
                }
                while let (Some(id), Some(info)) = (it.next(), it.next()) {
                    if let (Some(id), Some(info)) = (text(id), text(info)) {
                        seen.insert(id, info);
                    }
                }
                for change in members.observe(seen) {
                    handler(change);
                }
            }
            Ok(other) => tracing::warn!(answer = ?other, "node registry: unexpected answer"),
            // Down, or Redis too slow: the live set is unknown; try again at the next check.
            Err(e) => tracing::debug!(error = %e, "node registry: check failed"),
        }
        let _ = checked.try_send(());
    }
}

/// A command through the bus, waiting for its answer at most `limit`.
fn call(bus: &BusHandle, cmd: redis::Cmd, limit: Duration) -> Result<Value, BusError> {
    let (tx, rx) = mpsc::sync_channel(1);
    bus.command(
        cmd,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_timeout(limit.max(Duration::from_millis(500)))
        .unwrap_or(Err(BusError::Down))
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(ids: &[&str]) -> BTreeMap<String, String> {
        ids.iter()
            .map(|id| (id.to_string(), format!("addr-{id}")))
            .collect()
    }

    #[test]
    fn nodes_join_with_their_info_and_this_node_is_never_reported() {
        let mut m = Membership::new("a");
        let changes = m.observe(seen(&["a", "b"]));
        assert_eq!(
            changes,
            vec![Change::Joined {
                id: "b".into(),
                info: "addr-b".into()
            }]
        );
        assert!(m.observe(seen(&["a", "b"])).is_empty(), "nothing new");
    }

    #[test]
    fn a_node_is_gone_only_when_two_checks_in_a_row_miss_it() {
        let mut m = Membership::new("a");
        m.observe(seen(&["a", "b", "c"]));
        assert!(m.observe(seen(&["a", "c"])).is_empty(), "missed once");
        assert!(m.observe(seen(&["a", "b", "c"])).is_empty(), "back in time");
        assert!(m.observe(seen(&["a"])).is_empty());
        let mut left = m.observe(seen(&["a"]));
        left.sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
        assert_eq!(
            left,
            vec![
                Change::Left { id: "b".into() },
                Change::Left { id: "c".into() }
            ]
        );
        assert_eq!(m.live().len(), 0);
    }

    #[test]
    fn a_node_that_left_and_came_back_joins_again() {
        let mut m = Membership::new("a");
        m.observe(seen(&["b"]));
        m.observe(seen(&[]));
        assert_eq!(m.observe(seen(&[])), vec![Change::Left { id: "b".into() }]);
        assert_eq!(
            m.observe(seen(&["b"])),
            vec![Change::Joined {
                id: "b".into(),
                info: "addr-b".into()
            }]
        );
    }

    #[test]
    fn a_node_back_under_its_id_with_other_info_joins_again() {
        let mut m = Membership::new("a");
        m.observe(seen(&["b"]));
        let moved = BTreeMap::from([("b".to_string(), "addr-b2".to_string())]);
        assert_eq!(
            m.observe(moved.clone()),
            vec![Change::Joined {
                id: "b".into(),
                info: "addr-b2".into()
            }]
        );
        assert!(m.observe(moved).is_empty(), "nothing new");
    }
}
