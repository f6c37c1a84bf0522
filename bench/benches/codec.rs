//! Microbenchmarks of the per-message hot path (`cargo bench -p corecast-bench`):
//! framing one outgoing `newMessage` (done once per message, shared by every recipient),
//! decoding one incoming masked `sendMessage` frame, parsing its Socket.IO packet, and
//! parsing its JSON payload with simd-json (serde_json beside it for scale).

use bytes::BytesMut;
use corecast_wire::packet::{self, EioPacket};
use corecast_wire::ws::{self, Decoder, Role};
use divan::{black_box, Bencher};

fn main() {
    divan::main();
}

const NEW_MESSAGE: &[u8] = br#"{"id":"01JD6Y0G8Z5R3K2B1N0M9P8Q7R","senderId":42,"groupId":"team-7","text":"hello everyone, this is a chat message of ordinary length","attachments":[],"timestamp":"2025-11-26T00:00:00.000Z","readBy":[42]}"#;
const SEND_MESSAGE: &[u8] = br#"{"groupId":"team-7","text":"hello everyone, this is a chat message of ordinary length","attachments":[{"url":"https://example.test/a.png","type":"image"}],"clientMsgId":"c-42-1"}"#;

/// Server side: one `newMessage` frame, built once per message and shared by recipients.
#[divan::bench]
fn event_frame_new_message() -> bytes::Bytes {
    packet::event_frame(
        Role::Server,
        black_box("newMessage"),
        &[black_box(NEW_MESSAGE)],
    )
}

/// Client side (what the loadgen does per send): event with ack id, masked.
#[divan::bench]
fn event_frame_send_message_client() -> bytes::Bytes {
    packet::event_frame_with_ack(
        Role::Client,
        17,
        black_box("sendMessage"),
        &[black_box(SEND_MESSAGE)],
    )
}

fn client_frame() -> BytesMut {
    let mut pkt = Vec::new();
    packet::write_event(&mut pkt, Some(17), "sendMessage", &[SEND_MESSAGE]);
    let mut out = BytesMut::new();
    ws::encode_frame(Role::Client, ws::OP_TEXT, &pkt, &mut out);
    out
}

/// Server side: unmask, validate UTF-8 and split off one incoming frame.
#[divan::bench]
fn decoder_one_masked_frame(b: Bencher) {
    let frame = client_frame();
    let mut dec = Decoder::new(Role::Server, 1 << 20);
    b.with_inputs(|| frame.clone()).bench_local_refs(|buf| {
        black_box(dec.decode(buf).expect("valid frame"));
    });
}

/// Engine.IO + Socket.IO packet parse of the decoded text (no JSON parse).
#[divan::bench]
fn parse_eio_sio(b: Bencher) {
    let mut pkt = Vec::new(); // write_event writes the Engine.IO "4" too
    packet::write_event(&mut pkt, Some(17), "sendMessage", &[SEND_MESSAGE]);
    b.bench(|| {
        let EioPacket::Message(m) = packet::parse_eio(black_box(&pkt)).expect("valid") else {
            unreachable!()
        };
        black_box(packet::parse_sio(m).expect("valid"))
    });
}

/// The one JSON parse per incoming event: simd-json into a borrowed value (in place).
#[divan::bench]
fn simd_json_send_message(b: Bencher) {
    let mut args = b"[\"sendMessage\",".to_vec();
    args.extend_from_slice(SEND_MESSAGE);
    args.push(b']');
    b.with_inputs(|| args.clone()).bench_local_refs(|buf| {
        let v = simd_json::to_borrowed_value(buf).expect("valid JSON");
        black_box(v);
    });
}

/// serde_json on the same bytes, for scale.
#[divan::bench]
fn serde_json_send_message(b: Bencher) {
    let mut args = b"[\"sendMessage\",".to_vec();
    args.extend_from_slice(SEND_MESSAGE);
    args.push(b']');
    b.bench(|| {
        black_box(serde_json::from_slice::<serde_json::Value>(black_box(&args)).expect("valid"))
    });
}
