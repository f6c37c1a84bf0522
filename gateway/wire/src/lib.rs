//! The one wire codec of corecast, shared by the gateway (server side) and the load
//! generator (client side): WebSocket framing (RFC 6455, [`ws`]) and Engine.IO v4 /
//! Socket.IO v5 packets ([`packet`]), and the close codes and reasons the server sends
//! ([`close`]).
//!
//! It owns the bytes on the wire and nothing else: it turns bytes into messages and
//! packets, and messages and packets into bytes. It never does I/O, never spawns or
//! awaits, never parses JSON payloads (that is simd-json's job in the caller), and never
//! allocates per outgoing delivery beyond the one `Bytes` that every recipient shares.
//! The HTTP upgrade handshake is tungstenite's, not this crate's.

pub mod close;
pub mod packet;
pub mod ws;

mod sink;

pub use close::Close;
pub use packet::{EioPacket, PacketError, SioKind, SioPacket};
pub use ws::{CloseCode, Decoder, Message, WsError};
