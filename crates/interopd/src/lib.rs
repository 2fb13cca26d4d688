//! interopd: the household end of DMA messaging interoperability.
//!
//! One crate, two thin binaries (`interopd`, `interop-hub`). The library holds sans-I/O cores
//! and, in later modules, the shell that drives them. Crate map, one noun per file:
//!
//! | module             | owns                                                         | I/O? |
//! |--------------------|--------------------------------------------------------------|------|
//! | [`store`]          | the redb file: tables, schema version, row layouts           | disk |
//! | [`signal`]         | X3DH + Double Ratchet via the Signal crate, over a store txn | no   |
//! | [`clock`]          | the wall clock, for shells only (cores take `now_ms`)        | clock |
//! | [`config`]         | the config file: raw TOML, then validated, errors with lines | no   |
//! | [`content`]        | the `Message` protobuf subset, padding, message ids          | no   |
//! | [`media_meta`]     | image size, Ogg/Opus and MP4 durations from a passing stream | no   |
//! | [`media_crypto`]   | streaming media encryption and verification                  | no   |
//! | [`media_store`]    | blob files, their `media` rows, the quota, expiry sweeps     | disk |
//! | [`media_host`]     | the HTTPS host the gatekeeper's proxy fetches our blobs from | net  |
//! | [`inbound_media`]  | received media: download, verify, then release into the inbox | disk, net |
//! | [`media_pipe`]     | media through encryption, WhatsApp media fields, downloads   | disk, net |
//! | [`retention`]      | how long outbox, inbox and event rows are kept; the sweep    | no   |
//! | [`retry`]          | retry receipts: build and read `<receipt type="retry">`      | no   |
//! | [`logger`]         | one line per event on stderr with journald `<N>` priorities    | stderr |
//! | [`notify`]         | sd_notify over `NOTIFY_SOCKET` (READY, WATCHDOG, STOPPING)   | socket |
//! | [`frame`]          | 3-byte length framing and the reassembly buffer              | no   |
//! | [`stanza`]         | the stanza model, its XML encoding and parser, bounds        | no   |
//! | [`jid`]            | wire addresses (`user:device@server`), phone numbers         | no   |
//! | [`client`]         | a small interop-xml/1 client: login, keys, send, receive      | no   |
//! | [`hub`]            | the reference gatekeeper `interop-hub`: core, store, sim users | disk |
//! | [`link`]           | the daemon's gatekeeper connection: login, outbox, receipts  | net  |
//! | [`demo`]           | `interopd demo`: the hub and the daemon in one process       | net  |
//! | [`login`]          | the login handshake, both sides, and its proof string        | no   |
//! | [`tls`]            | the hub's CA files, server pinning, TLS connect and accept   | disk, net |
//! | [`http`]           | HTTP/1.1 framing core and the server loop for both APIs      | socket |
//! | [`api`]            | the local HTTP API v1: auth, routes, long-poll, SSE, webhooks  | via http |
//! | [`daemon`]         | the daemon shell: one executor, signals, sd_notify, link slot | process |
//! | [`events`]         | the durable event log and the bus that wakes its readers       | disk |
//! | [`metrics`]        | counters, gauges and the commit histogram as Prometheus text  | no   |
//!
//! The rest of the code never names the Signal crate; [`signal`] is the boundary.
#![forbid(unsafe_code)]

// The shell plumbing shared with the hub.
pub use interop_io::{clock, http, logger, notify, tls};

// The protocol core, re-exported under the names the daemon's modules always used.
pub use interop_proto::{
    content, frame, jid, login, media_crypto, media_meta, prekeys, retry, row, signal_store, stanza,
};

pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod events;
#[cfg(all(test, feature = "demo"))]
mod hub_tests;
pub mod inbound_media;
pub mod link;
pub mod media_host;
pub mod media_pipe;
pub mod media_store;
pub mod metrics;
pub mod retention;
pub mod signal;
pub mod store;
