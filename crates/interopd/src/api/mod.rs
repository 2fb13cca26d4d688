//! The local HTTP API v1 (CONTRACT.md, docs/api.md, docs/openapi.yaml): the handler that
//! [`crate::http::serve`] calls for every request. It checks, in this order, the `Host`
//! header (421), the bearer token (401, except `GET /healthz`) and the rate limit (429), then
//! routes. Handlers read and write the store in short transactions that never span an
//! `.await`, wake the link through [`LinkControl`], and wait on the [`EventBus`] for
//! long-poll and SSE.
//!
//! This module owns routes, request validation and response shapes. It does not own HTTP
//! framing (`http.rs`), the wire protocol (the link), or the store format (`store/`).
//!
//! Submodules: [`auth`] (token file, host check, rate limit), [`messages`] (send, status),
//! [`inbox`] (long-poll, read marks, SSE, the message object), [`contacts`] (contacts, trust,
//! identity), [`media`] (send media, fetch received media), [`triggers`] (trigger URLs and
//! their keys), [`webhook`] (the delivery worker).
//!
//! `/v1/triggers/{name}` is the one route that takes no bearer token: its `?key=` is checked
//! by [`triggers`] instead, after the Host check and outside the token's rate limit. A `key`
//! on any other route is refused with its own 401 code, so a trigger key never opens them.

mod actions;
pub mod auth;
pub mod contacts;
pub mod groups;
pub mod inbox;
pub mod media;
pub mod messages;
pub mod triggers;
pub mod webhook;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

use crate::events::EventBus;
use crate::http::{HttpError, Request, Response, percent_decode};
use crate::link_control::{LinkControl, LinkState};
use crate::media_store::MediaStore;
use crate::metrics::{Gauge, Metrics};
use crate::store::{OutboxStatus, Store, StoreError};

/// Longest `wait` a long-poll may ask for, in seconds; a larger one gets 400.
pub const MAX_LONG_POLL_WAIT_SECS: u64 = 60;
/// Open SSE streams at once; one more gets 429.
pub const MAX_SSE_CLIENTS: usize = 16;
/// How often an idle SSE stream gets a comment line, so proxies and clients see it alive.
pub const SSE_KEEPALIVE_MS: u64 = 15_000;
/// Largest request body for JSON and text routes, in bytes.
pub const MAX_JSON_BODY_BYTES: usize = 64 * 1024;

/// Every route the server answers, as (method, path template). docs/openapi.yaml lists the
/// same set; a test compares them.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/messages"),
    ("GET", "/v1/messages/{id}"),
    ("PATCH", "/v1/messages/{id}"),
    ("DELETE", "/v1/messages/{id}"),
    ("POST", "/v1/messages/{id}/reactions"),
    ("POST", "/v1/chats/{phone}/typing"),
    ("POST", "/v1/media"),
    ("GET", "/v1/media/{id}"),
    ("GET", "/v1/inbox"),
    ("POST", "/v1/inbox/{cursor}/read"),
    ("GET", "/v1/events"),
    ("GET", "/v1/contacts"),
    ("GET", "/v1/contacts/{phone}"),
    ("POST", "/v1/contacts/{phone}/trust"),
    ("GET", "/v1/triggers/{name}"),
    ("POST", "/v1/triggers/{name}"),
    ("GET", "/v1/groups"),
    ("POST", "/v1/groups"),
    ("GET", "/v1/groups/{id}"),
    ("POST", "/v1/groups/{id}/members"),
    ("DELETE", "/v1/groups/{id}/members/{phone}"),
    ("POST", "/v1/groups/{id}/leave"),
    ("GET", "/v1/identity"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
];

