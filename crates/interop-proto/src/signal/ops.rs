//! The operations: sessions from bundles, encrypt, decrypt, provisioning and self-checks.

use super::*;

/// Whether we hold a session with `address`.
pub fn has_session<S: SignalStore>(txn: &S, address: &Address) -> Result<bool, Fail<S>> {
    Ok(txn.get(SESSIONS, &address.key())?.is_some())
}

/// Drops the session with `address` (for example before rebuilding it from a retry receipt).
pub fn delete_session<S: SignalStore>(txn: &S, address: &Address) -> Result<(), Fail<S>> {
    txn.remove(SESSIONS, &address.key())?;
    Ok(())
}

/// Builds a session with `address` from its bundle. The signed prekey signature is checked
/// first; a bad one is refused and nothing is stored.
pub fn process_bundle<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    address: &Address,
    bundle: &WireBundle,
    rng: &mut R,
    now_ms: u64,
) -> Result<IdentityEvent, Fail<S>> {
    let identity_pk = public_from_raw(&bundle.identity)?;
    let spk = public_from_raw(&bundle.signed_prekey.public)?;
    // Checked here as well as in the crate, so that a bad bundle is refused before any state
    // (or a pending identity) is recorded.
    if !identity_pk.verify_signature(&spk.serialize(), &bundle.signed_prekey.signature) {
        return Err(SignalError::BadSignature);
    }
    let prekey = match &bundle.prekey {
        Some(p) => Some((PreKeyId::from(p.id), public_from_raw(&p.public)?)),
        None => None,
    };
    let sp_bundle = PreKeyBundle::new(
        bundle.registration_id,
        address.device.into(),
        prekey,
        bundle.signed_prekey.id.into(),
        spk,
        bundle.signed_prekey.signature.to_vec(),
        IdentityKey::new(identity_pk),
    )
    .map_err(|e| map_err(e, address))?;
    let mut scratch = Scratch::load(txn, address, now_ms)?;
    let first = !scratch.remotes.contains_key(&address.protocol());
    let pa = address.protocol();
    let result = scratch.with_split(|sessions, ids| {
        block_on(sp::process_prekey_bundle(
            &pa,
            sessions,
            ids,
            &sp_bundle,
            rng,
            UsePQRatchet::No,
        ))
    });
    match result {
        Ok(change) => {
            let replaced = scratch.replaced;
            scratch.flush(txn)?;
            Ok(identity_event(first, change, replaced))
        }
        Err(SignalProtocolError::UntrustedIdentity(_)) => {
            let newly_held = hold_pending_identity(txn, address, bundle.identity)?;
            Err(SignalError::UntrustedIdentity {
                address: address.clone(),
                newly_held,
            })
        }
        Err(e) => Err(map_err(e, address)),
    }
}

pub(super) fn identity_event(
    first: bool,
    change: IdentityChange,
    replaced: Option<(RawKey, RawKey)>,
) -> IdentityEvent {
    if let (IdentityChange::ReplacedExisting, Some((previous, current))) = (change, replaced) {
        IdentityEvent::Changed { previous, current }
    } else if first {
        IdentityEvent::New
    } else {
        IdentityEvent::Unchanged
    }
}

/// Holds `key` as the pending identity of `address`. Returns `(current key, key)` when that
/// is news: no key, or another one, was pending before.
pub(super) fn hold_pending_identity<S: SignalStore>(
    txn: &S,
    address: &Address,
    key: RawKey,
) -> Result<Option<(RawKey, RawKey)>, Fail<S>> {
    let Some(mut r) = remote_identity(txn, address)? else {
        return Ok(None);
    };
    if r.pending == Some(key) {
        return Ok(None);
    }
    r.pending = Some(key);
    put_remote(txn, address, &r)?;
    Ok(Some((r.key, key)))
}

/// The session half of a [`Scratch`], split off so the identity half can be borrowed at the
/// same time.
pub(super) struct SessionOnly<'a> {
    pub(super) sessions: &'a mut HashMap<ProtocolAddress, SessionRecord>,
    pub(super) dirty: &'a mut HashSet<ProtocolAddress>,
}

#[async_trait::async_trait]
impl SessionStore for SessionOnly<'_> {
    async fn load_session(&self, address: &ProtocolAddress) -> SpResult<Option<SessionRecord>> {
        Ok(self.sessions.get(address).cloned())
    }

    async fn has_session(&self, address: &ProtocolAddress) -> SpResult<bool> {
        Ok(self.sessions.contains_key(address))
    }

    async fn store_session(
        &mut self,
        address: &ProtocolAddress,
        mut record: SessionRecord,
    ) -> SpResult<()> {
        record.waive_counter_lease();
        self.sessions.insert(address.clone(), record);
        self.dirty.insert(address.clone());
        Ok(())
    }
}

