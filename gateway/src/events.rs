//! Client events in, server events out: one parse per incoming event (simd-json, in place) into
//! typed commands with every check a client can fail, and the encoders of server payloads.
//!
//! Wire error codes (the `code` of the `error` event and of `{ ok: false, error }` acks) are
//! the [`Code`] enum; docs/protocol.md lists them. Internal error strings never reach clients.

use crate::config::LimitsConfig;
use bytes::Bytes;
use corecast_storage::{Attachment, GroupId, MessageId, Millis, StoredMessage, UserId};
use corecast_wire::packet::{event_frame, write_json_str};
use corecast_wire::ws::Role;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

/// Stable machine-readable error codes sent to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unauthenticated,
    InvalidPayload,
    UnknownEvent,
    NotMember,
    RateLimited,
    NotFound,
    StorageUnavailable,
    Unsupported,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthenticated => "unauthenticated",
            Code::InvalidPayload => "invalid_payload",
            Code::UnknownEvent => "unknown_event",
            Code::NotMember => "not_member",
            Code::RateLimited => "rate_limited",
            Code::NotFound => "not_found",
            Code::StorageUnavailable => "storage_unavailable",
            Code::Unsupported => "unsupported",
            Code::Internal => "internal",
        }
    }

    pub const ALL: [Code; 9] = [
        Code::Unauthenticated,
        Code::InvalidPayload,
        Code::UnknownEvent,
        Code::NotMember,
        Code::RateLimited,
        Code::NotFound,
        Code::StorageUnavailable,
        Code::Unsupported,
        Code::Internal,
    ];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// An error a client is told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub code: Code,
    pub message: String,
}

impl ClientError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ClientError {
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        ClientError::new(Code::InvalidPayload, message)
    }

    /// `{"message":"...","code":"..."}`
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.message.len() + 40);
        out.extend_from_slice(b"{\"message\":");
        write_json_str(&mut out, &self.message);
        out.extend_from_slice(b",\"code\":\"");
        out.extend_from_slice(self.code.as_str().as_bytes());
        out.extend_from_slice(b"\"}");
        out
    }

    /// The negative ack: `{"ok":false,"error":{"code":"...","message":"..."}}`
    pub fn to_ack_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.message.len() + 60);
        out.extend_from_slice(b"{\"ok\":false,\"error\":{\"code\":\"");
        out.extend_from_slice(self.code.as_str().as_bytes());
        out.extend_from_slice(b"\",\"message\":");
        write_json_str(&mut out, &self.message);
        out.extend_from_slice(b"}}");
        out
    }
}

/// A validated client event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    SendMessage {
        group: GroupId,
        text: String,
        attachments: Vec<Attachment>,
        client_msg_id: Option<String>,
    },
    JoinGroup {
        group: GroupId,
    },
    /// A new token for the same user, so the session outlives the first token's `exp`.
    RefreshToken {
        token: String,
    },
    LeaveGroup {
        group: GroupId,
    },
    MarkAsRead {
        group: GroupId,
        message: MessageId,
    },
    /// `getMessages` or `getOnline`: a read of the group's room, members only.
    Query {
        group: GroupId,
        query: Query,
    },
}

/// A read of a room, answered by the group's owner (members only) in the ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `getMessages`: up to `limit` messages, newest first, strictly older than `before`.
    Messages {
        before: Option<MessageId>,
        limit: usize,
    },
    /// `getOnline`: the members with a connection now.
    Online,
}

/// `getMessages`' page size when the client names none, and the most it may ask for.
pub const HISTORY_PAGE: usize = 50;
pub const HISTORY_PAGE_MAX: usize = 100;

impl Command {
    pub fn event_name(&self) -> &'static str {
        match self {
            Command::SendMessage { .. } => "sendMessage",
            Command::JoinGroup { .. } => "joinGroup",
            Command::RefreshToken { .. } => "refreshToken",
            Command::LeaveGroup { .. } => "leaveGroup",
            Command::MarkAsRead { .. } => "markAsRead",
            Command::Query {
                query: Query::Messages { .. },
                ..
            } => "getMessages",
            Command::Query {
                query: Query::Online,
                ..
            } => "getOnline",
        }
    }
}

