//! Engine.IO and Socket.IO packet parsing (`parse_eio`, `parse_sio`, `namespace`), on the text
//! of a WebSocket message as a client sends it, and the long-polling payload split
//! (`polling_packets`).
//!
//! Invariants, beyond not panicking: the ranges of a parsed packet lie inside the message and
//! in order (namespace, then data to the end); the namespace is `/` or starts with `/` and has
//! no `,`; ack ids fit the documented digit limit and appear only where allowed; attachments
//! only on binary kinds; the data has the outer shape its kind requires; and a packet
//! rebuilt from its parts parses to the same packet.
#![no_main]

use corecast_wire::packet::{self, EioPacket, SioKind, MAX_ACK_ID_DIGITS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The same bytes as a long-polling payload: its packets join back to it.
    let parts: Vec<&[u8]> = packet::polling_packets(data).collect();
    let mut joined = Vec::new();
    for p in &parts {
        packet::push_polling_packet(&mut joined, p);
    }
    if !parts.first().is_some_and(|p| p.is_empty()) {
        assert_eq!(
            joined, data,
            "a polling payload split and joined back differs"
        );
    }
    for p in parts {
        let _ = packet::parse_eio(p);
    }
    let Ok(eio) = packet::parse_eio(data) else {
        return;
    };
    if let EioPacket::Open(rest) | EioPacket::Ping(rest) | EioPacket::Pong(rest) = eio {
        assert_eq!(rest, &data[1..]);
    }
    let EioPacket::Message(msg) = eio else {
        return;
    };
    assert_eq!(msg, &data[1..]);
    let Ok(p) = packet::parse_sio(msg) else {
        return;
    };
    assert!(p.namespace.start <= p.namespace.end && p.namespace.end <= p.data.start);
    assert!(p.namespace.start >= 1, "the type byte comes first");
    assert_eq!(p.data.end, msg.len(), "data runs to the end");
    let nsp = packet::namespace(msg, &p);
    assert!(
        nsp == "/" || (nsp.starts_with('/') && !nsp.contains(',')),
        "{nsp:?}"
    );
    if let Some(id) = p.ack_id {
        assert!(id < 10u64.pow(MAX_ACK_ID_DIGITS as u32));
        assert!(matches!(
            p.kind,
            SioKind::Event | SioKind::BinaryEvent | SioKind::Ack | SioKind::BinaryAck
        ));
    }
    if matches!(p.kind, SioKind::Ack | SioKind::BinaryAck) {
        assert!(p.ack_id.is_some());
    }
    if !p.kind.is_binary() {
        assert_eq!(p.attachments, 0);
    }
    let body = &msg[p.data.clone()];
    let enclosed = |o: u8, c: u8| body.len() >= 2 && body[0] == o && body[body.len() - 1] == c;
    match p.kind {
        SioKind::Connect => assert!(body.is_empty() || enclosed(b'{', b'}')),
        SioKind::Disconnect => assert!(body.is_empty()),
        SioKind::ConnectError => assert!(enclosed(b'{', b'}') || enclosed(b'"', b'"')),
        _ => assert!(enclosed(b'[', b']')),
    }

    // Rebuild the packet in its canonical form and parse it again.
    let mut again = vec![p.kind.digit()];
    if p.kind.is_binary() {
        again.extend_from_slice(format!("{}-", p.attachments).as_bytes());
    }
    if nsp != "/" {
        again.extend_from_slice(nsp.as_bytes());
        again.push(b',');
    }
    if let Some(id) = p.ack_id {
        again.extend_from_slice(id.to_string().as_bytes());
    }
    again.extend_from_slice(body);
    let q = packet::parse_sio(&again).expect("a rebuilt packet parses");
    assert_eq!(
        (q.kind, q.attachments, q.ack_id),
        (p.kind, p.attachments, p.ack_id)
    );
    assert_eq!(packet::namespace(&again, &q), nsp);
    assert_eq!(&again[q.data.clone()], body);
});
