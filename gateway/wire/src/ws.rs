//! WebSocket frames (RFC 6455): a sans-IO [`Decoder`] for incoming frames and encoders for
//! outgoing ones.
//!
//! tungstenite's public [`FrameHeader::parse`] reads incoming frame headers; this module
//! applies the rules around it (masking per role, reserved bits, control frame limits,
//! fragmentation, size limits, UTF-8) and does the (un)masking itself, in place.
//!
//! Never does I/O and never keeps a read buffer: the caller owns the bytes read from the
//! socket and passes them to [`Decoder::decode`]. Payloads handed back are split off the
//! caller's buffer (no copy), so they share its allocation until dropped.

use std::cell::Cell;
use std::io::Cursor;

use bytes::{Buf, Bytes, BytesMut};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::sink::{Payload, Sink};

/// Close codes as RFC 6455 names them (tungstenite's type; converts to and from `u16`).
pub use tungstenite::protocol::frame::coding::CloseCode;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// RFC 6455 section 5.5: control frame payloads are at most 125 bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Which end of the connection we are; decides masking in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Expects masked incoming frames, writes unmasked ones.
    Server,
    /// Expects unmasked incoming frames, writes masked ones.
    Client,
}

impl Role {
    /// The mask key for one outgoing frame: none for a server, a fresh one for a client.
    fn outgoing_mask(self) -> Option<[u8; 4]> {
        match self {
            Role::Server => None,
            Role::Client => Some(next_mask_key()),
        }
    }
}

/// One complete WebSocket message (fragments already reassembled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Valid UTF-8 (checked by the decoder).
    Text(BytesMut),
    Binary(BytesMut),
    Ping(BytesMut),
    Pong(BytesMut),
    /// `None` when the peer sent no status code; otherwise the code and the UTF-8 reason.
    Close(Option<(u16, String)>),
}

/// A violation by the peer. Every variant is fatal for the connection: send
/// [`close_frame`] with [`WsError::close_code`] and stop reading.
#[derive(thiserror::Error, Debug)]
pub enum WsError {
    /// The message (declared frame length, or fragments reassembled so far) exceeds the limit.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooBig { size: u64, max: usize },
    /// The peer broke RFC 6455; the text says which rule.
    #[error("WebSocket protocol violation: {0}")]
    Protocol(String),
    /// A text message or a close reason is not UTF-8.
    #[error("text message or close reason is not valid UTF-8")]
    InvalidUtf8,
}

impl WsError {
    /// The close code to send to the peer for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::MessageTooBig { .. } => 1009,
            WsError::Protocol(_) => 1002,
            WsError::InvalidUtf8 => 1007,
        }
    }
}

/// The per-connection incoming frame state. Two words while no fragmented message is in
/// flight; the fragment accumulator is boxed because fragmentation is rare for chat traffic.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    max_message: usize,
    partial: Option<Box<Partial>>,
}

#[derive(Debug)]
struct Partial {
    text: bool,
    data: BytesMut,
}

