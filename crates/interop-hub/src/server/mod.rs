//! The hub's shell: the TLS listener, one task per connection, the timer task, the loopback
//! control API, and the provider accounts on disk. Everything here is I/O; every decision is
//! the core's ([`Hub`]). One `LocalExecutor` thread runs it all; the core sits in an
//! `Rc<RefCell<…>>` and no borrow is held across an `.await`.
//!
//! Provider accounts are files, `<state>/accounts/{account}.token` (mode 0600, the token as
//! one line). `interop-hub provision` writes them; the hub reads the file at each login, so a
//! new account works at once, even while the hub runs (the hub's redb file is locked by the
//! running hub, the accounts directory is not).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};
use rand::RngExt as _;
use serde::Deserialize;
use smol::channel::{Receiver, Sender};

use crate::media::MediaStore;
use crate::proxy;
use crate::state::{AccountBook, ConnId, ControlError, GroupInfo, Hub, MediaFetch, Output};
use interop_io::http::{self, Request, Response, ServeOptions};
use interop_io::state_dir::StoreError;
use interop_io::tls;
use interop_proto::content::Message;
use interop_proto::frame::{FrameReader, framed};
use interop_proto::jid;
use interop_proto::login::AccountRecord;

pub use crate::ACCOUNTS_DIR;
/// Length of a generated provider token, in random bytes (hex on disk and in configs).
pub const TOKEN_BYTES: usize = 32;
/// Gatekeeper connections served at once; more are closed at accept.
pub const MAX_HUB_CONNECTIONS: usize = 512;
/// Largest control API request body, in bytes (media to send travels base64 inside it).
pub const MAX_CONTROL_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Longest the timer task sleeps between checks, in milliseconds.
pub const MAX_TIMER_SLEEP_MS: u64 = 1_000;
/// Bytes read from a TLS connection per read call.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Names the hub's server certificate carries besides the listen address.
pub const SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1", "interop-hub"];
/// Most frames waiting to be written to one connection; a client that does not read is
/// closed when it falls this far behind.
pub const MAX_PENDING_FRAMES: usize = 4096;

pub use interop_io::clock::now_ms;

mod control;
mod noise_keys;
mod provision;
mod wa;

pub use control::ROUTES as CONTROL_ROUTES;
use control::*;
pub use noise_keys::*;
pub use provision::*;
use wa::Sniffed;

/// Provider accounts as files under `<state>/accounts/`.
pub struct FileAccounts {
    dir: PathBuf,
}

impl FileAccounts {
    pub fn new(state_dir: &Path) -> FileAccounts {
        FileAccounts {
            dir: state_dir.join(ACCOUNTS_DIR),
        }
    }
}

impl AccountBook for FileAccounts {
    fn lookup(&self, account: &str) -> Result<Option<AccountRecord>, StoreError> {
        // The name is checked before it becomes a path, so it cannot leave the directory.
        if jid::check_account(account).is_err() {
            return Ok(None);
        }
        let path = self.dir.join(format!("{account}.token"));
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(AccountRecord {
                token: text.trim().to_owned(),
                integrator: jid::integrator_of(account).to_owned(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }
}

impl FileAccounts {
    /// The account whose `wa` account id ([`interop_proto::wa_login::account_id`]) is `id`:
    /// the names in the accounts directory, each hashed.
    pub fn by_account_id(&self, id: u64) -> Result<Option<String>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(account) = name.to_str().and_then(|n| n.strip_suffix(".token")) else {
                continue;
            };
            if jid::check_account(account).is_ok()
                && interop_proto::wa_login::account_id(account) == id
            {
                return Ok(Some(account.to_owned()));
            }
        }
        Ok(None)
    }
}

/// Creates the account (or reads its existing token) and returns the token.
pub fn provision_account(state_dir: &Path, account: &str) -> Result<String, StoreError> {
    let dir = state_dir.join(ACCOUNTS_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
    if let Some(rec) = FileAccounts::new(state_dir).lookup(account)? {
        return Ok(rec.token);
    }
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill(&mut bytes[..]);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("{account}.token"));
    let tmp = dir.join(format!(".{account}.token.tmp"));
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(format!("{token}\n").as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)?;
    Ok(token)
}

/// What `interop-hub` was asked to run.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub control: SocketAddr,
    /// Where the media store serves blobs over HTTPS, if anywhere.
    pub media: Option<SocketAddr>,
    pub demo_users: bool,
}

