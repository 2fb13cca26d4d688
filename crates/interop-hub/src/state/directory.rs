//! The prekey directory and the other `<iq>`s: device lists, bundles handed out once each,
//! uploads, counts, and the low-prekey notification.

use super::*;

impl Hub {
    pub(super) fn handle_iq<R: Rng + CryptoRng>(
        &mut self,
        device: &Jid,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Stanza {
        let id = s.attr_value("id").unwrap_or("");
        if id.is_empty() || id.len() > MAX_IQ_ID_BYTES {
            return iq_error("", 400, "bad_request");
        }
        let result = Stanza::new("iq").attr("id", id).attr("type", "result");
        match (s.attr_value("xmlns"), s.attr_value("type")) {
            (Some("w:p"), Some("get")) => result,
            (Some("w:g2"), _) => self.group_iq(device, s, now_ms),
            (Some("encrypt"), Some("set")) => match self.upload(device, s) {
                Ok(()) => result,
                Err((code, text)) => iq_error(id, code, text),
            },
            (Some("encrypt"), Some("get")) if s.child_named("count").is_some() => {
                match self.store.prekey_count(&device.device_key()) {
                    Ok(n) => result.child(Stanza::new("count").attr("value", n.to_string())),
                    Err(e) => {
                        log::error!("hub: {e}");
                        iq_error(id, 500, "internal")
                    }
                }
            }
            (Some("encrypt"), Some("get")) => {
                let Some(key) = s.child_named("key") else {
                    return iq_error(id, 400, "bad_request");
                };
                let users: Vec<&Stanza> = key.children_named("user").collect();
                if users.is_empty() || users.len() > MAX_FETCH_DEVICES {
                    return iq_error(id, 400, "bad_request");
                }
                let mut list = Stanza::new("list");
                for u in users {
                    let jid_text = u.attr_value("jid").unwrap_or("");
                    let entry = match Jid::parse(jid_text) {
                        Ok(j) if j.device.is_some() => self.fetch_for_wire(&j, now_ms, rng),
                        _ => Stanza::new("user").attr("jid", jid_text).child(
                            Stanza::new("error")
                                .attr("code", "400")
                                .attr("text", "bad_jid"),
                        ),
                    };
                    list = list.child(entry);
                }
                result.child(list)
            }
            (Some("devices"), Some("get")) => {
                let users: Vec<&Stanza> = s.children_named("user").collect();
                if users.is_empty() || users.len() > MAX_DEVICE_QUERY_USERS {
                    return iq_error(id, 400, "bad_request");
                }
                let mut out = result;
                for u in users {
                    let jid_text = u.attr_value("jid").unwrap_or("");
                    let entry = match Jid::parse(jid_text) {
                        Ok(j) if j.device.is_none() => match self.store.devices_of(&j.user) {
                            Ok(ds) if !ds.is_empty() => {
                                Stanza::new("user").attr("jid", jid_text).extend_children(
                                    ds.into_iter()
                                        .map(|d| Stanza::new("device").attr("id", d.to_string())),
                                )
                            }
                            Ok(_) => Stanza::new("user").attr("jid", jid_text).child(
                                Stanza::new("error")
                                    .attr("code", "404")
                                    .attr("text", "unknown_user"),
                            ),
                            Err(e) => {
                                log::error!("hub: {e}");
                                return iq_error(id, 500, "internal");
                            }
                        },
                        _ => Stanza::new("user").attr("jid", jid_text).child(
                            Stanza::new("error")
                                .attr("code", "400")
                                .attr("text", "bad_jid"),
                        ),
                    };
                    out = out.child(entry);
                }
                out
            }
            _ => iq_error(id, 400, "bad_request"),
        }
    }

    pub(super) fn fetch_for_wire<R: Rng + CryptoRng>(
        &mut self,
        device: &Jid,
        now_ms: u64,
        rng: &mut R,
    ) -> Stanza {
        match fetch_bundle(&self.store, &mut self.stats, device) {
            Ok(Some((b, low))) => {
                if low {
                    self.prekeys_low(device, now_ms, rng);
                }
                bundle_stanza(device, &b)
            }
            Ok(None) => Stanza::new("user").attr("jid", device.to_string()).child(
                Stanza::new("error")
                    .attr("code", "404")
                    .attr("text", "item_not_found"),
            ),
            Err(e) => {
                log::error!("hub: {e}");
                Stanza::new("user").attr("jid", device.to_string()).child(
                    Stanza::new("error")
                        .attr("code", "500")
                        .attr("text", "internal"),
                )
            }
        }
    }

    /// A device's count fell below [`PREKEY_LOW_COUNT`]: simulated devices top up, ours get
    /// one count notification until they upload again.
    pub(super) fn prekeys_low<R: Rng + CryptoRng>(
        &mut self,
        device: &Jid,
        now_ms: u64,
        rng: &mut R,
    ) {
        let key = device.device_key();
        match device.server {
            Server::WhatsApp => {
                let actions = match self.sims.users.get_mut(&device.user) {
                    Some(u) => u.refill(device.device.unwrap_or(0), rng),
                    None => return,
                };
                match actions {
                    Ok(a) => self.run_actions(a, now_ms),
                    Err(e) => log::error!("hub: refill {device}: {e}"),
                }
            }
            Server::Interop => {
                if !self.low_notified.insert(key.clone()) {
                    return;
                }
                let count = self.store.prekey_count(&key).unwrap_or(0);
                let n = Stanza::new("notification")
                    .attr("type", "encrypt")
                    .child(Stanza::new("count").attr("value", count.to_string()));
                self.notify(device, n, now_ms);
            }
        }
    }

    pub(super) fn upload(&mut self, device: &Jid, s: &Stanza) -> Result<(), (u16, &'static str)> {
        let bad = (400, "bad_request");
        let key = device.device_key();
        let reg: [u8; 4] = s
            .child_named("registration")
            .and_then(Stanza::payload)
            .and_then(|p| p.try_into().ok())
            .ok_or(bad)?;
        let registration_id = u32::from_be_bytes(reg);
        if s.child_named("type").and_then(Stanza::payload) != Some(&[signal::KEY_TYPE_DJB][..]) {
            return Err(bad);
        }
        let identity = raw32(s, "identity").ok_or(bad)?;
        let signed = s
            .child_named("skey")
            .and_then(parse_signed_prekey)
            .ok_or(bad)?;
        let list = s.child_named("list").ok_or(bad)?;
        if list.children().len() > MAX_UPLOAD_PREKEYS {
            return Err(bad);
        }
        let mut keys = Vec::with_capacity(list.children().len());
        for k in list.children_named("key") {
            keys.push(parse_prekey(k).ok_or(bad)?);
        }
        let rec = self
            .store
            .device(&key)
            .map_err(|_| (500, "internal"))?
            .ok_or((500, "internal"))?;
        if rec.identity != identity {
            return Err((409, "identity_mismatch"));
        }
        let spk_pub = signal_key_bytes(&signed.public);
        if !signal::verify_signature(&identity, &spk_pub, &signed.signature) {
            return Err((406, "bad_signature"));
        }
        self.store
            .upload_keys(&key, registration_id, &signed, &keys)
            .map_err(|e| {
                log::error!("hub: {e}");
                (500, "internal")
            })?;
        self.low_notified.remove(&key);
        Ok(())
    }
}
