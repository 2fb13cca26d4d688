//! The one accept loop ([`accept_loop`]) on the one executor, its plain-HTTP and TLS forms
//! ([`serve`], [`serve_tls`]), and the overload refusal.

use std::time::Instant;

use super::*;

/// What [`accept_loop`] does with a connection over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Answer `503 overloaded` in plain HTTP, then close (plain-HTTP listeners).
    Answer503,
    /// Close at once (TLS listeners, where a plaintext answer would be noise).
    Close,
}

/// The one accept loop: accepts on `listener` forever and runs `conn` for each connection as
/// a task on `ex`, the daemon's (or the hub's) one executor, with its [`Slot`]. Admission
/// follows `limits` by the policy of `slots.rs`: an idle connection may be closed to make
/// room, and a newcomer is refused only when every slot it may take is busy; refusals get
/// `overflow`. The loop owns its connection tasks: dropping its future cancels every
/// connection it accepted. `name` prefixes its log lines; `stats` counts what it turned away.
pub async fn accept_loop<C, Fut>(
    ex: Rc<smol::LocalExecutor<'static>>,
    listener: smol::net::TcpListener,
    name: &'static str,
    limits: AcceptLimits,
    overflow: Overflow,
    stats: std::sync::Arc<ListenerStats>,
    conn: C,
) where
    C: Fn(smol::net::TcpStream, SocketAddr, Rc<Slot>) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let mut tasks: Vec<(smol::Task<()>, Rc<Slot>)> = Vec::new();
    let (refusals, evictions) = (RateLimitedLog::default(), RateLimitedLog::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                log::warn!("{name}: accept failed: {err}");
                Timer::after(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
                continue;
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            log::debug!("{name}: {peer}: TCP_NODELAY refused: {err}");
        }
        tasks.retain(|(t, _)| !t.is_finished());
        let key = PeerKey::of(peer);
        let now = Instant::now();
        match admit(tasks.iter().map(|(_, s)| &**s), key, &limits, now) {
            Admission::Admit => {}
            Admission::Evict(i) if i < tasks.len() => {
                // Dropping the task cancels it and closes its socket.
                drop(tasks.swap_remove(i));
                ListenerStats::bump(&stats.evicted);
                if let Some(held) = evictions.allow(now) {
                    log::info!(
                        "{name}: closed an idle connection to make room for {peer} \
                         ({held} more since the last such line; {} connections open)",
                        tasks.len()
                    );
                }
            }
            Admission::Evict(_) => {}
            Admission::Refuse(why) => {
                ListenerStats::bump(&stats.refused);
                if let Some(held) = refusals.allow(now) {
                    log::warn!(
                        "{name}: {peer} refused ({why}; {held} more refused since the last such \
                         line; {} connections open)",
                        tasks.len()
                    );
                }
                if overflow == Overflow::Answer503 {
                    // Bounded by OVERLOAD_WRITE_TIMEOUT_MS, so it may outlive the loop.
                    ex.spawn(refuse_overloaded(stream)).detach();
                }
                continue;
            }
        }
        let slot = Rc::new(Slot::new(key, now));
        tasks.push((ex.spawn(conn(stream, peer, Rc::clone(&slot))), slot));
        // Let the new connection read the head that usually came with it before the next
        // accept, so a burst of newcomers cannot evict it before it was even looked at.
        futures_lite::future::yield_now().await;
    }
}

/// Serves plain HTTP on `listener` with [`serve_connection`] per connection, through
/// [`accept_loop`] on `ex`, under [`ServeOptions::limits`]; a refused connection gets a 503
/// and is closed. Stop it by dropping the future: every connection it
/// serves is dropped with it.
pub async fn serve<H, Fut>(
    ex: Rc<smol::LocalExecutor<'static>>,
    listener: smol::net::TcpListener,
    options: ServeOptions,
    handler: H,
) where
    H: Fn(Request) -> Fut + 'static,
    Fut: Future<Output = Response> + 'static,
{
    let handler = Rc::new(handler);
    let options = Rc::new(options);
    let (limits, stats) = (options.limits, std::sync::Arc::clone(&options.stats));
    accept_loop(
        ex,
        listener,
        "http",
        limits,
        Overflow::Answer503,
        stats,
        |stream, peer, slot| {
            let handler = Rc::clone(&handler);
            let options = Rc::clone(&options);
            async move { serve_connection(stream, peer, &options, &slot, &*handler).await }
        },
    )
    .await
}

