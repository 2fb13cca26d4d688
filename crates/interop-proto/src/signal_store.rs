//! The storage the Signal engine needs, as a trait of its own, so the engine runs over any
//! store: the daemon's redb transaction, the hub's simulated devices, or memory in tests. The
//! engine owns the byte layout of every value (docs/store.md); a store only keeps bytes under
//! keys, in the tables named here, and reads them back in the same write transaction.
//!
//! Every method takes `&self`: a store is one open transaction, and what it writes becomes
//! durable together or not at all when its owner commits.

use crate::row::RowError;

/// Tables with text keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyTable {
    /// Our identity key pair and registration id, under the key `identity`.
    LocalIdentity,
    /// One session record per contact device, under `user.device`.
    Sessions,
    /// One identity record per contact device, under `user.device`.
    RemoteIdentities,
    /// One sender-key record per (group, sending device), under `group:user.device`: our own
    /// chain for each group we send to, and every member's chain we were given.
    SenderKeys,
}

/// Tables keyed by a 24-bit prekey id (stored as a 4-byte big-endian key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdTable {
    /// Unused one-time prekeys.
    PreKeys,
    /// The current and recently replaced signed prekeys.
    SignedPreKeys,
}

/// A write transaction the engine reads and writes through.
pub trait SignalStore {
    /// The store's own failure; a corrupt row read by the engine becomes one of these.
    type Error: From<RowError> + std::fmt::Debug + std::fmt::Display;

    fn get(&self, table: KeyTable, key: &str) -> Result<Option<Vec<u8>>, Self::Error>;
    fn put(&self, table: KeyTable, key: &str, value: &[u8]) -> Result<(), Self::Error>;
    /// Removes `key` if present.
    fn remove(&self, table: KeyTable, key: &str) -> Result<(), Self::Error>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(
        &self,
        table: KeyTable,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, Self::Error>;

    fn get_id(&self, table: IdTable, id: u32) -> Result<Option<Vec<u8>>, Self::Error>;
    fn put_id(&self, table: IdTable, id: u32, value: &[u8]) -> Result<(), Self::Error>;
    /// Removes `id`; says whether it was there.
    fn remove_id(&self, table: IdTable, id: u32) -> Result<bool, Self::Error>;
    fn count_ids(&self, table: IdTable) -> Result<u64, Self::Error>;
    /// The lowest `limit` ids held, in increasing order.
    fn first_ids(&self, table: IdTable, limit: usize) -> Result<Vec<u32>, Self::Error>;

    /// A named counter (the next prekey id, the current signed prekey id).
    fn counter(&self, name: &str) -> Result<Option<u32>, Self::Error>;
    fn set_counter(&self, name: &str, value: u32) -> Result<(), Self::Error>;
}

/// A [`SignalStore`] in memory, for tests and for peers that keep no state across restarts.
/// Its "transaction" is the whole map: nothing is ever rolled back.
#[derive(Debug, Default)]
pub struct MemoryStore {
    keyed: std::cell::RefCell<std::collections::BTreeMap<(KeyTable, String), Vec<u8>>>,
    ids: std::cell::RefCell<std::collections::BTreeMap<(IdTable, u32), Vec<u8>>>,
    counters: std::cell::RefCell<std::collections::BTreeMap<String, u32>>,
}

impl SignalStore for MemoryStore {
    type Error = RowError;

    fn get(&self, table: KeyTable, key: &str) -> Result<Option<Vec<u8>>, RowError> {
        Ok(self.keyed.borrow().get(&(table, key.to_string())).cloned())
    }

    fn put(&self, table: KeyTable, key: &str, value: &[u8]) -> Result<(), RowError> {
        self.keyed
            .borrow_mut()
            .insert((table, key.to_string()), value.to_vec());
        Ok(())
    }

    fn remove(&self, table: KeyTable, key: &str) -> Result<(), RowError> {
        self.keyed.borrow_mut().remove(&(table, key.to_string()));
        Ok(())
    }

    fn scan_prefix(
        &self,
        table: KeyTable,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, RowError> {
        Ok(self
            .keyed
            .borrow()
            .range((table, prefix.to_string())..)
            .take_while(|((t, k), _)| *t == table && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn get_id(&self, table: IdTable, id: u32) -> Result<Option<Vec<u8>>, RowError> {
        Ok(self.ids.borrow().get(&(table, id)).cloned())
    }

    fn put_id(&self, table: IdTable, id: u32, value: &[u8]) -> Result<(), RowError> {
        self.ids.borrow_mut().insert((table, id), value.to_vec());
        Ok(())
    }

    fn remove_id(&self, table: IdTable, id: u32) -> Result<bool, RowError> {
        Ok(self.ids.borrow_mut().remove(&(table, id)).is_some())
    }

    fn count_ids(&self, table: IdTable) -> Result<u64, RowError> {
        Ok(self
            .ids
            .borrow()
            .keys()
            .filter(|(t, _)| *t == table)
            .count() as u64)
    }

    fn first_ids(&self, table: IdTable, limit: usize) -> Result<Vec<u32>, RowError> {
        Ok(self
            .ids
            .borrow()
            .keys()
            .filter(|(t, _)| *t == table)
            .take(limit)
            .map(|(_, id)| *id)
            .collect())
    }

    fn counter(&self, name: &str) -> Result<Option<u32>, RowError> {
        Ok(self.counters.borrow().get(name).copied())
    }

    fn set_counter(&self, name: &str, value: u32) -> Result<(), RowError> {
        self.counters.borrow_mut().insert(name.to_string(), value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_scan_stays_inside_its_table_and_prefix() {
        let m = MemoryStore::default();
        m.put(KeyTable::Sessions, "alice.1", b"s").unwrap();
        m.put(KeyTable::RemoteIdentities, "alice.1", b"a1").unwrap();
        m.put(KeyTable::RemoteIdentities, "alice.2", b"a2").unwrap();
        m.put(KeyTable::RemoteIdentities, "alicea.1", b"x").unwrap();
        m.put(KeyTable::RemoteIdentities, "bob.1", b"b").unwrap();
        let got = m.scan_prefix(KeyTable::RemoteIdentities, "alice.").unwrap();
        let keys: Vec<_> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["alice.1", "alice.2"]);
    }

    #[test]
    fn first_ids_are_the_lowest_of_one_table() {
        let m = MemoryStore::default();
        for id in [9, 3, 5] {
            m.put_id(IdTable::PreKeys, id, b"k").unwrap();
        }
        m.put_id(IdTable::SignedPreKeys, 1, b"s").unwrap();
        assert_eq!(m.first_ids(IdTable::PreKeys, 2).unwrap(), [3, 5]);
        assert_eq!(m.count_ids(IdTable::PreKeys).unwrap(), 3);
        assert!(m.remove_id(IdTable::PreKeys, 3).unwrap());
        assert!(!m.remove_id(IdTable::PreKeys, 3).unwrap());
    }
}