/// Tunable limits; [`ApiLimits::default`] gives the named bounds above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiLimits {
    pub rate_burst_requests: u32,
    pub rate_requests_per_sec: u32,
    pub max_long_poll_wait_secs: u64,
    pub max_sse_clients: usize,
    pub sse_keepalive_ms: u64,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            rate_burst_requests: auth::RATE_LIMIT_BURST_REQUESTS,
            rate_requests_per_sec: auth::RATE_LIMIT_REQUESTS_PER_SEC,
            max_long_poll_wait_secs: MAX_LONG_POLL_WAIT_SECS,
            max_sse_clients: MAX_SSE_CLIENTS,
            sse_keepalive_ms: SSE_KEEPALIVE_MS,
        }
    }
}

/// What the API needs from the daemon.
pub struct ApiParts {
    pub store: Rc<Store>,
    /// Our account name, `{integrator}-{user}`.
    pub account: String,
    pub token: String,
    /// The address actually listened on (the `Host` check uses it).
    pub listen: SocketAddr,
    /// Extra accepted `Host` names from the config.
    pub host_names: Vec<String>,
    pub bus: Rc<EventBus>,
    pub metrics: Rc<Metrics>,
    pub link: Rc<dyn LinkControl>,
    pub limits: ApiLimits,
    /// Blob files: outgoing blobs written by `POST /v1/media`, received plaintext read by
    /// `GET /v1/media/{id}`.
    pub media: Rc<MediaStore>,
    /// `[media] public_url` (`https://host:port`, no trailing slash needed): the origin of the
    /// URL put in sent media messages. `None` (media host off) makes `POST /v1/media` 503.
    pub media_public_url: Option<String>,
    /// `[media] blob_expiry_secs` in milliseconds: how long a sent blob is hosted.
    pub media_blob_expiry_ms: u64,
    /// The state directory (trigger key files live under it).
    pub state_dir: std::path::PathBuf,
    /// The config's `[[trigger]]` entries.
    pub triggers: Vec<crate::config::TriggerConfig>,
    /// Scheduled backups, for `/metrics` and the `/healthz` warning; `None` when off.
    pub backups: Option<Rc<crate::backup::scheduled::ScheduledBackups>>,
}

/// The API's shared state. One per daemon, shared as `Rc<Api>`.
pub struct Api {
    pub(crate) store: Rc<Store>,
    pub(crate) account: String,
    token: String,
    hosts: Vec<String>,
    pub(crate) bus: Rc<EventBus>,
    pub(crate) metrics: Rc<Metrics>,
    pub(crate) link: Rc<dyn LinkControl>,
    pub(crate) limits: ApiLimits,
    rate: RefCell<auth::RateLimiter>,
    /// Typing notices' own bucket ([`actions::TYPING_BURST`], [`actions::TYPING_PER_SEC`]).
    pub(crate) typing_rate: RefCell<auth::RateLimiter>,
    pub(crate) sse_clients: Rc<Cell<usize>>,
    pub(crate) media: Rc<MediaStore>,
    pub(crate) media_public_url: Option<String>,
    pub(crate) media_blob_expiry_ms: u64,
    pub(crate) triggers: triggers::Triggers,
    backups: Option<Rc<crate::backup::scheduled::ScheduledBackups>>,
}

/// A matched route, with its decoded path parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Send,
    Status(String),
    Edit(String),
    Revoke(String),
    React(String),
    Typing(String),
    SendMedia,
    Media(String),
    Inbox,
    MarkRead(String),
    Events,
    Contacts,
    Contact(String),
    Trust(String),
    Trigger(String),
    Groups,
    CreateGroup,
    Group(String),
    AddMember(String),
    RemoveMember(String, String),
    LeaveGroup(String),
    Identity,
    Health,
    Metrics,
}

/// What routing found: a route, a known path with another method (405), or nothing (404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    Found(Route),
    WrongMethod { allow: &'static str },
    NotFound,
}