/// Encrypts `plaintext` for `address` with the existing session. The advanced session is
/// written into `txn`; commit it together with the stanza bytes before they reach the wire.
pub fn encrypt<S: SignalStore>(
    txn: &S,
    address: &Address,
    plaintext: &[u8],
    now_ms: u64,
) -> Result<Ciphertext, Fail<S>> {
    let mut scratch = Scratch::load(txn, address, now_ms)?;
    if !scratch.sessions.contains_key(&address.protocol()) {
        return Err(SignalError::NoSession {
            address: address.clone(),
        });
    }
    let pa = address.protocol();
    let result = scratch
        .with_split(|sessions, ids| block_on(sp::message_encrypt(plaintext, &pa, sessions, ids)));
    let msg = result.map_err(|e| map_err(e, address))?;
    let (kind, body) = match msg {
        CiphertextMessage::PreKeySignalMessage(m) => (EncType::PkMsg, m.serialized().to_vec()),
        CiphertextMessage::SignalMessage(m) => (EncType::Msg, m.serialized().to_vec()),
        _ => {
            return Err(SignalError::Internal {
                detail: "unexpected ciphertext kind".into(),
            });
        }
    };
    scratch.dirty_sessions.insert(pa);
    scratch.flush(txn)?;
    Ok(Ciphertext { kind, body })
}

/// Decrypts a message from `address`. On success the session update, any identity record and
/// the deletion of a consumed one-time prekey are written into `txn`: add the inbox row and
/// commit, then ack. On failure nothing is written except, for a verified contact whose
/// identity changed ([`SignalError::UntrustedIdentity`]), the offered identity as pending:
/// commit the transaction in that case so the household can review and trust it.
pub fn decrypt<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    address: &Address,
    ciphertext: &Ciphertext,
    rng: &mut R,
    now_ms: u64,
) -> Result<Decrypted, Fail<S>> {
    let mut scratch = Scratch::load(txn, address, now_ms)?;
    let first = !scratch.remotes.contains_key(&address.protocol());
    let parsed = match ciphertext.kind {
        EncType::PkMsg => {
            let m = PreKeySignalMessage::try_from(ciphertext.body.as_slice())
                .map_err(|e| map_err(e, address))?;
            if let Some(id) = m.pre_key_id()
                && let Some(rec) = load_prekey(txn, u32::from(id))?
            {
                scratch.prekeys.insert(id, rec);
            }
            // For a new session the chain starts at 0; for a known one, at its position.
            check_forward_jump(scratch.sessions.get(&address.protocol()), m.message())?;
            let sid = m.signed_pre_key_id();
            if let Some(s) = load_signed_prekey(txn, u32::from(sid))? {
                scratch.signed_prekeys.insert(sid, s.record);
            }
            CiphertextMessage::PreKeySignalMessage(m)
        }
        EncType::Msg => {
            let m = SignalMessage::try_from(ciphertext.body.as_slice())
                .map_err(|e| map_err(e, address))?;
            check_forward_jump(scratch.sessions.get(&address.protocol()), &m)?;
            CiphertextMessage::SignalMessage(m)
        }
    };
    let pa = address.protocol();
    let result = block_on(async {
        let mut sessions = std::mem::take(&mut scratch.sessions);
        let mut dirty = std::mem::take(&mut scratch.dirty_sessions);
        let mut prekeys = PreKeysOnly {
            prekeys: std::mem::take(&mut scratch.prekeys),
            signed: std::mem::take(&mut scratch.signed_prekeys),
        };
        let r = {
            let mut view = SessionOnly {
                sessions: &mut sessions,
                dirty: &mut dirty,
            };
            let signed = prekeys.signed.clone();
            let signed_store = SignedOnly(signed);
            sp::message_decrypt(
                &parsed,
                &pa,
                &mut view,
                &mut scratch,
                &mut prekeys,
                &signed_store,
                rng,
                UsePQRatchet::No,
            )
            .await
        };
        scratch.sessions = sessions;
        scratch.dirty_sessions = dirty;
        scratch.prekeys = prekeys.prekeys;
        r
    });
    match result {
        Ok(d) => {
            let consumed = d.consumed_prekey_id.map(u32::from);
            if let Some(id) = d.consumed_prekey_id {
                scratch.removed_prekeys.push(id);
            }
            scratch.dirty_sessions.insert(pa);
            let replaced = scratch.replaced;
            scratch.flush(txn)?;
            Ok(Decrypted {
                plaintext: d.plaintext,
                identity: identity_event(first, d.identity_change, replaced),
                consumed_prekey: consumed,
            })
        }
        Err(SignalProtocolError::UntrustedIdentity(_)) => {
            let mut newly_held = None;
            if let CiphertextMessage::PreKeySignalMessage(m) = &parsed {
                let raw = raw_from_public(m.identity_key().public_key())?;
                newly_held = hold_pending_identity(txn, address, raw)?;
            }
            Err(SignalError::UntrustedIdentity {
                address: address.clone(),
                newly_held,
            })
        }
        Err(e) => Err(map_err(e, address)),
    }
}

