//! The hub's control API (loopback only): simulated users, their behaviour, what they
//! received, connection drops and stats, as plain HTTP/1.1 on the shared server loop.
//! [`ROUTES`] lists every route; docs/hub-control-openapi.yaml describes them, and
//! tests/hub_openapi.rs checks that the two agree.

use super::*;

/// Every (method, path template) the control API answers. A path that matches a template
/// with another method is 405; any other path is 404 (`control_route`).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/users"),
    ("POST", "/users"),
    ("POST", "/users/{phone}/send"),
    ("GET", "/users/{phone}/received"),
    ("POST", "/users/{phone}/reinstall"),
    ("POST", "/users/{phone}/behavior"),
    ("POST", "/groups"),
    ("GET", "/groups/{id}"),
    ("POST", "/groups/{id}/members"),
    ("DELETE", "/groups/{id}/members/{member}"),
    ("POST", "/connections/drop"),
    ("GET", "/stats"),
];

/// How a request's method and decoded path segments meet [`ROUTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Routed {
    Found,
    /// The path is a route's, the method is not: `allow` is the `Allow` header's value.
    WrongMethod {
        allow: String,
    },
    NotFound,
}

/// Whether `method` on `seg` is a route of [`ROUTES`] (`{…}` matches any one segment).
pub(super) fn control_route(method: &str, seg: &[&str]) -> Routed {
    let shape = |template: &str| {
        let parts: Vec<&str> = template.split('/').skip(1).collect();
        parts.len() == seg.len()
            && parts
                .iter()
                .zip(seg)
                .all(|(p, s)| p.starts_with('{') || p == s)
    };
    let mut allowed: Vec<&str> = Vec::new();
    for (m, template) in ROUTES {
        if shape(template) {
            if *m == method {
                return Routed::Found;
            }
            allowed.push(m);
        }
    }
    if allowed.is_empty() {
        Routed::NotFound
    } else {
        Routed::WrongMethod {
            allow: allowed.join(", "),
        }
    }
}

#[derive(Deserialize)]
pub(super) struct NewUser {
    pub(super) phone: String,
    #[serde(default = "one", deserialize_with = "whole_u32")]
    pub(super) devices: u32,
    #[serde(default = "echo")]
    pub(super) behavior: String,
}

pub(super) fn one() -> u32 {
    1
}

/// A JSON integer as JSON Schema counts one: `5` or `5.0` (a number without a fraction).
fn whole_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(u32::MAX))
                // INVARIANT: a whole number in 0..=u32::MAX, checked on the line above.
                .map(|f| f as u64)
        })
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a whole number in range")))
}

pub(super) fn echo() -> String {
    "echo".into()
}

#[derive(Deserialize)]
pub(super) struct SendBody {
    /// An account, or a simulated user's `+phone`; or `group` instead.
    pub(super) to: Option<String>,
    pub(super) group: Option<String>,
    pub(super) text: Option<String>,
    pub(super) media: Option<MediaBody>,
}

