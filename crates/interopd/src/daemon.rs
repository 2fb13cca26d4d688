//! The daemon shell: one thread, one `smol::LocalExecutor`, and everything on it (the API
//! listener and its connections, the webhook worker, the link, timers and signals).
//!
//! ```text
//!  run(config, start_link)
//!   ├─ Runtime::open: state dir (0700), store, <state>/api-token (0600), our identity
//!   ├─ bind the API address, register SIGTERM/SIGINT
//!   ├─ start_link(&runtime) -> Rc<dyn LinkControl>   (the link spawns its own tasks)
//!   ├─ scheduled backups, when `[backup]` is set (backup::scheduled)
//!   ├─ READY=1 (and WATCHDOG=1 every half WatchdogSec)
//!   ├─ serve: API + webhook worker + MQTT bridge (if configured), until a signal
//!   └─ STOPPING=1, return Ok  (exit 0)
//! ```
//!
//! Stopping drops the serving futures at their next `.await`. No store transaction spans an
//! `.await`, so a stop never cuts one in half: every transaction either committed or never
//! started. This file owns the process lifecycle and the [`LinkControl`] boundary; it does not
//! own any protocol.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{FutureExt as _, StreamExt as _};
use smol::LocalExecutor;

use crate::api::webhook::{self, WebhookPolicy};
use crate::api::{self, Api, ApiLimits, ApiParts};
use crate::backup::scheduled::{self, ScheduledBackups};
use crate::config::Config;
use crate::events::EventBus;
use crate::media_store::MediaStore;
use crate::metrics::Metrics;
use crate::notify::{self, Notifier};
use crate::store::{self, Store, StoreError};

pub use crate::link_control::{LinkControl, LinkState, OfflineLink};

/// Why the daemon could not start or keep running. `interopd run` exits with status 1.
#[derive(Debug)]
#[non_exhaustive]
pub enum DaemonError {
    /// Environment: the store could not be opened (permissions, disk, newer schema).
    Store(StoreError),
    /// Environment: the API token file could not be read or created.
    Token(api::auth::TokenError),
    /// Environment: a trigger's key file could not be read or created.
    TriggerKey(api::triggers::TriggerKeyError),
    /// Environment: our identity could not be created.
    Identity { detail: String },
    /// Environment: the API address could not be bound (in use, not ours).
    Bind { addr: SocketAddr, source: io::Error },
    /// Environment: the signal handlers could not be installed.
    Signals(io::Error),
    /// Environment or operator: the media directory or the media host's certificate.
    Media { detail: String },
    /// Environment: the store holds no identity, but the state directory shows an earlier
    /// one (`found` names what). Starting over needs `--reset-identity`.
    EmptiedStore { store: PathBuf, found: Vec<String> },
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => write!(f, "{e}"),
            Self::Token(e) => write!(f, "{e}"),
            Self::TriggerKey(e) => write!(f, "{e}"),
            Self::Identity { detail } => write!(f, "identity: {detail}"),
            Self::Bind { addr, source } => write!(f, "API address {addr}: {source}"),
            Self::Signals(e) => write!(f, "signal handlers: {e}"),
            Self::Media { detail } => write!(f, "media: {detail}"),
            Self::EmptiedStore { store, found } => write!(
                f,
                "store: {} holds no identity, but this state directory had one ({}). Refusing to start over: a new identity would take over the account, contacts would see a safety-number change, and the old outbox, inbox and sessions would be gone. Restore a backup (`interopd restore --in FILE --state DIR --force`, docs/backup.md), or run once with --reset-identity to start again on purpose",
                store.display(),
                found.join(", ")
            ),
        }
    }
}

impl std::error::Error for DaemonError {}

/// Tunable limits of the shell's parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tuning {
    pub api: ApiLimits,
    pub webhook: WebhookPolicy,
}

/// What the daemon's tasks share. The link gets it to find the store, the bus and metrics.
pub struct Runtime {
    pub config: Config,
    pub store: Rc<Store>,
    pub bus: Rc<EventBus>,
    pub metrics: Rc<Metrics>,
    pub executor: Rc<LocalExecutor<'static>>,
    /// The API bearer token (from `<state>/api-token`).
    pub token: String,
    pub tuning: Tuning,
    /// Blob files: sent blobs we host, received media we keep for the API.
    pub media: Rc<MediaStore>,
    /// Scheduled backups (`[backup]`), when configured; [`run`] starts their task.
    pub backups: Option<Rc<ScheduledBackups>>,
}

