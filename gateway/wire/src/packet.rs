//! Engine.IO v4 and Socket.IO v5 packets as they travel in WebSocket text frames.
//!
//! Parsing borrows: [`parse_eio`] returns slices of the frame, [`parse_sio`] returns ranges
//! into the Engine.IO message so that the caller can re-borrow it mutably for simd-json.
//! The JSON inside packets is never parsed here, only its outer shape is checked.
//! Encoders append to a reused `Vec<u8>`, or build one complete frame in one allocation
//! ([`event_frame`], [`ack_frame`]). Only the default namespace is ever written, except in
//! [`write_connect_error`], which answers a request for another namespace. Close frames and
//! their reasons are [`crate::close`]'s.

use std::ops::Range;

use bytes::Bytes;

use crate::sink::{put_u64, Payload, Sink};
use crate::ws::{self, Role};

/// Engine.IO ping (server to client over WebSocket in v4).
pub const PING: &[u8] = b"2";
/// Engine.IO pong.
pub const PONG: &[u8] = b"3";
/// Engine.IO close.
pub const EIO_CLOSE: &[u8] = b"1";
/// Engine.IO noop: answers a pending long-polling GET during an upgrade.
pub const NOOP: &[u8] = b"6";
/// Socket.IO DISCONNECT for the default namespace, inside an Engine.IO message.
pub const SIO_DISCONNECT: &[u8] = b"41";

/// Longest accepted ack id. JavaScript clients count acks from 0 in a double, so ids never
/// get near this; a longer one is garbage, and the limit keeps u64 arithmetic exact.
pub const MAX_ACK_ID_DIGITS: usize = 16;

/// Why a packet was refused. Every variant means the peer sent something no conforming
/// client sends; the gateway answers it as a protocol error.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown Engine.IO packet type byte {0:#04x}")]
    UnknownEioType(u8),
    #[error("unknown Socket.IO packet type byte {0:#04x}")]
    UnknownSioType(u8),
    #[error("binary packet without a valid `<attachments>-` count")]
    InvalidAttachments,
    #[error("attachment count on a packet type that carries no binary data")]
    AttachmentsNotAllowed,
    #[error("ack id longer than {MAX_ACK_ID_DIGITS} digits")]
    AckIdOverflow,
    #[error("ack id on a {0:?} packet, which cannot be acknowledged")]
    UnexpectedAckId(SioKind),
    #[error("{0:?} packet without an ack id")]
    MissingAckId(SioKind),
    #[error("namespace is not valid UTF-8")]
    InvalidNamespace,
    #[error("data of a {0:?} packet has the wrong JSON shape")]
    InvalidData(SioKind),
}