/// Why an EVENT was not turned into a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    /// The packet cannot be decoded as a Socket.IO event at all (broken JSON, not an array,
    /// no event name, a reserved name): the reference server closes the connection for this.
    Undecodable(String),
    /// A well-formed event that fails a check: the client is told (negative ack or `error`).
    Rejected(ClientError),
}

impl From<ClientError> for EventError {
    fn from(e: ClientError) -> Self {
        EventError::Rejected(e)
    }
}

/// Event names a client may not send (socket.io-parser refuses them as undecodable).
const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Parses the JSON data of an EVENT packet (`["name", payload, ...]`), in place.
pub fn parse_event(data: &mut [u8], limits: &LimitsConfig) -> Result<Command, EventError> {
    let value = simd_json::to_borrowed_value(data)
        .map_err(|e| EventError::Undecodable(format!("event is not valid JSON: {e}")))?;
    let args = value
        .as_array()
        .ok_or_else(|| EventError::Undecodable("event must be a JSON array".into()))?;
    let name = match args.first() {
        Some(v) if v.is_number() => {
            // Decodable (socket.io-parser allows numeric names), but no event of ours.
            return Err(ClientError::invalid("event name must be a string").into());
        }
        Some(v) => v
            .as_str()
            .filter(|n| !RESERVED_EVENTS.contains(n))
            .ok_or_else(|| EventError::Undecodable("event name must be a string".into()))?,
        None => return Err(EventError::Undecodable("event must name an event".into())),
    };
    command(name, args.get(1), limits).map_err(EventError::Rejected)
}

/// The checks of one event's payload.
fn command(
    name: &str,
    payload: Option<&BorrowedValue<'_>>,
    limits: &LimitsConfig,
) -> Result<Command, ClientError> {
    let obj = |name: &str| -> Result<&BorrowedValue<'_>, ClientError> {
        match payload {
            Some(p) if p.is_object() => unique_keys(p, "the payload").map(|()| p),
            _ => Err(ClientError::invalid(format!(
                "{name} needs an object payload"
            ))),
        }
    };
    match name {
        "sendMessage" => {
            let p = obj(name)?;
            let group = group_id(p, limits)?;
            let text = match p.get("text") {
                Some(t) => t
                    .as_str()
                    .ok_or_else(|| ClientError::invalid("text must be a string"))?,
                None => return Err(ClientError::invalid("text is required")),
            };
            if text.trim().is_empty() {
                return Err(ClientError::invalid("text must not be empty"));
            }
            let chars = text.chars().count();
            if chars > limits.max_text_chars {
                return Err(ClientError::invalid(format!(
                    "text is {chars} characters; the limit is {}",
                    limits.max_text_chars
                )));
            }
            let attachments = attachments(p.get("attachments"), limits)?;
            let client_msg_id = match p.get("clientMsgId") {
                None => None,
                Some(v) if v.is_null() => None,
                Some(v) => {
                    let s = v
                        .as_str()
                        .ok_or_else(|| ClientError::invalid("clientMsgId must be a string"))?;
                    if s.is_empty() || s.len() > limits.max_client_msg_id_len {
                        return Err(ClientError::invalid(format!(
                            "clientMsgId must be 1 to {} bytes",
                            limits.max_client_msg_id_len
                        )));
                    }
                    Some(s.to_string())
                }
            };
            Ok(Command::SendMessage {
                group,
                text: text.to_string(),
                attachments,
                client_msg_id,
            })
        }
        "refreshToken" => match obj(name)?.get("token") {
            Some(t) => match t.as_str() {
                Some(t) if !t.is_empty() && t.len() <= 16 * 1024 => Ok(Command::RefreshToken {
                    token: t.to_string(),
                }),
                _ => Err(ClientError::invalid(
                    "token must be a JWT string (at most 16 KiB)",
                )),
            },
            None => Err(ClientError::invalid("token is required")),
        },
        "joinGroup" => Ok(Command::JoinGroup {
            group: group_id(obj(name)?, limits)?,
        }),
        "leaveGroup" => Ok(Command::LeaveGroup {
            group: group_id(obj(name)?, limits)?,
        }),
        "markAsRead" => {
            let p = obj(name)?;
            let group = group_id(p, limits)?;
            let message = match p.get("messageId") {
                Some(v) => id_value(v).map(MessageId).ok_or_else(|| {
                    ClientError::invalid("messageId must be a message id (a string of digits)")
                })?,
                None => return Err(ClientError::invalid("messageId is required")),
            };
            Ok(Command::MarkAsRead { group, message })
        }
        "getMessages" => {
            let p = obj(name)?;
            let group = group_id(p, limits)?;
            let before = match p.get("before") {
                None => None,
                Some(v) if v.is_null() => None,
                Some(v) => Some(id_value(v).map(MessageId).ok_or_else(|| {
                    ClientError::invalid("before must be a message id (a string of digits)")
                })?),
            };
            let limit = match p.get("limit") {
                None => HISTORY_PAGE,
                Some(v) if v.is_null() => HISTORY_PAGE,
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=HISTORY_PAGE_MAX as u64).contains(&n) => n as usize,
                    _ => {
                        return Err(ClientError::invalid(format!(
                            "limit must be an integer from 1 to {HISTORY_PAGE_MAX}"
                        )))
                    }
                },
            };
            Ok(Command::Query {
                group,
                query: Query::Messages { before, limit },
            })
        }
        "getOnline" => Ok(Command::Query {
            group: group_id(obj(name)?, limits)?,
            query: Query::Online,
        }),
        other => {
            let shown: String = other.chars().take(64).collect();
            Err(ClientError::new(
                Code::UnknownEvent,
                format!("unknown event {shown:?}"),
            ))
        }
    }
}