/// Why the hub could not start or stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// Environment: the TLS material could not be made or read.
    Tls(tls::TlsError),
    /// Environment: the state could not be opened.
    Hub(crate::state::HubError),
    /// Environment: the Noise keys could not be read or made.
    Noise(StoreError),
    /// Environment: an address could not be bound.
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Caller: the control address is not loopback.
    ControlNotLoopback { addr: SocketAddr },
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Tls(e) => write!(f, "{e}"),
            ServeError::Hub(e) => write!(f, "{e}"),
            ServeError::Noise(e) => write!(f, "the wa profile's Noise keys: {e}"),
            ServeError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServeError::ControlNotLoopback { addr } => {
                write!(f, "the control API must listen on loopback, not {addr}")
            }
        }
    }
}

impl std::error::Error for ServeError {}

/// What the core gives a connection task: a stanza's text, encoded by the task for its
/// profile, or the order to close.
enum ToConn {
    Stanza(Vec<u8>),
    Close,
}

struct Shell {
    hub: Hub,
    media: Option<MediaStore>,
    state_dir: PathBuf,
    conns: HashMap<ConnId, Sender<ToConn>>,
    wake_timer: Option<Sender<()>>,
    /// Blobs simulated users need, for the fetcher task.
    fetches: Option<Sender<MediaFetch>>,
    /// The `wa` profile's Noise keys and chain.
    noise: HubNoise,
}

type Shared = Rc<RefCell<Shell>>;

/// Moves the core's outputs to the connection tasks.
fn pump(shared: &Shared) {
    let mut sh = shared.borrow_mut();
    while let Some(out) = sh.hub.poll_output() {
        match out {
            Output::Send { conn, payload } => {
                let Some(tx) = sh.conns.get(&conn) else {
                    continue;
                };
                if tx.len() < MAX_PENDING_FRAMES && tx.try_send(ToConn::Stanza(payload)).is_ok() {
                    continue;
                }
                // Say why, to the log and to the client, instead of a bare close.
                log::warn!(
                    "hub: connection {conn} does not read: {} frames wait (MAX_PENDING_FRAMES); closing it as overloaded",
                    tx.len()
                );
                let text = format!(
                    "over {MAX_PENDING_FRAMES} frames waited for this connection to read them"
                );
                let why = crate::state::stream_error("overloaded", &text).to_xml();
                let _ = tx.try_send(ToConn::Stanza(why));
                let _ = tx.try_send(ToConn::Close);
                sh.conns.remove(&conn);
            }
            Output::Close { conn } => {
                if let Some(tx) = sh.conns.remove(&conn) {
                    let _ = tx.try_send(ToConn::Close);
                }
            }
        }
    }
    while let Some(f) = sh.hub.poll_media_fetch() {
        // The channel is unbounded; the core bounds how many fetches wait
        // (MAX_PENDING_MEDIA_FETCHES).
        if let Some(tx) = &sh.fetches {
            let _ = tx.try_send(f);
        }
    }
    if let Some(w) = &sh.wake_timer {
        let _ = w.try_send(());
    }
}

/// Fetches `url` for provider `account` exactly as `GET /proxy/{account}?url=` does: only
/// from a media host registered for that provider, pinned to its key, within the proxy's
/// bounds.
pub async fn proxy_fetch(
    state_dir: &Path,
    account: &str,
    url: &str,
) -> Result<Vec<u8>, proxy::ProxyError> {
    let hosts = proxy::load_hosts(state_dir, account)?;
    let (host, path) = proxy::check_url(&hosts, url)?;
    proxy::fetch(host, &path).await
}

/// Performs one simulated user's media fetch and hands the result to the core.
async fn fetch_for_sim(shared: Shared, f: MediaFetch) {
    let state_dir = shared.borrow().state_dir.clone();
    let got = proxy_fetch(&state_dir, &f.account, &f.url).await;
    if let Err(e) = &got {
        log::warn!(
            "hub: media fetch for a simulated user from {}: {e}",
            f.account
        );
    }
    let blob = got.map_err(|e| e.status_code().1.to_owned());
    {
        let mut sh = shared.borrow_mut();
        let Shell { hub, media, .. } = &mut *sh;
        hub.media_fetched(f.ticket, blob, media.as_ref(), now_ms(), &mut rand::rng());
    }
    pump(&shared);
}

