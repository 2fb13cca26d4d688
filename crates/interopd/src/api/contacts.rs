//! `GET /v1/contacts`, `GET /v1/contacts/{phone}`, `POST /v1/contacts/{phone}/trust` and
//! `GET /v1/identity`: what the Signal engine knows about contacts' identities and our own,
//! as fingerprints the household can compare out of band.
//!
//! A contact is a WhatsApp user with at least one stored device identity. Its trust state is
//! the most alarming of its devices': `changed` if any device changed or has a change held
//! for verification, else `unverified` if any device is unverified, else `verified`.

use std::collections::BTreeMap;
use std::rc::Rc;

use redb::ReadableTable as _;

use super::{Api, now_ms, rfc3339, store_error};
use crate::http::Response;
use crate::signal::{self, RemoteIdentity, TrustState};
use crate::store::{StoreError, Txn};

/// Most contacts listed by `GET /v1/contacts`.
pub const MAX_CONTACTS_LISTED: usize = 1000;

fn bad_phone() -> Response {
    Response::json_error(
        400,
        "bad_phone",
        "the phone must be an E.164 number such as +4915112345678",
    )
}

fn signal_error(e: &signal::SignalError) -> Response {
    if let signal::SignalError::Store(e) = e {
        return super::store_error(e);
    }
    log::error!("API: {e}");
    Response::json_error(503, "store_unavailable", "the key store is unavailable")
}

/// Our identity key, if one was created.
fn own_key(txn: &Txn) -> Result<Option<signal::RawKey>, signal::SignalError> {
    Ok(signal::local_identity(txn)?.map(|id| id.public()))
}

fn contact_json(
    txn: &Txn,
    account: &str,
    digits: &str,
    devices: &[(u32, RemoteIdentity)],
) -> Result<serde_json::Value, signal::SignalError> {
    let own = own_key(txn)?;
    let mut overall = TrustState::Verified;
    let mut list = Vec::new();
    for (device, r) in devices {
        let changed = r.trust == TrustState::Changed || r.pending.is_some();
        overall = match (overall, r.trust) {
            _ if changed => TrustState::Changed,
            (TrustState::Changed, _) => TrustState::Changed,
            (_, TrustState::Unverified) => TrustState::Unverified,
            (o, _) => o,
        };
        let mut d = serde_json::json!({
            "device": device,
            "fingerprint": signal::fingerprint(&r.key, digits),
            "trust": r.trust.as_str(),
            "changed_at": rfc3339(r.changed_ms),
            "change_held": r.pending.is_some(),
        });
        if let (Some(own), Some(obj)) = (own.as_ref(), d.as_object_mut()) {
            obj.insert(
                "safety_number".into(),
                signal::safety_number((own, account), (&r.key, digits)).into(),
            );
        }
        list.push(d);
    }
    let device_list = txn.device_list(digits)?;
    let mut v = serde_json::json!({
        "phone": format!("+{digits}"),
        "trust": overall.as_str(),
        "devices": list,
    });
    if let (Some(dl), Some(obj)) = (device_list, v.as_object_mut()) {
        obj.insert("last_seen".into(), rfc3339(dl.fetched_ms).into());
    }
    Ok(v)
}

/// Users with stored identities, in key order, at most `limit`.
pub(crate) fn known_users(txn: &Txn, limit: usize) -> Result<Vec<String>, StoreError> {
    let t = txn.inner.open_table(crate::store::REMOTE_IDENTITIES)?;
    let mut users: Vec<String> = Vec::new();
    for item in t.iter()? {
        let (k, _) = item?;
        let Some((user, _device)) = k.value().rsplit_once('.') else {
            continue;
        };
        if users.last().map(String::as_str) != Some(user) {
            if users.len() >= limit {
                break;
            }
            users.push(user.to_string());
        }
    }
    users.dedup();
    Ok(users)
}

/// `GET /v1/contacts`.
pub fn list(api: &Rc<Api>) -> Response {
    let txn = match api.store.begin() {
        Ok(t) => t,
        Err(e) => return store_error(&e),
    };
    let users = match known_users(&txn, MAX_CONTACTS_LISTED) {
        Ok(u) => u,
        Err(e) => return store_error(&e),
    };
    let mut by_user = BTreeMap::new();
    for user in users {
        let devices = match signal::remote_identities(&txn, &user) {
            Ok(d) => d,
            Err(e) => return signal_error(&e),
        };
        match contact_json(&txn, &api.account, &user, &devices) {
            Ok(v) => {
                by_user.insert(user, v);
            }
            Err(e) => return signal_error(&e),
        }
    }
    let contacts: Vec<_> = by_user.into_values().collect();
    Response::json(200, &serde_json::json!({"contacts": contacts}))
}

/// `GET /v1/contacts/{phone}`.
pub fn one(api: &Rc<Api>, phone: &str) -> Response {
    let Ok(digits) = crate::jid::parse_phone(phone) else {
        return bad_phone();
    };
    let txn = match api.store.begin() {
        Ok(t) => t,
        Err(e) => return store_error(&e),
    };
    let devices = match signal::remote_identities(&txn, &digits) {
        Ok(d) => d,
        Err(e) => return signal_error(&e),
    };
    if devices.is_empty() {
        return Response::json_error(
            404,
            "unknown_contact",
            "no identity is known for this number",
        );
    }
    match contact_json(&txn, &api.account, &digits, &devices) {
        Ok(v) => Response::json(200, &v),
        Err(e) => signal_error(&e),
    }
}

/// `POST /v1/contacts/{phone}/trust`.
pub fn trust(api: &Rc<Api>, phone: &str) -> Response {
    let Ok(digits) = crate::jid::parse_phone(phone) else {
        return bad_phone();
    };
    let txn = match api.store.begin() {
        Ok(t) => t,
        Err(e) => return store_error(&e),
    };
    match signal::trust_contact(&txn, &digits, now_ms()) {
        Ok(0) => {
            return Response::json_error(
                404,
                "unknown_contact",
                "no identity is known for this number",
            );
        }
        Ok(_) => {}
        Err(e) => return signal_error(&e),
    }
    let body = match signal::remote_identities(&txn, &digits)
        .and_then(|d| contact_json(&txn, &api.account, &digits, &d))
    {
        Ok(v) => v,
        Err(e) => return signal_error(&e),
    };
    if let Err(e) = api.metrics.commit(txn) {
        return store_error(&e);
    }
    // Messages held for this contact may go now.
    api.link.wake();
    Response::json(200, &body)
}

/// `GET /v1/identity`.
pub fn identity(api: &Rc<Api>) -> Response {
    let txn = match api.store.begin() {
        Ok(t) => t,
        Err(e) => return store_error(&e),
    };
    let id = match signal::local_identity(&txn) {
        Ok(Some(id)) => id,
        Ok(None) => {
            return Response::json_error(
                503,
                "no_identity",
                "the identity is created on first start; retry in a moment",
            );
        }
        Err(e) => return signal_error(&e),
    };
    let key = id.public();
    Response::json(
        200,
        &serde_json::json!({
            "address": api.account,
            "jid": format!("{}@{}", api.account, crate::jid::INTEROP_SERVER),
            "fingerprint": signal::fingerprint(&key, &api.account),
            "registration_id": id.registration_id(),
        }),
    )
}
