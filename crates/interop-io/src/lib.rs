//! Shared I/O plumbing: what the daemon's shell and the hub's shell both do to the outside
//! world, written once. Protocol logic lives in `interop-proto`; this crate only moves bytes
//! and keeps files.
//!
//! # Layout
//!
//! Network:
//! - [`http`]: the HTTP/1.1 request core, the one server loop (API, media host, hub) and the
//!   one client (webhooks, media downloads, the hub's media proxy).
//! - [`tls`]: TLS 1.3 dial and accept with CA-file or SPKI pins; the hub's CA files.
//!
//! Process:
//! - [`logger`]: one line per event on stderr with journald `<N>` priorities.
//! - [`notify`]: sd_notify over `NOTIFY_SOCKET` (READY, WATCHDOG, STOPPING).
//! - [`clock`]: the wall clock, for shells only (cores take `now_ms`).
//!
//! Disk:
//! - [`state_dir`]: the private state directory, private files, and [`state_dir::StoreError`].
#![forbid(unsafe_code)]

pub mod clock;
pub mod http;
pub mod logger;
pub mod notify;
pub mod signal_tables;
pub mod state_dir;
pub mod tls;
