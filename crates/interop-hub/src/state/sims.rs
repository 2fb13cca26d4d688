//! The simulated WhatsApp users inside the hub: what reaches them, what they answer, and
//! their queues while they are offline.

use super::*;

impl Hub {
    /// Lets simulated users handle what was delivered to them, and what their answers cause.
    pub(super) fn drain_sims<R: Rng + CryptoRng>(&mut self, now_ms: u64, rng: &mut R) {
        loop {
            if let Some((device, s)) = self.sim_inbox.pop_front() {
                self.sim_receive(&device, &s, now_ms, rng);
            } else if let Some(p) = self.busy_media.pop() {
                self.sim_media_done(&p, Err("busy".into()), None, now_ms, rng);
            } else {
                return;
            }
        }
    }

    pub(super) fn sim_receive<R: Rng + CryptoRng>(
        &mut self,
        device: &Jid,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) {
        let retry = s.tag == "receipt" && s.attr_value("type") == Some("retry");
        if s.tag != "message" && !retry {
            return;
        }
        let Hub {
            sims, store, stats, ..
        } = self;
        let Some(user) = sims.users.get_mut(&device.user) else {
            return;
        };
        let mut dir = SimDirectory {
            store,
            stats,
            drained: Vec::new(),
        };
        let d = device.device.unwrap_or(0);
        let result = if retry {
            user.receive_retry(d, s, &mut dir, now_ms, rng)
        } else if s
            .attr_value("from")
            .is_some_and(interop_proto::group::is_group_jid)
        {
            user.receive_group(d, s, &mut dir, now_ms, rng)
        } else {
            user.receive(d, s, &mut dir, now_ms, rng)
        };
        let drained = dir.drained;
        match result {
            Ok(actions) => self.run_actions(actions, now_ms),
            Err(e) => log::warn!("hub: simulated {device}: {e}"),
        }
        for d in drained {
            self.prekeys_low(&d, now_ms, rng);
        }
    }

    pub(super) fn run_actions(&mut self, actions: Vec<SimAction>, now_ms: u64) {
        for a in actions {
            match a {
                SimAction::Send { from, stanza } => {
                    if let Err(r) = self.route(&from, &stanza, now_ms) {
                        log::warn!("hub: simulated {from} send refused: {}", r.code());
                    }
                }
                SimAction::Later {
                    at_ms,
                    from,
                    stanza,
                } => {
                    // Durable first: a hub killed before it is due still sends it.
                    let seq = match self
                        .store
                        .put_timer(at_ms, &from.to_string(), &stanza.to_xml())
                    {
                        Ok(seq) => seq,
                        Err(e) => {
                            log::error!("hub: simulated {from}: delayed stanza not kept: {e}");
                            self.next_timer += 1;
                            u64::MAX - self.next_timer
                        }
                    };
                    self.timers.insert((at_ms, seq), (from, stanza));
                }
                SimAction::Publish {
                    device,
                    registration_id,
                    identity,
                    signed,
                    prekeys,
                } => {
                    let key = device.device_key();
                    let result = self.store.device(&key).and_then(|old| {
                        let rec = DeviceRecord {
                            registration_id,
                            identity,
                            signed_prekey: None,
                            enlisted_ms: old.map(|o| o.enlisted_ms).unwrap_or(now_ms),
                        };
                        self.store.put_device(&key, &rec)?;
                        self.store
                            .upload_keys(&key, registration_id, &signed, &prekeys)
                    });
                    if let Err(e) = result {
                        log::error!("hub: publish {device}: {e}");
                    }
                }
                SimAction::Record { phone, json } => {
                    let bytes = json.to_string().into_bytes();
                    if let Err(e) = self.store.push_received(&phone, &bytes) {
                        log::error!("hub: {e}");
                    }
                }
                SimAction::FetchMedia(pending) => {
                    if self.pending_media.len() >= MAX_PENDING_MEDIA_FETCHES {
                        log::warn!(
                            "hub: too many media fetches waiting; {} not fetched",
                            pending.id
                        );
                        self.busy_media.push(*pending);
                        continue;
                    }
                    self.next_ticket += 1;
                    let ticket = self.next_ticket;
                    self.media_fetches.push_back(MediaFetch {
                        ticket,
                        account: pending.from.user.clone(),
                        url: pending.url.clone(),
                    });
                    self.pending_media.insert(ticket, *pending);
                }
            }
        }
    }

    /// Delivers what waited for a simulated user while it was offline.
    pub(super) fn flush_sim_queue<R: Rng + CryptoRng>(
        &mut self,
        phone: &str,
        now_ms: u64,
        rng: &mut R,
    ) {
        let Some(u) = self.sims.users.get(phone) else {
            return;
        };
        if u.behavior == Behavior::Offline {
            return;
        }
        let devices: Vec<u32> = u.devices.iter().map(|d| d.device).collect();
        for d in devices {
            let jid = Jid::whatsapp(phone.to_owned(), Some(d));
            let key = jid.device_key();
            let Ok(items) = self.store.queued(&key) else {
                continue;
            };
            for item in items {
                if let Ok(s) = stanza::parse(&item.xml) {
                    self.sim_receive(&jid, &s, now_ms, rng);
                    self.drain_sims(now_ms, rng);
                }
                if let Err(e) = self.store.dequeue(&key, item.seq) {
                    log::error!("hub: {e}");
                }
            }
        }
    }
}