/// An Engine.IO v4 packet; payloads borrow from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EioPacket<'a> {
    Open(&'a [u8]),
    Close,
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A Socket.IO packet (see [`parse_sio`]).
    Message(&'a [u8]),
    Upgrade,
    Noop,
}

/// Parses an Engine.IO text packet (the whole text of a WebSocket text frame). Like the
/// reference parser, anything after the type byte of `Close`/`Upgrade`/`Noop` is ignored.
pub fn parse_eio(text: &[u8]) -> Result<EioPacket<'_>, PacketError> {
    let (&kind, rest) = text.split_first().ok_or(PacketError::Empty)?;
    Ok(match kind {
        b'0' => EioPacket::Open(rest),
        b'1' => EioPacket::Close,
        b'2' => EioPacket::Ping(rest),
        b'3' => EioPacket::Pong(rest),
        b'4' => EioPacket::Message(rest),
        b'5' => EioPacket::Upgrade,
        b'6' => EioPacket::Noop,
        other => return Err(PacketError::UnknownEioType(other)),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioKind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl SioKind {
    pub fn from_digit(byte: u8) -> Option<SioKind> {
        Some(match byte {
            b'0' => SioKind::Connect,
            b'1' => SioKind::Disconnect,
            b'2' => SioKind::Event,
            b'3' => SioKind::Ack,
            b'4' => SioKind::ConnectError,
            b'5' => SioKind::BinaryEvent,
            b'6' => SioKind::BinaryAck,
            _ => return None,
        })
    }

    pub fn digit(self) -> u8 {
        b'0' + self as u8
    }

    /// Whether packets of this kind are followed by binary attachment frames.
    pub fn is_binary(self) -> bool {
        matches!(self, SioKind::BinaryEvent | SioKind::BinaryAck)
    }
}

/// A parsed Socket.IO packet. The ranges index into the message passed to [`parse_sio`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SioPacket {
    pub kind: SioKind,
    /// Includes the leading `/`; empty means the default namespace `/`.
    pub namespace: Range<usize>,
    /// Binary frames that follow this packet (binary kinds only; 0 otherwise).
    pub attachments: u32,
    pub ack_id: Option<u64>,
    /// The JSON data; may be empty (CONNECT without auth, DISCONNECT).
    pub data: Range<usize>,
}

/// Parses a Socket.IO packet: `msg` is the Engine.IO message payload (without the leading
/// `4`). Grammar: `<type digit>[<attachments>-][/<nsp>,][<ack id digits>][<json>]`.
///
/// The JSON is not parsed, but its outer shape is checked per kind: events and acks carry
/// an array, CONNECT an optional object, CONNECT_ERROR an object or string, DISCONNECT
/// nothing. Ack ids are only accepted on events and required on acks.
pub fn parse_sio(msg: &[u8]) -> Result<SioPacket, PacketError> {
    let (&type_byte, _) = msg.split_first().ok_or(PacketError::Empty)?;
    let kind = SioKind::from_digit(type_byte).ok_or(PacketError::UnknownSioType(type_byte))?;
    let mut at = 1;

    let mut attachments = 0;
    if kind.is_binary() {
        let end = digits_end(msg, at);
        if end == at || msg.get(end) != Some(&b'-') || end - at > 9 {
            return Err(PacketError::InvalidAttachments);
        }
        attachments = parse_digits(&msg[at..end]) as u32;
        at = end + 1;
    }

    let mut namespace = at..at;
    if msg.get(at) == Some(&b'/') {
        let end = msg[at..]
            .iter()
            .position(|&b| b == b',')
            .map_or(msg.len(), |p| at + p);
        std::str::from_utf8(&msg[at..end]).map_err(|_| PacketError::InvalidNamespace)?;
        namespace = at..end;
        at = (end + 1).min(msg.len());
    }

    let end = digits_end(msg, at);
    let ack_id = if end > at {
        if end - at > MAX_ACK_ID_DIGITS {
            return Err(PacketError::AckIdOverflow);
        }
        Some(parse_digits(&msg[at..end]))
    } else {
        None
    };
    at = end;
    if msg.get(at) == Some(&b'-') {
        return Err(if kind.is_binary() {
            PacketError::InvalidData(kind)
        } else {
            PacketError::AttachmentsNotAllowed
        });
    }
    match (kind, ack_id) {
        (SioKind::Connect | SioKind::Disconnect | SioKind::ConnectError, Some(_)) => {
            return Err(PacketError::UnexpectedAckId(kind))
        }
        (SioKind::Ack | SioKind::BinaryAck, None) => return Err(PacketError::MissingAckId(kind)),
        _ => {}
    }

    let data = &msg[at..];
    let shape_ok = match kind {
        SioKind::Connect => data.is_empty() || enclosed(data, b'{', b'}'),
        SioKind::Disconnect => data.is_empty(),
        SioKind::ConnectError => enclosed(data, b'{', b'}') || enclosed(data, b'"', b'"'),
        SioKind::Event | SioKind::BinaryEvent | SioKind::Ack | SioKind::BinaryAck => {
            enclosed(data, b'[', b']')
        }
    };
    if !shape_ok {
        return Err(PacketError::InvalidData(kind));
    }

    Ok(SioPacket {
        kind,
        namespace,
        attachments,
        ack_id,
        data: at..msg.len(),
    })
}

fn digits_end(msg: &[u8], from: usize) -> usize {
    msg[from..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(msg.len(), |p| from + p)
}

/// At most 19 ASCII digits (callers check), so this cannot overflow.
fn parse_digits(digits: &[u8]) -> u64 {
    digits.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0'))
}

fn enclosed(data: &[u8], open: u8, close: u8) -> bool {
    data.len() >= 2 && data[0] == open && data[data.len() - 1] == close
}

/// The packet's namespace: `/` when it names none. Falls back to `/` if `p` was not parsed
/// from `msg` (the ranges do not fit), rather than panicking on a caller's mix-up.
pub fn namespace<'a>(msg: &'a [u8], p: &SioPacket) -> &'a str {
    match msg.get(p.namespace.clone()) {
        Some(nsp) if !nsp.is_empty() => std::str::from_utf8(nsp).unwrap_or("/"),
        _ => "/",
    }
}

/// `0{"sid":..,"upgrades":[..],"pingInterval":..,"pingTimeout":..,"maxPayload":..}`;
/// `upgrades` names the transports a polling session may upgrade to (`["websocket"]`), and is
/// empty on a WebSocket session.
pub fn write_open(
    out: &mut Vec<u8>,
    sid: &str,
    upgrades: &[&str],
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: usize,
) {
    out.extend_from_slice(b"0{\"sid\":");
    put_json_str(out, sid);
    out.extend_from_slice(b",\"upgrades\":[");
    for (i, u) in upgrades.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        put_json_str(out, u);
    }
    out.extend_from_slice(b"],\"pingInterval\":");
    put_u64(out, ping_interval_ms);
    out.extend_from_slice(b",\"pingTimeout\":");
    put_u64(out, ping_timeout_ms);
    out.extend_from_slice(b",\"maxPayload\":");
    put_u64(out, max_payload as u64);
    out.push(b'}');
}