/// A non-negative integer, or a string of 1 to 20 digits that fits in u64.
fn id_value(v: &BorrowedValue<'_>) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let s = v.as_str()?;
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The payload's `groupId`: a string that [`GroupId::parse`] accepts, or a non-negative
/// integer, taken as its decimal string (the Node.js app's rooms are strings, and a client
/// that sends the number 10 means the room "10").
fn group_id(p: &BorrowedValue<'_>, limits: &LimitsConfig) -> Result<GroupId, ClientError> {
    let Some(v) = p.get("groupId") else {
        return Err(ClientError::invalid("groupId is required"));
    };
    let parsed = if let Some(s) = v.as_str() {
        GroupId::parse(s, limits.max_group_id_bytes)
    } else if let Some(n) = v.as_u64().filter(|_| v.is_integer()) {
        GroupId::parse(&n.to_string(), limits.max_group_id_bytes)
    } else {
        return Err(ClientError::invalid(format!(
            "groupId must be a string (1 to {} bytes) or a non-negative integer, not {}",
            limits.max_group_id_bytes,
            json_kind(v)
        )));
    };
    parsed.map_err(|e| ClientError::invalid(e.to_string()))
}

/// What a JSON value is, for error messages.
fn json_kind(v: &BorrowedValue<'_>) -> &'static str {
    if v.is_null() {
        "null"
    } else if v.is_bool() {
        "a boolean"
    } else if v.is_object() {
        "an object"
    } else if v.is_array() {
        "an array"
    } else if v.as_i64().is_some_and(|n| n < 0) {
        "a negative number"
    } else if v.is_number() {
        "a fractional or too large number"
    } else {
        "this value"
    }
}

fn attachments(
    v: Option<&BorrowedValue<'_>>,
    limits: &LimitsConfig,
) -> Result<Vec<Attachment>, ClientError> {
    let list = match v {
        None => return Ok(Vec::new()),
        Some(v) if v.is_null() => return Ok(Vec::new()),
        Some(v) => v
            .as_array()
            .ok_or_else(|| ClientError::invalid("attachments must be an array"))?,
    };
    if list.len() > limits.max_attachments {
        return Err(ClientError::invalid(format!(
            "{} attachments; the limit is {}",
            list.len(),
            limits.max_attachments
        )));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        if !a.is_object() {
            return Err(ClientError::invalid(format!(
                "attachments[{i}] must be an object"
            )));
        }
        unique_keys(a, &format!("attachments[{i}]"))?;
        let url = a.get("url").and_then(|u| u.as_str()).ok_or_else(|| {
            ClientError::invalid(format!("attachments[{i}].url must be a string"))
        })?;
        let kind = a.get("type").and_then(|t| t.as_str()).ok_or_else(|| {
            ClientError::invalid(format!("attachments[{i}].type must be a string"))
        })?;
        if !is_http_url(url) || url.len() > limits.max_url_len {
            return Err(ClientError::invalid(format!(
                "attachments[{i}].url must be an http(s) URL of at most {} bytes",
                limits.max_url_len
            )));
        }
        if !limits.attachment_types.iter().any(|t| t == kind) {
            let shown: String = kind.chars().take(32).collect();
            return Err(ClientError::invalid(format!(
                "attachments[{i}].type {shown:?} is not allowed; allowed: {}",
                limits.attachment_types.join(", ")
            )));
        }
        out.push(Attachment {
            url: url.to_string(),
            kind: kind.to_string(),
        });
    }
    Ok(out)
}

/// Refuses an object that repeats a key. In an object of up to 32 members simd-json keeps
/// every member and `get` finds the first, while `JSON.parse` (the reference server, and the
/// client that built the payload) keeps the last: without this check the gateway would read
/// another text, group or URL than the sender's own JSON library shows. (Larger objects go
/// to a hash map that keeps the last, like `JSON.parse`; the set below then finds nothing.)
/// RFC 8259 leaves repeated names to the implementation; refusing them cannot be misread,
/// and no client builds such objects.
fn unique_keys(v: &BorrowedValue<'_>, what: &str) -> Result<(), ClientError> {
    let Some(members) = v.as_object() else {
        return Ok(());
    };
    // Payloads have a handful of keys: pairwise is cheaper than a set and allocates nothing;
    // past that a set keeps it linear, since an object may have many thousand keys.
    const PAIRWISE: usize = 32;
    let repeated = if members.len() <= PAIRWISE {
        let mut found = None;
        for (i, (a, _)) in members.iter().enumerate() {
            if members.iter().skip(i + 1).any(|(b, _)| a == b) {
                found = Some(a.to_string());
                break;
            }
        }
        found
    } else {
        let mut seen = std::collections::HashSet::with_capacity(members.len());
        let mut found = None;
        for (k, _) in members.iter() {
            if !seen.insert(k.as_ref()) {
                found = Some(k.to_string());
                break;
            }
        }
        found
    };
    match repeated {
        None => Ok(()),
        Some(key) => {
            let shown: String = key.chars().take(32).collect();
            Err(ClientError::invalid(format!(
                "{what} repeats the key {shown:?}"
            )))
        }
    }
}

fn is_http_url(url: &str) -> bool {
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        r
    } else {
        return false;
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    host_end > 0 && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Formats milliseconds since the epoch as ISO 8601 UTC with milliseconds, like JavaScript's
/// `Date.prototype.toISOString`.
pub fn iso8601(ms: Millis) -> String {
    let (y, m, d, h, mi, sec, milli) = corecast_storage::utc_fields(ms);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{sec:02}.{milli:03}Z")
}

pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    use std::io::Write;
    let _ = write!(out, "{n}");
}

/// The `newMessage` payload.
pub fn message_json(m: &StoredMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.text.len() + 160);
    out.extend_from_slice(b"{\"id\":\"");
    push_u64(&mut out, m.id.0);
    out.extend_from_slice(b"\",\"senderId\":");
    push_u64(&mut out, m.sender.0);
    out.extend_from_slice(b",\"groupId\":");
    write_json_str(&mut out, m.group.as_str());
    out.extend_from_slice(b",\"text\":");
    write_json_str(&mut out, &m.text);
    out.extend_from_slice(b",\"attachments\":[");
    for (i, a) in m.attachments.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"url\":");
        write_json_str(&mut out, &a.url);
        out.extend_from_slice(b",\"type\":");
        write_json_str(&mut out, &a.kind);
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"timestamp\":\"");
    out.extend_from_slice(iso8601(m.timestamp).as_bytes());
    out.extend_from_slice(b"\",\"readBy\":[");
    for (i, u) in m.read_by.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_u64(&mut out, u.0);
    }
    out.extend_from_slice(b"]}");
    out
}