/// Refuses a message that would skip more than [`MAX_SKIPPED_KEYS`] keys ahead in its chain.
/// The crate refuses it too, but folds the reason into a generic failure; checking first
/// gives the caller (and the log) the real reason.
pub(super) fn check_forward_jump<E>(
    session: Option<&SessionRecord>,
    m: &SignalMessage,
) -> Result<(), SignalError<E>> {
    let Some(state) = session.and_then(|s| s.session_state()) else {
        return Ok(());
    };
    let index = match state.get_receiver_chain_key(m.sender_ratchet_key()) {
        Ok(Some(chain)) => chain.index(),
        Ok(None) => 0,
        Err(_) => return Ok(()),
    };
    if m.counter().saturating_sub(index) as usize > MAX_SKIPPED_KEYS {
        return Err(SignalError::TooFarAhead);
    }
    Ok(())
}

pub(super) struct PreKeysOnly {
    pub(super) prekeys: HashMap<PreKeyId, PreKeyRecord>,
    pub(super) signed: HashMap<SignedPreKeyId, SignedPreKeyRecord>,
}

#[async_trait::async_trait]
impl PreKeyStore for PreKeysOnly {
    async fn get_pre_key(&self, id: PreKeyId) -> SpResult<PreKeyRecord> {
        self.prekeys
            .get(&id)
            .cloned()
            .ok_or(SignalProtocolError::InvalidPreKeyId)
    }

    async fn save_pre_key(&mut self, id: PreKeyId, record: &PreKeyRecord) -> SpResult<()> {
        self.prekeys.insert(id, record.clone());
        Ok(())
    }

    async fn remove_pre_key(&mut self, id: PreKeyId) -> SpResult<()> {
        // Deletion is deferred to the flush, in the same transaction as the new session.
        self.prekeys.remove(&id);
        Ok(())
    }
}

pub(super) struct SignedOnly(pub(super) HashMap<SignedPreKeyId, SignedPreKeyRecord>);

#[async_trait::async_trait]
impl SignedPreKeyStore for SignedOnly {
    async fn get_signed_pre_key(&self, id: SignedPreKeyId) -> SpResult<SignedPreKeyRecord> {
        self.0
            .get(&id)
            .cloned()
            .ok_or(SignalProtocolError::InvalidSignedPreKeyId)
    }

    async fn save_signed_pre_key(
        &mut self,
        id: SignedPreKeyId,
        record: &SignedPreKeyRecord,
    ) -> SpResult<()> {
        self.0.insert(id, record.clone());
        Ok(())
    }
}

/// Sets up a fresh device: identity, one signed prekey and a first batch of one-time prekeys.
/// Returns the upload (identity, signed prekey, prekeys). Idempotent for the identity.
pub fn provision<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    rng: &mut R,
    now_ms: u64,
    prekeys: u32,
) -> Result<(LocalIdentity, WireSignedPreKey, Vec<WirePreKey>), Fail<S>> {
    let identity = ensure_identity(txn, rng)?;
    let spk = match current_signed_prekey(txn)? {
        Some((spk, _)) => spk,
        None => rotate_signed_prekey(txn, rng, now_ms)?,
    };
    let keys = generate_prekeys(txn, rng, prekeys)?;
    Ok((identity, spk, keys))
}

/// Returns an error if `signature` over our signed prekey is not ours: a self-check used
/// after loading, so a corrupt store is noticed before we publish a bad bundle.
pub fn check_signed_prekey<S: SignalStore>(txn: &S) -> Result<(), Fail<S>> {
    let identity = require_identity(txn)?;
    if let Some((spk, _)) = current_signed_prekey(txn)? {
        let pk = public_from_raw(&spk.public)?;
        if !verify_signature(&identity.public(), &pk.serialize(), &spk.signature) {
            return Err(corrupt(RowError {
                table: "signed_prekeys",
                detail: "signature does not verify",
            }));
        }
    }
    Ok(())
}
