//! A simulated user's Signal side: what it sent (kept for retries, bounded), retry counts,
//! opening a received message and encrypting one to every device of a peer.

use super::*;

impl SimUser {
    pub(super) fn forget_old_sent(&mut self, now_ms: u64) {
        while self
            .sent
            .front()
            .is_some_and(|s| now_ms.saturating_sub(s.sent_ms) > MAX_RETAINED_SENT_AGE_MS)
        {
            self.sent.pop_front();
        }
    }

    pub(super) fn remember_sent(&mut self, id: &str, to: &Jid, message: &Message, now_ms: u64) {
        self.forget_old_sent(now_ms);
        if self.sent.len() >= MAX_RETAINED_SENT {
            self.sent.pop_front();
        }
        self.sent.push_back(SentMessage {
            id: id.to_owned(),
            to: to.to_user(),
            message: message.clone(),
            sent_ms: now_ms,
            answered: Vec::new(),
        });
    }

    /// Counts one more retry receipt for (`device`, `from`, `id`); `None` once
    /// [`MAX_RETRY_RECEIPTS`] were sent.
    pub(super) fn next_retry_count(&mut self, device: u32, from: &Jid, id: &str) -> Option<u8> {
        let key = format!("{device}|{from}|{id}");
        let count = match self.retries.get_mut(&key) {
            Some(c) => {
                *c = c.saturating_add(1);
                *c
            }
            None => {
                self.retries.insert(key.clone(), 1);
                self.retries_order.push_back(key);
                if self.retries_order.len() > MAX_RETRY_TRACKED
                    && let Some(old) = self.retries_order.pop_front()
                {
                    self.retries.remove(&old);
                }
                1
            }
        };
        (count <= MAX_RETRY_RECEIPTS).then_some(count)
    }

