//! The hub's own redb file, `<state>/hub.redb`: enlisted devices and their published keys
//! (the prekey directory), per-device offline queues, simulated users, what they received,
//! and who talked to whom. It owns these tables and their byte layouts (docs/protocol.md,
//! "Hub state"), nothing else: it knows no sockets, no clock (callers pass `now_ms`), no
//! randomness. The daemon's store ([`crate::store`]) is a different file with different
//! tables; simulated devices keep their Signal state in one such daemon store each.
//!
//! Layout rules as in the daemon's store: integers are fixed-width big-endian, every value
//! starts with a one-byte row version, and the schema version sits in `meta`.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use interop_io::state_dir::{StoreError, ensure_state_dir, open_database};
use interop_proto::signal::{RawKey, WirePreKey, WireSignedPreKey};

mod groups;
pub use groups::{GroupMember, GroupRecord};

/// The schema this build writes.
pub const HUB_SCHEMA_VERSION: u32 = 1;
/// File name of the hub's database inside its state directory.
pub const HUB_DB_FILE_NAME: &str = "hub.redb";
/// Most stanzas waiting for one device; a sender whose stanza would exceed it gets the
/// error ack `queue_full`.
pub const MAX_QUEUE_PER_DEVICE: u64 = 10_000;
/// Most one-time prekeys the directory holds for one device; an upload beyond it is cut.
pub const MAX_PREKEYS_PER_DEVICE: u64 = 2_000;
/// Most received-message records kept per simulated user (oldest dropped first).
pub const MAX_RECEIVED_PER_USER: u64 = 1_000;
/// Redb page cache for the hub, in bytes.
pub const HUB_CACHE_BYTES: usize = 4 * 1024 * 1024;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// `user.device` → enlisted device record.
const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// (`user.device`, prekey id) → 32-byte public key.
const PREKEYS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("prekeys");
/// (`user.device`, seq) → queued stanza.
const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");
/// phone digits → simulated user record.
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("sim_users");
/// (phone digits, seq) → received record (JSON).
const RECEIVED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("sim_received");
/// (due ms, seq) → a simulated user's delayed stanza (a `read_after` read receipt): the
/// sender's JID, NUL, the stanza's XML. Kept so a hub killed before it is due still sends it.
const SIM_TIMERS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("sim_timers");
/// (user JID, user JID) → empty: these two users exchanged a message.
const CONTACTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("contacts");

const META_SCHEMA: &str = "schema_version";

/// A simulated user's delayed stanza as kept: due ms, seq, sender JID, XML.
pub type DelayedStanza = (u64, u64, String, Vec<u8>);

/// An enlisted device and what it published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub registration_id: u32,
    pub identity: RawKey,
    pub signed_prekey: Option<WireSignedPreKey>,
    pub enlisted_ms: u64,
}

/// A stanza waiting in a device's queue. `ack_key` is what the device's `<ack>` must name
/// (`class|id|type`) to remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub seq: u64,
    pub ack_key: String,
    pub xml: Vec<u8>,
}

/// A simulated user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub devices: u32,
    pub behavior: String,
}

/// The hub's database.
pub struct HubStore {
    db: Database,
}

