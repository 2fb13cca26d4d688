//! One-time and signed prekeys: generation, rotation, the stored rows, and our own bundle.

use super::*;

/// Generates `count` one-time prekeys with increasing 24-bit ids (wrapping to 1 after
/// [`MAX_PREKEY_ID`]), stores them, and returns their public halves for upload.
pub fn generate_prekeys<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    rng: &mut R,
    count: u32,
) -> Result<Vec<WirePreKey>, Fail<S>> {
    let mut next = txn.counter(META_NEXT_PREKEY_ID)?.unwrap_or(1);
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let id = next;
        next = if next >= MAX_PREKEY_ID { 1 } else { next + 1 };
        let kp = KeyPair::generate(rng);
        let mut v = Vec::with_capacity(33);
        v.push(1);
        v.extend_from_slice(kp.private_key.serialize());
        txn.put_id(PREKEYS, id, &v)?;
        out.push(WirePreKey {
            id,
            public: raw_from_public(&kp.public_key)?,
        });
    }
    txn.set_counter(META_NEXT_PREKEY_ID, next)?;
    Ok(out)
}

/// How many one-time prekeys we still hold (unused ones).
pub fn prekey_count<S: SignalStore>(txn: &S) -> Result<u64, Fail<S>> {
    Ok(txn.count_ids(PREKEYS)?)
}

pub(super) fn load_prekey<S: SignalStore>(
    txn: &S,
    id: u32,
) -> Result<Option<PreKeyRecord>, Fail<S>> {
    let Some(b) = txn.get_id(PREKEYS, id)? else {
        return Ok(None);
    };
    let mut r = Reader::new(&b, "prekeys");
    r.version(1).map_err(corrupt)?;
    let private: [u8; 32] = r.array().map_err(corrupt)?;
    r.end().map_err(corrupt)?;
    Ok(Some(PreKeyRecord::new(
        id.into(),
        &key_pair_from_raw(&private, "prekeys").map_err(corrupt)?,
    )))
}

/// Generates a new signed prekey, makes it current, and prunes old ones beyond
/// [`MAX_SIGNED_PREKEYS_KEPT`].
pub fn rotate_signed_prekey<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    rng: &mut R,
    now_ms: u64,
) -> Result<WireSignedPreKey, Fail<S>> {
    let identity = require_identity(txn)?;
    let prev = txn.counter(META_CURRENT_SIGNED_PREKEY)?.unwrap_or(0);
    let id = if prev >= MAX_PREKEY_ID { 1 } else { prev + 1 };
    let kp = KeyPair::generate(rng);
    let signature = identity
        .key_pair
        .private_key()
        .calculate_signature(&kp.public_key.serialize(), rng)
        .map_err(|e| SignalError::Internal {
            detail: e.to_string(),
        })?;
    let mut v = Vec::with_capacity(105);
    v.push(1);
    v.extend_from_slice(&now_ms.to_be_bytes());
    v.extend_from_slice(kp.private_key.serialize());
    v.extend_from_slice(&signature);
    txn.put_id(SIGNED_PREKEYS, id, &v)?;
    txn.set_counter(META_CURRENT_SIGNED_PREKEY, id)?;
    // Prune: keep the newest MAX_SIGNED_PREKEYS_KEPT ids (ids increase, modulo wrap).
    if id as usize > MAX_SIGNED_PREKEYS_KEPT {
        let old = id - MAX_SIGNED_PREKEYS_KEPT as u32;
        txn.remove_id(SIGNED_PREKEYS, old)?;
    }
    Ok(WireSignedPreKey {
        id,
        public: raw_from_public(&kp.public_key)?,
        signature,
    })
}

pub(super) struct StoredSignedPreKey {
    pub(super) created_ms: u64,
    pub(super) record: SignedPreKeyRecord,
    pub(super) public: RawKey,
    pub(super) signature: [u8; 64],
}

pub(super) fn load_signed_prekey<S: SignalStore>(
    txn: &S,
    id: u32,
) -> Result<Option<StoredSignedPreKey>, Fail<S>> {
    let Some(b) = txn.get_id(SIGNED_PREKEYS, id)? else {
        return Ok(None);
    };
    let mut r = Reader::new(&b, "signed_prekeys");
    r.version(1).map_err(corrupt)?;
    let created_ms = r.u64().map_err(corrupt)?;
    let private: [u8; 32] = r.array().map_err(corrupt)?;
    let signature: [u8; 64] = r.array().map_err(corrupt)?;
    r.end().map_err(corrupt)?;
    let kp = key_pair_from_raw(&private, "signed_prekeys").map_err(corrupt)?;
    let record = SignedPreKeyRecord::new(
        id.into(),
        Timestamp::from_epoch_millis(created_ms),
        &kp,
        &signature,
    );
    Ok(Some(StoredSignedPreKey {
        created_ms,
        public: raw_from_public(&kp.public_key)?,
        record,
        signature,
    }))
}

/// The current signed prekey for upload, and when it was made.
pub fn current_signed_prekey<S: SignalStore>(
    txn: &S,
) -> Result<Option<(WireSignedPreKey, u64)>, Fail<S>> {
    let Some(id) = txn.counter(META_CURRENT_SIGNED_PREKEY)? else {
        return Ok(None);
    };
    let Some(s) = load_signed_prekey(txn, id)? else {
        return Err(corrupt(RowError {
            table: "signed_prekeys",
            detail: "current id missing",
        }));
    };
    Ok(Some((
        WireSignedPreKey {
            id,
            public: s.public,
            signature: s.signature,
        },
        s.created_ms,
    )))
}

/// Whether the signed prekey is due for rotation at `now_ms`.
pub fn signed_prekey_due<S: SignalStore>(txn: &S, now_ms: u64) -> Result<bool, Fail<S>> {
    Ok(match current_signed_prekey(txn)? {
        None => true,
        Some((_, created)) => now_ms.saturating_sub(created) >= SIGNED_PREKEY_ROTATION_MS,
    })
}

/// Our bundle as a peer would fetch it, handing out (and NOT deleting: the server hands each
/// out once; we delete on use) the prekey `prekey_id` if given. Used by tests and the hub's
/// simulated users.
pub fn own_bundle<S: SignalStore>(txn: &S, prekey_id: Option<u32>) -> Result<WireBundle, Fail<S>> {
    let identity = require_identity(txn)?;
    let (signed_prekey, _) = current_signed_prekey(txn)?.ok_or(SignalError::Internal {
        detail: "no signed prekey yet".into(),
    })?;
    let prekey = match prekey_id {
        None => None,
        Some(id) => {
            let rec = load_prekey(txn, id)?.ok_or(SignalError::UnknownPreKey)?;
            let public = rec
                .public_key()
                .map_err(|e| map_err(e, &Address::new("", 0)))?;
            Some(WirePreKey {
                id,
                public: raw_from_public(&public)?,
            })
        }
    };
    Ok(WireBundle {
        registration_id: identity.registration_id,
        identity: identity.public(),
        signed_prekey,
        prekey,
    })
}

/// Ids of the one-time prekeys we hold, lowest first (for tests and the hub).
pub fn prekey_ids<S: SignalStore>(txn: &S, limit: usize) -> Result<Vec<u32>, Fail<S>> {
    Ok(txn.first_ids(PREKEYS, limit)?)
}