/// Separates the packets of an HTTP long-polling payload (Engine.IO v4: the record separator).
pub const POLLING_SEPARATOR: u8 = 0x1e;

/// The packets of a long-polling payload (a POST body or a GET answer), in order. An empty
/// payload has none; an empty packet between two separators is yielded as empty (and then
/// refused by [`parse_eio`]).
pub fn polling_packets(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut parts = payload.split(|&b| b == POLLING_SEPARATOR);
    let empty = payload.is_empty();
    std::iter::from_fn(move || if empty { None } else { parts.next() })
}

/// Appends `packet` to a long-polling payload being built in `out`.
pub fn push_polling_packet(out: &mut Vec<u8>, packet: &[u8]) {
    if !out.is_empty() {
        out.push(POLLING_SEPARATOR);
    }
    out.extend_from_slice(packet);
}

/// `40{"sid":"..."}`: CONNECT accepted on the default namespace; `40{"sid":"...","pid":"..."}`
/// with the private session id of connection state recovery, which the client sends back
/// when it reconnects.
pub fn write_connect(out: &mut Vec<u8>, sid: &str, pid: Option<&str>) {
    out.extend_from_slice(b"40{\"sid\":");
    put_json_str(out, sid);
    if let Some(pid) = pid {
        out.extend_from_slice(b",\"pid\":");
        put_json_str(out, pid);
    }
    out.push(b'}');
}

/// Client side: `40`, or `40{...}` with the auth object (pre-encoded JSON).
pub fn write_connect_request(out: &mut Vec<u8>, auth_json: Option<&[u8]>) {
    out.extend_from_slice(b"40");
    if let Some(auth) = auth_json {
        out.extend_from_slice(auth);
    }
}