fn corrupt(table: &'static str) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: "bad row",
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize, table: &'static str) -> Result<&'a [u8], StoreError> {
    if b.len() < n {
        return Err(corrupt(table));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn arr<const N: usize>(b: &mut &[u8], table: &'static str) -> Result<[u8; N], StoreError> {
    take(b, N, table)?.try_into().map_err(|_| corrupt(table))
}

/// The key range covering every row of one device (or user) in a `(key, n)` table.
fn device_prefix(key: &str) -> String {
    format!("{key}.")
}

impl HubStore {
    /// Opens (creating) `<dir>/hub.redb` and checks its schema version.
    pub fn open(dir: &Path) -> Result<HubStore, StoreError> {
        ensure_state_dir(dir)?;
        let path = dir.join(HUB_DB_FILE_NAME);
        let db = open_database(&path, HUB_CACHE_BYTES)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta
                .get(META_SCHEMA)?
                .map(|v| {
                    <[u8; 4]>::try_from(v.value())
                        .map(u32::from_be_bytes)
                        .map_err(|_| corrupt("meta"))
                })
                .transpose()?;
            match found {
                Some(v) if v > HUB_SCHEMA_VERSION => {
                    return Err(StoreError::SchemaTooNew {
                        found: v,
                        supported: HUB_SCHEMA_VERSION,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert(META_SCHEMA, &HUB_SCHEMA_VERSION.to_be_bytes()[..])?;
                }
            }
            txn.open_table(DEVICES)?;
            txn.open_table(PREKEYS)?;
            txn.open_table(QUEUE)?;
            txn.open_table(USERS)?;
            txn.open_table(RECEIVED)?;
            txn.open_table(CONTACTS)?;
            txn.open_table(SIM_TIMERS)?;
            txn.open_table(groups::GROUPS)?;
            txn.open_table(groups::MEMBERSHIPS)?;
        }
        txn.commit()?;
        Ok(HubStore { db })
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write()?;
        let out = f(&txn)?;
        txn.commit()?;
        Ok(out)
    }

    fn next_seq(txn: &redb::WriteTransaction, name: &str) -> Result<u64, StoreError> {
        let mut meta = txn.open_table(META)?;
        let cur = match meta.get(name)? {
            Some(v) => {
                u64::from_be_bytes(<[u8; 8]>::try_from(v.value()).map_err(|_| corrupt("meta"))?)
            }
            None => 0,
        };
        let next = cur.saturating_add(1);
        meta.insert(name, &next.to_be_bytes()[..])?;
        Ok(next)
    }

    /// A fresh number from the named counter (notification ids and the like).
    pub fn next_counter(&self, name: &str) -> Result<u64, StoreError> {
        self.write(|t| Self::next_seq(t, name))
    }

    // ---- devices and the prekey directory -------------------------------------------------

    /// The enlisted device `user.device`, if any.
    pub fn device(&self, key: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(DEVICES)?;
        let Some(v) = t.get(key)? else {
            return Ok(None);
        };
        decode_device(v.value()).map(Some)
    }

    /// Enlists or re-enlists a device. A new identity drops every one-time prekey the old
    /// one published and its signed prekey.
    pub fn put_device(&self, key: &str, rec: &DeviceRecord) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(DEVICES)?;
            let old = match t.get(key)? {
                Some(v) => Some(decode_device(v.value())?),
                None => None,
            };
            t.insert(key, encode_device(rec).as_slice())?;
            if old.is_some_and(|o| o.identity != rec.identity) {
                let mut p = txn.open_table(PREKEYS)?;
                p.retain_in((key, 0u32)..=(key, u32::MAX), |_, _| false)?;
            }
            Ok(())
        })
    }

    /// Device numbers enlisted for `user`, ascending.
    pub fn devices_of(&self, user: &str) -> Result<Vec<u32>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(DEVICES)?;
        let prefix = device_prefix(user);
        let mut out = Vec::new();
        for item in t.range(prefix.as_str()..)? {
            let (k, _) = item?;
            let Some(rest) = k.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            if let Ok(d) = rest.parse::<u32>()
                && rest.bytes().all(|b| b.is_ascii_digit())
            {
                out.push(d);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Stores an upload: the signed prekey and new one-time prekeys (capped at
    /// [`MAX_PREKEYS_PER_DEVICE`]). Returns the count held afterwards.
    pub fn upload_keys(
        &self,
        key: &str,
        registration_id: u32,
        signed: &WireSignedPreKey,
        prekeys: &[WirePreKey],
    ) -> Result<u64, StoreError> {
        self.write(|txn| {
            let mut d = txn.open_table(DEVICES)?;
            let mut rec = match d.get(key)? {
                Some(v) => decode_device(v.value())?,
                None => return Err(corrupt("devices")),
            };
            rec.signed_prekey = Some(signed.clone());
            rec.registration_id = registration_id;
            d.insert(key, encode_device(&rec).as_slice())?;
            let mut p = txn.open_table(PREKEYS)?;
            let mut count = p.range((key, 0u32)..=(key, u32::MAX))?.count() as u64;
            for k in prekeys {
                if count >= MAX_PREKEYS_PER_DEVICE {
                    break;
                }
                if p.insert((key, k.id), &k.public[..])?.is_none() {
                    count += 1;
                }
            }
            Ok(count)
        })
    }

    /// How many one-time prekeys the directory holds for a device.
    pub fn prekey_count(&self, key: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let p = txn.open_table(PREKEYS)?;
        Ok(p.range((key, 0u32)..=(key, u32::MAX))?.count() as u64)
    }

    /// Removes and returns the device's lowest one-time prekey: each is handed out once.
    pub fn take_prekey(&self, key: &str) -> Result<Option<WirePreKey>, StoreError> {
        self.write(|txn| {
            let mut p = txn.open_table(PREKEYS)?;
            let first = match p.range((key, 0u32)..=(key, u32::MAX))?.next() {
                Some(item) => {
                    let (k, v) = item?;
                    let public: RawKey = v.value().try_into().map_err(|_| corrupt("prekeys"))?;
                    Some(WirePreKey {
                        id: k.value().1,
                        public,
                    })
                }
                None => None,
            };
            if let Some(k) = &first {
                p.remove((key, k.id))?;
            }
            Ok(first)
        })
    }

    // ---- offline queues ---------------------------------------------------------------------

    /// Appends a stanza to a device's queue; `None` when the queue is full.
    pub fn enqueue(&self, key: &str, ack_key: &str, xml: &[u8]) -> Result<Option<u64>, StoreError> {
        self.write(|txn| {
            let q = txn.open_table(QUEUE)?;
            if q.range((key, 0u64)..=(key, u64::MAX))?.count() as u64 >= MAX_QUEUE_PER_DEVICE {
                return Ok(None);
            }
            drop(q);
            let seq = Self::next_seq(txn, "queue_seq")?;
            let mut v = Vec::with_capacity(3 + ack_key.len() + xml.len());
            v.push(1);
            let len = u16::try_from(ack_key.len()).map_err(|_| StoreError::TooLarge {
                what: "ack key",
                len: ack_key.len() as u64,
                max: u64::from(u16::MAX),
            })?;
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(ack_key.as_bytes());
            v.extend_from_slice(xml);
            let mut q = txn.open_table(QUEUE)?;
            q.insert((key, seq), v.as_slice())?;
            Ok(Some(seq))
        })
    }

    /// Every stanza waiting for a device, oldest first.
    pub fn queued(&self, key: &str) -> Result<Vec<Queued>, StoreError> {
        let txn = self.db.begin_read()?;
        let q = txn.open_table(QUEUE)?;
        let mut out = Vec::new();
        for item in q.range((key, 0u64)..=(key, u64::MAX))? {
            let (k, v) = item?;
            let mut b = v.value();
            if arr::<1>(&mut b, "queue")? != [1] {
                return Err(corrupt("queue"));
            }
            let len = u16::from_be_bytes(arr(&mut b, "queue")?);
            let ack = take(&mut b, usize::from(len), "queue")?;
            let ack_key = String::from_utf8(ack.to_vec()).map_err(|_| corrupt("queue"))?;
            out.push(Queued {
                seq: k.value().1,
                ack_key,
                xml: b.to_vec(),
            });
        }
        Ok(out)
    }

    /// Removes the oldest queued stanza of this device whose ack key matches. Returns
    /// whether one was removed.
    pub fn ack(&self, key: &str, ack_key: &str) -> Result<bool, StoreError> {
        let found = self.queued(key)?.into_iter().find(|q| q.ack_key == ack_key);
        match found {
            Some(q) => self.write(|txn| {
                txn.open_table(QUEUE)?.remove((key, q.seq))?;
                Ok(true)
            }),
            None => Ok(false),
        }
    }

    /// Removes one queued stanza by its sequence number.
    pub fn dequeue(&self, key: &str, seq: u64) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(QUEUE)?.remove((key, seq))?;
            Ok(())
        })
    }

    /// Stanzas waiting in every queue.
    pub fn queue_depth(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let q = txn.open_table(QUEUE)?;
        Ok(redb::ReadableTableMetadata::len(&q)?)
    }

    // ---- simulated users ----------------------------------------------------------------

    pub fn put_user(&self, phone: &str, rec: &UserRecord) -> Result<(), StoreError> {
        let mut v = Vec::with_capacity(7 + rec.behavior.len());
        v.push(1);
        v.extend_from_slice(&rec.devices.to_be_bytes());
        v.extend_from_slice(rec.behavior.as_bytes());
        self.write(|txn| {
            txn.open_table(USERS)?.insert(phone, v.as_slice())?;
            Ok(())
        })
    }

    /// Every simulated user, by phone digits.
    pub fn users(&self) -> Result<Vec<(String, UserRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(USERS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let mut b = v.value();
            if arr::<1>(&mut b, "sim_users")? != [1] {
                return Err(corrupt("sim_users"));
            }
            let devices = u32::from_be_bytes(arr(&mut b, "sim_users")?);
            let behavior = String::from_utf8(b.to_vec()).map_err(|_| corrupt("sim_users"))?;
            out.push((k.value().to_owned(), UserRecord { devices, behavior }));
        }
        Ok(out)
    }

    /// Records what a simulated user decrypted (a JSON object), dropping the oldest beyond
    /// [`MAX_RECEIVED_PER_USER`].
    pub fn push_received(&self, phone: &str, json: &[u8]) -> Result<(), StoreError> {
        self.write(|txn| {
            let seq = Self::next_seq(txn, "received_seq")?;
            let mut t = txn.open_table(RECEIVED)?;
            t.insert((phone, seq), json)?;
            let n = t.range((phone, 0u64)..=(phone, u64::MAX))?.count() as u64;
            if n > MAX_RECEIVED_PER_USER {
                let oldest = t
                    .range((phone, 0u64)..=(phone, u64::MAX))?
                    .next()
                    .transpose()?
                    .map(|(k, _)| k.value().1);
                if let Some(s) = oldest {
                    t.remove((phone, s))?;
                }
            }
            Ok(())
        })
    }

    /// What a simulated user received, oldest first (JSON objects).
    pub fn received(&self, phone: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RECEIVED)?;
        let mut out = Vec::new();
        for item in t.range((phone, 0u64)..=(phone, u64::MAX))? {
            out.push(item?.1.value().to_vec());
        }
        Ok(out)
    }

    // ---- delayed stanzas of simulated users -------------------------------------------------

    /// Keeps `xml` from `from` to be routed at `due_ms`; returns its key's sequence.
    pub fn put_timer(&self, due_ms: u64, from: &str, xml: &[u8]) -> Result<u64, StoreError> {
        self.write(|txn| {
            let seq = Self::next_seq(txn, "timer_seq")?;
            let mut value = Vec::with_capacity(from.len() + 1 + xml.len());
            value.extend_from_slice(from.as_bytes());
            value.push(0);
            value.extend_from_slice(xml);
            txn.open_table(SIM_TIMERS)?
                .insert((due_ms, seq), value.as_slice())?;
            Ok(seq)
        })
    }

    /// Forgets the delayed stanza `(due_ms, seq)` (it was routed).
    pub fn remove_timer(&self, due_ms: u64, seq: u64) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(SIM_TIMERS)?.remove((due_ms, seq))?;
            Ok(())
        })
    }

    /// Every delayed stanza, soonest first: (due ms, seq, sender JID, XML). A row that does
    /// not split is corrupt.
    pub fn timers(&self) -> Result<Vec<DelayedStanza>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SIM_TIMERS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let (due, seq) = k.value();
            let bytes = v.value();
            let nul = bytes
                .iter()
                .position(|b| *b == 0)
                .ok_or(corrupt("sim_timers"))?;
            let from = std::str::from_utf8(bytes.get(..nul).unwrap_or_default())
                .map_err(|_| corrupt("sim_timers"))?;
            let xml = bytes.get(nul + 1..).unwrap_or_default().to_vec();
            out.push((due, seq, from.to_owned(), xml));
        }
        Ok(out)
    }

    // ---- contacts -----------------------------------------------------------------------

    /// Records that two users (user JIDs) exchanged a message, both ways.
    pub fn add_contact(&self, a: &str, b: &str) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(CONTACTS)?;
            t.insert((a, b), &[][..])?;
            t.insert((b, a), &[][..])?;
            Ok(())
        })
    }

    /// Users (user JIDs) that exchanged a message with `user`.
    pub fn contacts_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CONTACTS)?;
        let mut out = Vec::new();
        for item in t.range((user, "")..)? {
            let (k, _) = item?;
            let (a, b) = k.value();
            if a != user {
                break;
            }
            out.push(b.to_owned());
        }
        Ok(out)
    }
}

