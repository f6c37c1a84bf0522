//! The WebSocket frame decoder (`corecast_wire::ws::Decoder`), on bytes as a peer sends them.
//!
//! Input: byte 0 picks the role and a message limit, byte 1 a chunk size; the rest is the
//! stream. Invariants, beyond not panicking:
//! - the decoder is a function of the byte stream: fed in chunks it returns the same messages
//!   and the same verdict as fed all at once;
//! - it consumes only complete frames, never more than it was given;
//! - every message obeys the rules it enforces (UTF-8 text, control payloads of at most 125
//!   bytes, data messages within the limit);
//! - every decoded message, encoded again by the peer's role, decodes back to itself.
#![no_main]

use bytes::BytesMut;
use corecast_wire::ws::{self, Decoder, Message, Role};
use libfuzzer_sys::fuzz_target;

/// Every message until the decoder needs more bytes or refuses; `Err(close code)` on refusal.
fn decode_all(dec: &mut Decoder, buf: &mut BytesMut, out: &mut Vec<Message>) -> Result<(), u16> {
    loop {
        let before = buf.len();
        match dec.decode(buf) {
            Ok(Some(m)) => {
                // A message ends with a frame, and a frame has a header of 2 bytes or more.
                assert!(buf.len() + 2 <= before, "a message without a frame");
                out.push(m);
            }
            Ok(None) => {
                assert!(buf.len() <= before, "decode grew the buffer");
                return Ok(());
            }
            Err(e) => return Err(e.close_code()),
        }
    }
}

fn peer(role: Role) -> Role {
    match role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    }
}

fn check(msg: &Message, max: usize) {
    match msg {
        Message::Text(t) => {
            assert!(std::str::from_utf8(t).is_ok(), "text is not UTF-8");
            assert!(t.len() <= max);
        }
        Message::Binary(b) => assert!(b.len() <= max),
        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= ws::MAX_CONTROL_PAYLOAD),
        Message::Close(Some((code, reason))) => {
            assert!(reason.len() + 2 <= ws::MAX_CONTROL_PAYLOAD);
            assert!(
                matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
                "{code}"
            );
        }
        Message::Close(None) => {}
    }
}

/// The frame the peer's role would write for `msg`.
fn encode(role: Role, msg: &Message) -> BytesMut {
    let mut out = BytesMut::new();
    match msg {
        Message::Text(p) => ws::encode_frame(role, ws::OP_TEXT, p, &mut out),
        Message::Binary(p) => ws::encode_frame(role, ws::OP_BINARY, p, &mut out),
        Message::Ping(p) => ws::encode_frame(role, ws::OP_PING, p, &mut out),
        Message::Pong(p) => ws::encode_frame(role, ws::OP_PONG, p, &mut out),
        Message::Close(None) => ws::encode_frame(role, ws::OP_CLOSE, b"", &mut out),
        Message::Close(Some((code, reason))) => {
            out.extend_from_slice(&ws::close_frame(role, *code, reason))
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [mode, chunk, stream @ ..] = data else {
        return;
    };
    let role = if mode & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let max = match (mode >> 1) & 3 {
        0 => 0,
        1 => 10,
        2 => 200,
        _ => 70_000,
    };
    let chunk = usize::from(*chunk % 32) + 1;

    let mut whole = Vec::new();
    let mut dec = Decoder::new(role, max);
    let mut buf = BytesMut::from(stream);
    let verdict = decode_all(&mut dec, &mut buf, &mut whole);
    let consumed = stream.len() - buf.len();
    assert!(consumed <= stream.len());

    let mut pieces = Vec::new();
    let mut dec2 = Decoder::new(role, max);
    let mut buf2 = BytesMut::new();
    let mut verdict2 = Ok(());
    for part in stream.chunks(chunk) {
        buf2.extend_from_slice(part);
        verdict2 = decode_all(&mut dec2, &mut buf2, &mut pieces);
        if verdict2.is_err() {
            break;
        }
    }
    assert_eq!(whole, pieces, "chunked feeding changed the messages");
    assert_eq!(verdict, verdict2, "chunked feeding changed the verdict");
    if verdict.is_ok() {
        assert_eq!(buf, buf2, "chunked feeding left other bytes");
        assert_eq!(dec.has_partial(), dec2.has_partial());
    }

    for msg in &whole {
        check(msg, max);
        let frame = encode(peer(role), msg);
        let mut again = Vec::new();
        let mut fresh = Decoder::new(role, max);
        let mut fbuf = frame;
        assert_eq!(decode_all(&mut fresh, &mut fbuf, &mut again), Ok(()));
        assert!(fbuf.is_empty(), "re-encoded frame not consumed whole");
        assert_eq!(again.as_slice(), std::slice::from_ref(msg), "round trip");
    }
});
