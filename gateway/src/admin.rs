//! The internal HTTP listener: admin API (users, groups, live membership, history), health,
//! readiness and Prometheus metrics. Plain blocking HTTP/1.1 on its own threads (one per
//! request; this is an operator's port, not a hot path), never on a shard.
//!
//! Membership changes are written to the store first, then applied to open connections through
//! the group's owner shard; the request returns once every shard has applied them, so a
//! message sent after the response reaches a newly added member.

use crate::events;
use crate::shard::{ShardMsg, Shared};
use anyhow::{Context, Result};
use corecast_shard_router::{owner_of_group, ShardId};
use corecast_storage::{
    Error as StoreError, Group, GroupId, MembershipChange, MessageId, User, UserId,
};
use serde::Deserialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MAX_BODY: usize = 1 << 20;
const MAX_HEAD: usize = 16 * 1024;

pub struct AdminServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    pub fn start(shared: Arc<Shared>) -> Result<AdminServer> {
        let addr = shared.config.server.internal_listen;
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} (internal)"))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("internal-http".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = shared.clone();
                    let _ = std::thread::Builder::new()
                        .name("internal-req".into())
                        .spawn(move || handle_conn(&shared, stream));
                }
            })?;
        Ok(AdminServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    auth: Option<String>,
    body: Vec<u8>,
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
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

fn read_request(stream: &mut TcpStream) -> Result<Option<Request>, Response> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => {
                let h = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(str::to_string)
                };
                let len: usize = h("content-length")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if len > MAX_BODY {
                    return Err(error(413, "body too large (limit 1 MiB)"));
                }
                let target = req.path.unwrap_or("/").to_string();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let mut r = Request {
                    method: req.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query: query.to_string(),
                    auth: h("authorization"),
                    body: buf[head..].to_vec(),
                };
                while r.body.len() < len {
                    let n = stream
                        .read(&mut chunk)
                        .map_err(|_| error(400, "truncated body"))?;
                    if n == 0 {
                        return Err(error(400, "truncated body"));
                    }
                    r.body.extend_from_slice(&chunk[..n]);
                }
                r.body.truncate(len);
                return Ok(Some(r));
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(error(431, "request head too large"));
                }
                let n = stream
                    .read(&mut chunk)
                    .map_err(|_| error(400, "read failed"))?;
                if n == 0 {
                    return Ok(None);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(_) => return Err(error(400, "malformed HTTP request")),
        }
    }
}

fn handle_conn(shared: &Shared, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let response = match read_request(&mut stream) {
        Ok(Some(req)) => route(shared, &req),
        Ok(None) => return,
        Err(resp) => resp,
    };
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&response.body);
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
            let body = crate::metrics::render(&stats, &depths, shared.store.queue_depth());
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
    match &shared.config.auth.admin_token {
        None => return error(403, "the admin API is disabled: set CORECAST_ADMIN_TOKEN"),
        Some(t) => {
            let expected = format!("Bearer {t}");
            let given = req.auth.as_deref().unwrap_or("");
            // Constant-time comparison: the token is a secret.
            let same = given.len() == expected.len()
                && given
                    .bytes()
                    .zip(expected.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if !same {
                return error(
                    401,
                    "missing or wrong admin token (Authorization: Bearer <token>)",
                );
            }
        }
    }
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
    let expected = crate::shard::membership_answers(&change, shared.nr_shards());
    if expected == 0 {
        return;
    }
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
    for _ in 0..expected {
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            tracing::warn!(%group, "membership change not confirmed by every shard in time");
            return;
        }
    }
}