/// The positive `sendMessage` ack: `{"ok":true,"id":"...","timestamp":"..."}`.
pub fn sent_ack_json(id: MessageId, timestamp: Millis) -> Vec<u8> {
    format!(
        "{{\"ok\":true,\"id\":\"{}\",\"timestamp\":\"{}\"}}",
        id.0,
        iso8601(timestamp)
    )
    .into_bytes()
}

/// `{"ok":true}` plus optional extra members (pre-encoded `,"k":v`).
pub fn ok_ack_json(extra: &str) -> Vec<u8> {
    format!("{{\"ok\":true{extra}}}").into_bytes()
}

/// The positive `joinGroup` / `leaveGroup` ack: `{"ok":true,"groupId":"..."}`.
pub fn group_ack_json(group: &GroupId) -> Vec<u8> {
    let mut out = Vec::with_capacity(group.as_str().len() + 24);
    out.extend_from_slice(b"{\"ok\":true,\"groupId\":");
    write_json_str(&mut out, group.as_str());
    out.push(b'}');
    out
}

/// `getMessages`' ack: the page, newest first, and whether older messages exist.
pub fn history_ack_json(messages: &[StoredMessage], has_more: bool) -> Vec<u8> {
    let mut out = b"{\"ok\":true,\"messages\":[".to_vec();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&message_json(m));
    }
    out.extend_from_slice(format!("],\"hasMore\":{has_more}}}").as_bytes());
    out
}

