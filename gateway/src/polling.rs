//! Every TCP connection accepted on the public port starts here, as HTTP: requests are read
//! one after another (keep-alive) until one becomes a WebSocket. Engine.IO long-polling is
//! served here: the handshake, the GET that waits for packets, the POST that brings them.
//!
//! - **Routing by sid.** A session's requests may reach any shard: SO_REUSEPORT spreads TCP
//!   connections, and a browser sends its POST on a second keep-alive connection while its GET
//!   waits on the first. The sid names the session's shard ([`crate::engine::Sid`]); a request
//!   for another shard's session hands the whole TCP connection over (its socket, duplicated,
//!   and the bytes read so far) through that shard's inbox, which serves it from then on. No
//!   table is shared between shards.
//! - **Forwarding by sid** (cluster mode). The sid names the session's node too. A request
//!   for another node's session (a round-robin load balancer needs no sticky sessions) is
//!   forwarded with the rest of its TCP connection: this node connects to that node's
//!   advertised address, sends it the bytes read so far, and copies both ways until either
//!   side closes, a WebSocket upgrade included. A node that is gone or cannot be reached
//!   answers "Session ID unknown", and the client starts a new session.
//! - **The GET** waits, without a timer, until the session has packets: the session's waker is
//!   the GET's while it waits, so a queued frame, a ping from the shard's tick or a close wakes
//!   it, and it answers with everything queued. While it waits it watches its socket: a client
//!   that went away ends the session at once, as on the reference server.
//! - **The POST**'s body (at most `maxPayload` bytes) is split on the record separator and each
//!   packet is handled exactly as a WebSocket text frame would be.
//! - Nothing here holds a `RefCell` borrow across an `.await`.

use crate::admission::Holder;
use crate::conn::{self, Conn, ConnId};
use crate::engine::{Polled, Refusal, Request, Sid, Transport};
use crate::http::{self, Cors, EioError, Route};
use crate::outbox::Outbox;
use crate::shard::{HttpWaiting, Shard, ShardMsg};
use bytes::BytesMut;
use corecast_shard_router::ShardId;
use corecast_wire::packet;
use corecast_wire::ws::Message;
use corecast_wire::Close;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::future::poll_fn;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Duration;

/// Serves the HTTP requests of one TCP connection; `buf` holds bytes already read from it
/// (by the shard that handed it over).
/// Serves an HTTP connection handed over by another shard, on this shard's executor (the
/// shard calls it through `Shared::adopt_http`).
pub fn adopt(shard: Rc<Shard>, stream: TcpStream, buf: BytesMut) {
    glommio::spawn_local(serve(shard, stream, buf)).detach();
}

pub async fn serve(shard: Rc<Shard>, stream: TcpStream, buf: BytesMut) {
    let waiting = shard.http_task();
    serve_requests(&shard, stream, buf, &waiting).await;
    shard.http_task_done(&waiting);
}