#[derive(Deserialize)]
pub(super) struct MediaBody {
    pub(super) kind: String,
    pub(super) mimetype: String,
    data_base64: String,
    pub(super) filename: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct NewGroup {
    pub(super) subject: String,
    pub(super) members: Vec<String>,
}

#[derive(Deserialize)]
pub(super) struct MemberBody {
    /// `+phone` of a simulated user, or an account name (`phone` is accepted as its alias).
    #[serde(alias = "phone")]
    pub(super) member: String,
}

fn group_json(g: &GroupInfo) -> serde_json::Value {
    let members: Vec<serde_json::Value> = g
        .members
        .iter()
        .map(|(m, admin)| serde_json::json!({"member": m, "admin": admin}))
        .collect();
    serde_json::json!({
        "id": g.id, "subject": g.subject, "creator": g.creator,
        "created_at": g.created_ms / 1000, "members": members,
    })
}

#[derive(Deserialize)]
pub(super) struct BehaviorBody {
    pub(super) behavior: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReinstallBody {
    #[serde(default = "yes")]
    pub(super) notify: bool,
}

pub(super) fn yes() -> bool {
    true
}

pub(super) fn control_error(e: ControlError) -> Response {
    match e {
        ControlError::UnknownUser => Response::json_error(404, "unknown_user", &e.to_string()),
        ControlError::BadRequest { detail } => Response::json_error(400, "bad_request", &detail),
        ControlError::Exists => Response::json_error(409, "exists", &e.to_string()),
        ControlError::UnknownGroup => Response::json_error(404, "unknown_group", &e.to_string()),
        ControlError::NotMember => Response::json_error(404, "not_member", &e.to_string()),
        ControlError::Hub(inner) => {
            log::error!("hub: control: {inner}");
            Response::json_error(500, "internal", &inner.to_string())
        }
    }
}

pub(super) async fn body_json<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, Response> {
    req.body
        .read_json(MAX_CONTROL_BODY_BYTES)
        .await
        .map_err(|e| http_body_error(&e))
}

/// The answer to a body that could not be read: 413 for one over the bound, 408 for a slow
/// one, else 400 `bad_request`.
fn http_body_error(e: &http::HttpError) -> Response {
    match e.status() {
        400 => Response::json_error(400, "bad_request", &e.to_string()),
        status => Response::json_error(status, e.code(), &e.to_string()),
    }
}

/// Builds the content a simulated user sends for a control `send` request.
pub(super) fn send_message(
    shared: &Shared,
    body: &SendBody,
    now: u64,
) -> Result<Message, Response> {
    if let Some(text) = &body.text {
        return Ok(Message::text(text.clone()));
    }
    let Some(m) = &body.media else {
        return Err(Response::json_error(
            400,
            "bad_request",
            "give \"text\" or \"media\"",
        ));
    };
    let data = BASE64
        .decode(&m.data_base64)
        .map_err(|_| Response::json_error(400, "bad_request", "data_base64 is not base64"))?;
    let sh = shared.borrow();
    let Some(store) = &sh.media else {
        return Err(Response::json_error(
            501,
            "media_store_unavailable",
            "this hub has no media store (start it with --media ADDR)",
        ));
    };
    store
        .message(
            &m.kind,
            &m.mimetype,
            &data,
            m.filename.as_deref(),
            now,
            &mut rand::rng(),
        )
        .map_err(|e| match e {
            crate::media::MediaError::Store(inner) => {
                log::error!("hub: media store: {inner}");
                Response::json_error(500, "internal", &inner.to_string())
            }
            other => Response::json_error(400, "bad_request", &other.to_string()),
        })
}

pub(super) async fn handle_control(shared: &Shared, req: Request) -> Response {
    let method = req.method().to_owned();
    // Segments are percent-decoded (`/users/%2B15550100/received` names +15550100); one
    // that does not decode is a 400, not a silent miss.
    let Some(segments) = req
        .head
        .path_segments()
        .map(|s| http::percent_decode(s, false))
        .collect::<Option<Vec<String>>>()
    else {
        return Response::json_error(400, "bad_path", "the path does not percent-decode");
    };
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let now = now_ms();
    let response = match (method.as_str(), seg.as_slice()) {
        ("GET", ["users"]) => {
            let users: Vec<serde_json::Value> = shared
                .borrow()
                .hub
                .users()
                .into_iter()
                .map(|u| {
                    serde_json::json!({"phone": u.phone, "devices": u.devices, "behavior": u.behavior})
                })
                .collect();
            Response::json(200, &users)
        }
        ("POST", ["users"]) => {
            let body: NewUser = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let made = shared.borrow_mut().hub.create_user(
                &body.phone,
                body.devices,
                &body.behavior,
                now,
                &mut rand::rng(),
            );
            match made {
                Ok(u) => Response::json(
                    201,
                    &serde_json::json!({"phone": u.phone, "devices": u.devices, "behavior": u.behavior}),
                ),
                Err(e) => control_error(e),
            }
        }
        ("POST", ["users", phone, "send"]) => {
            let phone = phone.to_string();
            let body: SendBody = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let message = match send_message(shared, &body, now) {
                Ok(m) => m,
                Err(r) => return r,
            };
            let sent = match (&body.to, &body.group) {
                (Some(to), None) => {
                    shared
                        .borrow_mut()
                        .hub
                        .sim_send(&phone, to, &message, now, &mut rand::rng())
                }
                (None, Some(group)) => shared.borrow_mut().hub.sim_send_group(
                    &phone,
                    group,
                    &message,
                    now,
                    &mut rand::rng(),
                ),
                _ => {
                    return Response::json_error(
                        400,
                        "bad_request",
                        "give exactly one of \"to\" and \"group\"",
                    );
                }
            };
            match sent {
                Ok(id) => Response::json(200, &serde_json::json!({"id": id})),
                Err(e) => control_error(e),
            }
        }
        ("GET", ["users", phone, "received"]) => match shared.borrow().hub.received(phone) {
            Ok(list) => Response::json(200, &list),
            Err(e) => control_error(e),
        },
        ("POST", ["users", phone, "reinstall"]) => {
            let phone = phone.to_string();
            // The body is optional: none (or an empty one) means {"notify": true}.
            let body = match req.body.read_to_vec(MAX_CONTROL_BODY_BYTES).await {
                Ok(b) => b,
                Err(e) => return http_body_error(&e),
            };
            let notify = if body.iter().all(u8::is_ascii_whitespace) {
                true
            } else {
                match serde_json::from_slice::<ReinstallBody>(&body) {
                    Ok(b) => b.notify,
                    Err(e) => return Response::json_error(400, "bad_request", &e.to_string()),
                }
            };
            let done = shared
                .borrow_mut()
                .hub
                .reinstall(&phone, notify, now, &mut rand::rng());
            match done {
                Ok(()) => Response::json(
                    200,
                    &serde_json::json!({"phone": phone, "reinstalled": true, "notified": notify}),
                ),
                Err(e) => control_error(e),
            }
        }
        ("POST", ["users", phone, "behavior"]) => {
            let phone = phone.to_string();
            let body: BehaviorBody = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let changed =
                shared
                    .borrow_mut()
                    .hub
                    .set_behavior(&phone, &body.behavior, now, &mut rand::rng());
            match changed {
                Ok(u) => Response::json(
                    200,
                    &serde_json::json!({"phone": u.phone, "devices": u.devices, "behavior": u.behavior}),
                ),
                Err(e) => control_error(e),
            }
        }
        ("POST", ["groups"]) => {
            let body: NewGroup = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let made = shared
                .borrow_mut()
                .hub
                .create_group(&body.subject, &body.members, now);
            match made {
                Ok(g) => Response::json(201, &group_json(&g)),
                Err(e) => control_error(e),
            }
        }
        ("GET", ["groups", id]) => match shared.borrow().hub.group_info(id) {
            Ok(g) => Response::json(200, &group_json(&g)),
            Err(e) => control_error(e),
        },
        ("POST", ["groups", id, "members"]) => {
            let id = id.to_string();
            let body: MemberBody = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let added = shared
                .borrow_mut()
                .hub
                .add_group_member(&id, &body.member, now);
            match added {
                Ok(g) => Response::json(200, &group_json(&g)),
                Err(e) => control_error(e),
            }
        }
        ("DELETE", ["groups", id, "members", member]) => {
            let removed = shared.borrow_mut().hub.remove_group_member(id, member, now);
            match removed {
                Ok(g) => Response::json(200, &group_json(&g)),
                Err(e) => control_error(e),
            }
        }
        ("POST", ["connections", "drop"]) => {
            let n = shared.borrow_mut().hub.drop_connections();
            Response::json(200, &serde_json::json!({"dropped": n}))
        }
        ("GET", ["stats"]) => {
            let sh = shared.borrow();
            let s = sh.hub.stats();
            Response::json(
                200,
                &serde_json::json!({
                    "logins": s.logins,
                    "stanzas_routed": s.stanzas_routed,
                    "offline_queue_depth": sh.hub.queue_depth(),
                    "prekeys_handed_out": s.prekeys_handed_out,
                    "media_proxied": s.media_proxied,
                    "retry_receipts_routed": s.retry_receipts_routed,
                    "resends_routed": s.resends_routed,
                    "connections": sh.hub.connection_count(),
                }),
            )
        }
        _ => match control_route(&method, &seg) {
            Routed::WrongMethod { allow } => {
                Response::json_error(405, "method_not_allowed", "method not allowed here")
                    .with_header("Allow", &allow)
            }
            Routed::NotFound => Response::json_error(404, "not_found", "no such route"),
            Routed::Found => {
                // A route in ROUTES without its arm above: the unit test below and the
                // schemathesis run (tests/hub_schemathesis.rs) catch it.
                log::error!("hub: control: {method} route listed but not handled");
                Response::json_error(500, "internal", "route not handled")
            }
        },
    };
    pump(shared);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(template: &str) -> Vec<&str> {
        template
            .split('/')
            .skip(1)
            .map(|p| match p {
                "{phone}" => "+15550100",
                "{id}" => "120363000000000001",
                "{member}" => "acme-home",
                other => other,
            })
            .collect()
    }

    #[test]
    fn a_device_count_may_be_written_as_a_whole_float() {
        let parse = |t: &str| serde_json::from_str::<NewUser>(t).map(|u| u.devices).ok();
        assert_eq!(parse(r#"{"phone": "+15550109", "devices": 5.0}"#), Some(5));
        assert_eq!(parse(r#"{"phone": "+15550109", "devices": 2}"#), Some(2));
        assert_eq!(parse(r#"{"phone": "+15550109"}"#), Some(1));
        assert_eq!(parse(r#"{"phone": "+15550109", "devices": 2.5}"#), None);
        assert_eq!(parse(r#"{"phone": "+15550109", "devices": -1}"#), None);
        assert_eq!(parse(r#"{"phone": "+15550109", "devices": 1e12}"#), None);
    }

    #[test]
    fn every_listed_route_is_routed_and_others_are_not() {
        for (method, template) in ROUTES {
            assert_eq!(
                control_route(method, &segments(template)),
                Routed::Found,
                "{method} {template}"
            );
        }
        let allow = |a: &str| Routed::WrongMethod { allow: a.into() };
        assert_eq!(control_route("DELETE", &["users"]), allow("GET, POST"));
        assert_eq!(
            control_route("GET", &["users", "+1", "send"]),
            allow("POST")
        );
        // An unknown action under a user is an unknown route, not a wrong method.
        assert_eq!(
            control_route("GET", &["users", "+1", "nothing"]),
            Routed::NotFound
        );
        assert_eq!(control_route("GET", &["nothing"]), Routed::NotFound);
        assert_eq!(control_route("GET", &[]), Routed::NotFound);
    }
}