impl Decoder {
    /// `max_message` bounds every data message, before and after reassembly.
    pub fn new(role: Role, max_message: usize) -> Self {
        Decoder {
            role,
            max_message,
            partial: None,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Changes the bound on data messages (a server raises it once a client has logged in).
    pub fn set_max_message(&mut self, max_message: usize) {
        self.max_message = max_message;
    }

    /// Whether a fragmented message is being reassembled (the decoder holds a buffer).
    pub fn has_partial(&self) -> bool {
        self.partial.is_some()
    }

    /// Takes the next complete message off the front of `buf`, reassembling fragments;
    /// `Ok(None)` when more bytes are needed (nothing of an incomplete frame is consumed).
    ///
    /// Enforces `max_message` on the frame header's declared length before the payload
    /// arrives, and on the reassembled total. Unmasks in place. Text messages are UTF-8
    /// validated. Control frames may arrive between the fragments of a data message and
    /// are returned at once. After an error the connection must be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, WsError> {
        loop {
            // The header is re-parsed on every call until its payload is complete: it is at
            // most 14 bytes, and not keeping it saves state in every connection.
            let mut cursor = Cursor::new(&buf[..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(None),
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::InvalidOpcode(op),
                )) => return Err(protocol(format!("reserved opcode {op:#x}"))),
                Err(e) => return Err(protocol(e.to_string())),
            };
            let header_len = cursor.position() as usize;

            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(protocol(
                    "reserved bits set but no extension was negotiated",
                ));
            }
            match (self.role, header.mask.is_some()) {
                (Role::Server, false) => return Err(protocol("unmasked frame from a client")),
                (Role::Client, true) => return Err(protocol("masked frame from a server")),
                _ => {}
            }

            let already = match header.opcode {
                OpCode::Control(_) => {
                    if !header.is_final {
                        return Err(protocol("fragmented control frame"));
                    }
                    if len > MAX_CONTROL_PAYLOAD as u64 {
                        return Err(protocol("control frame payload over 125 bytes"));
                    }
                    0
                }
                OpCode::Data(Data::Continue) => match &self.partial {
                    Some(partial) => partial.data.len() as u64,
                    None => {
                        return Err(protocol("continuation frame without a message to continue"))
                    }
                },
                OpCode::Data(_) => {
                    if self.partial.is_some() {
                        return Err(protocol(
                            "new data frame while a fragmented message is in progress",
                        ));
                    }
                    0
                }
            };
            let size = already.saturating_add(len);
            if size > self.max_message as u64 {
                return Err(WsError::MessageTooBig {
                    size,
                    max: self.max_message,
                });
            }
            // `len <= max_message`, so it fits in usize.
            let len = len as usize;
            if buf.len() - header_len < len {
                return Ok(None);
            }

            buf.advance(header_len);
            let mut payload = buf.split_to(len);
            if let Some(key) = header.mask {
                apply_mask(&mut payload, key);
            }

            match header.opcode {
                OpCode::Control(Control::Ping) => return Ok(Some(Message::Ping(payload))),
                OpCode::Control(Control::Pong) => return Ok(Some(Message::Pong(payload))),
                OpCode::Control(Control::Close) => {
                    return parse_close(&payload).map(|c| Some(Message::Close(c)))
                }
                OpCode::Data(Data::Continue) => {
                    let mut partial = self
                        .partial
                        .take()
                        .expect("invariant: checked above that a message is in progress");
                    partial.data.extend_from_slice(&payload);
                    if header.is_final {
                        return finish(partial.text, partial.data).map(Some);
                    }
                    self.partial = Some(partial);
                }
                OpCode::Data(data) => {
                    let text = data == Data::Text;
                    if header.is_final {
                        return finish(text, payload).map(Some);
                    }
                    self.partial = Some(Box::new(Partial {
                        text,
                        data: payload,
                    }));
                }
                // tungstenite rejects reserved opcodes while parsing the header.
                OpCode::Control(Control::Reserved(op)) => {
                    return Err(protocol(format!("reserved opcode {op:#x}")))
                }
            }
        }
    }
}

fn protocol(why: impl Into<String>) -> WsError {
    WsError::Protocol(why.into())
}