/// Whether an HTTP task waiting for a request head was evicted to admit a newer connection.
async fn evicted(waiting: &HttpWaiting) {
    poll_fn(|cx| {
        if waiting.evicted.get() {
            Poll::Ready(())
        } else {
            *waiting.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await
}

async fn serve_requests(
    shard: &Rc<Shard>,
    mut stream: TcpStream,
    mut buf: BytesMut,
    waiting: &HttpWaiting,
) {
    let shard = shard.clone();
    let timeout = Duration::from_millis(shard.config().server.handshake_timeout_ms);
    let ip = stream
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    loop {
        // Waiting for a request head is waiting to log in: it holds a place in admission.
        let Some(ticket) = shard.admit_pending(ip, Holder::Http(waiting.id)) else {
            shard.stats.admission_refusals.fetch_add(1, Relaxed);
            let body = b"{\"code\":3,\"message\":\"too many connections waiting to log in from this address; retry later\"}";
            let response = http::response(
                503,
                "Service Unavailable",
                "application/json",
                &None,
                true,
                body,
            );
            let _ = write_all(&mut stream, &response).await;
            return;
        };
        let read = futures_lite::future::or(
            async { Some(read_head(&shard, &mut stream, &mut buf).await) },
            futures_lite::future::or(
                async {
                    glommio::timer::sleep(timeout).await;
                    None
                },
                async {
                    evicted(waiting).await;
                    None
                },
            ),
        )
        .await;
        let head = match read {
            Some(Some(head)) => head,
            // The client went away, took too long, or was evicted for a newer connection.
            _ => {
                shard.release_ticket(Some(ticket));
                return;
            }
        };
        let (route, head_len) = head;
        // A new session keeps the place until its CONNECT; any other request gives it back.
        let mut ticket = Some(ticket);
        if !matches!(
            route,
            Route::PollOpen { .. } | Route::WebSocket { sid: None, .. }
        ) {
            shard.release_ticket(ticket.take());
        }
        if let Some(sid) = route.sid() {
            if sid.node != shard.node_tag() {
                return forward(&shard, stream, buf, &route, sid.node).await;
            }
            let owner = sid.shard as usize;
            if owner != shard.id.index() && owner < shard.shared.nr_shards() {
                return hand_over(&shard, stream, buf, ShardId(sid.shard));
            }
        }
        let ticket = ticket;
        let _ = buf.split_to(head_len);
        let keep_alive = match route {
            Route::Respond {
                response,
                status,
                close,
            } => {
                tracing::debug!(status, "request refused");
                write_all(&mut stream, &response).await.is_ok() && !close
            }
            Route::WebSocket {
                sid: None,
                response,
                offsets,
            } => {
                conn::start_websocket(shard, stream, response, buf, ticket, offsets);
                return;
            }
            Route::WebSocket {
                sid: Some(sid),
                response,
                ..
            } => {
                let Some(conn) = session(&shard, &sid) else {
                    let _ = write_all(&mut stream, &EioError::UnknownSid.response(&None)).await;
                    return;
                };
                let begun =
                    conn.engine()
                        .begin(Request::Upgrade, shard.tick_now(), &shard.timing());
                match begun {
                    Ok(()) => conn::start_probe(shard, conn, stream, response, buf),
                    Err(_) => {
                        let _ = write_all(&mut stream, &EioError::BadRequest.response(&None)).await;
                    }
                }
                return;
            }
            Route::PollOpen {
                cors,
                close,
                offsets,
            } => {
                let conn = Rc::new(Conn::new(
                    shard.next_conn_id(),
                    Transport::Polling,
                    shard.tick_now(),
                    &*shard,
                ));
                conn.set_takes_offsets(offsets);
                shard.register_conn(conn.clone());
                if let Some(t) = ticket {
                    shard.transfer_ticket(t, &conn);
                }
                let open = conn.open_packet(&*shard);
                write_all(&mut stream, &http::polling_response(&cors, close, &open))
                    .await
                    .is_ok()
                    && !close
            }
            Route::PollGet { sid, cors, close } => {
                poll_get(&shard, &mut stream, &mut buf, &sid, &cors, close).await
            }
            Route::PollPost {
                sid,
                cors,
                close,
                content_length,
            } => {
                poll_post(
                    &shard,
                    &mut stream,
                    &mut buf,
                    &sid,
                    &cors,
                    close,
                    content_length,
                )
                .await
            }
        };
        if !keep_alive {
            return;
        }
    }
}

/// The live session `sid` names on this shard.
fn session(shard: &Shard, sid: &Sid) -> Option<Rc<Conn>> {
    shard
        .conns
        .borrow()
        .get(&ConnId(u64::from(sid.conn)))
        .filter(|c| c.has_sid(sid))
        .cloned()
}

/// Checks a polling request against its session; answers the refusals. `None` when the
/// request was refused (the connection then closes).
async fn begin(
    shard: &Shard,
    stream: &mut TcpStream,
    sid: &Sid,
    cors: &Cors,
    req: Request,
) -> Option<Rc<Conn>> {
    let Some(conn) = session(shard, sid) else {
        let _ = write_all(stream, &EioError::UnknownSid.response(cors)).await;
        return None;
    };
    let begun = conn.engine().begin(req, shard.tick_now(), &shard.timing());
    match begun {
        Ok(()) => Some(conn),
        Err(refusal) => {
            let _ = write_all(stream, &EioError::BadRequest.response(cors)).await;
            if refusal == Refusal::Overlap {
                // As the reference server does: overlapping requests end the session.
                end_session(shard, &conn, Close::OverlappingPolls);
            }
            None
        }
    }
}

/// Ends a long-polling session: a GET that waits gets the close packet (and the session is
/// forgotten after it); with none waiting it is forgotten now, so its next request finds no
/// session, as on the reference server.
fn end_session(shard: &Shard, conn: &Rc<Conn>, why: Close) {
    conn.close(shard, why);
    if !conn.engine().get_open() {
        shard.conn_closed(conn);
    }
}

/// A long-polling GET: waits for packets, answers with all of them. Returns whether the TCP
/// connection stays open for another request.
async fn poll_get(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    sid: &Sid,
    cors: &Cors,
    close: bool,
) -> bool {
    let Some(conn) = begin(shard, stream, sid, cors, Request::Get).await else {
        return false;
    };
    let waited = wait_for_packets(shard, &conn, stream, buf).await;
    conn.engine().end(Request::Get);
    if waited == Waited::ClientGone {
        tracing::debug!(conn = conn.id.0, "long-polling client went away");
        shard.conn_closed(&conn);
        return false;
    }
    let polled = if conn.transport() != Transport::Polling {
        // Upgraded while this GET waited: it ends with a noop, as the client expects.
        Polled {
            payload: packet::NOOP.to_vec(),
            closed: false,
        }
    } else if conn.is_gone() && !conn.has_queued() {
        Polled {
            payload: packet::EIO_CLOSE.to_vec(),
            closed: true,
        }
    } else {
        conn.take_polled(&**shard)
    };
    let ok = write_all(
        stream,
        &http::polling_response(cors, close, &polled.payload),
    )
    .await
    .is_ok();
    if polled.closed || !ok {
        // The close went out (or nothing more can): the session is over.
        shard.conn_closed(&conn);
    }
    ok && !close
}

#[derive(Debug, PartialEq, Eq)]
enum Waited {
    Ready,
    ClientGone,
}

/// Until the session has something for the GET (or is over, or was upgraded), watching the
/// socket for a client that goes away. Bytes that arrive meanwhile (a pipelined request) are
/// kept in `buf`, and the watch stops there.
async fn wait_for_packets(
    shard: &Shard,
    conn: &Rc<Conn>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Waited {
    let mut watch = buf.is_empty();
    poll_fn(|cx| {
        if conn.has_queued() || conn.is_gone() || conn.transport() != Transport::Polling {
            return Poll::Ready(Waited::Ready);
        }
        if watch {
            let mut scratch = shard.scratch.borrow_mut();
            match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Waited::ClientGone),
                Poll::Ready(Ok(n)) => {
                    buf.extend_from_slice(&scratch[..n]);
                    watch = false;
                }
                Poll::Pending => {}
            }
        }
        conn.set_waker(cx.waker());
        Poll::Pending
    })
    .await
}

/// A long-polling POST: reads the body, handles its packets, answers `ok`. Returns whether
/// the TCP connection stays open for another request.
async fn poll_post(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    sid: &Sid,
    cors: &Cors,
    close: bool,
    content_length: usize,
) -> bool {
    let mut max = shard.config().server.max_payload;
    if let Some(conn) = session(shard, sid) {
        if !conn.was_connected() {
            max = conn::pre_connect_max(max); // as on WebSocket
        }
    }
    if content_length > max {
        if let Some(conn) = session(shard, sid) {
            // The reference server ends the session for this too.
            end_session(shard, &conn, Close::PayloadTooLarge);
        }
        let body =
            format!("{{\"code\":3,\"message\":\"payload too large: the limit is {max} bytes\"}}");
        let response = http::response(
            413,
            "Payload Too Large",
            "application/json",
            cors,
            true,
            body.as_bytes(),
        );
        let _ = write_all(stream, &response).await;
        return false;
    }
    let Some(conn) = begin(shard, stream, sid, cors, Request::Post).await else {
        return false;
    };
    let timeout = Duration::from_millis(shard.config().server.ping_timeout_ms);
    let read = futures_lite::future::or(read_body(shard, stream, buf, content_length), async {
        glommio::timer::sleep(timeout).await;
        false
    })
    .await;
    conn.engine().end(Request::Post);
    if !read {
        return false;
    }
    let body = buf.split_to(content_length);
    for p in packet::polling_packets(&body) {
        if conn.is_closing() || conn.is_gone() {
            break;
        }
        if p.first() == Some(&b'b') {
            // A base64 binary packet: binary payloads are refused as on WebSocket.
            conn.on_message(&**shard, Message::Binary(BytesMut::new()));
        } else {
            conn.on_text(&**shard, BytesMut::from(p));
        }
    }
    write_all(stream, &http::post_ok(cors, close)).await.is_ok() && !close
}

/// Reads until `buf` holds `len` bytes; false if the client went away first.
async fn read_body(shard: &Shard, stream: &mut TcpStream, buf: &mut BytesMut, len: usize) -> bool {
    while buf.len() < len {
        match read_some(shard, stream, buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}

/// Reads until `buf` holds a complete request head; `None` if the client went away first.
async fn read_head(
    shard: &Shard,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Option<(Route, usize)> {
    loop {
        if !buf.is_empty() {
            if let Some(parsed) = http::parse(buf, &shard.policy()) {
                return Some(parsed);
            }
        }
        match read_some(shard, stream, buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Passes the connection to the shard that owns the session its request names: the socket
/// (duplicated, as glommio gives no way to release one) and every byte read so far.
fn hand_over(shard: &Shard, stream: TcpStream, buf: BytesMut, to: ShardId) {
    // SAFETY: fcntl on a descriptor we own; the duplicate is owned by the OwnedFd below.
    let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    drop(stream);
    if fd < 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot hand a connection over");
        return;
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    shard.send_to_shard(
        to,
        ShardMsg::AdoptHttp {
            fd,
            buffered: buf.to_vec(),
        },
    );
}

/// How long a node waits to connect to another node it forwards a connection to.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Forwards the TCP connection of a request for a session of the node tagged `node` to
/// that node: the bytes read so far (`buf`, the request's head first), then whatever either
/// side sends, until one of them closes. With no such node live, or none reachable, answers
/// "Session ID unknown" and closes, as for a session that ended.
async fn forward(shard: &Shard, mut client: TcpStream, buf: BytesMut, route: &Route, node: u32) {
    let cors = match route {
        Route::PollGet { cors, .. } | Route::PollPost { cors, .. } => cors.clone(),
        _ => None,
    };
    let cluster = shard.shared.cluster.as_ref();
    let upstream = match cluster.and_then(|c| c.peer(node)) {
        Some(addr) => {
            futures_lite::future::or(async { TcpStream::connect(addr).await.ok() }, async {
                glommio::timer::sleep(FORWARD_CONNECT_TIMEOUT).await;
                None
            })
            .await
        }
        None => None,
    };
    let Some(mut upstream) = upstream else {
        if let Some(c) = cluster {
            c.stats.forward_failures.fetch_add(1, Relaxed);
        }
        tracing::debug!(
            node,
            "a request for a session of a node gone or unreachable"
        );
        let _ = write_all(&mut client, &EioError::UnknownSid.response(&cors)).await;
        return;
    };
    if let Some(c) = cluster {
        c.stats.sessions_forwarded.fetch_add(1, Relaxed);
    }
    let _ = upstream.set_nodelay(true);
    if write_all(&mut upstream, &buf).await.is_err() {
        return;
    }
    let (client_in, client_out) = futures_lite::io::split(client);
    let (upstream_in, upstream_out) = futures_lite::io::split(upstream);
    // Either direction ending (a close, an error) ends both: dropping the halves closes the
    // sockets, after what was copied is in the kernel's hands.
    futures_lite::future::or(
        futures_lite::io::copy(client_in, upstream_out),
        futures_lite::io::copy(upstream_in, client_out),
    )
    .await
    .ok();
}

/// Reads whatever is available into `into`, through the shard's scratch buffer. The scratch
/// buffer is borrowed only inside one poll, never across an await.
async fn read_some(
    shard: &Shard,
    stream: &mut TcpStream,
    into: &mut BytesMut,
) -> std::io::Result<usize> {
    poll_fn(|cx| {
        let mut scratch = shard.scratch.borrow_mut();
        match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
            Poll::Ready(Ok(n)) => {
                into.extend_from_slice(&scratch[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    })
    .await
}

async fn write_all(stream: &mut TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream).poll_write(cx, data)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}
