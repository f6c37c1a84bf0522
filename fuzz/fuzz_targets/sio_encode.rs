//! The encoders of what the gateway sends: JSON strings (`write_json_str`, which carries every
//! message text a client typed), events, acks and CONNECT_ERROR, alone and framed in one
//! WebSocket frame (`event_frame`, `ack_frame`).
//!
//! Input: byte 0 picks an ack id, the rest (as UTF-8, lossily) is the text. Invariants: the
//! JSON string decodes back to the text exactly and contains no raw U+2028/U+2029; each packet
//! parses back with our own parser, with the same kind, ack id and namespace, and its JSON
//! holds the text; a frame decodes to exactly the packet.
#![no_main]

use bytes::BytesMut;
use corecast_wire::packet::{self, EioPacket, SioKind};
use corecast_wire::ws::{Decoder, Message, Role};
use libfuzzer_sys::fuzz_target;

/// An Engine.IO message as written (`4` then the Socket.IO packet): the packet, its
/// Socket.IO text, and its data.
fn parse(eio: &[u8]) -> (packet::SioPacket, &[u8], &[u8]) {
    let EioPacket::Message(msg) = packet::parse_eio(eio).expect("eio") else {
        panic!("not an Engine.IO message");
    };
    let p = packet::parse_sio(msg).expect("our own packet parses");
    let data = &msg[p.data.clone()];
    (p, msg, data)
}

fn unframe(frame: &[u8]) -> Vec<u8> {
    let mut dec = Decoder::new(Role::Client, usize::MAX >> 1);
    let mut buf = BytesMut::from(frame);
    match dec.decode(&mut buf) {
        Ok(Some(Message::Text(t))) => {
            assert!(buf.is_empty());
            t.to_vec()
        }
        other => panic!("{other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&id, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let ack = u64::from(id) * 1_000_003;

    let mut json = Vec::new();
    packet::write_json_str(&mut json, &text);
    let back: String = serde_json::from_slice(&json).expect("write_json_str writes JSON");
    assert_eq!(back, text);
    let raw = String::from_utf8(json.clone()).expect("UTF-8");
    assert!(!raw.contains('\u{2028}') && !raw.contains('\u{2029}'));

    // An event named by the text, with the text as its argument.
    let mut ev = Vec::new();
    packet::write_event(&mut ev, Some(ack), &text, &[&json]);
    let (p, msg, body) = parse(&ev);
    assert_eq!(
        (p.kind, p.ack_id, packet::namespace(msg, &p)),
        (SioKind::Event, Some(ack), "/")
    );
    let args: Vec<String> = serde_json::from_slice(body).expect("event data is JSON");
    assert_eq!(args, [text.to_string(), text.to_string()]);
    let framed = packet::event_frame_with_ack(Role::Server, ack, &text, &[&json]);
    assert_eq!(unframe(&framed), ev);
    let mut ev_no_ack = Vec::new();
    packet::write_event(&mut ev_no_ack, None, &text, &[]);
    assert_eq!(
        unframe(&packet::event_frame(Role::Server, &text, &[])),
        ev_no_ack
    );

    let mut a = Vec::new();
    packet::write_ack(&mut a, ack, &[&json]);
    let (p, _, body) = parse(&a);
    assert_eq!((p.kind, p.ack_id), (SioKind::Ack, Some(ack)));
    let args: Vec<String> = serde_json::from_slice(body).expect("ack data is JSON");
    assert_eq!(args, [text.to_string()]);
    assert_eq!(unframe(&packet::ack_frame(Role::Server, ack, &[&json])), a);

    // CONNECT_ERROR to a namespace made of the text (without the separator it cannot hold).
    let nsp: String = format!("/{}", text.replace(',', ""));
    let mut ce = Vec::new();
    packet::write_connect_error(&mut ce, &nsp, &text);
    let (p, msg, body) = parse(&ce);
    assert_eq!(p.kind, SioKind::ConnectError);
    assert_eq!(packet::namespace(msg, &p), nsp);
    let v: serde_json::Value = serde_json::from_slice(body).expect("connect error is JSON");
    assert_eq!(v["message"].as_str(), Some(&*text));
});