fn finish(text: bool, data: BytesMut) -> Result<Message, WsError> {
    if text {
        std::str::from_utf8(&data).map_err(|_| WsError::InvalidUtf8)?;
        Ok(Message::Text(data))
    } else {
        Ok(Message::Binary(data))
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed_on_wire(code) {
                return Err(protocol(format!("close code {code} is not allowed")));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

/// RFC 6455 section 7.4: 1005, 1006 and 1015 are never sent; 1004 and 1016..=2999 are
/// reserved; 3000..=4999 belong to libraries and applications.
fn close_code_allowed_on_wire(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `buf` with the 4-byte mask `key`, starting at key offset 0. Works a word at a time.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let masked =
            u64::from_ne_bytes((&*chunk).try_into().expect("invariant: 8-byte chunk")) ^ word;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    // 8 is a multiple of 4, so the remainder starts at key offset 0 again.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

thread_local! {
    static MASK_STATE: Cell<u64> = Cell::new(mask_seed());
}

fn mask_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(&hasher as *const _ as usize);
    // xorshift must never start at zero.
    hasher.finish() | 1
}

/// A fresh client mask key. The key only has to stop intermediaries from recognising
/// payload bytes (RFC 6455 section 10.3), so a per-thread xorshift64 seeded from std's
/// random hasher keys is enough; this is for the load generator, not for secrets.
fn next_mask_key() -> [u8; 4] {
    MASK_STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        ((x >> 32) as u32).to_ne_bytes()
    })
}

/// Length of a frame header for a payload of `len` bytes.
pub(crate) fn header_len(len: usize, masked: bool) -> usize {
    let base = match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    if masked {
        base + 4
    } else {
        base
    }
}

fn put_header<S: Sink>(out: &mut S, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    let mut header = [0u8; 14];
    header[0] = 0x80 | (opcode & 0x0F);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = match len {
        0..=125 => {
            header[1] = mask_bit | len as u8;
            2
        }
        126..=0xFFFF => {
            header[1] = mask_bit | 126;
            header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            header[1] = mask_bit | 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    if let Some(key) = mask {
        header[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    out.put(&header[..n]);
}

/// Appends one final frame carrying `payload` to `out`, reserving exactly what it needs.
pub(crate) fn append_frame<P: Payload>(role: Role, opcode: u8, payload: &P, out: &mut BytesMut) {
    let len = payload.encoded_len();
    let mask = role.outgoing_mask();
    out.reserve(header_len(len, mask.is_some()) + len);
    put_header(out, opcode, len, mask);
    let start = out.len();
    payload.write_to(out);
    debug_assert_eq!(
        out.len() - start,
        len,
        "payload length changed between passes"
    );
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key);
    }
}

/// One complete frame in a buffer of exact capacity, frozen for sharing.
pub(crate) fn frame<P: Payload>(role: Role, opcode: u8, payload: &P) -> Bytes {
    let len = payload.encoded_len();
    let mut out = BytesMut::with_capacity(header_len(len, role == Role::Client) + len);
    append_frame(role, opcode, payload, &mut out);
    out.freeze()
}

/// Appends one final (unfragmented) frame to `out`; masked when `role` is `Client`.
/// `opcode`: 0x1 text, 0x2 binary, 0x8 close, 0x9 ping, 0xA pong.
pub fn encode_frame(role: Role, opcode: u8, payload: &[u8], out: &mut BytesMut) {
    append_frame(role, opcode, &payload, out);
}

/// The frames in `buf`, a run of complete, unmasked, unfragmented frames as this crate encodes
/// them for the server side, as `(opcode, payload)`. This is how a frame encoded once for
/// WebSocket clients is given to a long-polling client too: its payload is the Engine.IO packet.
/// Stops at the first byte that does not start a complete frame (never the case for frames
/// built here).
pub fn server_frames(buf: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let (&b0, after) = rest.split_first()?;
        let (&b1, after) = after.split_first()?;
        if b1 & 0x80 != 0 {
            return None; // masked: not a server frame
        }
        let (len, after) = match b1 & 0x7F {
            126 => {
                let (n, after) = after.split_first_chunk::<2>()?;
                (u16::from_be_bytes(*n) as usize, after)
            }
            127 => {
                let (n, after) = after.split_first_chunk::<8>()?;
                (usize::try_from(u64::from_be_bytes(*n)).ok()?, after)
            }
            n => (n as usize, after),
        };
        if after.len() < len {
            return None;
        }
        let (payload, next) = after.split_at(len);
        rest = next;
        Some((b0 & 0x0F, payload))
    })
}

/// One complete text frame.
pub fn text_frame(role: Role, payload: &[u8]) -> Bytes {
    frame(role, OP_TEXT, &payload)
}

/// One complete close frame. The reason is cut (at a character boundary) so that the
/// payload stays within the 125 bytes allowed for control frames.
pub fn close_frame(role: Role, code: u16, reason: &str) -> Bytes {
    frame(role, OP_CLOSE, &ClosePayload::new(code, reason))
}

struct ClosePayload<'a> {
    code: u16,
    reason: &'a str,
}

