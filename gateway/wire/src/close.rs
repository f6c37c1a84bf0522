//! Why the server closes a connection: every close code and reason a client can be sent, in
//! one place ([`Close`], one variant per row of the close-code table in docs/protocol.md).
//!
//! The gateway never writes a close code or reason of its own: it names a `Close`, and this
//! module turns it into the close frame (on WebSocket) that long-polling turns into the close
//! packet `1`. A new way to close a connection is a new variant here and a new row in the
//! table, never a literal at the call site.
//!
//! Sans-IO like the rest of the crate: it only renders codes and reasons.

use std::borrow::Cow;

use bytes::Bytes;

use crate::ws::{self, Role, WsError};

/// One reason to close a connection, with the close code and reason the peer sees.
#[derive(Debug)]
pub enum Close {
    /// 1000, no reason: the client disconnected (an Engine.IO close packet, or a WebSocket
    /// close frame).
    ClientLeft,
    /// 1001 `server shutting down`: a graceful stop (drain) reached this connection.
    ShuttingDown,
    /// 1002 `protocol error: invalid Engine.IO packet`.
    InvalidEngineIoPacket,
    /// 1002 `protocol error: invalid Socket.IO packet`: a packet that cannot be decoded, as
    /// the reference server closes for (an event that decodes but fails its checks is
    /// answered instead).
    InvalidSocketIoPacket,
    /// 1002 `protocol error: overlapping long-polling requests`: a second GET (or POST) while
    /// one is open.
    OverlappingPolls,
    /// The WebSocket decoder refused what the peer sent: 1002 for a protocol violation, 1007
    /// for a text that is not UTF-8, 1009 for a message over the limit; the reason is the
    /// error's text ([`WsError`]).
    WebSocket(WsError),
    /// 1008 `connect refused`: after CONNECT_ERROR (a bad token, or the user's groups could
    /// not be loaded).
    ConnectRefused,
    /// 1008 `connect timeout: …`: no Socket.IO CONNECT within the connect timeout.
    ConnectTimeout,
    /// 1008 `ping timeout: …`: no pong within `pingTimeout`.
    PingTimeout,
    /// 1008 `token expired: …`: the session's token expired and no `refreshToken` came in
    /// time.
    TokenExpired,
    /// 1008 `too many connections waiting to log in`: a connection not yet logged in, evicted
    /// to admit a newer one at the pending-connection cap.
    TooManyPending,
    /// 1008 `slow consumer: outbound queue full`: the client did not read fast enough.
    SlowConsumer,
    /// 1009 `payload too large`: a long-polling POST over `maxPayload`.
    PayloadTooLarge,
}

impl Close {
    /// The close code (RFC 6455 section 7.4).
    pub fn code(&self) -> u16 {
        match self {
            Close::ClientLeft => 1000,
            Close::ShuttingDown => 1001,
            Close::InvalidEngineIoPacket
            | Close::InvalidSocketIoPacket
            | Close::OverlappingPolls => 1002,
            Close::WebSocket(e) => e.close_code(),
            Close::ConnectRefused
            | Close::ConnectTimeout
            | Close::PingTimeout
            | Close::TokenExpired
            | Close::TooManyPending
            | Close::SlowConsumer => 1008,
            Close::PayloadTooLarge => 1009,
        }
    }

    /// The close reason, as the peer reads it.
    pub fn reason(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Close::ClientLeft => "",
            Close::ShuttingDown => "server shutting down",
            Close::InvalidEngineIoPacket => "protocol error: invalid Engine.IO packet",
            Close::InvalidSocketIoPacket => "protocol error: invalid Socket.IO packet",
            Close::OverlappingPolls => "protocol error: overlapping long-polling requests",
            Close::WebSocket(e) => return Cow::Owned(e.to_string()),
            Close::ConnectRefused => "connect refused",
            Close::ConnectTimeout => "connect timeout: no Socket.IO CONNECT in time",
            Close::PingTimeout => "ping timeout: no pong in time",
            Close::TokenExpired => {
                "token expired: reconnect with a new token, or send refreshToken before it expires"
            }
            Close::TooManyPending => "too many connections waiting to log in",
            Close::SlowConsumer => "slow consumer: outbound queue full",
            Close::PayloadTooLarge => "payload too large",
        })
    }

    /// The complete close frame (the reason cut to fit a control frame, see
    /// [`ws::close_frame`]).
    pub fn frame(&self, role: Role) -> Bytes {
        ws::close_frame(role, self.code(), &self.reason())
    }
}

impl From<WsError> for Close {
    fn from(e: WsError) -> Close {
        Close::WebSocket(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{Decoder, Message};

    /// Every row of docs/protocol.md's close-code table, as a client reads it.
    #[test]
    fn each_close_renders_its_row_of_the_table() {
        let rows: Vec<(Close, u16, &str)> = vec![
            (Close::ClientLeft, 1000, ""),
            (Close::ShuttingDown, 1001, "server shutting down"),
            (
                Close::InvalidEngineIoPacket,
                1002,
                "protocol error: invalid Engine.IO packet",
            ),
            (
                Close::InvalidSocketIoPacket,
                1002,
                "protocol error: invalid Socket.IO packet",
            ),
            (
                Close::OverlappingPolls,
                1002,
                "protocol error: overlapping long-polling requests",
            ),
            (
                Close::WebSocket(WsError::Protocol("unmasked frame".into())),
                1002,
                "WebSocket protocol violation: unmasked frame",
            ),
            (
                Close::WebSocket(WsError::InvalidUtf8),
                1007,
                "text message or close reason is not valid UTF-8",
            ),
            (Close::ConnectRefused, 1008, "connect refused"),
            (
                Close::ConnectTimeout,
                1008,
                "connect timeout: no Socket.IO CONNECT in time",
            ),
            (Close::PingTimeout, 1008, "ping timeout: no pong in time"),
            (
                Close::TokenExpired,
                1008,
                "token expired: reconnect with a new token, or send refreshToken before it expires",
            ),
            (
                Close::TooManyPending,
                1008,
                "too many connections waiting to log in",
            ),
            (
                Close::SlowConsumer,
                1008,
                "slow consumer: outbound queue full",
            ),
            (Close::PayloadTooLarge, 1009, "payload too large"),
            (
                Close::WebSocket(WsError::MessageTooBig {
                    size: 1_000_001,
                    max: 1_000_000,
                }),
                1009,
                "message of 1000001 bytes exceeds the limit of 1000000 bytes",
            ),
        ];
        for (close, code, reason) in rows {
            assert_eq!(
                (close.code(), &*close.reason()),
                (code, reason),
                "{close:?}"
            );
            // The frame carries exactly that code and reason.
            let mut frame = bytes::BytesMut::from(&close.frame(Role::Client)[..]);
            let got = Decoder::new(Role::Server, 1 << 20)
                .decode(&mut frame)
                .expect("a valid close frame");
            assert_eq!(
                got,
                Some(Message::Close(Some((code, reason.to_string())))),
                "{close:?}"
            );
        }
    }

    #[test]
    fn a_decoder_error_becomes_its_close() {
        let close = Close::from(WsError::InvalidUtf8);
        assert_eq!(close.code(), WsError::InvalidUtf8.close_code());
    }
}
