//! The receiving half of the [`Client`]: inbound `<message>`s (decrypt, commit, then ack
//! and receipt) and `<iq>` results (device lists, bundles, prekey counts).

use super::*;

impl Client {
    pub(super) fn handle_message<R: Rng + CryptoRng>(
        &mut self,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let id = s.attr_value("id").unwrap_or("").to_owned();
        let t_secs = s
            .attr_value("t")
            .and_then(|t| t.parse().ok())
            .unwrap_or(now_ms / 1000);
        match crate::group::parse_inbound(s) {
            Ok(Some(m)) => return self.handle_group_message(m, t_secs, now_ms, rng),
            Ok(None) => {}
            Err(e) => {
                // Acked all the same, so the gatekeeper does not offer it forever.
                log::warn!("client: group message {id} refused: {e}");
                let mut ack = Stanza::new("ack").attr("class", "message").attr("id", id);
                if let Some(f) = s.attr_value("from") {
                    ack = ack.attr("to", f);
                }
                self.push(&ack, now_ms);
                return Ok(());
            }
        }
        let Some(from) = device_jid_of(s, "from").filter(|j| j.device.is_some()) else {
            return Ok(());
        };
        let ack = Stanza::new("ack")
            .attr("class", "message")
            .attr("id", id.clone())
            .attr("to", from.to_string());
        let ct = s.child_named("enc").and_then(|enc| {
            Some(Ciphertext {
                kind: EncType::parse(enc.attr_value("type")?)?,
                body: enc.payload()?.to_vec(),
            })
        });
        let Some(ct) = ct else {
            self.push(&ack, now_ms);
            self.events.push_back(Event::DecryptFailed {
                id,
                from,
                reason: "no <enc>".into(),
            });
            return Ok(());
        };
        let txn = self.store.begin()?;
        let decrypted = signal::decrypt(&txn, &from.address(), &ct, rng, now_ms);
        let plain = match decrypted {
            Ok(p) => p,
            Err(SignalError::Duplicate) => {
                // A redelivery of something we committed: ack again, store nothing.
                log::info!("client: message {id} from {from} was stored before; acked again");
                self.push(&ack, now_ms);
                return Ok(());
            }
            Err(e) => {
                if let SignalError::UntrustedIdentity { newly_held, .. } = &e {
                    // The offered identity is held as pending (signal::decrypt wrote it):
                    // keep it, so the contact shows `changed` and trust can adopt it.
                    let change = match *newly_held {
                        Some(keys) => Some(self.journal_identity(&txn, &from, keys, true, now_ms)?),
                        None => None,
                    };
                    txn.commit()?;
                    if let Some(c) = change {
                        self.identity_committed(c);
                    }
                } else {
                    drop(txn);
                }
                self.push(&ack, now_ms);
                if asks_for_retry(&e) {
                    self.send_retry_receipt(&from, &id, t_secs, now_ms, rng)?;
                }
                self.events.push_back(Event::DecryptFailed {
                    id,
                    from,
                    reason: e.to_string(),
                });
                return Ok(());
            }
        };
        let message = match content::decode_padded(&plain.plaintext) {
            Ok(m) => m,
            Err(e) => {
                drop(txn);
                self.push(&ack, now_ms);
                self.events.push_back(Event::DecryptFailed {
                    id,
                    from,
                    reason: e.to_string(),
                });
                return Ok(());
            }
        };
        let receipt = Stanza::new("receipt")
            .attr("id", id.clone())
            .attr("to", from.to_user().to_string());
        let arrived = Arrived {
            id,
            from,
            group: String::new(),
            t_secs,
            message,
            identity: plain.identity,
        };
        self.store_arrived(txn, arrived, ack, receipt, now_ms)
    }

    /// Stores a decrypted message in `txn` (the inbox, or pending while its media is
    /// fetched; deduplicated by sender and id), commits it with whatever `txn` already
    /// holds (sessions, sender keys), then sends `ack` and the delivery `receipt`.
    pub(super) fn store_arrived(
        &mut self,
        txn: Txn,
        a: Arrived,
        ack: Stanza,
        receipt: Stanza,
        now_ms: u64,
    ) -> Result<(), ClientError> {
        let Arrived {
            id,
            from,
            group,
            t_secs,
            message,
            identity,
        } = a;
        let row = InboxRow {
            id: id.clone(),
            from: from.user.clone(),
            group,
            t_secs,
            received_ms: now_ms,
            // Stored unpadded: padding is per encryption, not part of the content.
            content: prost::Message::encode_to_vec(&message),
        };
        let dedupe = format!("{}|{id}", from.to_user());
        if self.hold_media && crate::media_pipe::media_ref(&message).is_some() {
            // Committed with its session like any message, but kept out of the inbox until
            // the blob is downloaded and verified (the daemon's media worker releases it).
            let pending = PendingInbox {
                attempts: 0,
                next_ms: now_ms,
                row,
            };
            let fresh = txn.pending_inbox_insert(&dedupe, &pending)?;
            let change = match identity {
                IdentityEvent::Changed { previous, current } => {
                    Some(self.journal_identity(&txn, &from, (previous, current), false, now_ms)?)
                }
                _ => None,
            };
            txn.commit()?;
            self.push(&ack, now_ms);
            self.push(&receipt, now_ms);
            if let Some(c) = change {
                self.identity_committed(c);
            }
            if fresh {
                self.events.push_back(Event::MediaPending { id, from });
            }
            return Ok(());
        }
        let cursor = txn.inbox_insert(&dedupe, &row)?;
        if cursor.is_some() {
            // An edit or a delete for everyone amends the sender's own earlier message (the
            // key names the sender), in the transaction that stores it; the original stays.
            let amend = match (message.edit_of(), message.revoke_of()) {
                (Some((target, Some(text))), _) => Some((target, Some(text))),
                (_, Some(target)) => Some((target, None)),
                _ => None,
            };
            if let Some((target, text)) = amend {
                let key = format!("{}|{target}", from.to_user());
                txn.amend(&key, text, now_ms)?;
            }
        }
        if let (Some(j), Some(c)) = (&self.journal, cursor) {
            j.inbound(&txn, c, now_ms)?;
        }
        let change = match identity {
            IdentityEvent::Changed { previous, current } => {
                Some(self.journal_identity(&txn, &from, (previous, current), false, now_ms)?)
            }
            _ => None,
        };
        txn.commit()?;
        if let (Some(j), Some(c)) = (&self.journal, cursor) {
            j.inbound_committed(c);
        }
        self.push(&ack, now_ms);
        self.push(&receipt, now_ms);
        if let Some(c) = change {
            self.identity_committed(c);
        }
        if let Some(cursor) = cursor {
            self.events.push_back(Event::Message {
                id,
                from,
                t_secs,
                cursor,
                message: Box::new(message),
            });
        }
        Ok(())
    }