/// [`serve`] over TLS: each connection is accepted with `tls_config` (within
/// [`tls::HANDSHAKE_TIMEOUT_MS`](crate::tls::HANDSHAKE_TIMEOUT_MS)) before it is served.
/// Connections over the limit are closed at accept. `name` prefixes its log lines.
pub async fn serve_tls<H, Fut>(
    ex: Rc<smol::LocalExecutor<'static>>,
    listener: smol::net::TcpListener,
    name: &'static str,
    tls_config: std::sync::Arc<futures_rustls::rustls::ServerConfig>,
    options: ServeOptions,
    handler: H,
) where
    H: Fn(Request) -> Fut + 'static,
    Fut: Future<Output = Response> + 'static,
{
    let handler = Rc::new(handler);
    let options = Rc::new(options);
    let (limits, stats) = (options.limits, std::sync::Arc::clone(&options.stats));
    accept_loop(
        ex,
        listener,
        name,
        limits,
        Overflow::Close,
        stats,
        |tcp, peer, slot| {
            let handler = Rc::clone(&handler);
            let options = Rc::clone(&options);
            let config = std::sync::Arc::clone(&tls_config);
            async move {
                match crate::tls::accept(config, tcp).await {
                    Ok(stream) => serve_connection(stream, peer, &options, &slot, &*handler).await,
                    Err(e) => log::debug!("{name}: {peer}: TLS handshake failed: {e}"),
                }
            }
        },
    )
    .await
}

pub(super) async fn refuse_overloaded(mut stream: smol::net::TcpStream) {
    let response = Response::json_error(503, "overloaded", "too many connections; retry later");
    let Body::Bytes(body) = response.body else {
        return;
    };
    let framing = ResponseFraming::Length(body.len() as u64);
    let Ok(mut bytes) = encode_response_head(503, &response.headers, framing, false, false) else {
        return;
    };
    bytes.extend_from_slice(&body);
    within(OVERLOAD_WRITE_TIMEOUT_MS, async {
        if stream.write_all(&bytes).await.is_ok() {
            let _ = stream.flush().await;
            let _ = stream.close().await;
        }
    })
    .await;
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    /// Counts a live connection task while it exists.
    struct Live(Rc<std::cell::Cell<usize>>);

    impl Live {
        fn enter(n: &Rc<std::cell::Cell<usize>>) -> Self {
            n.set(n.get() + 1);
            Live(Rc::clone(n))
        }
    }

    impl Drop for Live {
        fn drop(&mut self) {
            self.0.set(self.0.get() - 1);
        }
    }

    /// Waits (at most 5 s) until `live` holds `want`; whether it did.
    async fn settles(live: &std::cell::Cell<usize>, want: usize) -> bool {
        for _ in 0..1000 {
            if live.get() == want {
                return true;
            }
            Timer::after(Duration::from_millis(5)).await;
        }
        false
    }

    /// Reads one byte, at most 5 s: `Some(0)` at a close, `None` if nothing came.
    async fn read_within(stream: &mut smol::net::TcpStream) -> Option<usize> {
        use futures_lite::FutureExt as _;
        let mut byte = [0u8; 1];
        async { Some(stream.read(&mut byte).await.unwrap_or(0)) }
            .or(async {
                Timer::after(Duration::from_secs(5)).await;
                None
            })
            .await
    }

    #[test]
    fn the_accept_loop_bounds_its_connections_and_dropping_it_ends_them() {
        let ex = Rc::new(smol::LocalExecutor::new());
        let live = Rc::new(std::cell::Cell::new(0usize));
        smol::block_on(ex.run(async {
            let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let counter = Rc::clone(&live);
            let accepting = ex.spawn(accept_loop(
                Rc::clone(&ex),
                listener,
                "test",
                AcceptLimits::for_max(1),
                Overflow::Close,
                std::sync::Arc::new(ListenerStats::default()),
                move |stream, _peer, slot: Rc<Slot>| {
                    // Busy, so the newcomer cannot take its slot.
                    slot.busy();
                    let guard = Live::enter(&counter);
                    async move {
                        let _held = (guard, stream);
                        futures_lite::future::pending::<()>().await
                    }
                },
            ));
            let mut first = smol::net::TcpStream::connect(addr).await.unwrap();
            assert!(settles(&live, 1).await, "the first connection is served");

            let mut second = smol::net::TcpStream::connect(addr).await.unwrap();
            let n = read_within(&mut second).await;
            assert_eq!(
                n,
                Some(0),
                "over the limit, a connection is closed at accept"
            );
            assert_eq!(live.get(), 1);

            drop(accepting);
            assert!(
                settles(&live, 0).await,
                "dropping the loop ends its connections"
            );
            assert_eq!(
                read_within(&mut first).await,
                Some(0),
                "and closes their sockets"
            );
        }));
    }
}
