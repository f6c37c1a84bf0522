//! The socketioxide baseline for bench/compare.sh: socketioxide (Socket.IO v5 on tokio's
//! multi-threaded runtime), in memory, with the same events, rooms and payloads as the
//! Node.js baseline (bench/baseline/server.js) and the same admin set-up API, so that
//! corecast-loadgen drives all three servers with one code path.
//!
//! - CONNECT: a JWT (HS256, `sub` = user id) in the auth payload, checked by a connect
//!   middleware, which also joins the socket to the room `g:<id>` of each group the user is
//!   a member of and registers its `sendMessage` handler, before the CONNECT answer.
//! - `sendMessage` `{groupId, text, attachments?}`: broadcast as `newMessage`
//!   `{id, senderId, groupId, text, attachments, timestamp, readBy: [senderId]}` to the
//!   group's room, sender included, then the ack `{ok, id, timestamp}`; failures as
//!   `{ok: false, error: {code, message}}` in the ack, or an `error` event without one.
//! - Admin listener: `PUT /api/users/{id}`, `PUT /api/groups/{id}` (`{name, members}`),
//!   `GET /healthz` and `/readyz`, with `Authorization: Bearer <admin token>`.
//!
//! Order, as the loadgen checks it: socketioxide runs each event's handler in a task of its
//! own, so two events of one socket could run on two worker threads at once. Each socket's
//! events therefore go through a queue, filled in arrival order by the extractor (which runs
//! on the socket's read path) and drained by one handler task at a time; and a group's id is
//! taken and its broadcast queued under that group's lock, so every member gets the group's
//! messages in id order.
//!
//! Configured with corecast's variable names: CORECAST_LISTEN, CORECAST_INTERNAL_LISTEN,
//! CORECAST_JWT_SECRET, CORECAST_ADMIN_TOKEN. Prints one "listening" line when ready.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::socket::Socket;
use socketioxide::SocketIo;

/// One group: its members and the lock under which a message gets its id and is broadcast.
struct Group {
    members: HashSet<u64>,
    turn: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Groups {
    by_id: HashMap<String, Arc<Group>>,
    of_user: HashMap<u64, HashSet<String>>,
}

struct State {
    secret: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    admin_auth: String,
    groups: RwLock<Groups>,
    users: Mutex<HashMap<u64, Value>>,
    next_id: AtomicU64,
}

static STATE: OnceLock<State> = OnceLock::new();

fn state() -> &'static State {
    STATE.get().expect("invariant: set in main before serving")
}

/// What a connected socket carries: its user and its queue of `sendMessage` events.
struct Conn {
    uid: u64,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<(Value, AckSender, bool)>,
    draining: bool,
}

/// A `sendMessage` event, queued on its socket in arrival order. `Some` when this handler
/// task is the one to drain the queue.
struct Queued(Option<Arc<Conn>>);

impl FromMessageParts<socketioxide::adapter::LocalAdapter> for Queued {
    type Error = Infallible;
    fn from_message_parts(
        s: &Arc<Socket>,
        v: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let Some(conn) = s.extensions.get::<Arc<Conn>>() else {
            return Ok(Queued(None));
        };
        let payload = match Data::<Value>::from_message_parts(s, v, ack_id) {
            Ok(Data(p)) => p,
            Err(_) => Value::Null,
        };
        let ack = AckSender::from_message_parts(s, v, ack_id)?;
        let mut q = conn.queue.lock().expect("invariant: never poisoned");
        q.events.push_back((payload, ack, ack_id.is_some()));
        if q.draining {
            return Ok(Queued(None));
        }
        q.draining = true;
        drop(q);
        Ok(Queued(Some(conn)))
    }
}

#[derive(Debug)]
struct AuthError(String);

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthError {}

#[derive(serde::Deserialize)]
struct Claims {
    sub: Value,
}