    pub(super) fn handle_iq<R: Rng + CryptoRng>(
        &mut self,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let Some(p) = s.attr_value("id").and_then(|id| self.pending.remove(id)) else {
            return Ok(());
        };
        let ok = s.attr_value("type") == Some("result");
        match p {
            Pending::Ping => self.ping_sent_ms = None,
            Pending::Upload => {
                if ok {
                    self.events.push_back(Event::KeysUploaded);
                }
            }
            Pending::Count => {
                let count = s
                    .child_named("count")
                    .and_then(|c| c.attr_value("value"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                self.events.push_back(Event::PrekeyCount { count });
                if count < u64::from(signal::PREKEY_REFILL_THRESHOLD) {
                    self.upload_prekeys(signal::PREKEY_BATCH_SIZE, now_ms, rng)?;
                }
            }
            Pending::Devices { send } => {
                let devices: Vec<u32> = s
                    .children_named("user")
                    .flat_map(|u| u.children_named("device"))
                    .filter_map(|d| d.attr_value("id")?.parse().ok())
                    .collect();
                if !devices.is_empty()
                    && let Some(msg) = self.sends.get(&send)
                {
                    let list = crate::store::DeviceList {
                        fetched_ms: now_ms,
                        devices: devices.clone(),
                    };
                    let txn = self.store.begin()?;
                    txn.put_device_list(&msg.to.user, &list)?;
                    txn.commit()?;
                }
                self.with_devices(send, devices, now_ms)?;
            }
            Pending::Keys { send } => {
                if let Some(user) = self.process_bundles(s, now_ms, rng)? {
                    self.sends.remove(&send);
                    self.events.push_back(Event::SendHeld { id: send, user });
                    return Ok(());
                }
                return self.finish_send(&send, now_ms);
            }
            Pending::GroupDevices { send } => {
                return self.group_devices_answer(send, s, now_ms, rng);
            }
            Pending::GroupKeys { send } => return self.group_keys_answer(send, s, now_ms, rng),
            Pending::Group { ticket, op } => return self.group_answer(ticket, op, s, now_ms),
            Pending::RetryKeys { id, device, count } => {
                let bundle = s
                    .child_named("list")
                    .map(Stanza::children)
                    .unwrap_or_default()
                    .iter()
                    .find(|u| device_jid_of(u, "jid").as_ref() == Some(&device))
                    .and_then(parse_bundle);
                match bundle {
                    Some(b) => return self.resend(&id, &device, count, &b, now_ms, rng),
                    None => log::warn!("client: no bundle of {device} to answer retry of {id}"),
                }
            }
        }
        Ok(())
    }

    /// Starts sessions from the bundles in a key fetch's answer (`<list>`), journalling
    /// identity changes. Returns the user whose verified identity was refused, if any: the
    /// send that asked must be held.
    pub(super) fn process_bundles<R: Rng + CryptoRng>(
        &mut self,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Option<Jid>, ClientError> {
        let txn = self.store.begin()?;
        let mut changed = Vec::new();
        let mut held = None;
        for u in s
            .child_named("list")
            .map(Stanza::children)
            .unwrap_or_default()
        {
            let (Some(j), Some(b)) = (device_jid_of(u, "jid"), parse_bundle(u)) else {
                continue;
            };
            // Sends to one recipient overlap: the first bundle to arrive starts the
            // session, and later ones must not replace it (the peer would be answering
            // a session we no longer hold at its head).
            if signal::has_session(&txn, &j.address())? {
                continue;
            }
            match signal::process_bundle(&txn, &j.address(), &b, rng, now_ms) {
                Ok(IdentityEvent::Changed { previous, current }) => {
                    changed.push(self.journal_identity(
                        &txn,
                        &j,
                        (previous, current),
                        false,
                        now_ms,
                    )?);
                }
                Ok(_) => {}
                Err(SignalError::UntrustedIdentity { newly_held, .. }) => {
                    if let Some(keys) = newly_held {
                        changed.push(self.journal_identity(&txn, &j, keys, true, now_ms)?);
                    }
                    held = Some(j.to_user());
                }
                Err(e) => log::warn!("client: bundle of {j} refused: {e}"),
            }
        }
        // The refused key is kept as pending in this transaction.
        txn.commit()?;
        for c in changed {
            self.identity_committed(c);
        }
        Ok(held)
    }
}

/// A decrypted message on its way into the store.
pub(super) struct Arrived {
    pub id: String,
    pub from: Jid,
    /// The group id, or empty for a 1:1 message.
    pub group: String,
    pub t_secs: u64,
    pub message: Message,
    pub identity: IdentityEvent,
}