/// Matches a method and raw path (query already removed).
pub fn route(method: &str, path: &str) -> Routed {
    // Only origin-form paths route. The HTTP layer already refuses any other target with
    // 400, but this function must be right on its own: the fuzzer found that `x/v1/media`
    // (anything before the first `/`) used to route like `/v1/media`.
    let Some(rest) = path.strip_prefix('/') else {
        return Routed::NotFound;
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let param = |s: &str| percent_decode(s, false).unwrap_or_default();
    let (found, allow) = match segs.as_slice() {
        ["v1", "messages"] => ((method == "POST").then_some(Route::Send), "POST"),
        ["v1", "messages", id] if !id.is_empty() => (
            match method {
                "GET" => Some(Route::Status(param(id))),
                "PATCH" => Some(Route::Edit(param(id))),
                "DELETE" => Some(Route::Revoke(param(id))),
                _ => None,
            },
            "GET, PATCH, DELETE",
        ),
        ["v1", "messages", id, "reactions"] if !id.is_empty() => {
            ((method == "POST").then(|| Route::React(param(id))), "POST")
        }
        ["v1", "chats", p, "typing"] if !p.is_empty() => {
            ((method == "POST").then(|| Route::Typing(param(p))), "POST")
        }
        ["v1", "media"] => ((method == "POST").then_some(Route::SendMedia), "POST"),
        ["v1", "media", id] if !id.is_empty() => {
            ((method == "GET").then(|| Route::Media(param(id))), "GET")
        }
        ["v1", "inbox"] => ((method == "GET").then_some(Route::Inbox), "GET"),
        ["v1", "inbox", c, "read"] if !c.is_empty() => (
            (method == "POST").then(|| Route::MarkRead(param(c))),
            "POST",
        ),
        ["v1", "events"] => ((method == "GET").then_some(Route::Events), "GET"),
        ["v1", "contacts"] => ((method == "GET").then_some(Route::Contacts), "GET"),
        ["v1", "contacts", p] if !p.is_empty() => {
            ((method == "GET").then(|| Route::Contact(param(p))), "GET")
        }
        ["v1", "contacts", p, "trust"] if !p.is_empty() => {
            ((method == "POST").then(|| Route::Trust(param(p))), "POST")
        }
        ["v1", "triggers", name] if !name.is_empty() => (
            matches!(method, "GET" | "POST").then(|| Route::Trigger(param(name))),
            "GET, POST",
        ),
        ["v1", "groups"] => (
            match method {
                "GET" => Some(Route::Groups),
                "POST" => Some(Route::CreateGroup),
                _ => None,
            },
            "GET, POST",
        ),
        ["v1", "groups", g] if !g.is_empty() => {
            ((method == "GET").then(|| Route::Group(param(g))), "GET")
        }
        ["v1", "groups", g, "members"] if !g.is_empty() => (
            (method == "POST").then(|| Route::AddMember(param(g))),
            "POST",
        ),
        ["v1", "groups", g, "members", p] if !g.is_empty() && !p.is_empty() => (
            (method == "DELETE").then(|| Route::RemoveMember(param(g), param(p))),
            "DELETE",
        ),
        ["v1", "groups", g, "leave"] if !g.is_empty() => (
            (method == "POST").then(|| Route::LeaveGroup(param(g))),
            "POST",
        ),
        ["v1", "identity"] => ((method == "GET").then_some(Route::Identity), "GET"),
        ["healthz"] => (
            (method == "GET" || method == "HEAD").then_some(Route::Health),
            "GET",
        ),
        ["metrics"] => ((method == "GET").then_some(Route::Metrics), "GET"),
        _ => return Routed::NotFound,
    };
    match found {
        Some(r) => Routed::Found(r),
        None => Routed::WrongMethod { allow },
    }
}

pub use crate::clock::now_ms;

/// `ms` since the epoch as RFC 3339 UTC with milliseconds (`2026-11-29T10:32:23.123Z`).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The JSON error for a store failure: `507 insufficient_storage` when the disk is full,
/// else `503 store_unavailable`. A failed store was logged once when it failed, so its
/// refusals log at debug only.
pub(crate) fn store_error(e: &StoreError) -> Response {
    match e {
        StoreError::Failed {
            disk_full: true, ..
        } => {
            log::debug!("API: {e}");
            Response::json_error(
                507,
                "insufficient_storage",
                "the disk holding the state directory is full; nothing was stored. Free space: \
                 interopd reopens its store by itself within seconds",
            )
        }
        StoreError::Failed { .. } => {
            log::debug!("API: {e}");
            Response::json_error(
                503,
                "store_unavailable",
                "the message store failed to read or write its file; interopd is reopening it",
            )
        }
        _ => {
            log::error!("API: {e}");
            Response::json_error(503, "store_unavailable", "the message store is unavailable")
        }
    }
}

/// The digits of an E.164 number given in a query string: `+` and digits, as for
/// [`crate::jid::parse_phone`], where one leading space stands for the `+` (an unencoded `+`
/// in a query decodes as a space). Nothing else is trimmed: the document's pattern is exact.
pub(crate) fn query_phone(raw: &str) -> Option<String> {
    match raw.strip_prefix(' ') {
        Some(rest) if !rest.starts_with('+') => crate::jid::parse_phone(rest).ok(),
        Some(_) => None,
        None => crate::jid::parse_phone(raw).ok(),
    }
}

/// The JSON error for a body that could not be read.
pub(crate) fn body_error(e: &HttpError) -> Response {
    e.to_response()
}

impl Api {
    /// The API state.
    pub fn new(parts: ApiParts) -> Rc<Api> {
        let hosts = auth::allowed_hosts(parts.listen, &parts.host_names);
        Rc::new(Api {
            rate: RefCell::new(auth::RateLimiter::new(
                parts.limits.rate_burst_requests,
                parts.limits.rate_requests_per_sec,
            )),
            // A twentieth of the API's own bucket, and never less than the typing bounds.
            typing_rate: RefCell::new(auth::RateLimiter::new(
                (parts.limits.rate_burst_requests / 20).max(actions::TYPING_BURST),
                (parts.limits.rate_requests_per_sec / 20).max(actions::TYPING_PER_SEC),
            )),
            store: parts.store,
            account: parts.account,
            token: parts.token,
            hosts,
            bus: parts.bus,
            metrics: parts.metrics,
            link: parts.link,
            limits: parts.limits,
            sse_clients: Rc::new(Cell::new(0)),
            media: parts.media,
            media_public_url: parts.media_public_url,
            media_blob_expiry_ms: parts.media_blob_expiry_ms,
            triggers: triggers::Triggers::new(parts.state_dir, parts.triggers),
            backups: parts.backups,
        })
    }

    /// Answers one request.
    pub async fn handle(self: Rc<Self>, req: Request) -> Response {
        let response = self.dispatch(req).await;
        self.metrics.http_response(response.status);
        response
    }

    async fn dispatch(self: &Rc<Self>, req: Request) -> Response {
        if !auth::host_allowed(req.header("host"), &self.hosts) {
            return Response::json_error(
                421,
                "misdirected_request",
                "the Host header names neither this API's address nor a configured name",
            );
        }
        let routed = route(req.method(), req.path());
        if routed == Routed::Found(Route::Health) {
            return self.health();
        }
        if let Routed::Found(Route::Trigger(name)) = &routed {
            return triggers::fire(self, req, name).await;
        }
        if !auth::bearer_matches(req.header("authorization"), &self.token) {
            if req.query_param_count("key") > 0 {
                return Response::json_error(
                    401,
                    "trigger_key_refused",
                    "a trigger key works only on /v1/triggers/{name}; this route needs the API token as 'Authorization: Bearer <token>'",
                )
                .with_header("WWW-Authenticate", "Bearer");
            }
            return Response::json_error(
                401,
                "unauthorized",
                "send the token from <state>/api-token as 'Authorization: Bearer <token>'",
            )
            .with_header("WWW-Authenticate", "Bearer");
        }
        if let Err(retry_secs) = self.rate.borrow_mut().check(now_ms()) {
            return Response::json_error(
                429,
                "rate_limited",
                "too many requests with this token; retry after the time in Retry-After",
            )
            .with_header("Retry-After", &retry_secs.to_string());
        }
        let route = match routed {
            Routed::Found(r) => r,
            Routed::WrongMethod { allow } => {
                return Response::json_error(
                    405,
                    "method_not_allowed",
                    "this route does not take that method",
                )
                .with_header("Allow", allow);
            }
            Routed::NotFound => {
                return Response::json_error(404, "not_found", "no such route");
            }
        };
        match route {
            Route::Send => messages::send(self, req).await,
            Route::Status(id) => messages::status(self, &id),
            Route::Edit(id) => actions::edit(self, req, &id).await,
            Route::Revoke(id) => actions::revoke(self, &id),
            Route::React(id) => actions::react(self, req, &id).await,
            Route::Typing(phone) => actions::typing(self, req, &phone).await,
            Route::SendMedia => media::send(self, req).await,
            Route::Media(id) => media::fetch(self, &req, &id),
            Route::Inbox => inbox::long_poll(self, &req).await,
            Route::MarkRead(cursor) => inbox::mark_read(self, &cursor),
            Route::Events => inbox::events(self, &req),
            Route::Contacts => contacts::list(self),
            Route::Contact(phone) => contacts::one(self, &phone),
            Route::Trust(phone) => contacts::trust(self, &phone),
            Route::Identity => contacts::identity(self),
            Route::Groups => groups::list(self),
            Route::CreateGroup => groups::create(self, req).await,
            Route::Group(id) => groups::one(self, &id),
            Route::AddMember(id) => groups::add(self, req, &id).await,
            Route::RemoveMember(id, phone) => groups::remove(self, &id, &phone).await,
            Route::LeaveGroup(id) => groups::leave(self, &id).await,
            // Answered before the token check, above.
            Route::Trigger(name) => triggers::fire(self, req, &name).await,
            Route::Metrics => self.metrics_text(),
            Route::Health => self.health(),
        }
    }

    fn health(&self) -> Response {
        let link = match self.link.state() {
            LinkState::Up => "up",
            LinkState::Down => "down",
            LinkState::Replaced => "replaced",
        };
        match self.store.schema_version() {
            Ok(_) => {
                let mut body = serde_json::json!({"status": "ok", "link": link, "store": "ok"});
                let overdue = self
                    .backups
                    .as_ref()
                    .and_then(|b| b.overdue_warning(now_ms()));
                if let Some(message) = overdue {
                    body["warnings"] =
                        serde_json::json!([{"code": "backup_overdue", "message": message}]);
                }
                Response::json(200, &body)
            }
            Err(e) => {
                let code = match &e {
                    StoreError::Failed {
                        disk_full: true, ..
                    } => "insufficient_storage",
                    StoreError::Failed { .. } => "store_failed",
                    _ => {
                        log::error!("health: {e}");
                        "store_unavailable"
                    }
                };
                Response::json(
                    503,
                    &serde_json::json!({
                        "status": "failed",
                        "link": link,
                        "store": "failed",
                        "error": {"code": code, "message": e.to_string()},
                    }),
                )
            }
        }
    }

    fn metrics_text(&self) -> Response {
        self.metrics
            .set(Gauge::LinkUp, u64::from(self.link.state() == LinkState::Up));
        self.metrics.set(
            Gauge::LinkReplaced,
            u64::from(self.link.state() == LinkState::Replaced),
        );
        self.metrics.set_link_reconnects(self.link.reconnects());
        self.metrics
            .set(Gauge::SseClients, self.sse_clients.get() as u64);
        let (failures, reopens) = self.store.failure_counts();
        self.metrics
            .set(Gauge::StoreUp, u64::from(self.store.failure().is_none()));
        self.metrics.set(Gauge::StoreFailures, failures);
        self.metrics.set(Gauge::StoreReopens, reopens);
        // Counted from the store at each scrape: every path that queues or sends a message
        // would otherwise have to keep a running count right.
        match self.store.begin().and_then(|txn| {
            let n = txn.outbox_count(OutboxStatus::Queued);
            txn.abort()?;
            n
        }) {
            Ok(n) => self.metrics.set(Gauge::OutboxQueued, n),
            Err(e) => log::debug!("metrics: outbox count: {e}"),
        }
        if let Some(b) = &self.backups {
            self.metrics
                .set(Gauge::BackupLastSuccessSecs, b.last_success_secs());
            self.metrics.set(Gauge::BackupLastBytes, b.last_bytes());
            self.metrics.set(Gauge::BackupFailures, b.failures());
        }
        Response::bytes(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            self.metrics.render().into_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(template: &str) -> String {
        template
            .replace("{id}", "3EB0000000000000000001")
            .replace("{cursor}", "7")
            .replace("{phone}", "%2B15550100")
            .replace("{name}", "doorbell")
    }

    #[test]
    fn every_listed_route_is_routed_and_others_are_not() {
        for (method, template) in ROUTES {
            let r = route(method, &example(template));
            assert!(matches!(r, Routed::Found(_)), "{method} {template}: {r:?}");
        }
        assert_eq!(route("GET", "/v1/nothing"), Routed::NotFound);
        assert_eq!(route("GET", "/v1/messages/"), Routed::NotFound);
        assert_eq!(
            route("DELETE", "/v1/messages"),
            Routed::WrongMethod { allow: "POST" }
        );
        assert_eq!(
            route("GET", "/v1/contacts/%2B49151/trust"),
            Routed::WrongMethod { allow: "POST" }
        );
        assert_eq!(
            route("GET", "/v1/contacts/%2B49151"),
            Routed::Found(Route::Contact("+49151".into()))
        );
        assert_eq!(
            route("GET", "/v1/media/00ff"),
            Routed::Found(Route::Media("00ff".into()))
        );
        assert_eq!(
            route("GET", "/v1/media"),
            Routed::WrongMethod { allow: "POST" }
        );
    }

    /// Regression: the fuzzer's crash input (tests/data/fuzz-regressions/api_route-prefix)
    /// routed `POST <NULs>/v1/media` as an upload.
    #[test]
    fn only_paths_starting_with_a_slash_route() {
        assert_eq!(route("POST", "\0\0\0/v1/media"), Routed::NotFound);
        assert_eq!(route("GET", "x/healthz"), Routed::NotFound);
        assert_eq!(route("GET", "v1/inbox"), Routed::NotFound);
        assert_eq!(route("GET", ""), Routed::NotFound);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn routing_arbitrary_paths_never_panics(method in "[A-Z]{0,7}", path in "/[a-z0-9%/+.]{0,40}") {
                let _ = route(&method, &path);
            }

            #[test]
            fn a_path_that_routes_starts_with_a_fixed_prefix(method in "[A-Z]{0,7}", path in "[^/]{0,3}/(v1/)?[a-z]{0,9}(/[a-z0-9%]{0,4}){0,2}") {
                if let Routed::Found(_) = route(&method, &path) {
                    prop_assert!(path.starts_with("/v1/") || path == "/healthz" || path == "/metrics", "{}", path);
                }
            }

            #[test]
            fn rfc3339_is_always_24_characters(ms in 0u64..253_402_300_800_000) {
                let t = rfc3339(ms);
                prop_assert_eq!(t.len(), 24, "{}", t);
                prop_assert!(t.ends_with('Z'));
            }
        }
    }

    #[test]
    fn a_query_phone_takes_a_plus_or_one_space_and_nothing_else() {
        assert_eq!(query_phone("+15550100").as_deref(), Some("15550100"));
        assert_eq!(query_phone(" 15550100").as_deref(), Some("15550100"));
        assert_eq!(query_phone("15550100").as_deref(), Some("15550100"));
        for bad in [
            " +15550100",
            "  15550100",
            "15550100 ",
            "",
            "+",
            "0155501",
            "++15550100",
        ] {
            assert_eq!(query_phone(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rfc3339_renders_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }
}
