//! `/v1/groups`: the groups we are in, and the household's changes to them. Reads answer
//! from our copy in the store (kept current by the gatekeeper's answers and notifications);
//! changes ask the gatekeeper through the link and answer once it has, within
//! [`GROUP_REQUEST_WAIT_MS`]. Sending to a group is `POST /v1/messages` with `"group"`.

use std::rc::Rc;
use std::time::Duration;

use serde::Deserialize;

use super::{Api, MAX_JSON_BODY_BYTES, body_error, rfc3339, store_error};
use crate::client::{GroupAnswer, GroupRequest};
use crate::group::{GroupId, MAX_GROUP_MEMBERS, MAX_SUBJECT_BYTES};
use crate::http::{Request, Response};
use crate::jid::{self, Jid};
use crate::link_control::GroupRequestError;
use crate::store::GroupRow;

/// Longest wait for the gatekeeper's answer to a group change, in milliseconds; then `504`.
pub const GROUP_REQUEST_WAIT_MS: u64 = 15_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateJson {
    subject: String,
    members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberJson {
    phone: String,
}

/// How the API names a member given as a user JID: `+digits` for a WhatsApp user, the
/// account name for an interop one.
pub fn member_name(user_jid: &str) -> String {
    match Jid::parse(user_jid) {
        Ok(j) if j.server == jid::Server::WhatsApp => format!("+{}", j.user),
        Ok(j) => j.user,
        Err(_) => user_jid.to_owned(),
    }
}

/// The group object: `id`, `subject`, `creator`, `created_at` and `members`.
pub fn group_json(api: &Api, id: &str, g: &GroupRow) -> serde_json::Value {
    let me = Jid::interop(api.account.clone(), None).to_string();
    let members: Vec<serde_json::Value> = g
        .members
        .iter()
        .map(|m| {
            let mut v = match Jid::parse(&m.jid) {
                Ok(j) if j.server == jid::Server::WhatsApp => {
                    serde_json::json!({"phone": format!("+{}", j.user)})
                }
                _ => serde_json::json!({"account": member_name(&m.jid)}),
            };
            if let Some(o) = v.as_object_mut() {
                o.insert("admin".into(), m.admin.into());
                if m.jid == me {
                    o.insert("self".into(), true.into());
                }
            }
            v
        })
        .collect();
    serde_json::json!({
        "id": id,
        "subject": g.subject,
        "creator": member_name(&g.creator),
        "created_at": rfc3339(g.created_secs.saturating_mul(1000)),
        "members": members,
    })
}

fn unknown_group() -> Response {
    Response::json_error(404, "unknown_group", "we are not in a group with this id")
}

fn bad_group_id() -> Response {
    Response::json_error(
        400,
        "bad_group_id",
        "a group id is 1 to 32 digits and dashes, starting with a digit",
    )
}

/// The group id of a path or body, checked.
pub(crate) fn parse_group_id(raw: &str) -> Result<GroupId, Response> {
    GroupId::new(raw)
        .or_else(|_| GroupId::parse_jid(raw))
        .map_err(|_| bad_group_id())
}

fn phone_member(raw: &str) -> Result<Jid, Response> {
    jid::parse_phone(raw)
        .map(|d| Jid::whatsapp(d, None))
        .map_err(|_| {
            Response::json_error(
                400,
                "bad_phone",
                "a member must be an E.164 number such as +4915112345678",
            )
        })
}

/// `GET /v1/groups`.
pub fn list(api: &Rc<Api>) -> Response {
    let groups = api.store.begin().and_then(|t| t.groups());
    match groups {
        Ok(all) => {
            let list: Vec<_> = all.iter().map(|(id, g)| group_json(api, id, g)).collect();
            Response::json(200, &serde_json::json!({"groups": list}))
        }
        Err(e) => store_error(&e),
    }
}

/// `GET /v1/groups/{id}`.
pub fn one(api: &Rc<Api>, raw: &str) -> Response {
    let gid = match parse_group_id(raw) {
        Ok(g) => g,
        Err(r) => return r,
    };
    match api.store.begin().and_then(|t| t.group(gid.as_str())) {
        Ok(Some(g)) => Response::json(200, &group_json(api, gid.as_str(), &g)),
        Ok(None) => unknown_group(),
        Err(e) => store_error(&e),
    }
}

/// Asks the gatekeeper and waits for its answer; the 2xx body comes from `ok`.
async fn ask(api: &Rc<Api>, req: GroupRequest, status: u16) -> Response {
    let rx = match api.link.group_request(req) {
        Ok(rx) => rx,
        Err(GroupRequestError::LinkDown) => return link_down(),
        Err(GroupRequestError::Busy) => {
            return Response::json_error(
                429,
                "too_many_group_requests",
                "other group changes are still waiting for the gatekeeper; try again shortly",
            )
            .with_header("Retry-After", "1");
        }
    };
    let timeout = async {
        smol::Timer::after(Duration::from_millis(GROUP_REQUEST_WAIT_MS)).await;
        None
    };
    let answer = smol::future::or(async { rx.recv().await.ok() }, timeout).await;
    match answer {
        Some(GroupAnswer::Group { id, row }) => Response::json(status, &group_json(api, &id, &row)),
        Some(GroupAnswer::Groups(all)) => {
            let list: Vec<_> = all.iter().map(|(id, g)| group_json(api, id, g)).collect();
            Response::json(200, &serde_json::json!({"groups": list}))
        }
        Some(GroupAnswer::Left) => Response::json(200, &serde_json::json!({"left": true})),
        Some(GroupAnswer::Refused { code, text }) => refused(code, &text),
        // The connection ended before the answer came.
        None if !rx.is_closed() => Response::json_error(
            504,
            "gatekeeper_timeout",
            &format!(
                "the gatekeeper did not answer within {GROUP_REQUEST_WAIT_MS} ms; the change may still happen, see GET /v1/groups"
            ),
        ),
        None => link_down(),
    }
}

fn link_down() -> Response {
    Response::json_error(
        503,
        "link_down",
        "the link to the gatekeeper is down; group changes need it. Try again once /healthz says it is up",
    )
    .with_header("Retry-After", "5")
}

/// The gatekeeper's `<error code text>` as the API's error.
fn refused(code: u16, text: &str) -> Response {
    match (code, text) {
        (404, "item-not-found") => unknown_group(),
        (403, _) => Response::json_error(403, "not_member", "we are not a member of this group"),
        (404, "unknown_user") => Response::json_error(
            404,
            "unknown_user",
            "a member is not a WhatsApp user the gatekeeper knows",
        ),
        (503, "link_down") => link_down(),
        (400, _) => Response::json_error(
            400,
            "group_refused",
            "the gatekeeper refused the change (too many members or groups, or a bad subject)",
        ),
        _ => Response::json_error(
            502,
            "gatekeeper_error",
            &format!("the gatekeeper answered {code} {text}"),
        ),
    }
}

/// `POST /v1/groups {"subject", "members": ["+…"]}`.
pub async fn create(api: &Rc<Api>, req: Request) -> Response {
    let body: CreateJson = match req.body.read_json(MAX_JSON_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return body_error(&e),
    };
    if body.subject.trim().is_empty() {
        return Response::json_error(400, "empty_subject", "'subject' must not be blank");
    }
    if body.subject.chars().any(char::is_control) {
        return Response::json_error(
            400,
            "bad_subject",
            "'subject' must not hold control characters (line breaks and tabs included)",
        );
    }
    if body.subject.len() > MAX_SUBJECT_BYTES {
        return Response::json_error(
            400,
            "subject_too_long",
            &format!(
                "'subject' is {} bytes, over the limit of {MAX_SUBJECT_BYTES}",
                body.subject.len()
            ),
        );
    }
    if body.members.is_empty() {
        return Response::json_error(400, "no_members", "give at least one member in 'members'");
    }
    // We are a member too.
    if body.members.len() >= MAX_GROUP_MEMBERS {
        return Response::json_error(
            400,
            "too_many_members",
            &format!("a group has at most {MAX_GROUP_MEMBERS} members, us included"),
        );
    }
    let mut members = Vec::with_capacity(body.members.len());
    for m in &body.members {
        match phone_member(m) {
            Ok(j) if !members.contains(&j) => members.push(j),
            Ok(_) => {}
            Err(r) => return r,
        }
    }
    ask(
        api,
        GroupRequest::Create {
            subject: body.subject,
            members,
        },
        201,
    )
    .await
}

/// A group id from a path, body or query, which must name a group we are in (else `400
/// bad_group_id` or `404 unknown_group`).
pub(crate) fn known_group(api: &Api, raw: &str) -> Result<GroupId, Response> {
    let gid = parse_group_id(raw)?;
    match api.store.begin().and_then(|t| t.group(gid.as_str())) {
        Ok(Some(_)) => Ok(gid),
        Ok(None) => Err(unknown_group()),
        Err(e) => Err(store_error(&e)),
    }
}

/// `POST /v1/groups/{id}/members {"phone"}`.
pub async fn add(api: &Rc<Api>, req: Request, raw: &str) -> Response {
    let gid = match known_group(api, raw) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let body: MemberJson = match req.body.read_json(MAX_JSON_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return body_error(&e),
    };
    let member = match phone_member(&body.phone) {
        Ok(m) => m,
        Err(r) => return r,
    };
    ask(
        api,
        GroupRequest::Add {
            group: gid,
            members: vec![member],
        },
        200,
    )
    .await
}

/// `DELETE /v1/groups/{id}/members/{phone}`.
pub async fn remove(api: &Rc<Api>, raw: &str, phone: &str) -> Response {
    let gid = match known_group(api, raw) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let member = match phone_member(phone) {
        Ok(m) => m,
        Err(r) => return r,
    };
    ask(
        api,
        GroupRequest::Remove {
            group: gid,
            members: vec![member],
        },
        200,
    )
    .await
}

/// `POST /v1/groups/{id}/leave`.
pub async fn leave(api: &Rc<Api>, raw: &str) -> Response {
    let gid = match known_group(api, raw) {
        Ok(g) => g,
        Err(r) => return r,
    };
    ask(api, GroupRequest::Leave { group: gid }, 200).await
}