/// Runs the hub until the process is stopped.
pub async fn run(opts: HubOptions) -> Result<(), ServeError> {
    if !opts.control.ip().is_loopback() {
        return Err(ServeError::ControlNotLoopback { addr: opts.control });
    }
    let listen_ip = opts.listen.ip().to_string();
    let mut names: Vec<&str> = SERVER_NAMES.to_vec();
    if !opts.listen.ip().is_unspecified() && !names.contains(&listen_ip.as_str()) {
        names.push(&listen_ip);
    }
    let media_ip = opts.media.map(|m| m.ip().to_string());
    if let Some(ip) = &media_ip
        && !names.contains(&ip.as_str())
        && opts.media.is_some_and(|m| !m.ip().is_unspecified())
    {
        names.push(ip);
    }
    let tls_material = tls::ensure_hub_ca(&opts.state_dir, &names).map_err(ServeError::Tls)?;
    let noise = ensure_hub_noise(&opts.state_dir, now_ms() / 1000).map_err(ServeError::Noise)?;
    let mut rng = rand::rng();
    let mut hub = Hub::open(
        &opts.state_dir,
        Box::new(FileAccounts::new(&opts.state_dir)),
        now_ms(),
        &mut rng,
    )
    .map_err(ServeError::Hub)?;
    if opts.demo_users {
        for (phone, behavior) in [("+15550100", "echo"), ("+15550101", "silent")] {
            match hub.create_user(phone, 1, behavior, now_ms(), &mut rng) {
                Ok(_) | Err(ControlError::Exists) => {}
                Err(e) => log::error!("hub: demo user {phone}: {e}"),
            }
        }
    }
    let listener = smol::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.listen,
            source,
        })?;
    let control = smol::net::TcpListener::bind(opts.control)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.control,
            source,
        })?;
    let media_listener = match opts.media {
        Some(addr) => Some(
            smol::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?,
        ),
        None => None,
    };
    // Said once every listener is bound: tests and scripts wait for this line.
    log::info!(
        "hub: listening on {} (wa and TLS), control API on {}, CA {}",
        opts.listen,
        opts.control,
        tls_material.ca_cert_path().display()
    );
    let media = opts.media.map(|addr| {
        let host = if addr.ip().is_unspecified() {
            "localhost".to_owned()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        MediaStore::new(&opts.state_dir, &format!("https://{host}:{}", addr.port()))
    });
    let (wake_tx, wake_rx) = smol::channel::bounded(1);
    let (fetch_tx, fetch_rx) = smol::channel::unbounded();
    let shared: Shared = Rc::new(RefCell::new(Shell {
        hub,
        media,
        state_dir: opts.state_dir.clone(),
        conns: HashMap::new(),
        wake_timer: Some(wake_tx),
        fetches: Some(fetch_tx),
        noise,
    }));
    pump(&shared);
    let ex = Rc::new(smol::LocalExecutor::new());
    let accept = {
        let shared = Rc::clone(&shared);
        let config = tls_material.server_config();
        http::accept_loop(
            Rc::clone(&ex),
            listener,
            "hub",
            http::AcceptLimits::for_max(MAX_HUB_CONNECTIONS),
            http::Overflow::Close,
            std::sync::Arc::default(),
            move |tcp, peer, slot: Rc<http::Slot>| {
                // A link is a long-lived conversation, never idle in the HTTP sense.
                slot.busy();
                let shared = Rc::clone(&shared);
                let config = config.clone();
                async move {
                    match wa::sniff(&tcp).await {
                        Some(Sniffed::Wa) => wa::serve_wa(shared, tcp, peer).await,
                        Some(Sniffed::Tls) => match tls::accept(config, tcp).await {
                            Ok(stream) => serve_conn(shared, stream, peer).await,
                            Err(e) => log::info!("hub: {peer}: TLS handshake failed: {e}"),
                        },
                        None => {}
                    }
                }
            },
        )
    };
    let timers = {
        let shared = Rc::clone(&shared);
        async move {
            loop {
                let next = shared.borrow().hub.poll_timeout();
                let now = now_ms();
                let sleep_ms = next
                    .map(|t| t.saturating_sub(now))
                    .unwrap_or(MAX_TIMER_SLEEP_MS)
                    .min(MAX_TIMER_SLEEP_MS);
                let _ = async {
                    smol::Timer::after(Duration::from_millis(sleep_ms)).await;
                }
                .or(async {
                    let _ = wake_rx.recv().await;
                })
                .await;
                let now = now_ms();
                if shared.borrow().hub.poll_timeout().is_some_and(|t| t <= now) {
                    shared
                        .borrow_mut()
                        .hub
                        .handle_timeout(now, &mut rand::rng());
                    pump(&shared);
                }
            }
        }
    };
    let control_api = {
        let shared = Rc::clone(&shared);
        let options = ServeOptions {
            max_body_bytes: MAX_CONTROL_BODY_BYTES as u64,
            ..ServeOptions::default()
        };
        http::serve(Rc::clone(&ex), control, options, move |req| {
            let shared = Rc::clone(&shared);
            async move { handle_control(&shared, req).await }
        })
    };
    let media_api = {
        let shared = Rc::clone(&shared);
        let ex2 = Rc::clone(&ex);
        let config = tls_material.server_config();
        async move {
            let Some(listener) = media_listener else {
                return;
            };
            let handler = move |req: Request| {
                let shared = Rc::clone(&shared);
                async move { handle_media(&shared, &req).await }
            };
            let options = ServeOptions::default();
            http::serve_tls(ex2, listener, "hub: media", config, options, handler).await
        }
    };
    let fetcher = {
        let shared = Rc::clone(&shared);
        let ex2 = Rc::clone(&ex);
        async move {
            while let Ok(f) = fetch_rx.recv().await {
                ex2.spawn(fetch_for_sim(Rc::clone(&shared), f)).detach();
            }
        }
    };
    ex.run(async {
        ex.spawn(timers).detach();
        ex.spawn(fetcher).detach();
        ex.spawn(control_api).detach();
        ex.spawn(media_api).detach();
        accept.await
    })
    .await;
    Ok(())
}