impl<'a> ClosePayload<'a> {
    fn new(code: u16, reason: &'a str) -> Self {
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        ClosePayload {
            code,
            reason: &reason[..end],
        }
    }
}

impl Payload for ClosePayload<'_> {
    fn write_to<S: Sink>(&self, out: &mut S) {
        out.put(&self.code.to_be_bytes());
        out.put(self.reason.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_frames_give_back_what_was_framed() {
        let long = vec![b'x'; 70_000];
        let mid = vec![b'y'; 300];
        let mut buf = Vec::new();
        buf.extend_from_slice(&super::text_frame(super::Role::Server, b"42[\"a\"]"));
        buf.extend_from_slice(&super::text_frame(super::Role::Server, &mid));
        buf.extend_from_slice(&super::text_frame(super::Role::Server, &long));
        buf.extend_from_slice(&super::close_frame(super::Role::Server, 1000, "bye"));
        let frames: Vec<_> = super::server_frames(&buf).collect();
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0], (super::OP_TEXT, &b"42[\"a\"]"[..]));
        assert_eq!(frames[1], (super::OP_TEXT, &mid[..]));
        assert_eq!(frames[2], (super::OP_TEXT, &long[..]));
        assert_eq!(frames[3].0, super::OP_CLOSE);
        // A truncated frame ends the run instead of reading past the buffer.
        assert_eq!(super::server_frames(&buf[..buf.len() - 1]).count(), 3);
        assert_eq!(super::server_frames(&[0x81]).count(), 0);
    }

    use super::*;

    const MAX: usize = 1 << 20;

    /// A raw frame with full control over every header field (the encoders only write
    /// final, well-formed frames).
    fn raw(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = Vec::new();
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        out.push(first);
        match payload.len() {
            n @ 0..=125 => out.push(mask_bit | n as u8),
            n @ 126..=0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(key) = mask {
            out.extend_from_slice(&key);
        }
        let body = out.len();
        out.extend_from_slice(payload);
        if let Some(key) = mask {
            apply_mask(&mut out[body..], key);
        }
        out
    }

    const KEY: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

    fn decode_all(role: Role, bytes: &[u8]) -> Result<Vec<Message>, WsError> {
        let mut decoder = Decoder::new(role, MAX);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(msg) = decoder.decode(&mut buf)? {
            out.push(msg);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    fn one(role: Role, bytes: &[u8]) -> Result<Message, WsError> {
        let mut msgs = decode_all(role, bytes)?;
        assert_eq!(msgs.len(), 1);
        Ok(msgs.remove(0))
    }

    fn peer(role: Role) -> Role {
        match role {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        }
    }

    #[test]
    fn round_trip_every_opcode_both_directions() {
        for writer in [Role::Server, Role::Client] {
            for len in [0usize, 1, 7, 125, 126, 127, 1000, 0xFFFF, 0x10000, 70_000] {
                let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                for op in [OP_TEXT, OP_BINARY, OP_PING, OP_PONG] {
                    if op >= OP_CLOSE && len > MAX_CONTROL_PAYLOAD {
                        continue;
                    }
                    let mut out = BytesMut::new();
                    encode_frame(writer, op, &payload, &mut out);
                    assert_eq!(out.len(), header_len(len, writer == Role::Client) + len);
                    assert_eq!(out[1] & 0x80 != 0, writer == Role::Client, "mask bit");
                    let got = one(peer(writer), &out).unwrap();
                    let want = BytesMut::from(&payload[..]);
                    let expected = match op {
                        OP_TEXT => Message::Text(want),
                        OP_BINARY => Message::Binary(want),
                        OP_PING => Message::Ping(want),
                        _ => Message::Pong(want),
                    };
                    assert_eq!(got, expected, "writer {writer:?} op {op} len {len}");
                }
            }
        }
    }

    #[test]
    fn text_and_close_frames_round_trip() {
        for writer in [Role::Server, Role::Client] {
            let frame = text_frame(writer, "héllo".as_bytes());
            assert_eq!(
                one(peer(writer), &frame).unwrap(),
                Message::Text(BytesMut::from("héllo"))
            );
            let frame = close_frame(writer, 1000, "bye");
            assert_eq!(
                one(peer(writer), &frame).unwrap(),
                Message::Close(Some((1000, "bye".into())))
            );
        }
        let empty_close = raw(0x88, b"", KEY);
        assert_eq!(
            one(Role::Server, &empty_close).unwrap(),
            Message::Close(None)
        );
    }

    #[test]
    fn close_reason_is_cut_to_fit_a_control_frame() {
        let reason = "é".repeat(100); // 200 bytes
        let frame = close_frame(Role::Server, 4000, &reason);
        match one(Role::Client, &frame).unwrap() {
            Message::Close(Some((4000, r))) => {
                assert!(r.len() <= 123);
                assert!(reason.starts_with(&r));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_close_payloads_are_rejected() {
        let one_byte = raw(0x88, &[3], KEY);
        assert_eq!(one(Role::Server, &one_byte).unwrap_err().close_code(), 1002);
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
            let frame = raw(0x88, &code.to_be_bytes(), KEY);
            assert_eq!(
                one(Role::Server, &frame).unwrap_err().close_code(),
                1002,
                "{code}"
            );
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(&[0xff, 0xfe]);
        let frame = raw(0x88, &bad_reason, KEY);
        assert_eq!(one(Role::Server, &frame).unwrap_err().close_code(), 1007);
    }

    #[test]
    fn fragments_are_reassembled_with_control_frames_in_between() {
        let mut stream = raw(0x01, b"hel", KEY); // text, not final
        stream.extend(raw(0x89, b"p", KEY)); // ping in the middle
        stream.extend(raw(0x00, b"lo ", KEY)); // continuation
        stream.extend(raw(0x80, "wörld".as_bytes(), KEY)); // final continuation
        stream.extend(raw(0x82, &[1, 2, 3], KEY));
        let msgs = decode_all(Role::Server, &stream).unwrap();
        assert_eq!(
            msgs,
            vec![
                Message::Ping(BytesMut::from("p")),
                Message::Text(BytesMut::from("hello wörld")),
                Message::Binary(BytesMut::from(&[1u8, 2, 3][..])),
            ]
        );
    }

    #[test]
    fn utf8_split_across_fragments_is_valid() {
        let e = "é".as_bytes();
        let mut stream = raw(0x01, &e[..1], None);
        stream.extend(raw(0x80, &e[1..], None));
        assert_eq!(
            decode_all(Role::Client, &stream).unwrap(),
            vec![Message::Text(BytesMut::from("é"))]
        );
    }

    #[test]
    fn invalid_utf8_text_is_rejected_with_1007() {
        let err = one(Role::Server, &raw(0x81, &[b'a', 0xC3, 0x28], KEY)).unwrap_err();
        assert!(matches!(err, WsError::InvalidUtf8));
        assert_eq!(err.close_code(), 1007);
        // Binary is not checked.
        assert!(one(Role::Server, &raw(0x82, &[0xC3, 0x28], KEY)).is_ok());
    }

    #[test]
    fn masking_must_match_the_role() {
        let unmasked = raw(0x81, b"hi", None);
        assert_eq!(one(Role::Server, &unmasked).unwrap_err().close_code(), 1002);
        let masked = raw(0x81, b"hi", KEY);
        assert_eq!(one(Role::Client, &masked).unwrap_err().close_code(), 1002);
    }

    #[test]
    fn oversized_declared_length_fails_before_the_payload_arrives() {
        // Header only: a masked binary frame declaring 10 GB.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&10_000_000_000u64.to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let mut decoder = Decoder::new(Role::Server, MAX);
        let err = decoder
            .decode(&mut BytesMut::from(&header[..]))
            .unwrap_err();
        assert!(matches!(
            err,
            WsError::MessageTooBig {
                size: 10_000_000_000,
                max: MAX
            }
        ));
        assert_eq!(err.close_code(), 1009);

        // Exactly the limit is fine, one more is not.
        let mut decoder = Decoder::new(Role::Server, 10);
        let ok = raw(0x82, &[0; 10], KEY);
        assert!(decoder
            .decode(&mut BytesMut::from(&ok[..]))
            .unwrap()
            .is_some());
        let big = raw(0x82, &[0; 11], KEY);
        // The header (with its mask key) is 6 bytes; no payload byte has arrived.
        assert!(decoder.decode(&mut BytesMut::from(&big[..6])).is_err());
    }

    #[test]
    fn reassembled_total_is_limited() {
        let mut decoder = Decoder::new(Role::Server, 10);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&raw(0x01, &[b'a'; 6], KEY));
        buf.extend_from_slice(&raw(0x80, &[b'a'; 5], KEY));
        let err = decoder.decode(&mut buf).unwrap_err();
        assert!(matches!(err, WsError::MessageTooBig { size: 11, max: 10 }));
    }

    #[test]
    fn control_frame_rules() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("fragmented ping", raw(0x09, b"x", KEY)),
            ("ping over 125 bytes", raw(0x89, &[0; 126], KEY)),
            ("close over 125 bytes", raw(0x88, &[3; 126], KEY)),
            ("continuation without start", raw(0x80, b"x", KEY)),
            ("reserved bit rsv1", raw(0xC1, b"x", KEY)),
            ("reserved bit rsv3", raw(0x91, b"x", KEY)),
            ("reserved data opcode", raw(0x83, b"x", KEY)),
            ("reserved control opcode", raw(0x8B, b"x", KEY)),
            ("new data frame during fragmented message", {
                let mut s = raw(0x01, b"a", KEY);
                s.extend(raw(0x81, b"b", KEY));
                s
            }),
        ];
        for (name, bytes) in cases {
            let err = decode_all(Role::Server, &bytes).expect_err(name);
            assert!(matches!(err, WsError::Protocol(_)), "{name}: {err:?}");
            assert_eq!(err.close_code(), 1002, "{name}");
        }
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_messages() {
        let mut stream = Vec::new();
        stream.extend(raw(0x81, b"first", KEY));
        stream.extend(raw(0x02, &[9; 200], KEY));
        stream.extend(raw(0x8A, b"pong", KEY));
        stream.extend(raw(0x00, &[8; 70_000], KEY));
        stream.extend(raw(0x80, &[7; 3], KEY));
        stream.extend(raw(0x81, b"", KEY));
        stream.extend(close_frame(Role::Client, 1001, "away"));
        let all_at_once = decode_all(Role::Server, &stream).unwrap();
        assert_eq!(all_at_once.len(), 5);

        let mut decoder = Decoder::new(Role::Server, MAX);
        let mut buf = BytesMut::new();
        let mut fed = Vec::new();
        for &byte in &stream {
            buf.extend_from_slice(&[byte]);
            while let Some(msg) = decoder.decode(&mut buf).unwrap() {
                fed.push(msg);
            }
        }
        assert!(buf.is_empty());
        assert!(!decoder.has_partial());
        assert_eq!(fed, all_at_once);
    }

    #[test]
    fn word_masking_matches_bytewise_masking() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        for len in 0..40 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut fast = original.clone();
            apply_mask(&mut fast, key);
            let slow: Vec<u8> = original
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(fast, slow, "len {len}");
        }
    }

    #[test]
    fn client_mask_keys_vary() {
        let keys: std::collections::HashSet<[u8; 4]> = (0..100).map(|_| next_mask_key()).collect();
        assert!(keys.len() > 90);
    }

    #[test]
    fn decoder_stays_small() {
        assert!(std::mem::size_of::<Decoder>() <= 3 * std::mem::size_of::<usize>());
    }
}
