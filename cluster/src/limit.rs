//! [`ClusterLimit`]: a per-user message limit shared by every node, kept in Redis.
//!
//! One token bucket per key (`{prefix}rl:{key}`, a hash of the tokens left and when they were
//! counted), refilled at `per_min` tokens a minute up to a burst of `per_min`, as the
//! gateway's own per-node limiter does (`Rate::per_minute`). Each take is one script, atomic
//! in Redis, on Redis's clock (`TIME`), so a user's tab on one node and phone on another
//! draw on one budget. A bucket left alone for two minutes has refilled and expires.

use crate::bus::{BusError, BusHandle, Done};
use redis::Value;

/// Takes one token if there is one: -1, else the milliseconds until there is.
const TAKE: &str = r"
local k, per_min = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', k, 'at', 'tokens')
local at, tokens = tonumber(b[1]) or now, tonumber(b[2]) or per_min
tokens = math.min(per_min, tokens + math.max(0, now - at) * per_min / 60000)
local wait = -1
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 60000 / per_min)
end
redis.call('HSET', k, 'at', now, 'tokens', tostring(tokens))
redis.call('PEXPIRE', k, 120000)
return wait
";

/// A node's way to the shared limit (see the module's doc).
#[derive(Clone)]
pub struct ClusterLimit {
    bus: BusHandle,
    prefix: String,
}

impl ClusterLimit {
    pub fn new(bus: BusHandle, prefix: impl Into<String>) -> ClusterLimit {
        ClusterLimit {
            bus,
            prefix: prefix.into(),
        }
    }

    /// Takes one of `key`'s tokens (`per_min` a minute, at least 1): `done(None)` when taken,
    /// `done(Some(ms))` when the bucket is empty and a token comes back in `ms`.
    pub fn take(&self, key: u64, per_min: u32, done: Done<Option<u64>>) {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(TAKE)
            .arg(0)
            .arg(format!("{}rl:{key}", self.prefix))
            .arg(per_min.max(1));
        self.bus.command(
            cmd,
            Box::new(move |r| {
                done(r.and_then(|v| match v {
                    Value::Int(n) if n < 0 => Ok(None),
                    Value::Int(n) => Ok(Some(n as u64)),
                    other => Err(BusError::Redis(format!(
                        "rate limit: unexpected answer {other:?}"
                    ))),
                }))
            }),
        );
    }
}