/// `44{"message":"..."}`, or `44/ns,{"message":"..."}` for a namespace other than `/`.
pub fn write_connect_error(out: &mut Vec<u8>, namespace: &str, message: &str) {
    out.extend_from_slice(b"44");
    if !namespace.is_empty() && namespace != "/" {
        if !namespace.starts_with('/') {
            out.push(b'/');
        }
        out.extend_from_slice(namespace.as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"{\"message\":");
    put_json_str(out, message);
    out.push(b'}');
}

/// `44{"message":"...","data":{"code":"..."}}`: CONNECT refused on the default namespace. As
/// Socket.IO servers do for a middleware's error, `data` carries a machine-readable `code`
/// (`unauthenticated`, `storage_unavailable`) beside the `message` for people; clients read
/// them as `err.message` and `err.data.code` of `connect_error`.
pub fn write_connect_refused(out: &mut Vec<u8>, message: &str, code: &str) {
    out.extend_from_slice(b"44{\"message\":");
    put_json_str(out, message);
    out.extend_from_slice(b",\"data\":{\"code\":");
    put_json_str(out, code);
    out.extend_from_slice(b"}}");
}

/// `42[<ack id>]["event",arg1,...]`; each arg is pre-encoded JSON.
pub fn write_event(out: &mut Vec<u8>, ack_id: Option<u64>, event: &str, args_json: &[&[u8]]) {
    EventPayload {
        ack_id,
        event,
        args: args_json,
    }
    .write_to(out);
}

/// `43<id>[arg1,...]`; each arg is pre-encoded JSON.
pub fn write_ack(out: &mut Vec<u8>, ack_id: u64, args_json: &[&[u8]]) {
    AckPayload {
        ack_id,
        args: args_json,
    }
    .write_to(out);
}

/// A JSON string literal, escaping quotes, backslashes, control characters and U+2028/2029
/// (which break JavaScript that evaluates JSON as code).
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    put_json_str(out, s);
}

/// One complete WebSocket text frame carrying an event for the default namespace, in one
/// allocation of exact size (the payload length is computed first). Masked for a client.
pub fn event_frame(role: Role, event: &str, args_json: &[&[u8]]) -> Bytes {
    let payload = EventPayload {
        ack_id: None,
        event,
        args: args_json,
    };
    ws::frame(role, ws::OP_TEXT, &payload)
}

/// Like [`event_frame`], asking the receiver for an ack with `ack_id`.
pub fn event_frame_with_ack(role: Role, ack_id: u64, event: &str, args_json: &[&[u8]]) -> Bytes {
    let payload = EventPayload {
        ack_id: Some(ack_id),
        event,
        args: args_json,
    };
    ws::frame(role, ws::OP_TEXT, &payload)
}

/// `frame` (a server's text frame carrying an event, `42[...]`, as [`event_frame`] makes it)
/// with one more argument, the string `offset`, last: what the client of connection state
/// recovery keeps. One copy of the frame with a new header, in one allocation; the event is
/// not encoded again. `offset` must need no JSON escaping (recovery offsets are digits, letters,
/// `.` and `-`). `None` if `frame` is not one such frame.
pub fn with_offset(frame: &[u8], offset: &[u8]) -> Option<Bytes> {
    debug_assert!(offset
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    let mut frames = ws::server_frames(frame);
    let (ws::OP_TEXT, event) = frames.next()? else {
        return None;
    };
    if frames.next().is_some() || !event.starts_with(b"42") || !event.ends_with(b"]") {
        return None;
    }
    Some(ws::frame(
        Role::Server,
        ws::OP_TEXT,
        &OffsetPayload {
            event: &event[..event.len() - 1],
            offset,
        },
    ))
}

struct OffsetPayload<'a> {
    /// The event without its closing `]`.
    event: &'a [u8],
    offset: &'a [u8],
}

impl Payload for OffsetPayload<'_> {
    fn write_to<S: Sink>(&self, out: &mut S) {
        out.put(self.event);
        out.put(b",\"");
        out.put(self.offset);
        out.put(b"\"]");
    }

    fn encoded_len(&self) -> usize {
        self.event.len() + self.offset.len() + 4
    }
}

/// One complete WebSocket text frame carrying `43<id>[args]`, in one allocation.
pub fn ack_frame(role: Role, ack_id: u64, args_json: &[&[u8]]) -> Bytes {
    ws::frame(
        role,
        ws::OP_TEXT,
        &AckPayload {
            ack_id,
            args: args_json,
        },
    )
}

struct EventPayload<'a> {
    ack_id: Option<u64>,
    event: &'a str,
    args: &'a [&'a [u8]],
}