async fn authenticate(s: SocketRef, Data(auth): Data<Value>) -> Result<(), AuthError> {
    let Some(token) = auth.get("token").and_then(Value::as_str) else {
        return Err(AuthError("missing token".into()));
    };
    let st = state();
    let claims = jsonwebtoken::decode::<Claims>(token, &st.secret, &st.validation)
        .map_err(|e| AuthError(format!("invalid token: {e}")))?
        .claims;
    let uid = match &claims.sub {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| AuthError("invalid token: sub is not a user id".into()))?;
    // Here rather than in the connect handler: socketioxide sends the CONNECT answer before
    // it spawns that handler, so a client could send (and a member be sent) a message before
    // the socket had its rooms and its `sendMessage` handler.
    s.extensions.insert(Arc::new(Conn {
        uid,
        queue: Mutex::new(Queue::default()),
    }));
    let rooms: Vec<String> = {
        let groups = state().groups.read().expect("invariant: never poisoned");
        groups
            .of_user
            .get(&uid)
            .map(|gs| gs.iter().map(|g| format!("g:{g}")).collect())
            .unwrap_or_default()
    };
    s.join(rooms);
    s.on("sendMessage", on_send_message);
    Ok(())
}

/// Everything is set up by [`authenticate`], before the CONNECT answer.
async fn on_connect() {}

async fn on_send_message(io: SocketIo, s: SocketRef, Queued(drain): Queued) {
    let Some(conn) = drain else { return };
    loop {
        let next = {
            let mut q = conn.queue.lock().expect("invariant: never poisoned");
            let next = q.events.pop_front();
            if next.is_none() {
                q.draining = false;
            }
            next
        };
        let Some((payload, ack, has_ack)) = next else {
            return;
        };
        send_message(&io, &s, conn.uid, payload, ack, has_ack).await;
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct NewMessage<'a> {
    id: String,
    sender_id: u64,
    group_id: &'a str,
    text: &'a Value,
    attachments: Value,
    timestamp: String,
    read_by: [u64; 1],
}

/// A valid `sendMessage` payload from a member.
struct Valid {
    group: Arc<Group>,
    group_id: String,
    text: Value,
    attachments: Value,
}

/// The payload checked as the Node baseline checks it: the error code and message, or what
/// to broadcast.
fn check(uid: u64, mut payload: Value) -> Result<Valid, (&'static str, &'static str)> {
    if !payload.is_object() {
        return Err(("invalid_payload", "payload must be an object"));
    }
    let group_id = group_id_of(&payload["groupId"]);
    let (Some(group_id), true) = (group_id, payload["text"].is_string()) else {
        return Err(("invalid_payload", "groupId and text are required"));
    };
    let group = {
        let groups = state().groups.read().expect("invariant: never poisoned");
        groups.by_id.get(&group_id).cloned()
    };
    let Some(group) = group else {
        return Err(("not_found", "no such group"));
    };
    if !group.members.contains(&uid) {
        return Err(("not_member", "not a member of this group"));
    }
    let attachments = match payload["attachments"].take() {
        a @ Value::Array(_) => a,
        _ => Value::Array(Vec::new()),
    };
    Ok(Valid {
        group,
        group_id,
        text: payload["text"].take(),
        attachments,
    })
}

async fn send_message(
    io: &SocketIo,
    s: &SocketRef,
    uid: u64,
    payload: Value,
    ack: AckSender,
    has_ack: bool,
) {
    let Valid {
        group,
        group_id,
        text,
        attachments,
    } = match check(uid, payload) {
        Ok(v) => v,
        Err((code, message)) => {
            if has_ack {
                let _ =
                    ack.send(&json!({"ok": false, "error": {"code": code, "message": message}}));
            } else {
                let _ = s.emit("error", &json!({"message": message, "code": code}));
            }
            return;
        }
    };
    let timestamp = iso_now();
    let turn = group.turn.lock().await;
    let id = state().next_id.fetch_add(1, Ordering::Relaxed).to_string();
    let msg = NewMessage {
        id,
        sender_id: uid,
        group_id: &group_id,
        text: &text,
        attachments,
        timestamp,
        read_by: [uid],
    };
    let _ = io
        .to(format!("g:{group_id}"))
        .emit("newMessage", &msg)
        .await;
    drop(turn);
    let _ = ack.send(&json!({"ok": true, "id": msg.id, "timestamp": msg.timestamp}));
}

/// The group id of a payload as corecast reads it: a string of 1 to 128 bytes without
/// control characters, or a non-negative integer taken as its decimal string.
fn group_id_of(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        Value::String(s) if (1..=128).contains(&s.len()) && !s.chars().any(|c| c.is_control()) => {
            Some(s.clone())
        }
        _ => None,
    }
}

