//! What the control API asks of the hub: list, create and reinstall simulated users, change
//! their behaviour, and make them send.

use super::*;

impl Hub {
    /// Every simulated user.
    pub fn users(&self) -> Vec<UserInfo> {
        self.sims
            .users
            .values()
            .map(|u| UserInfo {
                phone: format!("+{}", u.phone),
                devices: u.devices.len() as u32,
                behavior: u.behavior.to_string(),
            })
            .collect()
    }

    pub(super) fn sim_phone(&self, phone: &str) -> Result<String, ControlError> {
        let digits = jid::parse_phone(phone).map_err(|e| ControlError::BadRequest {
            detail: e.to_string(),
        })?;
        if self.sims.users.contains_key(&digits) {
            Ok(digits)
        } else {
            Err(ControlError::UnknownUser)
        }
    }

    /// Creates a simulated user (`POST /users`).
    pub fn create_user<R: Rng + CryptoRng>(
        &mut self,
        phone: &str,
        devices: u32,
        behavior: &str,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<UserInfo, ControlError> {
        let digits = jid::parse_phone(phone).map_err(|e| ControlError::BadRequest {
            detail: e.to_string(),
        })?;
        let behavior = Behavior::parse(behavior).ok_or_else(|| ControlError::BadRequest {
            detail: "behavior must be echo, silent, read_after:SECONDS, not_opted_in or offline"
                .into(),
        })?;
        if !(1..=crate::users::MAX_SIM_DEVICES).contains(&devices) {
            return Err(ControlError::BadRequest {
                detail: format!("devices must be 1..={}", crate::users::MAX_SIM_DEVICES),
            });
        }
        if self.sims.users.contains_key(&digits) {
            return Err(ControlError::Exists);
        }
        if self.sims.users.len() >= MAX_SIM_USERS {
            return Err(ControlError::BadRequest {
                detail: format!("at most {MAX_SIM_USERS} simulated users"),
            });
        }
        let (user, actions) =
            SimUser::open(&self.sim_root, &digits, devices, behavior, now_ms, rng)?;
        self.store.put_user(
            &digits,
            &UserRecord {
                devices,
                behavior: behavior.to_string(),
            },
        )?;
        self.sims.users.insert(digits.clone(), user);
        self.run_actions(actions, now_ms);
        Ok(UserInfo {
            phone: format!("+{digits}"),
            devices,
            behavior: behavior.to_string(),
        })
    }

    /// Changes a simulated user's behaviour; leaving `offline` delivers what waited.
    pub fn set_behavior<R: Rng + CryptoRng>(
        &mut self,
        phone: &str,
        behavior: &str,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<UserInfo, ControlError> {
        let digits = self.sim_phone(phone)?;
        let b = Behavior::parse(behavior).ok_or_else(|| ControlError::BadRequest {
            detail: "unknown behavior".into(),
        })?;
        let devices = match self.sims.users.get_mut(&digits) {
            Some(u) => {
                u.behavior = b;
                u.devices.len() as u32
            }
            None => return Err(ControlError::UnknownUser),
        };
        self.store.put_user(
            &digits,
            &UserRecord {
                devices,
                behavior: b.to_string(),
            },
        )?;
        self.flush_sim_queue(&digits, now_ms, rng);
        Ok(UserInfo {
            phone: format!("+{digits}"),
            devices,
            behavior: b.to_string(),
        })
    }

    /// Makes a simulated user send `message` to an interop account, or to another simulated
    /// user named by its `+phone` (`POST /users/{p}/send`). Returns the message id.
    pub fn sim_send<R: Rng + CryptoRng>(
        &mut self,
        phone: &str,
        to_account: &str,
        message: &Message,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<String, ControlError> {
        let digits = self.sim_phone(phone)?;
        let to = if to_account.starts_with('+') {
            Jid::whatsapp(self.sim_phone(to_account)?, None)
        } else {
            let to_user = to_account.split(['@', ':']).next().unwrap_or(to_account);
            jid::check_account(to_user).map_err(|e| ControlError::BadRequest {
                detail: e.to_string(),
            })?;
            Jid::interop(to_user.to_owned(), None)
        };
        let Hub {
            sims, store, stats, ..
        } = self;
        let Some(user) = sims.users.get_mut(&digits) else {
            return Err(ControlError::UnknownUser);
        };
        let mut dir = SimDirectory {
            store,
            stats,
            drained: Vec::new(),
        };
        let result = user.encrypt_message(&to, message, &mut dir, now_ms, rng);
        let drained = dir.drained;
        for d in drained {
            self.prekeys_low(&d, now_ms, rng);
        }
        let stanza = result.map_err(|e| match e {
            SimError::NoDevices { .. } => ControlError::BadRequest {
                detail: format!("{to} has no devices with published keys"),
            },
            other => ControlError::Hub(HubError::Sim(other)),
        })?;
        let id = stanza.attr_value("id").unwrap_or("").to_owned();
        let from = Jid::whatsapp(digits, Some(0));
        let routed = self.route(&from, &stanza, now_ms);
        self.drain_sims(now_ms, rng);
        routed.map_err(|r| ControlError::BadRequest {
            detail: r.text().into(),
        })?;
        Ok(id)
    }

    /// What a simulated user decrypted, as JSON objects.
    pub fn received(&self, phone: &str) -> Result<Vec<serde_json::Value>, ControlError> {
        let digits = self.sim_phone(phone)?;
        Ok(self
            .store
            .received(&digits)?
            .iter()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect())
    }

    /// Gives a simulated user new identities (`POST /users/{p}/reinstall`). With `notify`,
    /// its contacts are told (an `identity` notification; other simulated users drop their
    /// sessions with it); without, they learn only from retry receipts, as when the
    /// notification is lost.
    pub fn reinstall<R: Rng + CryptoRng>(
        &mut self,
        phone: &str,
        notify: bool,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ControlError> {
        let digits = self.sim_phone(phone)?;
        let root = self.sim_root.clone();
        let (actions, devices) = match self.sims.users.get_mut(&digits) {
            Some(u) => {
                let actions = u.reinstall(&root, now_ms, rng)?;
                let devices: Vec<u32> = u.devices.iter().map(|d| d.device).collect();
                (actions, devices)
            }
            None => return Err(ControlError::UnknownUser),
        };
        self.run_actions(actions, now_ms);
        self.drain_sims(now_ms, rng);
        if !notify {
            return Ok(());
        }
        for (phone, u) in self.sims.users.iter_mut() {
            if *phone == digits {
                continue;
            }
            for d in &devices {
                if let Err(e) = u.forget_device(&Jid::whatsapp(digits.clone(), Some(*d))) {
                    log::error!("hub: {e}");
                }
            }
        }
        let user = Jid::whatsapp(digits, None);
        let n = Stanza::new("notification")
            .attr("type", "identity")
            .attr("from", user.to_string());
        self.notify_contacts(&user, n, now_ms);
        Ok(())
    }
}
