//! interopd: the household end of DMA messaging interoperability.
//!
//! # Layout
//!
//! This crate is the daemon. It builds on two others in the workspace and never on the hub,
//! except through the optional `demo` feature (`interopd demo`, and the tests that run the
//! engine against the hub's core):
//!
//! - `interop-proto`, the protocol with no I/O, re-exported here under its old names:
//!   [`stanza`], [`frame`], [`jid`], [`login`], [`content`], [`retry`], [`prekeys`], [`row`],
//!   [`signal_store`], [`media_crypto`], [`media_meta`];
//! - `interop-io`, the shell plumbing shared with the hub: [`clock`], [`logger`], [`notify`],
//!   [`tls`], [`http`].
//!
//! The daemon's own modules, by role:
//!
//! | role | module | owns | I/O? |
//! |------|--------|------|------|
//! | core | [`client`] | the interop-xml/1 protocol client: login, keys, send, receive, retries | no |
//! | core | [`engine`] | one connection as a state machine: outbox statuses, read marks, key schedule, deadlines | no |
//! | core | [`signal`] | X3DH + Double Ratchet via the Signal crate, over a store txn | no |
//! | core | [`config`] | the config file: raw TOML, then validated, errors with lines | no |
//! | core | [`retention`] | how long outbox, inbox and event rows are kept; the sweep | no |
//! | core | [`metrics`] | counters, gauges and the commit histogram as Prometheus text | no |
//! | core | [`link_control`] | the link's handle as the API and daemon see it: state, wake | no |
//! | state | [`store`] | the redb file: tables, schema version, row layouts | disk |
//! | state | [`events`] | the durable event log and the bus that wakes its readers | disk |
//! | state | [`media_store`] | blob files, their `media` rows, the quota, expiry sweeps | disk |
//! | shell | [`link`] | the socket around the engine: dial, TLS, frames, wake, backoff | net |
//! | shell | [`media_host`] | the HTTPS host the gatekeeper's proxy fetches our blobs from | net |
//! | shell | [`media_pipe`] | media through encryption, WhatsApp media fields, uploads | disk, net |
//! | shell | [`inbound_media`] | received media: download, verify, then release into the inbox | disk, net |
//! | shell | [`api`] | the local HTTP API v1: auth, routes, long-poll, SSE, webhooks | via http |
//! | shell | [`mqtt`] | the MQTT bridge: Home Assistant discovery, inbox, command topics | net |
//! | shell | [`backup`] | `interopd backup` and `restore`: snapshot, tar, age, manifest | disk |
//! | shell | [`daemon`] | the process: one executor, signals, sd_notify, the link slot | process |
//! | shell | `demo` | `interopd demo`: the hub and the daemon in one process (feature `demo`) | net |
//!
//! Cores take `now_ms` and an rng and return what to do; only shells touch sockets, files
//! and clocks. The rest of the code never names the Signal crate; [`signal`] is the boundary.
#![forbid(unsafe_code)]

// The shell plumbing shared with the hub.
pub use interop_io::{clock, http, logger, notify, tls};

// The protocol core, re-exported under the names the daemon's modules always used.
pub use interop_proto::{
    content, frame, group, jid, login, media_crypto, media_meta, prekeys, retry, row, signal_store,
    stanza,
};

pub mod api;
pub mod backup;
pub mod client;
pub mod config;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod engine;
pub mod events;
#[cfg(all(test, feature = "demo"))]
mod hub_tests;
pub mod inbound_media;
pub mod link;
pub mod link_control;
pub mod media_host;
pub mod media_pipe;
pub mod media_store;
pub mod metrics;
pub mod mqtt;
pub mod retention;
pub mod signal;
pub mod store;