/// Now as JavaScript's `Date.toISOString()` writes it: `2026-12-02T12:26:56.123Z`.
fn iso_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian), in 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

// ---- internal listener: the admin API subset the load generator uses ----

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == state().admin_auth.as_bytes())
}

async fn health() -> Response {
    reply(StatusCode::OK, json!({"ok": true}))
}

async fn put_user(Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&headers) {
        return reply(StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"}));
    }
    let Ok(uid) = id.parse::<u64>() else {
        return reply(StatusCode::NOT_FOUND, json!({"error": "not found"}));
    };
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid JSON"}));
    };
    state()
        .users
        .lock()
        .expect("invariant: never poisoned")
        .insert(uid, json);
    reply(StatusCode::OK, json!({"ok": true}))
}

async fn put_group(Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&headers) {
        return reply(StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"}));
    }
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid JSON"}));
    };
    let Some(members) = json.get("members").and_then(Value::as_array) else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "members must be an array"}),
        );
    };
    let Some(gid) = group_id_of(&Value::String(id)) else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid group id in the path"}),
        );
    };
    let members: HashSet<u64> = members
        .iter()
        .filter_map(|m| match m {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        })
        .collect();
    let mut groups = state().groups.write().expect("invariant: never poisoned");
    if let Some(old) = groups.by_id.remove(&gid) {
        for u in &old.members {
            if let Some(gs) = groups.of_user.get_mut(u) {
                gs.remove(&gid);
            }
        }
    }
    for u in &members {
        groups.of_user.entry(*u).or_default().insert(gid.clone());
    }
    groups.by_id.insert(
        gid,
        Arc::new(Group {
            members,
            turn: tokio::sync::Mutex::new(()),
        }),
    );
    reply(StatusCode::OK, json!({"ok": true}))
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let public = env_or("CORECAST_LISTEN", "127.0.0.1:3000");
    let internal = env_or("CORECAST_INTERNAL_LISTEN", "127.0.0.1:3001");
    let secret = env_or("CORECAST_JWT_SECRET", "dev-secret");
    let admin_token = env_or("CORECAST_ADMIN_TOKEN", "dev-admin");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims = HashSet::from(["exp".to_string()]);
    let _ = STATE.set(State {
        secret: jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        validation,
        admin_auth: format!("Bearer {admin_token}"),
        groups: RwLock::new(Groups::default()),
        users: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    });

    // The Node baseline's settings: ping every 25 s, 20 s to answer, 1 MB payloads. A
    // socket's send buffer holds 8,192 packets (the default 128 drops messages to a member
    // of a large room while its socket is briefly behind; Node's buffer has no bound).
    let (layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_secs(25))
        .ping_timeout(Duration::from_secs(20))
        .max_payload(1_000_000)
        .max_buffer_size(8_192)
        .build_layer();
    io.ns("/", on_connect.with(authenticate));

    let app = axum::Router::new().layer(layer);
    let admin = axum::Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(health))
        .route("/api/users/{id}", put(put_user))
        .route("/api/groups/{id}", put(put_group));

    let pub_listener = tokio::net::TcpListener::bind(&public).await?;
    let admin_listener = tokio::net::TcpListener::bind(&internal).await?;
    println!(
        "socketioxide listening public={} internal={} workers={} store=none socketioxide=0.18.9",
        pub_listener.local_addr()?,
        admin_listener.local_addr()?,
        tokio::runtime::Handle::current().metrics().num_workers()
    );
    let admin_task = tokio::spawn(async move { axum::serve(admin_listener, admin).await });
    axum::serve(pub_listener, app).await?;
    admin_task.await??;
    Ok(())
}
