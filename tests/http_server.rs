//! The HTTP/1.1 server core on real loopback sockets, as curl or a script would meet it:
//! keep-alive, pipelining, chunked bodies both ways, `Expect: 100-continue`, the size
//! bounds (431, 413), the slow-client time limits (408, idle close), the connection limit
//! (503), and the same server behind TLS.
//!
//! Each test starts its own server on a thread of its own (one `LocalExecutor`, as in the
//! daemon) and talks to it with a plain blocking socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use interopd::http::{self, Body, Request, Response, ServeOptions};

/// Largest body the `/echo` route buffers, in bytes.
const ECHO_MAX_BYTES: usize = 64;

async fn route(req: Request) -> Response {
    match (req.method(), req.path()) {
        ("GET", "/hello") => Response::text(200, "hello"),
        ("POST", "/echo") => match req.body.read_to_vec(ECHO_MAX_BYTES).await {
            Ok(body) => Response::bytes(200, "application/octet-stream", body),
            Err(err) => err.to_response(),
        },
        ("POST", "/json") => match req.body.read_json::<serde_json::Value>(1024).await {
            Ok(value) => Response::json(200, &value),
            Err(err) => err.to_response(),
        },
        ("POST", "/ignore") => Response::empty(204),
        ("GET", "/stream") => {
            let parts = vec![Ok(b"one ".to_vec()), Ok(Vec::new()), Ok(b"two".to_vec())];
            Response::empty(200)
                .with_header("Content-Type", "text/event-stream")
                .with_body(Body::Stream(Box::pin(futures_lite::stream::iter(parts))))
        }
        // A handler that waits for ever, as a long-poll does.
        ("GET", "/wait") => futures_lite::future::pending().await,
        ("GET", "/query") => {
            let to = req.query_param("to").unwrap_or_default();
            Response::text(200, &to)
        }
        _ => Response::json_error(404, "not_found", "no such route"),
    }
}

fn start(options: ServeOptions) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let listener = smol::net::TcpListener::try_from(listener).unwrap();
        let ex = std::rc::Rc::new(smol::LocalExecutor::new());
        smol::block_on(ex.run(http::serve(
            std::rc::Rc::clone(&ex),
            listener,
            options,
            route,
        )));
    });
    addr
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn error_code(&self) -> String {
        let value: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        value["error"]["code"].as_str().unwrap().to_owned()
    }
}

/// Reads one response; `bodyless` for replies to HEAD.
fn read_reply(stream: &mut TcpStream, bodyless: bool) -> Reply {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed inside a head");
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).unwrap();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_owned(), v.trim().to_owned())
        })
        .collect();
    let mut reply = Reply {
        status,
        headers,
        body: Vec::new(),
    };
    if bodyless || status == 100 || status == 204 {
        return reply;
    }
    if let Some(len) = reply.header("content-length") {
        let mut body = vec![0u8; len.parse().unwrap()];
        stream.read_exact(&mut body).unwrap();
        reply.body = body;
    } else if reply.header("transfer-encoding") == Some("chunked") {
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                stream.read_exact(&mut byte).unwrap();
                line.push(byte[0]);
            }
            let size =
                usize::from_str_radix(std::str::from_utf8(&line).unwrap().trim(), 16).unwrap();
            let mut chunk = vec![0u8; size + 2];
            stream.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            reply.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        stream.read_to_end(&mut reply.body).unwrap();
    }
    reply
}

/// True if the server closed the connection (EOF or reset) within the read timeout.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    for _ in 0..3 {
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let reply = read_reply(&mut stream, false);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"hello");
        assert_eq!(reply.header("connection"), None);
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
              GET /hello HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    assert_eq!(read_reply(&mut stream, false).body, b"abc");
    assert_eq!(read_reply(&mut stream, false).body, b"hello");
    let last = read_reply(&mut stream, false);
    assert_eq!(last.status, 404);
    assert_eq!(last.error_code(), "not_found");
    assert_eq!(last.header("connection"), Some("close"));
    assert!(closed_by_server(&mut stream));
}

#[test]
fn chunked_request_body_reaches_the_handler_and_the_connection_stays_usable() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    stream
        .write_all(
            b"POST /json HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\n{\"a\":\r\n2;ext=1\r\n1}\r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        .unwrap();
    let reply = read_reply(&mut stream, false);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, br#"{"a":1}"#);
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut stream, false).body, b"hello");
}