impl Runtime {
    /// Opens the state directory, the store and the token file, and makes sure our identity
    /// exists (so `GET /v1/identity` answers before the first login).
    pub fn open(
        config: Config,
        executor: Rc<LocalExecutor<'static>>,
    ) -> Result<Runtime, DaemonError> {
        let store = Store::open(&config.state_dir).map_err(DaemonError::Store)?;
        let txn = store.begin().map_err(DaemonError::Store)?;
        let identity_err = |e: crate::signal::SignalError| DaemonError::Identity {
            detail: e.to_string(),
        };
        if crate::signal::local_identity(&txn)
            .map_err(identity_err)?
            .is_none()
        {
            let found = earlier_life(&config.state_dir);
            if !found.is_empty() && !config.reset_identity {
                return Err(DaemonError::EmptiedStore {
                    store: store.path().to_path_buf(),
                    found,
                });
            }
            if !found.is_empty() {
                log::warn!(
                    "store: starting with a new identity (--reset-identity); the state directory had one ({})",
                    found.join(", ")
                );
            }
        }
        crate::signal::ensure_identity(&txn, &mut rand::rng()).map_err(identity_err)?;
        txn.commit().map_err(DaemonError::Store)?;
        write_identity_marker(&config.state_dir).map_err(|source| DaemonError::Identity {
            detail: format!("{IDENTITY_MARKER_FILE_NAME}: {source}"),
        })?;
        let token =
            api::auth::load_or_create_token(&config.state_dir).map_err(DaemonError::Token)?;
        api::triggers::ensure_keys(&config).map_err(DaemonError::TriggerKey)?;
        let media = MediaStore::open(&config.state_dir, config.media.quota_bytes).map_err(|e| {
            DaemonError::Media {
                detail: e.to_string(),
            }
        })?;
        let metrics = Rc::new(Metrics::default());
        let bus = EventBus::new(config.webhook.is_some(), Rc::clone(&metrics));
        let tuning = Tuning {
            api: ApiLimits {
                rate_burst_requests: config.api_rate.burst_requests,
                rate_requests_per_sec: config.api_rate.requests_per_sec,
                ..ApiLimits::default()
            },
            ..Tuning::default()
        };
        let backups = config.backup.clone().map(|b| {
            Rc::new(ScheduledBackups::new(
                b,
                config.state_dir.clone(),
                crate::clock::now_ms(),
            ))
        });
        Ok(Runtime {
            config,
            store: Rc::new(store),
            bus,
            metrics,
            executor,
            token,
            tuning,
            media: Rc::new(media),
            backups,
        })
    }

    /// The token file's path.
    pub fn token_path(&self) -> PathBuf {
        self.config.state_dir.join(api::auth::TOKEN_FILE_NAME)
    }
}

/// The file that marks a state directory whose store has held an identity; written once the
/// identity is committed. Its text is for a person: the store has the keys.
pub const IDENTITY_MARKER_FILE_NAME: &str = "identity-created";

/// What in `state_dir` shows that a store there once held an identity: the marker, the API
/// token (made only after the identity), or any media blob. Empty for a new directory.
pub fn earlier_life(state_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for name in [IDENTITY_MARKER_FILE_NAME, api::auth::TOKEN_FILE_NAME] {
        if state_dir.join(name).exists() {
            found.push(format!("{name} exists"));
        }
    }
    let media = state_dir.join(crate::media_store::MEDIA_DIR_NAME);
    let has_blob = [
        crate::media_store::MEDIA_OUT_DIR_NAME,
        crate::media_store::MEDIA_IN_DIR_NAME,
    ]
    .iter()
    .any(|d| std::fs::read_dir(media.join(d)).is_ok_and(|mut entries| entries.next().is_some()));
    if has_blob {
        found.push("media blobs exist".to_string());
    }
    found
}

/// Writes [`IDENTITY_MARKER_FILE_NAME`] if absent (also for a state directory from before it
/// existed).
fn write_identity_marker(state_dir: &Path) -> io::Result<()> {
    let path = state_dir.join(IDENTITY_MARKER_FILE_NAME);
    if path.exists() {
        return Ok(());
    }
    let text = "The store in this directory holds an interopd identity. interopd refuses to start with an empty store here unless run with --reset-identity.\n";
    let mut file = std::fs::File::create(&path)?;
    io::Write::write_all(&mut file, text.as_bytes())?;
    file.sync_all()?;
    std::fs::File::open(state_dir)?.sync_all()
}

/// Binds the API listener.
pub fn bind(addr: SocketAddr) -> Result<smol::net::TcpListener, DaemonError> {
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|source| DaemonError::Bind { addr, source })?;
    smol::net::TcpListener::try_from(std_listener)
        .map_err(|source| DaemonError::Bind { addr, source })
}

