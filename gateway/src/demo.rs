//! The demo chat page, served on the internal listener under `/demo/`: a small static page
//! (HTML, CSS, a little plain JavaScript and the socket.io-client browser bundle, vendored in
//! `gateway/demo/`) with which a new user tries the gateway in a browser in a minute, and
//! which the browser test drives from another origin than the public port, since only a
//! browser enforces CORS.
//!
//! The files are compiled into the binary, so there is nothing to install or find at run time.
//! They need no admin token: they are public code and hold no data; everything the page shows
//! comes over the Socket.IO connection that the user's own JWT authenticates. The one generated
//! file, `config.js`, tells the page where the public listener is, which only the running
//! gateway knows (the configured port may be 0). `CORECAST_DEMO=false` turns the route off.
//!
//! Sans-IO: [`respond`] maps a method and path to a page; admin.rs writes it to the socket.

use crate::config::ServerConfig;
use std::net::SocketAddr;

/// Where the page lives on the internal listener.
const PREFIX: &str = "/demo";

const INDEX_HTML: &[u8] = include_bytes!("../demo/index.html");
const APP_JS: &[u8] = include_bytes!("../demo/app.js");
const STYLE_CSS: &[u8] = include_bytes!("../demo/style.css");
/// socket.io-client's `dist/socket.io.min.js`, byte for byte as npm ships it (MIT, header
/// kept; `gateway/demo/README.md` says which version and how to refresh it).
const SOCKET_IO_JS: &[u8] = include_bytes!("../demo/socket.io.min.js");

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// One answer of the demo route.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Page {
    fn ok(content_type: &'static str, body: &[u8]) -> Page {
        Page {
            status: 200,
            content_type,
            body: body.to_vec(),
        }
    }

    fn text(status: u16, body: &str) -> Page {
        Page {
            status,
            content_type: TEXT,
            body: body.as_bytes().to_vec(),
        }
    }
}

/// The demo route's answer to `method path`, or `None` when the path is not the demo's (or
/// the demo is turned off), so the caller goes on with its own routes.
///
/// `public_addr` is the address the public listener is bound to (not the configured one, whose
/// port may be 0).
pub fn respond(
    server: &ServerConfig,
    public_addr: SocketAddr,
    method: &str,
    path: &str,
) -> Option<Page> {
    if !server.demo {
        return None;
    }
    let file = match path.strip_prefix(PREFIX)? {
        // `/demo` without the slash is served too: the page names its assets by absolute paths,
        // so it needs no redirect (which the internal listener's responses cannot carry).
        "" | "/" | "/index.html" => "index.html",
        rest => rest.strip_prefix('/')?,
    };
    if method != "GET" {
        return Some(Page::text(405, "the demo page is read with GET"));
    }
    Some(match file {
        "index.html" => Page::ok(HTML, INDEX_HTML),
        "app.js" => Page::ok(JS, APP_JS),
        "style.css" => Page::ok(CSS, STYLE_CSS),
        "socket.io.min.js" => Page::ok(JS, SOCKET_IO_JS),
        "config.js" => Page::ok(JS, config_js(server, public_addr).as_bytes()),
        _ => Page::text(404, "no such file in the demo page"),
    })
}

/// `window.CORECAST_DEMO = {...}`: the public listener's URL and the Engine.IO path.
///
/// A listener bound to an unspecified address (`0.0.0.0`, `::`) has no one URL; the page then
/// takes the host it was loaded from, with the public port.
fn config_js(server: &ServerConfig, public_addr: SocketAddr) -> String {
    let url = (!public_addr.ip().is_unspecified()).then(|| format!("http://{public_addr}"));
    let config = serde_json::json!({
        "publicUrl": url,
        "publicPort": public_addr.port(),
        "path": server.path,
    });
    format!(
        "// Written by the gateway: where its public Socket.IO listener is.\n\
         window.CORECAST_DEMO = {config};\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerConfig {
        ServerConfig::default()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn get(path: &str) -> Option<Page> {
        respond(&server(), addr("127.0.0.1:3000"), "GET", path)
    }

    #[test]
    fn the_page_and_its_assets_are_served_with_their_types() {
        for path in ["/demo", "/demo/", "/demo/index.html"] {
            let page = get(path).unwrap();
            assert_eq!((page.status, page.content_type), (200, HTML), "{path}");
            assert_eq!(page.body, INDEX_HTML);
        }
        for (path, ty) in [
            ("/demo/app.js", JS),
            ("/demo/style.css", CSS),
            ("/demo/socket.io.min.js", JS),
            ("/demo/config.js", JS),
        ] {
            let page = get(path).unwrap();
            assert_eq!((page.status, page.content_type), (200, ty), "{path}");
            assert!(!page.body.is_empty(), "{path}");
        }
        assert!(
            SOCKET_IO_JS.starts_with(b"/*!\n * Socket.IO v4."),
            "the vendored bundle keeps its license header"
        );
    }

    #[test]
    fn other_paths_are_left_to_the_caller_and_unknown_files_are_404() {
        for path in [
            "/",
            "/api/users/1",
            "/metrics",
            "/demonstration",
            "/demo.js",
        ] {
            assert_eq!(get(path), None, "{path}");
        }
        for path in [
            "/demo/nope.js",
            "/demo/../admin",
            "/demo/socket.io.min.js.map",
        ] {
            assert_eq!(get(path).unwrap().status, 404, "{path}");
        }
        let post = respond(&server(), addr("127.0.0.1:3000"), "POST", "/demo/").unwrap();
        assert_eq!(post.status, 405);
    }

    #[test]
    fn turned_off_the_route_is_not_there() {
        let off = ServerConfig {
            demo: false,
            ..server()
        };
        assert_eq!(respond(&off, addr("127.0.0.1:3000"), "GET", "/demo/"), None);
    }

    #[test]
    fn config_js_names_the_bound_public_address_and_path() {
        let custom = ServerConfig {
            path: "/chat/".into(),
            ..server()
        };
        let body = config_js(&custom, addr("127.0.0.1:41234"));
        assert!(
            body.contains(r#""publicUrl":"http://127.0.0.1:41234""#),
            "{body}"
        );
        assert!(body.contains(r#""path":"/chat/""#), "{body}");
        let v6 = config_js(&server(), addr("[::1]:3000"));
        assert!(v6.contains(r#""publicUrl":"http://[::1]:3000""#), "{v6}");
        let any = config_js(&server(), addr("0.0.0.0:3000"));
        assert!(
            any.contains(r#""publicUrl":null"#) && any.contains(r#""publicPort":3000"#),
            "{any}"
        );
    }
}