/// `getOnline`'s ack: the group and its members with a connection now, ascending.
pub fn online_ack_json(group: &GroupId, online: &[UserId]) -> Vec<u8> {
    let mut out = b"{\"ok\":true,\"groupId\":".to_vec();
    write_json_str(&mut out, group.as_str());
    out.extend_from_slice(b",\"online\":[");
    for (i, u) in online.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(u.0.to_string().as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

/// The `userOnline` payload.
pub fn user_online_json(user: UserId, online: bool) -> Vec<u8> {
    format!("{{\"userId\":{},\"isOnline\":{online}}}", user.0).into_bytes()
}

/// The `messageRead` payload.
pub fn message_read_json(message: MessageId, user: UserId, group: &GroupId) -> Vec<u8> {
    let mut out = format!(
        "{{\"messageId\":\"{}\",\"userId\":{},\"groupId\":",
        message.0, user.0
    )
    .into_bytes();
    write_json_str(&mut out, group.as_str());
    out.push(b'}');
    out
}

/// The `newMessage` frame of `m`, encoded once for every recipient.
pub fn new_message_frame(m: &StoredMessage) -> Bytes {
    event_frame(Role::Server, "newMessage", &[&message_json(m)])
}

/// The `messageRead` frame saying `user` read `message` in `group`.
pub fn message_read_frame(group: &GroupId, message: MessageId, user: UserId) -> Bytes {
    event_frame(
        Role::Server,
        "messageRead",
        &[&message_read_json(message, user, group)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, ClientError> {
        let mut b = s.as_bytes().to_vec();
        match parse_event(&mut b, &LimitsConfig::default()) {
            Ok(c) => Ok(c),
            Err(EventError::Rejected(e)) => Err(e),
            Err(EventError::Undecodable(m)) => panic!("{s} is undecodable: {m}"),
        }
    }

    #[test]
    fn get_messages_takes_a_page_size_up_to_100_and_an_optional_before() {
        let g = GroupId::new("g1");
        assert_eq!(
            parse(r#"["getMessages",{"groupId":"g1"}]"#).unwrap(),
            Command::Query {
                group: g.clone(),
                query: Query::Messages {
                    before: None,
                    limit: HISTORY_PAGE
                }
            }
        );
        assert_eq!(
            parse(r#"["getMessages",{"groupId":"g1","before":"42","limit":100}]"#).unwrap(),
            Command::Query {
                group: g.clone(),
                query: Query::Messages {
                    before: Some(MessageId(42)),
                    limit: 100
                }
            }
        );
        assert_eq!(
            parse(r#"["getMessages",{"groupId":"g1","before":null,"limit":null}]"#).unwrap(),
            Command::Query {
                group: g,
                query: Query::Messages {
                    before: None,
                    limit: HISTORY_PAGE
                }
            }
        );
        for bad in [
            r#"["getMessages",{"groupId":"g1","limit":0}]"#,
            r#"["getMessages",{"groupId":"g1","limit":101}]"#,
            r#"["getMessages",{"groupId":"g1","limit":"ten"}]"#,
            r#"["getMessages",{"groupId":"g1","before":"x"}]"#,
            r#"["getMessages",{}]"#,
            r#"["getOnline",{}]"#,
        ] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(e.code, Code::InvalidPayload, "{bad}: {e:?}");
        }
        assert_eq!(
            parse(r#"["getOnline",{"groupId":"g1"}]"#).unwrap(),
            Command::Query {
                group: GroupId::new("g1"),
                query: Query::Online
            }
        );
    }

    #[test]
    fn history_and_online_acks_are_json() {
        let v: serde_json::Value = serde_json::from_slice(&history_ack_json(&[], true)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ok": true, "messages": [], "hasMore": true})
        );
        let v: serde_json::Value = serde_json::from_slice(&online_ack_json(
            &GroupId::new("g\"1"),
            &[UserId(1), UserId(7)],
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ok": true, "groupId": "g\"1", "online": [1, 7]})
        );
    }

    #[test]
    fn undecodable_events_are_told_apart_from_rejected_ones() {
        for s in [
            r#"["sendMessage",{"#,
            "{}",
            "[]",
            "[null]",
            r#"["disconnect"]"#,
        ] {
            let mut b = s.as_bytes().to_vec();
            assert!(
                matches!(
                    parse_event(&mut b, &LimitsConfig::default()),
                    Err(EventError::Undecodable(_))
                ),
                "{s}"
            );
        }
        assert_eq!(code(r#"["sendMessage",{}]"#), Code::InvalidPayload);
        assert_eq!(code(r#"["dance",{}]"#), Code::UnknownEvent);
    }

    fn code(s: &str) -> Code {
        parse(s).unwrap_err().code
    }

    #[test]
    fn parses_each_event() {
        assert_eq!(
            parse(
                r#"["sendMessage",{"groupId":"10","text":"hi","attachments":[{"url":"https://x.io/a.png","type":"image"}],"clientMsgId":"c1"}]"#
            ),
            Ok(Command::SendMessage {
                group: GroupId::new("10"),
                text: "hi".into(),
                attachments: vec![Attachment {
                    url: "https://x.io/a.png".into(),
                    kind: "image".into()
                }],
                client_msg_id: Some("c1".into()),
            })
        );
        assert_eq!(
            parse(r#"["joinGroup",{"groupId":3}]"#),
            Ok(Command::JoinGroup {
                group: GroupId::new("3")
            })
        );
        assert_eq!(
            parse(r#"["leaveGroup",{"groupId":3}]"#),
            Ok(Command::LeaveGroup {
                group: GroupId::new("3")
            })
        );
        assert_eq!(
            parse(r#"["markAsRead",{"groupId":3,"messageId":"99"}]"#),
            Ok(Command::MarkAsRead {
                group: GroupId::new("3"),
                message: MessageId(99)
            })
        );
    }

    /// Found by the `client_event` fuzz target: with `text` twice, simd-json's `get` read the
    /// first while JSON.parse (and serde_json) read the last.
    #[test]
    fn repeated_keys_are_refused() {
        for s in [
            r#"["sendMessage",{"groupId":"1","text":"hi","text":"other"}]"#,
            r#"["joinGroup",{"groupId":"1","groupId":"2"}]"#,
            r#"["sendMessage",{"groupId":"1","text":"hi","attachments":[{"url":"https://x.io/a","type":"image","url":"https://y.io/b"}]}]"#,
        ] {
            let err = parse(s).unwrap_err();
            assert_eq!(err.code, Code::InvalidPayload, "{s}");
            assert!(err.message.contains("repeats the key"), "{}", err.message);
        }
        // Between 16 and 32 members, still refused.
        let some: String = (0..20).map(|i| format!(r#""k{i}":1,"#)).collect();
        let s = format!(r#"["joinGroup",{{{some}"groupId":"1","k7":2}}]"#);
        assert!(parse(&s).unwrap_err().message.contains("\"k7\""));
        // A large object: simd-json keeps the last, as JSON.parse does.
        let many: String = (0..40).map(|i| format!(r#""k{i}":1,"#)).collect();
        let s = format!(r#"["sendMessage",{{{many}"groupId":"1","text":"a","text":"b"}}]"#);
        match parse(&s) {
            Ok(Command::SendMessage { text, .. }) => assert_eq!(text, "b"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_bad_input_has_a_code() {
        assert_eq!(code(r#"["nope",{}]"#), Code::UnknownEvent);
        assert_eq!(
            code(r#"["sendMessage",{"groupId":1}]"#),
            Code::InvalidPayload
        );
        assert_eq!(
            code(r#"["sendMessage",{"groupId":1,"text":"  "}]"#),
            Code::InvalidPayload
        );
        assert_eq!(
            code(r#"["sendMessage",{"groupId":-1,"text":"a"}]"#),
            Code::InvalidPayload
        );
        assert_eq!(
            code(r#"["sendMessage",{"groupId":1,"text":5}]"#),
            Code::InvalidPayload
        );
        let long = format!(
            r#"["sendMessage",{{"groupId":1,"text":"{}"}}]"#,
            "é".repeat(4001)
        );
        assert!(parse(&long)
            .unwrap_err()
            .message
            .contains("4001 characters"));
        let ok = format!(
            r#"["sendMessage",{{"groupId":1,"text":"{}"}}]"#,
            "é".repeat(4000)
        );
        assert!(parse(&ok).is_ok());
        let many = format!(
            r#"["sendMessage",{{"groupId":1,"text":"a","attachments":[{}]}}]"#,
            [r#"{"url":"http://a.b/c","type":"image"}"#; 11].join(",")
        );
        assert!(parse(&many).unwrap_err().message.contains("limit is 10"));
        assert_eq!(
            code(
                r#"["sendMessage",{"groupId":1,"text":"a","attachments":[{"url":"javascript:alert(1)","type":"image"}]}]"#
            ),
            Code::InvalidPayload
        );
        assert!(parse(r#"["sendMessage",{"groupId":1,"text":"a","attachments":[{"url":"https://a.b/c","type":"exe"}]}]"#)
            .unwrap_err()
            .message
            .contains("not allowed"));
        assert_eq!(
            code(r#"["markAsRead",{"groupId":1,"messageId":"abc"}]"#),
            Code::InvalidPayload
        );
        assert_eq!(code(r#"["joinGroup"]"#), Code::InvalidPayload);
        assert_eq!(code(r#"[42,{}]"#), Code::InvalidPayload);
    }

    fn group_of(payload: &str) -> Result<GroupId, ClientError> {
        match parse(&format!(r#"["joinGroup",{payload}]"#))? {
            Command::JoinGroup { group } => Ok(group),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn group_ids_are_strings_and_numbers_become_their_decimal_string() {
        let ok = |p: &str, want: &str| assert_eq!(group_of(p).unwrap().as_str(), want, "{p}");
        ok(r#"{"groupId":"team-berlin"}"#, "team-berlin");
        ok(r#"{"groupId":"team berlin"}"#, "team berlin");
        ok(r#"{"groupId":"Zürich \u2615"}"#, "Zürich ☕");
        ok(r#"{"groupId":"007"}"#, "007");
        ok(r#"{"groupId":10}"#, "10");
        ok(r#"{"groupId":0}"#, "0");
        ok(
            r#"{"groupId":18446744073709551615}"#,
            "18446744073709551615",
        );
        ok(r#"{"groupId":"a\"b\\c"}"#, "a\"b\\c");
        let long = "x".repeat(128);
        ok(&format!(r#"{{"groupId":"{long}"}}"#), &long);
        // The same bound for every event that names a group.
        for event in ["sendMessage", "joinGroup", "leaveGroup", "markAsRead"] {
            let e = parse(&format!(
                r#"["{event}",{{"groupId":"{long}x","text":"a","messageId":"1"}}]"#
            ))
            .unwrap_err();
            assert_eq!(e.code, Code::InvalidPayload);
            assert_eq!(
                e.message, "groupId is 129 bytes; the limit is 128",
                "{event}"
            );
        }
    }

    #[test]
    fn bad_group_ids_are_invalid_payloads_with_a_clear_message() {
        let bad = |p: &str, says: &str| {
            let e = group_of(p).unwrap_err();
            assert_eq!(e.code, Code::InvalidPayload, "{p}");
            assert!(e.message.contains(says), "{p}: {}", e.message);
        };
        bad(r#"{"groupId":""}"#, "must not be empty");
        bad(
            r#"{"groupId":"a\nb"}"#,
            "control characters (U+000A at byte 1)",
        );
        bad(r#"{"groupId":"\u0000"}"#, "control characters");
        bad(r#"{"groupId":"\u007f"}"#, "control characters");
        bad(r#"{"groupId":{"id":1}}"#, "not an object");
        bad(r#"{"groupId":[1]}"#, "not an array");
        bad(r#"{"groupId":true}"#, "not a boolean");
        bad(r#"{"groupId":null}"#, "not null");
        bad(r#"{"groupId":-1}"#, "not a negative number");
        bad(r#"{"groupId":1.5}"#, "not a fractional");
        bad(r#"{"groupId":10.0}"#, "not a fractional");
        bad(r#"{"groupId":1e3}"#, "not a fractional");
        bad(r#"{}"#, "groupId is required");
        bad(
            r#"{"groupId":false}"#,
            "groupId must be a string (1 to 128 bytes) or a non-negative integer",
        );
        // The configured bound, in bytes of UTF-8.
        let limits = LimitsConfig {
            max_group_id_bytes: 4,
            ..LimitsConfig::default()
        };
        let mut b = r#"["joinGroup",{"groupId":"☕☕"}]"#.as_bytes().to_vec();
        let Err(EventError::Rejected(e)) = parse_event(&mut b, &limits) else {
            panic!("an over-long groupId is rejected");
        };
        assert_eq!(e.message, "groupId is 6 bytes; the limit is 4");
        let mut b = r#"["joinGroup",{"groupId":12345}]"#.as_bytes().to_vec();
        assert!(parse_event(&mut b, &limits).is_err());
    }

    #[test]
    fn group_ids_go_out_as_json_strings() {
        let g = GroupId::new("team \"berlin\" ☕");
        let v: serde_json::Value = serde_json::from_slice(&group_ack_json(&g)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ok": true, "groupId": "team \"berlin\" ☕"})
        );
        let v: serde_json::Value =
            serde_json::from_slice(&message_read_json(MessageId(9), UserId(2), &g)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"messageId": "9", "userId": 2, "groupId": "team \"berlin\" ☕"})
        );
        let v: serde_json::Value =
            serde_json::from_slice(&group_ack_json(&GroupId::new("007"))).unwrap();
        assert_eq!(v["groupId"], "007");
    }

    #[test]
    fn iso8601_matches_javascript() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_764_115_200_123), "2025-11-26T00:00:00.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn encoded_payloads_are_valid_json() {
        let m = StoredMessage {
            id: MessageId(5),
            group: GroupId::new("2"),
            sender: UserId(1),
            text: "a \"quoted\"\n line".into(),
            attachments: vec![Attachment {
                url: "https://x".into(),
                kind: "file".into(),
            }],
            timestamp: 0,
            client_msg_id: None,
            read_by: vec![UserId(3)],
        };
        let v: serde_json::Value = serde_json::from_slice(&message_json(&m)).unwrap();
        assert_eq!(v["text"], "a \"quoted\"\n line");
        assert_eq!(v["id"], "5");
        assert_eq!(v["readBy"][0], 3);
        assert_eq!(v["groupId"], "2");
        let e = ClientError::new(Code::NotMember, "x \"y\"");
        let v: serde_json::Value = serde_json::from_slice(&e.to_ack_json()).unwrap();
        assert_eq!(v["error"]["code"], "not_member");
    }
}
