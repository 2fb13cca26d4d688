//! Contacts' identities: the stored record per device, trust, and the household's
//! "trust again".

use super::*;

pub(super) fn encode_remote(r: &RemoteIdentity) -> Vec<u8> {
    let mut v = Vec::with_capacity(75);
    v.push(1);
    v.push(r.trust as u8);
    v.extend_from_slice(&r.key);
    v.extend_from_slice(&r.changed_ms.to_be_bytes());
    match &r.pending {
        Some(p) => {
            v.push(1);
            v.extend_from_slice(p);
        }
        None => v.push(0),
    }
    v
}

pub(super) fn decode_remote(b: &[u8]) -> Result<RemoteIdentity, RowError> {
    let mut r = Reader::new(b, "remote_identities");
    r.version(1)?;
    let trust = TrustState::from_byte(r.u8()?).ok_or(RowError {
        table: "remote_identities",
        detail: "unknown trust state",
    })?;
    let key: RawKey = r.array()?;
    let changed_ms = r.u64()?;
    let pending = match r.u8()? {
        0 => None,
        1 => Some(r.array()?),
        _ => {
            return Err(RowError {
                table: "remote_identities",
                detail: "bad pending flag",
            });
        }
    };
    r.end()?;
    Ok(RemoteIdentity {
        key,
        trust,
        changed_ms,
        pending,
    })
}

/// The stored identity of a contact device.
pub fn remote_identity<S: SignalStore>(
    txn: &S,
    address: &Address,
) -> Result<Option<RemoteIdentity>, Fail<S>> {
    match txn.get(REMOTE_IDENTITIES, &address.key())? {
        Some(b) => Ok(Some(decode_remote(&b).map_err(corrupt)?)),
        None => Ok(None),
    }
}

pub(super) fn put_remote<S: SignalStore>(
    txn: &S,
    address: &Address,
    r: &RemoteIdentity,
) -> Result<(), Fail<S>> {
    txn.put(REMOTE_IDENTITIES, &address.key(), &encode_remote(r))?;
    Ok(())
}

/// Every stored device identity of `user`, by device number.
pub fn remote_identities<S: SignalStore>(
    txn: &S,
    user: &str,
) -> Result<Vec<(u32, RemoteIdentity)>, Fail<S>> {
    let prefix = format!("{user}.");
    let mut out = Vec::new();
    for (k, v) in txn.scan_prefix(REMOTE_IDENTITIES, &prefix)? {
        let Some(dev) = k.strip_prefix(prefix.as_str()) else {
            break;
        };
        let Ok(dev) = dev.parse::<u32>() else {
            continue;
        };
        out.push((dev, decode_remote(&v).map_err(corrupt)?));
    }
    out.sort_by_key(|(d, _)| *d);
    Ok(out)
}

/// The household marks every device of `user` verified, adopting any identity that a change
/// left pending. Returns how many devices were updated.
pub fn trust_contact<S: SignalStore>(txn: &S, user: &str, now_ms: u64) -> Result<usize, Fail<S>> {
    let devices = remote_identities(txn, user)?;
    for (device, mut r) in devices.iter().cloned() {
        if let Some(p) = r.pending.take() {
            r.key = p;
            r.changed_ms = now_ms;
            // The old session belongs to the old identity; the next send fetches a bundle.
            txn.remove(SESSIONS, &Address::new(user, device).key())?;
        }
        r.trust = TrustState::Verified;
        put_remote(txn, &Address::new(user, device), &r)?;
    }
    Ok(devices.len())
}