fn encode_device(rec: &DeviceRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(150);
    v.push(1);
    v.extend_from_slice(&rec.registration_id.to_be_bytes());
    v.extend_from_slice(&rec.identity);
    v.extend_from_slice(&rec.enlisted_ms.to_be_bytes());
    match &rec.signed_prekey {
        Some(s) => {
            v.push(1);
            v.extend_from_slice(&s.id.to_be_bytes());
            v.extend_from_slice(&s.public);
            v.extend_from_slice(&s.signature);
        }
        None => v.push(0),
    }
    v
}

fn decode_device(mut b: &[u8]) -> Result<DeviceRecord, StoreError> {
    let t = "devices";
    if arr::<1>(&mut b, t)? != [1] {
        return Err(corrupt(t));
    }
    let registration_id = u32::from_be_bytes(arr(&mut b, t)?);
    let identity = arr(&mut b, t)?;
    let enlisted_ms = u64::from_be_bytes(arr(&mut b, t)?);
    let signed_prekey = match arr::<1>(&mut b, t)? {
        [0] => None,
        [1] => Some(WireSignedPreKey {
            id: u32::from_be_bytes(arr(&mut b, t)?),
            public: arr(&mut b, t)?,
            signature: arr(&mut b, t)?,
        }),
        _ => return Err(corrupt(t)),
    };
    if !b.is_empty() {
        return Err(corrupt(t));
    }
    Ok(DeviceRecord {
        registration_id,
        identity,
        signed_prekey,
        enlisted_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spk() -> WireSignedPreKey {
        WireSignedPreKey {
            id: 1,
            public: [2; 32],
            signature: [3; 64],
        }
    }

    fn open() -> (tempfile::TempDir, HubStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = HubStore::open(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn each_prekey_is_taken_once_lowest_first() {
        let (_d, s) = open();
        let rec = DeviceRecord {
            registration_id: 7,
            identity: [1; 32],
            signed_prekey: None,
            enlisted_ms: 0,
        };
        s.put_device("a.1", &rec).unwrap();
        let keys: Vec<_> = (5..8)
            .map(|id| WirePreKey {
                id,
                public: [id as u8; 32],
            })
            .collect();
        assert_eq!(s.upload_keys("a.1", 7, &spk(), &keys).unwrap(), 3);
        assert_eq!(s.take_prekey("a.1").unwrap().map(|k| k.id), Some(5));
        assert_eq!(s.take_prekey("a.1").unwrap().map(|k| k.id), Some(6));
        assert_eq!(s.prekey_count("a.1").unwrap(), 1);
        assert_eq!(s.take_prekey("a.1").unwrap().map(|k| k.id), Some(7));
        assert_eq!(s.take_prekey("a.1").unwrap(), None);
    }

    #[test]
    fn new_identity_drops_old_prekeys() {
        let (_d, s) = open();
        let mut rec = DeviceRecord {
            registration_id: 7,
            identity: [1; 32],
            signed_prekey: None,
            enlisted_ms: 0,
        };
        s.put_device("a.1", &rec).unwrap();
        s.upload_keys(
            "a.1",
            7,
            &spk(),
            &[WirePreKey {
                id: 1,
                public: [0; 32],
            }],
        )
        .unwrap();
        rec.identity = [9; 32];
        s.put_device("a.1", &rec).unwrap();
        assert_eq!(s.prekey_count("a.1").unwrap(), 0);
    }

    #[test]
    fn queue_survives_reopen_and_ack_removes_match() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = HubStore::open(dir.path()).unwrap();
            s.enqueue("a.1", "message|X", b"<m/>").unwrap().unwrap();
            s.enqueue("a.1", "receipt|X|", b"<r/>").unwrap().unwrap();
        }
        let s = HubStore::open(dir.path()).unwrap();
        assert_eq!(s.queued("a.1").unwrap().len(), 2);
        assert!(s.ack("a.1", "receipt|X|").unwrap());
        let q = s.queued("a.1").unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].xml, b"<m/>");
        assert!(!s.ack("a.1", "receipt|X|").unwrap());
        assert_eq!(s.queue_depth().unwrap(), 1);
    }

    #[test]
    fn devices_of_ignores_users_sharing_a_prefix() {
        let (_d, s) = open();
        let rec = DeviceRecord {
            registration_id: 1,
            identity: [1; 32],
            signed_prekey: None,
            enlisted_ms: 0,
        };
        for k in ["a.0", "a.2", "a.b.1", "ab.1"] {
            s.put_device(k, &rec).unwrap();
        }
        assert_eq!(s.devices_of("a").unwrap(), vec![0, 2]);
    }

    #[test]
    fn contacts_are_symmetric() {
        let (_d, s) = open();
        s.add_contact("x@interop", "1555@s.whatsapp.net").unwrap();
        assert_eq!(
            s.contacts_of("1555@s.whatsapp.net").unwrap(),
            vec!["x@interop".to_owned()]
        );
    }
}