#[test]
fn invalid_json_is_a_400_in_the_error_shape() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    stream
        .write_all(b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{nope")
        .unwrap();
    let reply = read_reply(&mut stream, false);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), "bad_json");
    assert_eq!(reply.header("content-type"), Some("application/json"));
}

#[test]
fn an_oversize_head_is_431_and_the_connection_closes() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    let mut request = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', http::MAX_HEAD_BYTES + 10));
    stream.write_all(&request).unwrap();
    let reply = read_reply(&mut stream, false);
    assert_eq!(reply.status, 431);
    assert_eq!(reply.error_code(), "header_too_large");
    assert!(closed_by_server(&mut stream));
}

#[test]
fn a_declared_body_over_the_server_cap_is_413_before_it_is_sent() {
    let options = ServeOptions {
        max_body_bytes: 1000,
        ..ServeOptions::default()
    };
    let addr = start(options);
    let mut stream = connect(addr);
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut stream, false);
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error_code(), "body_too_large");
    assert_eq!(reply.header("connection"), Some("close"));
}

#[test]
fn a_chunked_body_over_the_route_cap_is_413() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    let mut request =
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        request.extend_from_slice(b"20\r\n");
        request.extend(std::iter::repeat_n(b'z', 32));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).unwrap();
    let reply = read_reply(&mut stream, false);
    assert_eq!(reply.status, 413);
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        )
        .unwrap();
    let interim = read_reply(&mut stream, false);
    assert_eq!(interim.status, 100);
    stream.write_all(b"body").unwrap();
    let reply = read_reply(&mut stream, false);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, b"body");
}

#[test]
fn a_request_refused_before_its_body_is_read_never_invites_the_body() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    stream
        .write_all(
            b"POST /ignore HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        )
        .unwrap();
    // The final answer comes first, with no 100 before it, and the connection closes
    // (the client may never send the body it was not invited to send).
    let reply = read_reply(&mut stream, false);
    assert_eq!(reply.status, 204);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn a_body_the_handler_ignores_is_drained_and_keep_alive_continues() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    stream
        .write_all(b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789")
        .unwrap();
    assert_eq!(read_reply(&mut stream, false).status, 204);
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut stream, false).body, b"hello");
}

#[test]
fn a_slow_head_gets_408_and_is_closed() {
    let options = ServeOptions {
        head_timeout_ms: 200,
        ..ServeOptions::default()
    };
    let addr = start(options);
    let mut stream = connect(addr);
    let started = Instant::now();
    stream.write_all(b"GET /hello HTTP/1.1\r\nHo").unwrap();
    let reply = read_reply(&mut stream, false);
    assert_eq!(reply.status, 408);
    assert_eq!(reply.error_code(), "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(closed_by_server(&mut stream));
}

#[test]
fn a_slow_body_is_cut_off() {
    let options = ServeOptions {
        body_read_timeout_ms: 200,
        ..ServeOptions::default()
    };
    let addr = start(options);
    let mut stream = connect(addr);
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01")
        .unwrap();
    let reply = read_reply(&mut stream, false);
    assert_eq!(reply.status, 408);
    assert!(closed_by_server(&mut stream));
}

#[test]
fn an_idle_connection_is_closed_silently() {
    let options = ServeOptions {
        idle_timeout_ms: 200,
        ..ServeOptions::default()
    };
    let addr = start(options);
    let mut stream = connect(addr);
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut stream, false).status, 200);
    let started = Instant::now();
    assert!(closed_by_server(&mut stream));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_streamed_response_is_chunked_and_skips_empty_parts() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut stream, false);
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    assert_eq!(reply.body, b"one two");
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut stream, false).body, b"hello");
}

#[test]
fn an_http10_client_gets_a_streamed_body_until_close() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    stream.write_all(b"GET /stream HTTP/1.0\r\n\r\n").unwrap();
    let reply = read_reply(&mut stream, false);
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(reply.header("transfer-encoding"), None);
    assert_eq!(reply.body, b"one two");
}

#[test]
fn a_head_request_gets_the_headers_without_the_body() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    stream
        .write_all(
            b"HEAD /nowhere HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
    let head_reply = read_reply(&mut stream, true);
    assert_eq!(head_reply.status, 404);
    assert!(head_reply.header("content-length").is_some());
    assert_eq!(read_reply(&mut stream, false).body, b"hello");
}