/// Serves the API on `listener` and runs the webhook worker (if configured) until `stop`
/// completes.
pub async fn serve(
    rt: &Runtime,
    link: Rc<dyn LinkControl>,
    listener: smol::net::TcpListener,
    stop: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let listen = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: rt.config.api_addr,
        source,
    })?;
    let api = Api::new(ApiParts {
        store: Rc::clone(&rt.store),
        account: rt.config.account(),
        token: rt.token.clone(),
        listen,
        host_names: rt.config.api_host_names.clone(),
        bus: Rc::clone(&rt.bus),
        metrics: Rc::clone(&rt.metrics),
        link: Rc::clone(&link),
        limits: rt.tuning.api.clone(),
        media: Rc::clone(&rt.media),
        media_public_url: rt.config.media.public_url.clone(),
        media_blob_expiry_ms: rt.config.media.blob_expiry_secs.saturating_mul(1000),
        state_dir: rt.config.state_dir.clone(),
        triggers: rt.config.triggers.clone(),
        backups: rt.backups.clone(),
    });
    let options = crate::http::ServeOptions {
        // Media uploads stream; every other route caps its own body far lower.
        max_body_bytes: api::media::MAX_MEDIA_BODY_BYTES,
        ..crate::http::ServeOptions::default()
    };
    rt.metrics
        .watch_api_listener(std::sync::Arc::clone(&options.stats));
    let mqtt: Pin<Box<dyn Future<Output = ()>>> = match &rt.config.mqtt {
        Some(m) => Box::pin(crate::mqtt::run(crate::mqtt::MqttParts {
            config: m.clone(),
            store: Rc::clone(&rt.store),
            bus: Rc::clone(&rt.bus),
            api: Rc::clone(&api),
            link: Rc::clone(&link),
        })),
        None => Box::pin(futures_lite::future::pending()),
    };
    let http = crate::http::serve(Rc::clone(&rt.executor), listener, options, move |req| {
        Rc::clone(&api).handle(req)
    });
    let hooks: Pin<Box<dyn Future<Output = ()>>> = match &rt.config.webhook {
        Some(w) => Box::pin(webhook::run(
            Rc::clone(&rt.store),
            Rc::clone(&rt.bus),
            Rc::clone(&rt.metrics),
            w.clone(),
            rt.tuning.webhook.clone(),
        )),
        None => Box::pin(futures_lite::future::pending()),
    };
    log::info!("API listening on http://{listen}");
    http.or(hooks).or(mqtt).or(stop).await;
    Ok(())
}

/// How often retention runs and expired and orphaned blobs are swept, in milliseconds.
pub const MEDIA_SWEEP_INTERVAL_MS: u64 = 60_000;

/// Applies retention ([`crate::retention`]) and sweeps the media store now and every
/// [`MEDIA_SWEEP_INTERVAL_MS`], and starts the HTTPS
/// media host when `[media] listen` is set.
pub async fn start_media(rt: &Runtime) -> Result<(), DaemonError> {
    let (store, media) = (Rc::clone(&rt.store), Rc::clone(&rt.media));
    rt.executor
        .spawn(async move {
            loop {
                let kept = store.begin().and_then(|txn| {
                    let r = crate::retention::sweep(&txn, crate::clock::now_ms())?;
                    txn.commit()?;
                    Ok(r)
                });
                match kept {
                    Ok(r) if r != crate::retention::RetentionReport::default() => log::info!(
                        "retention: removed {} outbox rows, {} inbox rows, {} events, {} idempotency keys",
                        r.outbox_rows,
                        r.inbox_rows,
                        r.events,
                        r.idempotency_keys
                    ),
                    Ok(_) => {}
                    Err(e) => log::warn!("retention sweep failed: {e}"),
                }
                match media.sweep(&store, crate::clock::now_ms()) {
                    Ok(r) if r.expired_rows + r.orphan_files > 0 => log::info!(
                        "media: swept {} expired rows and {} orphan files ({} bytes)",
                        r.expired_rows,
                        r.orphan_files,
                        r.freed_bytes
                    ),
                    Ok(_) => {}
                    Err(e) => log::warn!("media: sweep failed: {e}"),
                }
                smol::Timer::after(Duration::from_millis(MEDIA_SWEEP_INTERVAL_MS)).await;
            }
        })
        .detach();
    let Some(addr) = rt.config.media.listen else {
        return Ok(());
    };
    let (tls, pin) =
        crate::media_host::load_or_create_identity(&rt.config.state_dir, &rt.config.media)
            .map_err(|e| DaemonError::Media {
                detail: e.to_string(),
            })?;
    let listener = bind(addr)?;
    log::info!("media host on https://{addr} (pin {pin})");
    rt.executor
        .spawn(crate::media_host::serve(
            Rc::clone(&rt.executor),
            listener,
            tls,
            Rc::clone(&rt.store),
            Rc::clone(&rt.media),
            crate::media_host::serve_options(),
        ))
        .detach();
    Ok(())
}

