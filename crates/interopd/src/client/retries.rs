//! Retry receipts both ways (docs/protocol.md section 12): asking again for a message that
//! did not decrypt, and answering a peer's ask by rebuilding the session and resending, with
//! both counters kept bounded in the store's `meta` table.

use super::*;

/// Whether a decryption failure is one a retry receipt can mend: the peer's session or keys
/// disagree with ours. A redelivery (`Duplicate`) is not a failure, a held identity is the
/// household's decision, and a store error is ours.
pub(super) fn asks_for_retry(e: &SignalError) -> bool {
    !matches!(
        e,
        SignalError::Duplicate | SignalError::UntrustedIdentity { .. } | SignalError::Store(_)
    )
}

/// The counter key of (`device`, message `id`).
pub(super) fn retry_key(device: &Jid, id: &str) -> String {
    format!("{device}|{id}")
}

/// Retry counters per (device, message id), oldest first, at most [`MAX_RETRY_TRACKED`]. Kept
/// as one `meta` value: a version byte ([`RETRY_COUNTS_VERSION`]), then per entry the count
/// (one byte), the key's length (one byte) and the key (UTF-8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryCounts {
    entries: VecDeque<(String, u8)>,
}

impl RetryCounts {
    /// Reads the stored form; `None` if it is not one (wrong version, cut short, a bad key,
    /// or more than [`MAX_RETRY_TRACKED`] entries).
    pub fn decode(bytes: &[u8]) -> Option<RetryCounts> {
        let (&version, mut rest) = bytes.split_first()?;
        if version != RETRY_COUNTS_VERSION {
            return None;
        }
        let mut entries = VecDeque::new();
        while let Some((&count, tail)) = rest.split_first() {
            let (&len, tail) = tail.split_first()?;
            let key = tail.get(..usize::from(len))?;
            rest = tail.get(usize::from(len)..)?;
            if entries.len() >= MAX_RETRY_TRACKED {
                return None;
            }
            entries.push_back((std::str::from_utf8(key).ok()?.to_owned(), count));
        }
        Some(RetryCounts { entries })
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![RETRY_COUNTS_VERSION];
        for (key, count) in &self.entries {
            // `set` keeps every key within MAX_RETRY_KEY_BYTES, so the length fits a byte.
            let Ok(len) = u8::try_from(key.len()) else {
                continue;
            };
            out.push(*count);
            out.push(len);
            out.extend_from_slice(key.as_bytes());
        }
        out
    }

    /// The count kept for `key` (0 when none).
    pub fn get(&self, key: &str) -> u8 {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map_or(0, |(_, c)| *c)
    }

    /// Sets the count for `key`, forgetting the oldest entry beyond [`MAX_RETRY_TRACKED`].
    /// Returns `false` (and keeps nothing) for a key longer than [`MAX_RETRY_KEY_BYTES`].
    pub fn set(&mut self, key: &str, count: u8) -> bool {
        if key.len() > MAX_RETRY_KEY_BYTES {
            return false;
        }
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = count,
            None => {
                self.entries.push_back((key.to_owned(), count));
                while self.entries.len() > MAX_RETRY_TRACKED {
                    self.entries.pop_front();
                }
            }
        }
        true
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The counters under `meta` key `name`. A value that does not read back is logged and
    /// started afresh: the counts only limit how often we ask or answer.
    pub(super) fn load(txn: &Txn, name: &str) -> Result<RetryCounts, StoreError> {
        let Some(bytes) = txn.get_str_key(META, name)? else {
            return Ok(RetryCounts::default());
        };
        Ok(RetryCounts::decode(&bytes).unwrap_or_else(|| {
            log::warn!(
                "client: meta {name} ({} bytes) unreadable; starting afresh",
                bytes.len()
            );
            RetryCounts::default()
        }))
    }

    pub(super) fn save(&self, txn: &Txn, name: &str) -> Result<(), StoreError> {
        txn.put_str_key(META, name, &self.encode())
    }
}