#[test]
fn query_parameters_arrive_decoded() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    stream
        .write_all(b"GET /query?to=%2B4915112345678 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut stream, false).body, b"+4915112345678");
}

#[test]
fn smuggling_shaped_framing_is_refused_and_closed() {
    let addr = start(ServeOptions::default());
    let mut stream = connect(addr);
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
              0\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
    let reply = read_reply(&mut stream, false);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), "bad_framing");
    assert!(closed_by_server(&mut stream));
}

#[test]
fn connections_over_the_limit_get_503_and_a_hang_up_frees_the_slot() {
    let options = ServeOptions {
        limits: http::AcceptLimits::for_max(1),
        ..ServeOptions::default()
    };
    let addr = start(options);
    let mut first = connect(addr);
    first
        .write_all(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // The waiting handler is busy: a newcomer cannot take its slot.
    std::thread::sleep(Duration::from_millis(100));
    let mut second = connect(addr);
    let reply = read_reply(&mut second, false);
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error_code(), "overloaded");
    // The client of the waiting request hangs up: its slot is free at once, not when the
    // handler would have finished (never).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut third = connect(addr);
        third
            .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        if read_reply(&mut third, false).status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_idle_keep_alive_connection_gives_its_slot_to_a_newcomer() {
    let options = ServeOptions {
        limits: http::AcceptLimits::for_max(1),
        ..ServeOptions::default()
    };
    let addr = start(options);
    let mut first = connect(addr);
    first
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut first, false).status, 200);
    // `first` now idles between requests; the newcomer is served in its place.
    let mut second = connect(addr);
    second
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut second, false).status, 200);
    assert!(closed_by_server(&mut first), "the idle one was closed");
}

#[test]
fn a_head_sent_a_byte_at_a_time_still_ends_at_the_head_deadline() {
    let options = ServeOptions {
        head_timeout_ms: 600,
        ..ServeOptions::default()
    };
    let addr = start(options);
    let mut slow = connect(addr);
    let started = Instant::now();
    let head = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut_off = false;
    for b in head {
        if slow.write_all(&[*b]).is_err() {
            cut_off = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    // Each byte came well within the limit, yet the whole head did not.
    let reply = if cut_off {
        None
    } else {
        Some(read_reply(&mut slow, false))
    };
    if let Some(reply) = reply {
        assert_eq!(reply.status, 408);
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the head deadline reset per byte"
    );
}

#[test]
fn a_body_slower_than_the_minimum_rate_is_refused() {
    let options = ServeOptions {
        body_rate_grace_ms: 300,
        min_body_bytes_per_sec: 1000,
        ..ServeOptions::default()
    };
    let addr = start(options);
    let mut slow = connect(addr);
    slow.write_all(b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    // 20 bytes per 100 ms is 200 B/s: progress on every read, but too slow on average.
    let writer = {
        let mut w = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..49 {
                if w.write_all(&[b' '; 20]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let reply = read_reply(&mut slow, false);
    assert_eq!(reply.status, 408, "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(slow);
    writer.join().unwrap();
}

#[test]
fn the_same_server_runs_behind_tls() {
    let dir = tempfile::tempdir().unwrap();
    let hub = interopd::tls::ensure_hub_ca(dir.path(), &["localhost"]).unwrap();
    let server_config = hub.server_config();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let listener = smol::net::TcpListener::try_from(listener).unwrap();
        smol::block_on(async {
            let options = ServeOptions::default();
            let (tcp, peer) = listener.accept().await.unwrap();
            let tls = interopd::tls::accept(server_config, tcp).await.unwrap();
            let slot = std::rc::Rc::new(http::Slot::new(http::PeerKey::of(peer), Instant::now()));
            http::serve_connection(tls, peer, &options, &slot, &route).await;
        });
    });
    let pin = interopd::tls::Pin::CaFile(hub.ca_cert_path().to_path_buf());
    let client = interopd::tls::client_config(&pin).unwrap();
    smol::block_on(async {
        use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut tls = interopd::tls::connect(&addr.to_string(), "localhost", client)
            .await
            .unwrap();
        tls.write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut all = Vec::new();
        tls.read_to_end(&mut all).await.unwrap();
        let text = String::from_utf8(all).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    });
}