    pub(super) fn first_time(&mut self, id: &str) -> bool {
        if !self.seen.insert(id.to_owned()) {
            return false;
        }
        self.seen_order.push_back(id.to_owned());
        if self.seen_order.len() > MAX_SEEN_IDS
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    pub(super) fn open_message<R: Rng + CryptoRng>(
        &mut self,
        device: u32,
        stanza: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Inbound, SimError> {
        let Some(d) = self.devices.iter().find(|d| d.device == device) else {
            return Ok(Inbound::Ignored);
        };
        let (Some(id), Some(from)) = (stanza.attr_value("id"), stanza.attr_value("from")) else {
            return Ok(Inbound::Ignored);
        };
        let Ok(from) = Jid::parse(from) else {
            return Ok(Inbound::Ignored);
        };
        let Some(enc) = stanza.child_named("enc") else {
            return Ok(Inbound::Ignored);
        };
        let (Some(kind), Some(body)) = (
            enc.attr_value("type").and_then(EncType::parse),
            enc.payload(),
        ) else {
            return Ok(Inbound::Ignored);
        };
        let wtx = d.store.begin()?;
        let txn = SignalTables(&wtx);
        let ct = Ciphertext {
            kind,
            body: body.to_vec(),
        };
        let plain = match signal::decrypt(&txn, &from.address(), &ct, rng, now_ms) {
            Ok(p) => p,
            Err(SignalError::Duplicate) => return Ok(Inbound::Ignored),
            Err(e) => {
                log::warn!("simulated {}:{device} cannot decrypt {id}: {e}", self.phone);
                drop(wtx);
                let t_secs = stanza
                    .attr_value("t")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(now_ms / 1000);
                return Ok(Inbound::Failed(
                    self.retry_receipt(device, &from, id, t_secs, rng)?,
                ));
            }
        };
        wtx.commit().map_err(StoreError::from)?;
        let Ok(message) = content::decode_padded(&plain.plaintext) else {
            log::warn!("simulated {}:{device} got bad content in {id}", self.phone);
            return Ok(Inbound::Ignored);
        };
        Ok(Inbound::Opened(Box::new(Opened {
            id: id.to_owned(),
            from,
            message,
        })))
    }

    /// The retry receipt `device` sends to `from` for message `id`, with `<keys>` (and a new
    /// one-time prekey, kept in the device's store) from [`RETRY_KEYS_FROM_COUNT`] on.
    pub(super) fn retry_receipt<R: Rng + CryptoRng>(
        &mut self,
        device: u32,
        from: &Jid,
        id: &str,
        t_secs: u64,
        rng: &mut R,
    ) -> Result<Option<SimAction>, SimError> {
        let Ok(message_id) = content::MessageId::parse(id) else {
            return Ok(None);
        };
        if from.device.is_none() {
            return Ok(None);
        }
        let Some(count) = self.next_retry_count(device, from, id) else {
            log::warn!(
                "simulated {}:{device}: no more retry receipts for {id}",
                self.phone
            );
            return Ok(None);
        };
        let Some(d) = self.devices.iter().find(|d| d.device == device) else {
            return Ok(None);
        };
        let wtx = d.store.begin()?;
        let txn = SignalTables(&wtx);
        let identity = signal::local_identity(&txn)?.ok_or(SignalError::Internal {
            detail: "simulated device has no identity".into(),
        })?;
        let keys = retry::keys_for_receipt(&txn, count, true, rng)?;
        wtx.commit().map_err(StoreError::from)?;
        let receipt = RetryReceipt {
            id: message_id,
            count,
            t_secs,
            registration_id: identity.registration_id(),
            keys,
        };
        Ok(Some(SimAction::Send {
            from: Jid::whatsapp(self.phone.clone(), Some(device)),
            stanza: retry::retry_receipt_stanza(from, &receipt),
        }))
    }

    /// Encrypts `message` for every device of `to` (a user JID), fetching bundles for
    /// devices without a session, and returns the `<message>` stanza to route from device 0.
    pub fn encrypt_message<R: Rng + CryptoRng>(
        &mut self,
        to: &Jid,
        message: &Message,
        dir: &mut dyn Directory,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Stanza, SimError> {
        let Some(d) = self.devices.first() else {
            return Err(SimError::NoDevices {
                to: self.phone.clone(),
            });
        };
        let padded = content::encode_padded(message, rng).map_err(SimError::Content)?;
        let mut random = [0u8; 16];
        rng.fill_bytes(&mut random);
        let id = content::message_id(now_ms / 1000, &self.phone, &random);
        let wtx = d.store.begin()?;
        let txn = SignalTables(&wtx);
        let mut participants = Stanza::new("participants");
        let mut any = false;
        for dev in dir.devices(to) {
            let target = to.with_device(dev);
            let addr = target.address();
            if !signal::has_session(&txn, &addr)? {
                let Some(bundle) = dir.bundle(&target) else {
                    continue;
                };
                if let Err(e) = signal::process_bundle(&txn, &addr, &bundle, rng, now_ms) {
                    log::warn!("simulated {} refuses bundle of {target}: {e}", self.phone);
                    continue;
                }
            }
            let ct = signal::encrypt(&txn, &addr, &padded, now_ms)?;
            let mut enc = Stanza::new("enc")
                .attr("v", "2")
                .attr("type", ct.kind.as_str());
            if let Some(mt) = media_type(message.kind()) {
                enc = enc.attr("mediatype", mt);
            }
            participants = participants.child(
                Stanza::new("to")
                    .attr("jid", target.to_string())
                    .child(enc.bytes(ct.body)),
            );
            any = true;
        }
        if !any {
            return Err(SimError::NoDevices { to: to.to_string() });
        }
        wtx.commit().map_err(StoreError::from)?;
        self.remember_sent(id.as_str(), to, message, now_ms);
        let mut m = Stanza::new("message")
            .attr("id", id.as_str())
            .attr("to", to.to_string())
            .attr("type", stanza_type(message.kind()))
            .attr("t", (now_ms / 1000).to_string());
        if let Some(edit) = content::stanza_edit(message.kind()) {
            m = m.attr("edit", edit);
        }
        Ok(m.child(participants))
    }

    /// Remembers that `echo` answered `original`, so an edit or delete of `original` can
    /// be echoed on `echo`; at most [`MAX_RETAINED_SENT`] pairs.
    pub(super) fn remember_echo(&mut self, original: &str, echo: &str) {
        if self.echoes.len() >= MAX_RETAINED_SENT {
            self.echoes.pop_front();
        }
        self.echoes
            .push_back((original.to_owned(), echo.to_owned()));
    }

    /// The id of the echo that answered `original`, if remembered.
    pub(super) fn echo_id(&self, original: &str) -> Option<&str> {
        self.echoes
            .iter()
            .rev()
            .find(|(o, _)| o == original)
            .map(|(_, e)| e.as_str())
    }
}
