//! The notifier's internal HTTP listener: `GET /metrics` (Prometheus text) and `GET /healthz`.
//! One thread, one request per connection, handled inline: it serves scrapes and probes, not
//! traffic. It never touches the store or SMTP; it reads [`Metrics`] only.

use crate::metrics::Metrics;
use crate::now_ms;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// A worker that has not completed a poll for this long is reported unhealthy.
pub const STALE_AFTER_MS: i64 = 30_000;

/// Serves until `stop` returns true after an accept (the owner wakes the accept with a
/// connection of its own after setting it).
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: impl Fn() -> bool) {
    for conn in listener.incoming() {
        if stop() {
            return;
        }
        match conn {
            Ok(stream) => {
                if let Err(e) = handle(stream, &metrics) {
                    tracing::debug!(error = %e, "notifier http: connection ended with an error");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "notifier http: accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let (method, path) = loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                )
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => return respond(&mut stream, 400, "text/plain", "bad request\n"),
        }
    };
    let path = path.split('?').next().unwrap_or("");
    match (method.as_str(), path) {
        ("GET", "/metrics") => respond(
            &mut stream,
            200,
            "text/plain; version=0.0.4",
            &metrics.render(),
        ),
        ("GET", "/healthz") => {
            let last = metrics.last_poll_ok_ms.load(Relaxed);
            if last > 0 && now_ms() - last < STALE_AFTER_MS {
                respond(&mut stream, 200, "text/plain", "ok\n")
            } else {
                respond(
                    &mut stream,
                    503,
                    "text/plain",
                    "the notifier cannot read the store\n",
                )
            }
        }
        ("GET", _) => respond(&mut stream, 404, "text/plain", "not found\n"),
        _ => respond(&mut stream, 405, "text/plain", "method not allowed\n"),
    }
}

fn respond(stream: &mut TcpStream, status: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
