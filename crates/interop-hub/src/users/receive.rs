//! What reaches a simulated user: messages (decrypt, record, answer by behaviour), media
//! once its blob is fetched, and retry receipts for what it sent.

use super::*;

impl SimUser {
    /// Handles a `<message>` delivered to one of this user's devices (as the hub delivers
    /// it: `id`, `from` device JID, `t`, one `<enc>`). A message that does not decrypt is
    /// answered with a retry receipt to the sending device (docs/protocol.md section 12).
    pub fn receive<R: Rng + CryptoRng>(
        &mut self,
        device: u32,
        stanza: &Stanza,
        dir: &mut dyn Directory,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<SimAction>, SimError> {
        let me = Jid::whatsapp(self.phone.clone(), Some(device));
        let opened = match self.open_message(device, stanza, now_ms, rng)? {
            Inbound::Opened(o) => *o,
            Inbound::Failed(retry) => return Ok(retry.into_iter().collect()),
            Inbound::Ignored => return Ok(Vec::new()),
        };
        if !self.first_time(&opened.id) {
            return Ok(Vec::new());
        }
        let echo = self.behavior == Behavior::Echo && answerable(&opened);
        let fetch = if opened.from.server == Server::Interop {
            media_ref(&opened.message).map(|r| PendingMedia {
                phone: self.phone.clone(),
                id: opened.id.clone(),
                from: opened.from.clone(),
                received_ms: now_ms,
                message: opened.message.clone(),
                url: r.url,
                echo,
                group: None,
            })
        } else {
            None
        };
        let mut out = Vec::new();
        if fetch.is_none() {
            let outcome =
                if opened.from.server == Server::Interop && opened.message.kind().is_media() {
                    // A provider's media message without a usable blob reference.
                    MediaOutcome::Failed {
                        code: "bad_media_message".into(),
                    }
                } else {
                    MediaOutcome::Declared
                };
            out.push(SimAction::Record {
                phone: self.phone.clone(),
                json: record_json(&opened, now_ms, &outcome),
            });
        }
        let sender = opened.from.to_user();
        let receipt = |read: bool| {
            let r = Stanza::new("receipt")
                .attr("id", opened.id.clone())
                .attr("to", sender.to_string());
            if read { r.attr("type", "read") } else { r }
        };
        out.push(SimAction::Send {
            from: me.clone(),
            stanza: receipt(false),
        });
        match self.behavior {
            Behavior::Echo => {
                out.push(SimAction::Send {
                    from: me.clone(),
                    stanza: receipt(true),
                });
            }
            Behavior::ReadAfter { secs } => out.push(SimAction::Later {
                at_ms: now_ms.saturating_add(secs.saturating_mul(1000)),
                from: me,
                stanza: receipt(true),
            }),
            Behavior::Silent | Behavior::NotOptedIn | Behavior::Offline => {}
        }
        if let Some(f) = fetch {
            // The record and any echo wait for the blob.
            out.push(SimAction::FetchMedia(Box::new(f)));
        } else if echo {
            let Some(reply) = self.echo_of(&opened, &sender, now_ms) else {
                return Ok(out);
            };
            // Typing first, as a person would.
            out.push(SimAction::Send {
                from: self.jid().with_device(0),
                stanza: Stanza::new("chatstate")
                    .attr("to", sender.to_string())
                    .child(Stanza::new("composing")),
            });
            let stanza = self.encrypt_message(&sender, &reply, dir, now_ms, rng)?;
            if let Some(id) = stanza.attr_value("id")
                && opened.message.kind() == ContentKind::Text
            {
                self.remember_echo(&opened.id, id);
            }
            out.push(SimAction::Send {
                from: self.jid().with_device(0),
                stanza,
            });
        }
        Ok(out)
    }

    /// What the echo contact answers to `opened` from `sender` ([`answerable`] said it may): 👍 to a text starting with
    /// `react`, a location to `where`, the edit or delete of its own echo to an edit or a
    /// delete, `echo: <text>` to other text, and media in kind. `None`: no answer.
    fn echo_of(&self, opened: &Opened, sender: &Jid, now_ms: u64) -> Option<Message> {
        let m = &opened.message;
        let theirs = |id: &str| content::MessageKey {
            remote_jid: Some(sender.to_string()),
            from_me: Some(false),
            id: Some(id.to_owned()),
            participant: None,
        };
        let mine = |id: &str| content::MessageKey {
            remote_jid: Some(sender.to_string()),
            from_me: Some(true),
            id: Some(id.to_owned()),
            participant: None,
        };
        let ms = i64::try_from(now_ms).unwrap_or(i64::MAX);
        if let Some((target, text)) = m.edit_of() {
            let echo = self.echo_id(target)?;
            let text = format!("{ECHO_PREFIX}{}", text.unwrap_or_default());
            return Some(Message::edit(mine(echo), Message::text(text), ms));
        }
        if let Some(target) = m.revoke_of() {
            return Some(Message::revoke(mine(self.echo_id(target)?)));
        }
        match m.text_body() {
            Some(t) if t.trim_start().to_ascii_lowercase().starts_with("react") => {
                Some(Message::reaction(theirs(&opened.id), ECHO_REACTION, ms))
            }
            Some(t) if t.trim().eq_ignore_ascii_case("where") => Some(Message::location(
                ECHO_LOCATION.0,
                ECHO_LOCATION.1,
                Some(ECHO_LOCATION.2.to_owned()),
                None,
            )),
            Some(text) => Some(Message::text(format!("{ECHO_PREFIX}{text}"))),
            None if m.kind().is_media() => Some(m.clone()),
            None => None,
        }
    }

    /// The blob of a [`PendingMedia`] came back from the proxy (`Ok(blob)`) or could not be
    /// fetched (`Err(code)`). Verifies it in the order DESIGN.md section 5 requires
    /// (fileEncSha256, MAC, decrypt, fileSha256), records what it decrypted to, and for `echo`
    /// answers in kind: with a fresh blob of the same plaintext in `store` when there is one
    /// and the blob checked out, else with the same message back.
    pub fn media_fetched<R: Rng + CryptoRng>(
        &mut self,
        pending: &PendingMedia,
        blob: Result<Vec<u8>, String>,
        store: Option<&MediaStore>,
        dir: &mut dyn Directory,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<SimAction>, SimError> {
        let plain = blob.and_then(|b| open_media(&pending.message, &b).map_err(str::to_owned));
        let outcome = match &plain {
            Ok(p) => MediaOutcome::Decrypted {
                sha256_hex: sha256_hex(p),
                size: p.len() as u64,
            },
            Err(code) => MediaOutcome::Failed { code: code.clone() },
        };
        let opened = Opened {
            id: pending.id.clone(),
            from: pending.from.clone(),
            message: pending.message.clone(),
        };
        let mut record = record_json(&opened, pending.received_ms, &outcome);
        if let (Some((group, participant)), Some(obj)) = (&pending.group, record.as_object_mut()) {
            obj.insert("group".into(), group.as_str().into());
            obj.insert("participant".into(), participant.as_str().into());
        }
        let mut out = vec![SimAction::Record {
            phone: self.phone.clone(),
            json: record,
        }];
        if !pending.echo || pending.group.is_some() {
            return Ok(out);
        }
        let fresh = match (&plain, store, media_ref(&pending.message)) {
            (Ok(p), Some(store), Some(r)) => {
                match store.message(
                    store_kind(pending.message.kind()),
                    &r.mimetype,
                    p,
                    r.file_name.as_deref(),
                    now_ms,
                    rng,
                ) {
                    Ok(m) => Some(rehosted(&pending.message, &m)),
                    Err(e) => {
                        log::warn!("simulated {}: cannot store echo media: {e}", self.phone);
                        None
                    }
                }
            }
            _ => None,
        };
        let reply = fresh.unwrap_or_else(|| pending.message.clone());
        let stanza = self.encrypt_message(&pending.from.to_user(), &reply, dir, now_ms, rng)?;
        out.push(SimAction::Send {
            from: self.jid().with_device(0),
            stanza,
        });
        Ok(out)
    }

    /// Handles a `<receipt type="retry">` delivered to one of this user's devices: rebuilds
    /// the session with the asking device (from the receipt's `<keys>`, else a fresh bundle
    /// from the directory) and resends the same content under the same id to that device
    /// alone, with `count` on the `<message>`. Receipts for messages no longer kept, from
    /// devices of another user, or with a count already answered are ignored.
    pub fn receive_retry<R: Rng + CryptoRng>(
        &mut self,
        device: u32,
        stanza: &Stanza,
        dir: &mut dyn Directory,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<SimAction>, SimError> {
        let receipt = match retry::parse_retry_receipt(stanza) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("simulated {}: {e}", self.phone);
                return Ok(Vec::new());
            }
        };
        let Some(from) = stanza
            .attr_value("from")
            .and_then(|f| Jid::parse(f).ok())
            .filter(|j| j.device.is_some())
        else {
            return Ok(Vec::new());
        };
        self.forget_old_sent(now_ms);
        let from_key = from.to_string();
        let Some(sent) = self
            .sent
            .iter_mut()
            .find(|s| s.id == receipt.id.as_str() && s.to == from.to_user())
        else {
            log::info!(
                "simulated {}: retry receipt for a message no longer kept",
                self.phone
            );
            return Ok(Vec::new());
        };
        let answered = sent
            .answered
            .iter()
            .find(|(d, _)| *d == from_key)
            .map_or(0, |(_, c)| *c);
        if receipt.count <= answered {
            return Ok(Vec::new());
        }
        let Some(d) = self.devices.iter().find(|d| d.device == device) else {
            return Ok(Vec::new());
        };
        let addr = from.address();
        let wtx = d.store.begin()?;
        let txn = SignalTables(&wtx);
        let bundle = match receipt.keys.clone() {
            Some(k) => Some(k),
            None => dir.bundle(&from),
        };
        let Some(bundle) = bundle else {
            log::warn!(
                "simulated {}: no keys to answer a retry from {from}",
                self.phone
            );
            return Ok(Vec::new());
        };
        signal::delete_session(&txn, &addr)?;
        if let Err(e) = signal::process_bundle(&txn, &addr, &bundle, rng, now_ms) {
            log::warn!(
                "simulated {}: retry keys of {from} refused: {e}",
                self.phone
            );
            return Ok(Vec::new());
        }
        let padded = content::encode_padded(&sent.message, rng).map_err(SimError::Content)?;
        let ct = signal::encrypt(&txn, &addr, &padded, now_ms)?;
        let kind = sent.message.kind();
        let mut enc = Stanza::new("enc")
            .attr("v", "2")
            .attr("type", ct.kind.as_str());
        if let Some(mt) = media_type(kind) {
            enc = enc.attr("mediatype", mt);
        }
        let mut message = Stanza::new("message")
            .attr("id", sent.id.as_str())
            .attr("to", sent.to.to_string())
            .attr("type", stanza_type(kind))
            .attr("t", (now_ms / 1000).to_string())
            .attr("count", receipt.count.to_string());
        if let Some(edit) = content::stanza_edit(kind) {
            message = message.attr("edit", edit);
        }
        let message = message.child(
            Stanza::new("participants").child(
                Stanza::new("to")
                    .attr("jid", from_key.as_str())
                    .child(enc.bytes(ct.body)),
            ),
        );
        wtx.commit().map_err(StoreError::from)?;
        match sent.answered.iter_mut().find(|(d, _)| *d == from_key) {
            Some(slot) => slot.1 = receipt.count,
            None => sent.answered.push((from_key, receipt.count)),
        }
        log::warn!(
            "simulated {}: resending {} to {from} (retry {})",
            self.phone,
            sent.id,
            receipt.count
        );
        Ok(vec![SimAction::Send {
            from: Jid::whatsapp(self.phone.clone(), Some(device)),
            stanza: message,
        }])
    }
}
