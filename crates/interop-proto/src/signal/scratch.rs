//! The buffered store: the owned records one operation preloads, lends to the Signal crate's
//! async store traits, and writes back into the caller's transaction.

use super::*;

/// Owned, preloaded records the crate reads and writes during one operation.
pub(super) struct Scratch {
    pub(super) identity: IdentityKeyPair,
    pub(super) registration_id: u32,
    pub(super) now_ms: u64,
    pub(super) sessions: HashMap<ProtocolAddress, SessionRecord>,
    pub(super) dirty_sessions: HashSet<ProtocolAddress>,
    pub(super) remotes: HashMap<ProtocolAddress, RemoteIdentity>,
    pub(super) dirty_remotes: HashSet<ProtocolAddress>,
    pub(super) prekeys: HashMap<PreKeyId, PreKeyRecord>,
    pub(super) removed_prekeys: Vec<PreKeyId>,
    pub(super) signed_prekeys: HashMap<SignedPreKeyId, SignedPreKeyRecord>,
    /// The identity key this operation replaced, and its replacement.
    pub(super) replaced: Option<(RawKey, RawKey)>,
}

impl Scratch {
    pub(super) fn load<S: SignalStore>(
        txn: &S,
        address: &Address,
        now_ms: u64,
    ) -> Result<Scratch, Fail<S>> {
        let local = require_identity(txn)?;
        let pa = address.protocol();
        let mut sessions = HashMap::new();
        if let Some(b) = txn.get(SESSIONS, &address.key())? {
            let mut r = Reader::new(&b, "sessions");
            r.version(1).map_err(corrupt)?;
            let rest = r.take(b.len().saturating_sub(1)).map_err(corrupt)?;
            let mut rec = SessionRecord::deserialize(rest).map_err(|_| {
                corrupt(RowError {
                    table: "sessions",
                    detail: "bad session record",
                })
            })?;
            rec.waive_counter_lease();
            sessions.insert(pa.clone(), rec);
        }
        let mut remotes = HashMap::new();
        if let Some(r) = remote_identity(txn, address)? {
            remotes.insert(pa, r);
        }
        Ok(Scratch {
            identity: local.key_pair,
            registration_id: local.registration_id,
            now_ms,
            sessions,
            dirty_sessions: HashSet::new(),
            remotes,
            dirty_remotes: HashSet::new(),
            prekeys: HashMap::new(),
            removed_prekeys: Vec::new(),
            signed_prekeys: HashMap::new(),
            replaced: None,
        })
    }

    /// The crate wants the session store and the identity store as two distinct `&mut`; a
    /// scratch is both, so its sessions are split off for the call and put back after.
    pub(super) fn with_split<T>(
        &mut self,
        f: impl FnOnce(&mut SessionOnly<'_>, &mut Scratch) -> T,
    ) -> T {
        let mut sessions = std::mem::take(&mut self.sessions);
        let mut dirty = std::mem::take(&mut self.dirty_sessions);
        let out = {
            let mut view = SessionOnly {
                sessions: &mut sessions,
                dirty: &mut dirty,
            };
            f(&mut view, self)
        };
        self.sessions = sessions;
        self.dirty_sessions = dirty;
        out
    }

    pub(super) fn flush<S: SignalStore>(self, txn: &S) -> Result<(), Fail<S>> {
        for pa in &self.dirty_sessions {
            if let Some(rec) = self.sessions.get(pa) {
                let mut body = Vec::new();
                rec.serialize_into(&mut body);
                let mut v = Vec::with_capacity(1 + body.len());
                v.push(1u8);
                v.extend_from_slice(&body);
                let key = format!("{}.{}", pa.name(), u32::from(pa.device_id()));
                txn.put(SESSIONS, &key, &v)?;
            }
        }
        for pa in &self.dirty_remotes {
            if let Some(r) = self.remotes.get(pa) {
                put_remote(txn, &Address::new(pa.name(), u32::from(pa.device_id())), r)?;
            }
        }
        for id in &self.removed_prekeys {
            txn.remove_id(PREKEYS, u32::from(*id))?;
        }
        Ok(())
    }
}

pub(super) type SpResult<T> = Result<T, SignalProtocolError>;

#[async_trait::async_trait]
impl IdentityKeyStore for Scratch {
    async fn get_identity_key_pair(&self) -> SpResult<IdentityKeyPair> {
        Ok(self.identity.clone())
    }

    async fn get_local_registration_id(&self) -> SpResult<u32> {
        Ok(self.registration_id)
    }

    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> SpResult<IdentityChange> {
        let raw: RawKey = identity
            .public_key()
            .public_key_bytes()
            .try_into()
            .map_err(|_| SignalProtocolError::InvalidArgument("identity key length".into()))?;
        let now = self.now_ms;
        let changed = match self.remotes.get_mut(address) {
            Some(r) if r.key == raw => false,
            Some(r) => {
                self.replaced = Some((r.key, raw));
                r.key = raw;
                r.changed_ms = now;
                r.pending = None;
                if r.trust != TrustState::Verified {
                    r.trust = TrustState::Changed;
                }
                true
            }
            None => {
                self.remotes.insert(
                    address.clone(),
                    RemoteIdentity {
                        key: raw,
                        trust: TrustState::Unverified,
                        changed_ms: now,
                        pending: None,
                    },
                );
                false
            }
        };
        self.dirty_remotes.insert(address.clone());
        Ok(IdentityChange::from_changed(changed))
    }

    async fn is_trusted_identity(
        &self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
        _d: Direction,
    ) -> SpResult<bool> {
        Ok(match self.remotes.get(address) {
            None => true,
            Some(r) => {
                r.trust != TrustState::Verified
                    || r.key[..] == *identity.public_key().public_key_bytes()
            }
        })
    }

    async fn get_identity(&self, address: &ProtocolAddress) -> SpResult<Option<IdentityKey>> {
        match self.remotes.get(address) {
            None => Ok(None),
            Some(r) => Ok(Some(IdentityKey::new(
                PublicKey::from_djb_public_key_bytes(&r.key)?,
            ))),
        }
    }
}