/// `GET /media/{id}`: a stored blob (ciphertext only). `GET /proxy/{account}?url=URL`: a
/// blob fetched from a media host registered for that provider.
async fn handle_media(shared: &Shared, req: &Request) -> Response {
    let segments: Vec<&str> = req.head.path_segments().collect();
    if req.method() != "GET" {
        return Response::json_error(405, "method_not_allowed", "only GET");
    }
    let id = match segments.as_slice() {
        ["media", id] => *id,
        ["proxy", account] => {
            let state_dir = shared.borrow().state_dir.clone();
            let Some(url) = req.query_param("url") else {
                return Response::json_error(400, "bad_url", "give ?url=");
            };
            return match proxy_fetch(&state_dir, account, &url).await {
                Ok(blob) => {
                    shared.borrow_mut().hub.count_media_proxied();
                    Response::bytes(200, "application/octet-stream", blob)
                }
                Err(e) => {
                    log::warn!("hub: proxy for {account}: {e}");
                    let (status, code) = e.status_code();
                    Response::json_error(status, code, &e.to_string())
                }
            };
        }
        _ => return Response::json_error(404, "not_found", "no such route"),
    };
    let path = shared.borrow().media.as_ref().and_then(|m| m.path(id));
    match path.map(fs::read) {
        Some(Ok(blob)) => Response::bytes(200, "application/octet-stream", blob),
        _ => Response::json_error(404, "not_found", "no such blob"),
    }
}

async fn serve_conn(shared: Shared, stream: tls::TlsServerStream, peer: SocketAddr) {
    let (tx, rx) = smol::channel::unbounded();
    let conn = {
        let mut sh = shared.borrow_mut();
        let id = sh.hub.connect(now_ms());
        sh.conns.insert(id, tx);
        id
    };
    log::debug!("hub: connection {conn} from {peer}");
    run_conn(shared, conn, rx, stream, XmlCodec(FrameReader::default())).await;
}

/// How a connection task turns its client's bytes into stanza texts for the core, and the
/// core's stanza texts into bytes, for the connection's profile.
trait ConnCodec {
    /// Takes bytes from the client; gives the whole stanza texts they completed, then the
    /// refusal (its reason) that ended decoding, if any (logged by the codec as it sees fit).
    fn decode(&mut self, bytes: &[u8]) -> (Vec<Vec<u8>>, Option<&'static str>);
    /// The bytes that carry one stanza text; `None` if it could not be encoded (logged).
    fn encode(&mut self, conn: ConnId, text: &[u8]) -> Option<Vec<u8>>;
}

/// `interop-xml/1` inside TLS: 3-byte framed stanza texts.
struct XmlCodec(FrameReader);

impl ConnCodec for XmlCodec {
    fn decode(&mut self, bytes: &[u8]) -> (Vec<Vec<u8>>, Option<&'static str>) {
        match self.0.feed(bytes) {
            Ok(list) => (list, None),
            Err(e) => (Vec::new(), Some(e.reason())),
        }
    }