impl Payload for EventPayload<'_> {
    fn write_to<S: Sink>(&self, out: &mut S) {
        out.put(b"42");
        if let Some(id) = self.ack_id {
            put_u64(out, id);
        }
        out.put_byte(b'[');
        put_json_str(out, self.event);
        for arg in self.args {
            out.put_byte(b',');
            out.put(arg);
        }
        out.put_byte(b']');
    }
}

struct AckPayload<'a> {
    ack_id: u64,
    args: &'a [&'a [u8]],
}

impl Payload for AckPayload<'_> {
    fn write_to<S: Sink>(&self, out: &mut S) {
        out.put(b"43");
        put_u64(out, self.ack_id);
        out.put_byte(b'[');
        for (i, arg) in self.args.iter().enumerate() {
            if i > 0 {
                out.put_byte(b',');
            }
            out.put(arg);
        }
        out.put_byte(b']');
    }
}

fn put_json_str<S: Sink>(out: &mut S, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.put_byte(b'"');
    let mut clean_from = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // Fast path: everything but the few bytes that may need escaping.
        if b >= 0x20 && b != b'"' && b != b'\\' && b != 0xE2 {
            i += 1;
            continue;
        }
        let (escape, width): (&[u8], usize) = match b {
            b'"' => (b"\\\"", 1),
            b'\\' => (b"\\\\", 1),
            b'\n' => (b"\\n", 1),
            b'\r' => (b"\\r", 1),
            b'\t' => (b"\\t", 1),
            0x08 => (b"\\b", 1),
            0x0C => (b"\\f", 1),
            0xE2 => match bytes.get(i + 1..i + 3) {
                Some([0x80, 0xA8]) => (b"\\u2028", 3),
                Some([0x80, 0xA9]) => (b"\\u2029", 3),
                _ => {
                    i += 1;
                    continue;
                }
            },
            _ => {
                out.put(&bytes[clean_from..i]);
                out.put(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xF)],
                ]);
                i += 1;
                clean_from = i;
                continue;
            }
        };
        out.put(&bytes[clean_from..i]);
        out.put(escape);
        i += width;
        clean_from = i;
    }
    out.put(&bytes[clean_from..]);
    out.put_byte(b'"');
}

#[cfg(test)]
mod tests {
    #[test]
    fn polling_payloads_split_and_join_on_the_record_separator() {
        let mut out = Vec::new();
        push_polling_packet(&mut out, b"2");
        push_polling_packet(&mut out, b"42[\"a\"]");
        assert_eq!(out, b"2\x1e42[\"a\"]");
        let packets: Vec<_> = polling_packets(&out).collect();
        assert_eq!(packets, vec![&b"2"[..], &b"42[\"a\"]"[..]]);
        assert_eq!(polling_packets(b"").count(), 0);
        assert_eq!(polling_packets(b"3").collect::<Vec<_>>(), vec![&b"3"[..]]);
        assert_eq!(
            polling_packets(b"3\x1e").collect::<Vec<_>>(),
            vec![&b"3"[..], &b""[..]]
        );
    }

    use super::*;
    use crate::ws::{Decoder, Message};
    use bytes::BytesMut;
    use serde_json::{json, Value};

    /// Parses a whole Engine.IO text (as in a frame) down to the Socket.IO packet.
    fn sio(text: &str) -> Result<SioPacket, PacketError> {
        match parse_eio(text.as_bytes())? {
            EioPacket::Message(msg) => parse_sio(msg),
            other => panic!("not a message: {other:?}"),
        }
    }

    fn data_of(text: &str) -> Value {
        let msg = &text.as_bytes()[1..];
        let p = parse_sio(msg).unwrap();
        serde_json::from_slice(&msg[p.data]).unwrap()
    }