impl Client {
    /// Answers a message from `from` that did not decrypt with a retry receipt, the next count
    /// for (`from`, `id`); none once [`MAX_RETRY_RECEIPTS`] were sent. From
    /// [`RETRY_KEYS_FROM_COUNT`] on it carries our keys and a one-time prekey made for it
    /// (kept, never uploaded), committed with the count before the receipt is queued.
    pub(super) fn send_retry_receipt<R: Rng + CryptoRng>(
        &mut self,
        from: &Jid,
        id: &str,
        t_secs: u64,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let Ok(message_id) = MessageId::parse(id) else {
            log::warn!("client: no retry receipt for a message with a malformed id from {from}");
            return Ok(());
        };
        let txn = self.store.begin()?;
        let mut counts = RetryCounts::load(&txn, META_RETRY_SENT)?;
        let key = retry_key(from, id);
        let count = counts.get(&key).saturating_add(1);
        if count > MAX_RETRY_RECEIPTS || !counts.set(&key, count) {
            log::warn!("client: no more retry receipts to {from} for {id}");
            return Ok(());
        }
        counts.save(&txn, META_RETRY_SENT)?;
        let identity = signal::local_identity(&txn)?.ok_or(SignalError::Internal {
            detail: "no identity".into(),
        })?;
        let with_prekey = signal::prekey_count(&txn)? < MAX_PREKEYS_HELD_FOR_RETRY;
        let keys = retry::keys_for_receipt(&txn, count, with_prekey, rng)?;
        txn.commit()?;
        log::warn!("client: message {id} from {from} did not decrypt; retry receipt {count}");
        let receipt = RetryReceipt {
            id: message_id,
            count,
            t_secs,
            registration_id: identity.registration_id(),
            keys,
        };
        let s = retry::retry_receipt_stanza(from, &receipt);
        self.push(&s, now_ms);
        Ok(())
    }