    fn encode(&mut self, conn: ConnId, text: &[u8]) -> Option<Vec<u8>> {
        match framed(text) {
            Ok(f) => Some(f),
            Err(e) => {
                log::error!("hub: cannot frame a stanza for {conn}: {e}");
                None
            }
        }
    }
}

/// Runs a connection the core knows as `conn` until either side ends it: stanzas from the
/// client go to the core, what the core sends goes out, both through `codec`.
async fn run_conn<S, C>(shared: Shared, conn: ConnId, rx: Receiver<ToConn>, stream: S, codec: C)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
    C: ConnCodec,
{
    pump(&shared);
    let codec = RefCell::new(codec);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let read_loop = async {
        let mut buf = vec![0u8; READ_BUFFER_BYTES];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let (texts, refused) = codec.borrow_mut().decode(buf.get(..n).unwrap_or_default());
            {
                let mut sh = shared.borrow_mut();
                let mut rng = rand::rng();
                for text in texts {
                    sh.hub.handle_frame(conn, &text, now_ms(), &mut rng);
                }
                if let Some(reason) = refused {
                    sh.hub.frame_error(conn, reason);
                }
            }
            pump(&shared);
        }
    };
    let write_loop = async {
        write_frames(&rx, &mut writer, |text| {
            codec.borrow_mut().encode(conn, text)
        })
        .await;
        let _ = writer.close().await;
    };
    read_loop.or(write_loop).await;
    {
        let mut sh = shared.borrow_mut();
        sh.conns.remove(&conn);
        sh.hub.disconnected(conn);
    }
    pump(&shared);
    log::debug!("hub: connection {conn} closed");
}

/// Writes what the core sends, each stanza encoded by `encode` for the connection's profile
/// (`None`: it could not be, and was logged).
async fn write_frames<W: futures_lite::AsyncWrite + Unpin>(
    rx: &Receiver<ToConn>,
    w: &mut W,
    mut encode: impl FnMut(&[u8]) -> Option<Vec<u8>>,
) {
    while let Ok(msg) = rx.recv().await {
        match msg {
            ToConn::Stanza(text) => {
                let Some(f) = encode(&text) else {
                    continue;
                };
                if w.write_all(&f).await.is_err() {
                    return;
                }
                if rx.is_empty() && w.flush().await.is_err() {
                    return;
                }
            }
            ToConn::Close => {
                let _ = w.flush().await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML1: interop_proto::WireProfile = interop_proto::WireProfile::InteropXml1;

    #[test]
    fn provisioning_names_the_account_and_keeps_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let text = provision(dir.path(), "acme-home", "127.0.0.1:5222", XML1).unwrap();
        let cfg = &text;
        assert_eq!(
            (cfg.integrator.as_str(), cfg.user.as_str()),
            ("acme", "home")
        );
        assert_eq!(cfg.server_addr, "127.0.0.1:5222");
        assert_eq!(cfg.server_name, "127.0.0.1");
        assert!(cfg.ca_file.ends_with(interop_io::tls::CA_CERT_FILE));
        let rec = FileAccounts::new(dir.path())
            .lookup("acme-home")
            .unwrap()
            .unwrap();
        assert_eq!(rec.token, cfg.token);
        assert_eq!(rec.integrator, "acme");
        // Provisioning again keeps the token.
        let again = provision(dir.path(), "acme-home", "127.0.0.1:5222", XML1).unwrap();
        assert_eq!(again, text);
    }

    #[test]
    fn account_without_integrator_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            provision(dir.path(), "home", "127.0.0.1:1", XML1),
            Err(ProvisionError::BadAccount { .. })
        ));
        assert!(matches!(
            provision(dir.path(), "acme-home", "nowhere", XML1),
            Err(ProvisionError::BadConnect { .. })
        ));
    }

    #[test]
    fn account_lookup_refuses_path_tricks() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            FileAccounts::new(dir.path()).lookup("../etc").unwrap(),
            None
        );
    }
}