    #[test]
    fn engine_io_packets() {
        assert_eq!(
            parse_eio(b"0{\"sid\":1}"),
            Ok(EioPacket::Open(b"{\"sid\":1}"))
        );
        assert_eq!(parse_eio(b"1"), Ok(EioPacket::Close));
        assert_eq!(parse_eio(b"2"), Ok(EioPacket::Ping(b"")));
        assert_eq!(parse_eio(b"2probe"), Ok(EioPacket::Ping(b"probe")));
        assert_eq!(parse_eio(b"3"), Ok(EioPacket::Pong(b"")));
        assert_eq!(parse_eio(b"42[\"a\"]"), Ok(EioPacket::Message(b"2[\"a\"]")));
        assert_eq!(parse_eio(b"5"), Ok(EioPacket::Upgrade));
        assert_eq!(parse_eio(b"6"), Ok(EioPacket::Noop));
        assert_eq!(parse_eio(b""), Err(PacketError::Empty));
        assert_eq!(parse_eio(b"7"), Err(PacketError::UnknownEioType(b'7')));
        assert_eq!(parse_eio(b"x"), Err(PacketError::UnknownEioType(b'x')));
        assert_eq!(parse_eio(PING), Ok(EioPacket::Ping(b"")));
        assert_eq!(parse_eio(PONG), Ok(EioPacket::Pong(b"")));
        assert_eq!(parse_eio(EIO_CLOSE), Ok(EioPacket::Close));
    }