    /// Handles a `<receipt type="retry">` (already acked): for an outbox row we sent to the
    /// asking device's user, not failed and not older than [`MAX_RETRY_RESEND_AGE_MS`], and a
    /// count not answered before, rebuilds the session and resends. Anything else is logged
    /// with the id and ignored.
    pub(super) fn answer_retry<R: Rng + CryptoRng>(
        &mut self,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let id = s.attr_value("id").unwrap_or("");
        let receipt = match retry::parse_retry_receipt(s) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("client: retry receipt for {id} ignored: {e}");
                return Ok(());
            }
        };
        let Some(device) = device_jid_of(s, "from").filter(|j| j.device.is_some()) else {
            log::warn!("client: retry receipt for {id} ignored: no sending device");
            return Ok(());
        };
        let txn = self.store.begin()?;
        let ignore = match txn.outbox_by_id(id)? {
            None => Some("not a message we keep"),
            Some((_, row)) if Jid::whatsapp(row.to.clone(), None) != device.to_user() => {
                Some("the device is not the recipient's")
            }
            Some((_, row)) if row.status == OutboxStatus::Failed => Some("the message failed"),
            Some((_, row)) if now_ms.saturating_sub(row.created_ms) > MAX_RETRY_RESEND_AGE_MS => {
                Some("the message is too old")
            }
            Some(_) => {
                let answered = RetryCounts::load(&txn, META_RETRY_ANSWERED)?;
                (receipt.count <= answered.get(&retry_key(&device, id)))
                    .then_some("that count was answered")
            }
        };
        drop(txn);
        if let Some(why) = ignore {
            log::info!(
                "client: retry receipt {} for {id} from {device} ignored: {why}",
                receipt.count
            );
            return Ok(());
        }
        let in_flight = self.resends.values().map(|n| *n as usize).sum::<usize>()
            + self
                .pending
                .values()
                .filter(|p| matches!(p, Pending::RetryKeys { .. }))
                .count();
        if in_flight >= MAX_PENDING_RETRIES {
            log::warn!("client: retry receipt for {id} from {device} ignored: too many in flight");
            return Ok(());
        }
        let count = receipt.count;
        if let Some(bundle) = receipt.keys {
            return self.resend(id, &device, count, &bundle, now_ms, rng);
        }
        let q = self.iq_id(Pending::RetryKeys {
            id: id.to_owned(),
            device: device.clone(),
            count,
        });
        let key = Stanza::new("key").child(Stanza::new("user").attr("jid", device.to_string()));
        let iq = Stanza::new("iq")
            .attr("id", q)
            .attr("type", "get")
            .attr("xmlns", "encrypt")
            .child(key);
        self.push(&iq, now_ms);
        Ok(())
    }

    /// Rebuilds the session with `device` from `bundle` (the old one is dropped first) and
    /// sends outbox row `id` to it alone as resend `count`. The new session, the answered
    /// count and nothing else commit before the bytes are queued; the row's own stanza stays
    /// the original. A changed identity of a verified contact holds the resend
    /// ([`Event::SendHeld`]); the dropped session and the pending identity are committed.
    pub(super) fn resend<R: Rng + CryptoRng>(
        &mut self,
        id: &str,
        device: &Jid,
        count: u8,
        bundle: &WireBundle,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let txn = self.store.begin()?;
        let Some((_, row)) = txn.outbox_by_id(id)? else {
            return Ok(());
        };
        let key = retry_key(device, id);
        let mut answered = RetryCounts::load(&txn, META_RETRY_ANSWERED)?;
        if count <= answered.get(&key) {
            // A later count overtook this one while its bundle was fetched.
            return Ok(());
        }
        let message = match <Message as prost::Message>::decode(row.content.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                log::error!("client: outbox row {id} does not decode: {e}");
                return Ok(());
            }
        };
        let padded = content::encode_padded(&message, rng).map_err(ClientError::Content)?;
        let addr = device.address();
        signal::delete_session(&txn, &addr)?;
        let changed = match signal::process_bundle(&txn, &addr, bundle, rng, now_ms) {
            Ok(IdentityEvent::Changed { previous, current }) => Some((previous, current)),
            Ok(_) => None,
            Err(SignalError::UntrustedIdentity { newly_held, .. }) => {
                let change = match newly_held {
                    Some(keys) => Some(self.journal_identity(&txn, device, keys, true, now_ms)?),
                    None => None,
                };
                txn.commit()?;
                if let Some(c) = change {
                    self.identity_committed(c);
                }
                self.events.push_back(Event::SendHeld {
                    id: id.to_owned(),
                    user: device.to_user(),
                });
                return Ok(());
            }
            Err(SignalError::Store(e)) => return Err(e.into()),
            Err(e) => {
                // Dropping the transaction keeps the old session.
                log::warn!("client: keys of {device} for the retry of {id} refused: {e}");
                return Ok(());
            }
        };
        let ct = signal::encrypt(&txn, &addr, &padded, now_ms)?;
        let kind = message.kind();
        let mut enc = Stanza::new("enc")
            .attr("v", "2")
            .attr("type", ct.kind.as_str());
        if let Some(mt) = crate::content::media_type(kind) {
            enc = enc.attr("mediatype", mt);
        }
        let mut m = Stanza::new("message")
            .attr("id", id)
            .attr("to", device.to_user().to_string())
            .attr("type", crate::content::stanza_type(kind))
            .attr("t", (now_ms / 1000).to_string())
            .attr("count", count.to_string());
        if let Some(edit) = crate::content::stanza_edit(kind) {
            m = m.attr("edit", edit);
        }
        let m = m.child(
            Stanza::new("participants").child(
                Stanza::new("to")
                    .attr("jid", device.to_string())
                    .child(enc.bytes(ct.body)),
            ),
        );
        answered.set(&key, count);
        answered.save(&txn, META_RETRY_ANSWERED)?;
        let change = match changed {
            Some(keys) => Some(self.journal_identity(&txn, device, keys, false, now_ms)?),
            None => None,
        };
        // The rebuilt session and the count commit before the bytes reach the wire.
        txn.commit()?;
        self.push(&m, now_ms);
        *self.resends.entry(id.to_owned()).or_default() += 1;
        log::warn!("client: resending {id} to {device} (retry {count})");
        if let Some(c) = change {
            self.identity_committed(c);
        }
        self.events.push_back(Event::Resent {
            id: id.to_owned(),
            to: device.clone(),
            count,
        });
        Ok(())
    }

    /// Takes the server's ack of a resend (see [`Client::resend`]); `false` if `id` has none
    /// outstanding. A refused resend is logged: the row keeps the status its own ack gave.
    pub(super) fn resend_acked(&mut self, id: &str, error: Option<&str>) -> bool {
        let Some(n) = self.resends.get_mut(id) else {
            return false;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.resends.remove(id);
        }
        match error {
            Some(e) => log::warn!("client: resend of {id} refused by the server: {e}"),
            None => log::debug!("client: resend of {id} accepted"),
        }
        true
    }
}

/// `<iq type="set" xmlns="encrypt">` carrying our keys.
pub fn upload_stanza(
    iq_id: &str,
    registration_id: u32,
    identity: &signal::RawKey,
    signed: &WireSignedPreKey,
    keys: &[WirePreKey],
) -> Stanza {
    let bundle = WireBundle {
        registration_id,
        identity: *identity,
        signed_prekey: signed.clone(),
        prekey: None,
    };
    // Reuse the bundle layout for the shared children, then add the list.
    let u = bundle_stanza(&Jid::interop("x", Some(0)), &bundle);
    let list = Stanza::new("list").extend_children(keys.iter().map(|k| {
        let [_, a, b, c] = k.id.to_be_bytes();
        Stanza::new("key")
            .child(Stanza::new("id").bytes(vec![a, b, c]))
            .child(Stanza::new("value").bytes(k.public.to_vec()))
    }));
    let mut iq = Stanza::new("iq")
        .attr("id", iq_id)
        .attr("type", "set")
        .attr("xmlns", "encrypt");
    for c in u.children() {
        if c.tag == "skey" {
            iq = iq.child(list.clone());
        }
        iq = iq.child(c.clone());
    }
    iq
}
