//! The internal HTTP listener: admin API (users, groups, live membership, history), health,
//! readiness and Prometheus metrics. Plain HTTP/1.1, one request per connection, on its own
//! threads (this is an operator's port, not a hot path), never on a shard. How connections
//! are read, bounded and answered is `listener.rs`; the checks before a body is read are
//! `request.rs`; this file is the routes.
//!
//! Membership changes are written to the store first, then applied to open connections through
//! the group's owner shard; the request returns once every shard has applied them, so a
//! message sent after the response reaches a newly added member.

use crate::error::Result;
use crate::events;
use crate::shard::{ShardMsg, Shared};
use corecast_shard_router::{owner_of_group, ShardId};
use corecast_storage::{
    Error as StoreError, Group, GroupId, MembershipChange, MessageId, User, UserId,
};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

mod listener;
/// Public for the `admin_request` fuzz target (fuzz/).
pub mod request;

pub struct AdminServer {
    pub addr: SocketAddr,
    listener: listener::Listener,
}

impl AdminServer {
    pub fn start(shared: Arc<Shared>) -> Result<AdminServer> {
        let listener = listener::Listener::start(shared)?;
        Ok(AdminServer {
            addr: listener.addr,
            listener,
        })
    }

    pub fn stop(self) {
        self.listener.stop();
    }
}

/// One request, read whole (`request::RequestReader`).
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// Without the query.
    pub path: String,
    /// After `?`, undecoded.
    pub query: String,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

fn json(status: u16, body: impl Into<Vec<u8>>) -> Response {
    Response {
        status,
        content_type: "application/json",
        body: body.into(),
    }
}

fn error(status: u16, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }).to_string())
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::NoSuchGroup(g) => error(404, &format!("group {:?} does not exist", g.as_str())),
        StoreError::NoSuchMessage { .. } => error(404, &e.to_string()),
        e => error(503, &format!("store unavailable: {e}")),
    }
}

fn parse_id(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// A group id from a path segment: percent-decoded (`team%20berlin`, `Z%C3%BCrich`; a `+` is a
/// plus sign, as in any path), then held to the same rules as a client's `groupId`. The path
/// is split at `/` before decoding, so an id may hold an encoded `%2F`.
fn parse_group(segment: &str, shared: &Shared) -> Result<GroupId, Response> {
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| {
            error(
                400,
                "invalid group id in the path: not UTF-8 once percent-decoded",
            )
        })?;
    GroupId::parse(&decoded, shared.config.limits.max_group_id_bytes)
        .map_err(|e| error(400, &format!("invalid group id in the path: {e}")))
}