    #[test]
    fn socket_io_grammar() {
        let p = sio("40").unwrap();
        assert_eq!(
            (p.kind, p.ack_id, p.data.is_empty()),
            (SioKind::Connect, None, true)
        );
        assert_eq!(namespace(b"0", &p), "/");

        let text = "40{\"token\":\"x\"}";
        let p = sio(text).unwrap();
        assert_eq!(p.kind, SioKind::Connect);
        assert_eq!(data_of(text), json!({"token": "x"}));

        let msg = b"0/admin,{}";
        let p = parse_sio(msg).unwrap();
        assert_eq!(namespace(msg, &p), "/admin");
        assert_eq!(&msg[p.data.clone()], b"{}");

        let p = parse_sio(b"0/admin").unwrap();
        assert_eq!(namespace(b"0/admin", &p), "/admin");
        assert!(p.data.is_empty());

        let text = "421[\"a\",{}]";
        let p = sio(text).unwrap();
        assert_eq!(
            (p.kind, p.ack_id, p.attachments),
            (SioKind::Event, Some(1), 0)
        );
        assert_eq!(data_of(text), json!(["a", {}]));

        let p = sio("4312[{}]").unwrap();
        assert_eq!((p.kind, p.ack_id), (SioKind::Ack, Some(12)));

        let text = "451-[\"a\",{\"_placeholder\":true,\"num\":0}]";
        let p = sio(text).unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.ack_id),
            (SioKind::BinaryEvent, 1, None)
        );
        assert_eq!(data_of(text)[1]["num"], json!(0));

        let p = parse_sio(b"62-/admin,7[{\"_placeholder\":true,\"num\":1}]").unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.ack_id),
            (SioKind::BinaryAck, 2, Some(7))
        );

        assert_eq!(sio("41").unwrap().kind, SioKind::Disconnect);
        assert_eq!(parse_eio(SIO_DISCONNECT), Ok(EioPacket::Message(b"1")));
        assert_eq!(
            parse_sio(b"4{\"message\":\"no\"}").unwrap().kind,
            SioKind::ConnectError
        );
        assert_eq!(parse_sio(b"2/chat,[\"a\"]").unwrap().namespace, 1..6);
    }

    #[test]
    fn socket_io_garbage_is_rejected() {
        assert_eq!(sio("4"), Err(PacketError::Empty));
        assert_eq!(sio("4x"), Err(PacketError::UnknownSioType(b'x')));
        assert_eq!(sio("47[]"), Err(PacketError::UnknownSioType(b'7')));
        assert_eq!(sio("42abc"), Err(PacketError::InvalidData(SioKind::Event)));
        assert_eq!(sio("42"), Err(PacketError::InvalidData(SioKind::Event)));
        assert_eq!(
            sio("42[\"a\""),
            Err(PacketError::InvalidData(SioKind::Event))
        );
        assert_eq!(sio("421-[\"a\"]"), Err(PacketError::AttachmentsNotAllowed));
        assert_eq!(sio("45[\"a\"]"), Err(PacketError::InvalidAttachments));
        assert_eq!(sio("45-[\"a\"]"), Err(PacketError::InvalidAttachments));
        assert_eq!(
            sio("4512345678901-[\"a\"]"),
            Err(PacketError::InvalidAttachments)
        );
        assert_eq!(sio("43[{}]"), Err(PacketError::MissingAckId(SioKind::Ack)));
        assert_eq!(
            sio("401{}"),
            Err(PacketError::UnexpectedAckId(SioKind::Connect))
        );
        assert_eq!(
            sio("41x"),
            Err(PacketError::InvalidData(SioKind::Disconnect))
        );
        assert_eq!(sio("40[]"), Err(PacketError::InvalidData(SioKind::Connect)));
        assert_eq!(
            sio("4212345678901234567[\"a\"]"),
            Err(PacketError::AckIdOverflow)
        );
        assert_eq!(
            sio("42123456789012345678901234567890[\"a\"]"),
            Err(PacketError::AckIdOverflow)
        );
        assert_eq!(
            sio("421234567890123456[\"a\"]").unwrap().ack_id,
            Some(1234567890123456)
        );
        assert_eq!(parse_sio(b"0/\xff,{}"), Err(PacketError::InvalidNamespace));
    }

    #[test]
    fn json_strings_are_escaped() {
        let cases = [
            "plain",
            "",
            "quote \" and backslash \\",
            "\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}",
            "é 漢字 🎉",
            "line\u{2028}para\u{2029}end",
            "\u{2027}\u{202a}", // neighbours of U+2028/2029 stay literal
        ];
        for s in cases {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
            assert!(
                !out.iter().any(|&b| b < 0x20),
                "raw control byte in {out:?}"
            );
        }
        let mut out = Vec::new();
        write_json_str(&mut out, "a\"\\\n\u{1}\u{2028}b");
        assert_eq!(out, br#""a\"\\\n\u0001\u2028b""#);
    }

    #[test]
    fn encoders_round_trip_through_the_parsers() {
        let mut out = Vec::new();
        write_open(&mut out, "abc", &[], 25_000, 20_000, 1_000_000);
        let EioPacket::Open(open) = parse_eio(&out).unwrap() else {
            panic!("not open")
        };
        let open: Value = serde_json::from_slice(open).unwrap();
        assert_eq!(
            open,
            json!({"sid": "abc", "upgrades": [], "pingInterval": 25000,
                   "pingTimeout": 20000, "maxPayload": 1000000})
        );

        out.clear();
        write_connect(&mut out, "s1d", None);
        assert_eq!(out, br#"40{"sid":"s1d"}"#);
        assert_eq!(
            data_of(std::str::from_utf8(&out).unwrap()),
            json!({"sid": "s1d"})
        );
        out.clear();
        write_connect(&mut out, "s1d", Some("p.1"));
        assert_eq!(
            data_of(std::str::from_utf8(&out).unwrap()),
            json!({"sid": "s1d", "pid": "p.1"})
        );

        out.clear();
        write_connect_request(&mut out, None);
        assert_eq!(out, b"40");
        out.clear();
        write_connect_request(&mut out, Some(br#"{"token":"t"}"#));
        assert_eq!(
            sio(std::str::from_utf8(&out).unwrap()).unwrap().kind,
            SioKind::Connect
        );

        out.clear();
        write_connect_error(&mut out, "/", "bad \"token\"");
        assert_eq!(out, br#"44{"message":"bad \"token\""}"#);
        out.clear();
        write_connect_error(&mut out, "/admin", "Invalid namespace");
        assert_eq!(out, br#"44/admin,{"message":"Invalid namespace"}"#);
        let p = parse_sio(&out[1..]).unwrap();
        assert_eq!(
            (p.kind, namespace(&out[1..], &p)),
            (SioKind::ConnectError, "/admin")
        );

        out.clear();
        write_connect_refused(&mut out, "authentication token expired", "unauthenticated");
        assert_eq!(
            out,
            br#"44{"message":"authentication token expired","data":{"code":"unauthenticated"}}"#
        );
        assert_eq!(
            data_of(std::str::from_utf8(&out).unwrap()),
            json!({"message": "authentication token expired", "data": {"code": "unauthenticated"}})
        );

        out.clear();
        write_event(&mut out, None, "newMessage", &[br#"{"id":1}"#, b"2"]);
        assert_eq!(out, br#"42["newMessage",{"id":1},2]"#);
        out.clear();
        write_event(&mut out, Some(7), "ping\"", &[]);
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(sio(text).unwrap().ack_id, Some(7));
        assert_eq!(data_of(text), json!(["ping\""]));

        out.clear();
        write_ack(&mut out, 12, &[br#"{"ok":true}"#]);
        assert_eq!(out, br#"4312[{"ok":true}]"#);
        out.clear();
        write_ack(&mut out, 0, &[]);
        assert_eq!(out, b"430[]");
        assert_eq!(sio("430[]").unwrap().ack_id, Some(0));
    }

    #[test]
    fn event_frame_equals_text_frame_of_write_event() {
        let args: [&[u8]; 2] = [br#"{"text":"hi"}"#, b"[1,2]"];
        let mut payload = Vec::new();
        write_event(&mut payload, None, "newMessage", &args);
        let frame = event_frame(Role::Server, "newMessage", &args);
        assert_eq!(frame, ws::text_frame(Role::Server, &payload));

        // Large enough for a 16-bit length, and masked from a client.
        let big = vec![b'7'; 300];
        let frame = event_frame(Role::Client, "e", &[&big]);
        let mut decoder = Decoder::new(Role::Server, 1 << 16);
        let msg = decoder
            .decode(&mut BytesMut::from(&frame[..]))
            .unwrap()
            .unwrap();
        let Message::Text(text) = msg else {
            panic!("not text")
        };
        let mut expected = Vec::new();
        write_event(&mut expected, None, "e", &[&big]);
        assert_eq!(&text[..], &expected[..]);

        let frame = ack_frame(Role::Server, 3, &[b"{}"]);
        assert_eq!(&frame[2..], b"433[{}]");
        let frame = event_frame_with_ack(Role::Server, 9, "x", &[]);
        assert_eq!(&frame[2..], br#"429["x"]"#);
    }

    /// Not a benchmark (those live in bench/): a quick look at the encode cost.
    /// Run with `cargo test -p corecast-wire --release -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn micro_event_frame_cost() {
        let arg: &[u8] = br#"{"id":"01HZX","senderId":42,"groupId":7,"text":"hello there","attachments":[],"timestamp":"2024-01-01T00:00:00Z","readBy":[]}"#;
        let n = 1_000_000;
        let start = std::time::Instant::now();
        let mut total = 0;
        for _ in 0..n {
            total += std::hint::black_box(event_frame(Role::Server, "newMessage", &[arg])).len();
        }
        let elapsed = start.elapsed();
        println!("event_frame: {:?}/frame ({total} bytes)", elapsed / n);
    }

    #[test]
    fn an_offset_is_added_as_the_last_argument_without_encoding_the_event_again() {
        for text in ["short", &"long ".repeat(40), &"longer ".repeat(10_000)] {
            let msg = serde_json::to_vec(&json!({"text": text})).unwrap();
            let frame = event_frame(Role::Server, "newMessage", &[&msg]);
            let with = with_offset(&frame, b"3f.a-b").unwrap();
            let (op, payload) = ws::server_frames(&with).next().unwrap();
            assert_eq!(op, ws::OP_TEXT);
            let args: Value = serde_json::from_slice(&payload[2..]).unwrap();
            assert_eq!(args, json!(["newMessage", {"text": text}, "3f.a-b"]));
            assert_eq!(ws::server_frames(&with).count(), 1, "one whole frame");
        }
        let ack = ack_frame(Role::Server, 1, &[b"{}"]);
        assert_eq!(with_offset(&ack, b"1"), None, "an ack is not an event");
        assert_eq!(with_offset(b"\x81\x05", b"1"), None, "a cut frame");
    }
}