/// A function that starts the link on the runtime's executor and returns its control handle.
pub type LinkStarter = Box<dyn FnOnce(&Runtime) -> Rc<dyn LinkControl>>;

/// Reopens a failed store every [`store::STORE_REOPEN_INTERVAL_MS`] (docs/store.md, "A
/// full disk"), and wakes the link when it works again. A failure other than a full disk
/// that outlasts [`store::STORE_GIVE_UP_MS`] clears `feed_watchdog`, so systemd restarts us.
async fn keep_store(store: Rc<Store>, link: Rc<dyn LinkControl>, feed_watchdog: Rc<Cell<bool>>) {
    loop {
        smol::Timer::after(Duration::from_millis(store::STORE_REOPEN_INTERVAL_MS)).await;
        let Some(failure) = store.failure() else {
            continue;
        };
        match store.recover() {
            Ok(true) => {
                log::info!(
                    "store: reopened {} ms after it failed; serving again",
                    failure.since.elapsed().as_millis()
                );
                feed_watchdog.set(true);
                link.wake();
            }
            Ok(false) => {}
            Err(e) => {
                log::debug!("store: still failed: {e}");
                let Some(now) = store.failure() else {
                    continue;
                };
                let long = now.since.elapsed() >= Duration::from_millis(store::STORE_GIVE_UP_MS);
                if long && !now.disk_full && feed_watchdog.replace(false) {
                    log::error!(
                        "store: failed for {} s and reopening does not help ({e}); no longer \
                         feeding the systemd watchdog, so that systemd restarts the service",
                        store::STORE_GIVE_UP_MS / 1000
                    );
                }
            }
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT: the whole of `interopd run`.
pub fn run(config: Config, start_link: LinkStarter) -> Result<(), DaemonError> {
    let executor = Rc::new(LocalExecutor::new());
    let ex = Rc::clone(&executor);
    smol::block_on(executor.run(async move {
        let api_addr = config.api_addr;
        let rt = Runtime::open(config, ex)?;
        let listener = bind(api_addr)?;
        let mut signals =
            async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])
                .map_err(DaemonError::Signals)?;
        start_media(&rt).await?;
        let link = start_link(&rt);
        if let Some(b) = &rt.backups {
            rt.executor.spawn(scheduled::run(Rc::clone(b))).detach();
        }
        let notifier = Rc::new(Notifier::from_env());
        let status = format!("API on http://{api_addr}");
        if let Err(e) = notifier.ready(&status) {
            log::warn!("sd_notify: {e}");
        }
        let feed_watchdog = Rc::new(Cell::new(true));
        rt.executor
            .spawn(keep_store(
                Rc::clone(&rt.store),
                Rc::clone(&link),
                Rc::clone(&feed_watchdog),
            ))
            .detach();
        let interval = notify::watchdog_interval(std::env::var("WATCHDOG_USEC").ok().as_deref());
        if let Some(every) = interval {
            let n = Rc::clone(&notifier);
            rt.executor
                .spawn(async move {
                    loop {
                        smol::Timer::after(every).await;
                        if !feed_watchdog.get() {
                            continue;
                        }
                        if let Err(e) = n.watchdog() {
                            log::warn!("sd_notify: {e}");
                        }
                    }
                })
                .detach();
        }
        log::info!(
            "interopd {} started; API token in {}",
            env!("CARGO_PKG_VERSION"),
            rt.token_path().display()
        );
        let stop = async {
            if let Some(Ok(sig)) = signals.next().await {
                log::info!("{sig:?} received; stopping");
            }
        };
        serve(&rt, link, listener, stop).await?;
        if let Some(b) = &rt.backups {
            b.stop();
        }
        if let Err(e) = notifier.stopping() {
            log::warn!("sd_notify: {e}");
        }
        // Give detached tasks no further turns: they are dropped with the executor.
        smol::Timer::after(Duration::from_millis(0)).await;
        log::info!("stopped");
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_life_is_the_marker_the_token_or_a_blob_and_nothing_in_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(earlier_life(dir.path()).is_empty());
        // An empty media tree (made at every start) is not a sign.
        std::fs::create_dir_all(dir.path().join("media/out")).unwrap();
        std::fs::create_dir_all(dir.path().join("media/in")).unwrap();
        assert!(earlier_life(dir.path()).is_empty());
        std::fs::write(dir.path().join("media/in/blob"), b"x").unwrap();
        assert_eq!(earlier_life(dir.path()), ["media blobs exist"]);
        std::fs::write(dir.path().join(api::auth::TOKEN_FILE_NAME), b"t").unwrap();
        write_identity_marker(dir.path()).unwrap();
        assert_eq!(
            earlier_life(dir.path()),
            [
                "identity-created exists",
                "api-token exists",
                "media blobs exist"
            ]
        );
    }
}