fn route(shared: &Shared, req: &Request) -> Response {
    // The demo page's static files, before the token check: they hold no data.
    let server = &shared.config.server;
    if let Some(page) = crate::demo::respond(server, shared.public_addr, &req.method, &req.path) {
        return Response {
            status: page.status,
            content_type: page.content_type,
            body: page.body,
        };
    }
    let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), parts.as_slice()) {
        ("GET", ["healthz"]) => return json(200, r#"{"status":"ok"}"#),
        ("GET", ["readyz"]) => {
            if shared.draining.load(std::sync::atomic::Ordering::SeqCst) {
                return json(503, r#"{"ready":false,"reason":"draining"}"#);
            }
            if shared.cluster.as_ref().is_some_and(|c| !c.bus.is_up()) {
                return json(
                    503,
                    r#"{"ready":false,"reason":"the cluster bus is not connected to Redis"}"#,
                );
            }
            return match shared.store.blocking().ping() {
                Ok(()) => json(200, r#"{"ready":true}"#),
                Err(e) => json(
                    503,
                    serde_json::json!({"ready": false, "reason": e.to_string()}).to_string(),
                ),
            };
        }
        ("GET", ["metrics"]) => {
            let stats: Vec<_> = shared.stats.iter().map(|s| s.as_ref()).collect();
            let depths: Vec<usize> = shared.inboxes.iter().map(|h| h.len()).collect();
            let mut body = crate::metrics::render(&stats, &depths, shared.store.queue_depth());
            if let Some(c) = &shared.cluster {
                c.render(&mut body);
            }
            return Response {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: body.into_bytes(),
            };
        }
        _ => {}
    }
    if parts.first() != Some(&"api") {
        return error(404, "not found");
    }
    // The admin token was checked (request::authorize) before the body was read.
    let store = shared.store.blocking();
    match (req.method.as_str(), &parts[1..]) {
        ("POST", ["drain"]) => {
            // A graceful drain without stopping the process: `/readyz` false, no more accepts,
            // connections closed over the configured window. SIGTERM still stops it after.
            let window = std::time::Duration::from_secs(shared.config.server.drain_secs);
            crate::server::begin_drain(shared, window);
            json(
                202,
                serde_json::json!({"ok": true, "draining": true, "window_secs": window.as_secs()})
                    .to_string(),
            )
        }
        ("PUT", ["users", id]) => {
            let Some(id) = parse_id(id) else {
                return error(400, "user id must be a number");
            };
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                email: Option<String>,
                name: Option<String>,
            }
            let b: Body = match serde_json::from_slice(&req.body) {
                Ok(b) => b,
                Err(e) => {
                    return error(
                        400,
                        &format!("invalid body: {e}; expected {{ email, name }}"),
                    )
                }
            };
            if b.email
                .as_deref()
                .is_some_and(|e| !e.contains('@') || e.len() > 254)
            {
                return error(400, "email must be an address like name@example.com");
            }
            match store.put_user(User {
                id: UserId(id),
                email: b.email,
                name: b.name,
            }) {
                Ok(()) => json(200, r#"{"ok":true}"#),
                Err(e) => store_error(e),
            }
        }
        ("GET", ["users", id]) => {
            let Some(id) = parse_id(id) else {
                return error(400, "user id must be a number");
            };
            match (store.get_user(UserId(id)), store.get_presence(UserId(id))) {
                (Ok(Some(u)), Ok(p)) => json(
                    200,
                    serde_json::json!({"id": u.id, "email": u.email, "name": u.name,
                        "online": p.map(|p| p.online).unwrap_or(false),
                        "lastSeen": p.map(|p| events::iso8601(p.last_seen))})
                    .to_string(),
                ),
                (Ok(None), _) => error(404, "no such user"),
                (Err(e), _) | (_, Err(e)) => store_error(e),
            }
        }
        ("PUT", ["groups", id]) => {
            let id = match parse_group(id, shared) {
                Ok(id) => id,
                Err(r) => return r,
            };
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                name: String,
                members: Vec<u64>,
            }
            let b: Body = match serde_json::from_slice(&req.body) {
                Ok(b) => b,
                Err(e) => {
                    return error(
                        400,
                        &format!("invalid body: {e}; expected {{ name, members: [userId] }}"),
                    )
                }
            };
            let group = Group {
                id: id.clone(),
                name: b.name,
                members: b.members.into_iter().map(UserId).collect(),
            };
            match store.put_group(group) {
                Ok(change) => {
                    apply_membership(shared, id, change.clone());
                    json(200, serde_json::json!({"ok": true, "added": change.added, "removed": change.removed}).to_string())
                }
                Err(e) => store_error(e),
            }
        }
        ("GET", ["groups", id]) => {
            let id = match parse_group(id, shared) {
                Ok(id) => id,
                Err(r) => return r,
            };
            match store.get_group(id) {
                Ok(Some(g)) => json(
                    200,
                    serde_json::json!({"id": g.id, "name": g.name, "members": g.members})
                        .to_string(),
                ),
                Ok(None) => error(404, "no such group"),
                Err(e) => store_error(e),
            }
        }
        (method @ ("PUT" | "DELETE"), ["groups", gid, "members", uid]) => {
            let group = match parse_group(gid, shared) {
                Ok(g) => g,
                Err(r) => return r,
            };
            let Some(uid) = parse_id(uid) else {
                return error(400, "user id must be a number");
            };
            let user = UserId(uid);
            let adding = method == "PUT";
            let result = if adding {
                store.add_member(group.clone(), user)
            } else {
                store.remove_member(group.clone(), user)
            };
            match result {
                Ok(changed) => {
                    if changed {
                        let change = if adding {
                            MembershipChange {
                                added: vec![user],
                                removed: vec![],
                            }
                        } else {
                            MembershipChange {
                                added: vec![],
                                removed: vec![user],
                            }
                        };
                        apply_membership(shared, group, change);
                    }
                    json(
                        200,
                        serde_json::json!({"ok": true, "changed": changed}).to_string(),
                    )
                }
                Err(e) => store_error(e),
            }
        }
        ("GET", ["groups", gid, "messages"]) => {
            let gid = match parse_group(gid, shared) {
                Ok(g) => g,
                Err(r) => return r,
            };
            let mut limit = 50usize;
            let mut before = None;
            for kv in req.query.split('&').filter(|s| !s.is_empty()) {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                match k {
                    "limit" => match v.parse::<usize>() {
                        Ok(n) if (1..=500).contains(&n) => limit = n,
                        _ => return error(400, "limit must be between 1 and 500"),
                    },
                    "before" => match parse_id(v) {
                        Some(id) => before = Some(MessageId(id)),
                        None => return error(400, "before must be a message id"),
                    },
                    _ => {}
                }
            }
            match store.history(gid, limit, before) {
                Ok(msgs) => {
                    let mut body = b"{\"messages\":[".to_vec();
                    for (i, m) in msgs.iter().enumerate() {
                        if i > 0 {
                            body.push(b',');
                        }
                        body.extend_from_slice(&events::message_json(m));
                    }
                    body.extend_from_slice(b"]}");
                    json(200, body)
                }
                Err(e) => store_error(e),
            }
        }
        _ => error(404, "no such endpoint"),
    }
}

/// Applies a stored membership change to open connections and waits until every shard has.
fn apply_membership(shared: &Shared, group: GroupId, change: MembershipChange) {
    if change.added.is_empty() && change.removed.is_empty() {
        return;
    }
    let change_copy = match shared.cluster {
        Some(_) => change.clone(),
        None => MembershipChange::default(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let owner: ShardId = owner_of_group(&group, shared.nr_shards());
    shared.send_blocking(
        owner,
        ShardMsg::MembersChanged {
            group: group.clone(),
            change,
            done: tx,
        },
    );
    // The room answers once every shard has applied the change (its barrier).
    if rx.recv_timeout(Duration::from_secs(10)).is_err() {
        tracing::warn!(%group, "membership change not confirmed by every shard in time");
    }
    // Cluster mode: and every other node, before the call returns.
    if let Some(c) = &shared.cluster {
        let missing = c.members_changed(&group, &change_copy);
        if missing > 0 {
            tracing::warn!(%group, nodes = missing, "membership change not confirmed by every node in time");
        }
    }
}
