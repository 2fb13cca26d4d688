//! Sender keys: the group half of the Signal engine (the crate's `group_cipher`). Each member
//! device keeps one sending chain per group and hands its SenderKeyDistributionMessage
//! (SKDM) to the other members over their pairwise sessions; a group message is then one
//! SenderKeyMessage (`<enc type="skmsg">`) that every member decrypts with the sender's chain.
//!
//! Same rules as the pairwise operations: no I/O, no clock, the caller's RNG, and every
//! record the crate changes is written into the caller's transaction ([`SignalStore`], table
//! [`KeyTable::SenderKeys`]) so it commits with the message row. Counter leases are waived on
//! every record, as for sessions: we persist before the wire, so iterations stay consecutive.
//!
//! Records live under `{group}:{user}.{device}`, the group being the user part of its JID
//! (`120363…` of `120363…@g.us`). Row layout: version byte 1, then the crate's serialized
//! `SenderKeyRecordStructure` (docs/store.md).

use wacore_libsignal::protocol::{
    SenderKeyDistributionMessage, SenderKeyName, SenderKeyRecord, SenderKeyStore,
};

use super::*;
use KeyTable::SenderKeys as SENDER_KEYS;

/// The row version of a `sender_keys` record.
pub const SENDER_KEY_ROW_VERSION: u8 = 1;
/// Most sending chains kept per (group, sender): older ones are dropped, so a message made
/// with a chain rotated away more than this many times ago no longer decrypts. The crate's
/// bound (WhatsApp keeps the same number).
pub const MAX_SENDER_KEY_CHAINS: usize = sp::consts::MAX_SENDER_KEY_STATES;
const _: () = assert!(MAX_SENDER_KEY_CHAINS == 5);

/// The store key of `sender`'s chain in `group`: `group:user.device`.
pub fn sender_key_key(group: &str, sender: &Address) -> String {
    format!("{group}:{}", sender.key())
}

/// The one record an operation works on, lent to the crate's async store trait.
struct OneChain {
    name: SenderKeyName,
    record: Option<SenderKeyRecord>,
    dirty: bool,
}

impl OneChain {
    fn load<S: SignalStore>(txn: &S, group: &str, sender: &Address) -> Result<OneChain, Fail<S>> {
        let record = match txn.get(SENDER_KEYS, &sender_key_key(group, sender))? {
            None => None,
            Some(b) => {
                let mut r = Reader::new(&b, "sender_keys");
                r.version(SENDER_KEY_ROW_VERSION).map_err(corrupt)?;
                let rest = r.take(b.len().saturating_sub(1)).map_err(corrupt)?;
                let bad = || {
                    corrupt(RowError {
                        table: "sender_keys",
                        detail: "bad sender key record",
                    })
                };
                let mut rec = SenderKeyRecord::deserialize(rest).map_err(|_| bad())?;
                rec.waive_counter_lease().map_err(|_| bad())?;
                Some(rec)
            }
        };
        Ok(OneChain {
            name: SenderKeyName::new(group.to_owned(), sender.key()),
            record,
            dirty: false,
        })
    }

    fn flush<S: SignalStore>(self, txn: &S, group: &str, sender: &Address) -> Result<(), Fail<S>> {
        let Some(rec) = self.record.filter(|_| self.dirty) else {
            return Ok(());
        };
        let body = rec.serialize().map_err(|e| SignalError::Internal {
            detail: e.to_string(),
        })?;
        let mut v = Vec::with_capacity(1 + body.len());
        v.push(SENDER_KEY_ROW_VERSION);
        v.extend_from_slice(&body);
        txn.put(SENDER_KEYS, &sender_key_key(group, sender), &v)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl SenderKeyStore for OneChain {
    async fn store_sender_key(
        &mut self,
        name: &SenderKeyName,
        mut record: SenderKeyRecord,
    ) -> SpResult<()> {
        if *name != self.name {
            return Err(SignalProtocolError::InvalidArgument(
                "sender key name outside this operation".into(),
            ));
        }
        record.waive_counter_lease()?;
        self.record = Some(record);
        self.dirty = true;
        Ok(())
    }

    async fn load_sender_key(&self, name: &SenderKeyName) -> SpResult<Option<SenderKeyRecord>> {
        Ok(self.record.clone().filter(|_| *name == self.name))
    }
}

fn map_group_err<E>(e: SignalProtocolError, group: &str, sender: &Address) -> SignalError<E> {
    match e {
        SignalProtocolError::NoSenderKeyState(_) => SignalError::NoSenderKey {
            group: group.to_owned(),
            sender: sender.clone(),
        },
        // A SenderKeyMessage is authenticated by its signature alone.
        SignalProtocolError::SignatureValidationFailed => SignalError::BadMac,
        SignalProtocolError::InvalidSenderKeySession => SignalError::InvalidMessage {
            detail: "sender key state",
        },
        SignalProtocolError::UnrecognizedMessageVersion(_) => SignalError::InvalidMessage {
            detail: "unsupported version",
        },
        other => map_err(other, sender),
    }
}

/// Whether we hold `sender`'s chain in `group` (for us: whether we have made ours).
pub fn has_sender_key<S: SignalStore>(
    txn: &S,
    group: &str,
    sender: &Address,
) -> Result<bool, Fail<S>> {
    Ok(txn
        .get(SENDER_KEYS, &sender_key_key(group, sender))?
        .is_some())
}

/// Drops `sender`'s chain in `group`. For our own chain this is the rotation: the next
/// [`sender_key_distribution`] makes a new chain, which members removed before it never get.
pub fn forget_sender_key<S: SignalStore>(
    txn: &S,
    group: &str,
    sender: &Address,
) -> Result<(), Fail<S>> {
    txn.remove(SENDER_KEYS, &sender_key_key(group, sender))?;
    Ok(())
}

/// Our SenderKeyDistributionMessage for `group` (its serialized bytes, which travel as
/// `axolotlSenderKeyDistributionMessage`), making our chain first if we have none. It names
/// the chain's current iteration, so a member given it later reads only what follows.
pub fn sender_key_distribution<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    group: &str,
    own: &Address,
    rng: &mut R,
) -> Result<Vec<u8>, Fail<S>> {
    let mut chain = OneChain::load(txn, group, own)?;
    let name = chain.name.clone();
    let skdm = block_on(sp::create_sender_key_distribution_message(
        &name, &mut chain, rng,
    ))
    .map_err(|e| map_group_err(e, group, own))?;
    chain.flush(txn, group, own)?;
    Ok(skdm.serialized().to_vec())
}

/// Records the chain `sender` distributed for `group`. A chain id already held is kept as
/// it is (a redelivered SKDM does not rewind it); a new one becomes the current chain, and
/// at most [`MAX_SENDER_KEY_CHAINS`] are kept.
pub fn process_sender_key_distribution<S: SignalStore>(
    txn: &S,
    group: &str,
    sender: &Address,
    skdm: &[u8],
) -> Result<(), Fail<S>> {
    let message = SenderKeyDistributionMessage::try_from(skdm)
        .map_err(|e| map_group_err(e, group, sender))?;
    let mut chain = OneChain::load(txn, group, sender)?;
    let name = chain.name.clone();
    block_on(sp::process_sender_key_distribution_message(
        &name, &message, &mut chain,
    ))
    .map_err(|e| map_group_err(e, group, sender))?;
    chain.flush(txn, group, sender)
}

/// Encrypts `plaintext` (padded content) with our chain in `group`: the SenderKeyMessage
/// bytes of `<enc type="skmsg">`. The advanced chain is written into `txn`; commit it with
/// the stanza bytes before they reach the wire. Fails with [`SignalError::NoSenderKey`]
/// when [`sender_key_distribution`] was never called for this group.
pub fn group_encrypt<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    group: &str,
    own: &Address,
    plaintext: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, Fail<S>> {
    let mut chain = OneChain::load(txn, group, own)?;
    let name = chain.name.clone();
    let message = block_on(sp::group_encrypt(&mut chain, &name, plaintext, rng))
        .map_err(|e| map_group_err(e, group, own))?;
    chain.flush(txn, group, own)?;
    Ok(message.serialized().to_vec())
}

/// Decrypts a SenderKeyMessage `sender` sent to `group`. The advanced chain (and any keys
/// kept for skipped iterations, at most [`MAX_SKIPPED_KEYS`]) is written into `txn`; add
/// the inbox row and commit, then ack. On failure nothing is written.
pub fn group_decrypt<S: SignalStore>(
    txn: &S,
    group: &str,
    sender: &Address,
    skmsg: &[u8],
) -> Result<Vec<u8>, Fail<S>> {
    let mut chain = OneChain::load(txn, group, sender)?;
    if chain.record.is_none() {
        return Err(SignalError::NoSenderKey {
            group: group.to_owned(),
            sender: sender.clone(),
        });
    }
    let name = chain.name.clone();
    let plaintext = block_on(sp::group_decrypt(skmsg, &mut chain, &name))
        .map_err(|e| map_group_err(e, group, sender))?;
    chain.flush(txn, group, sender)?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal_store::MemoryStore;

    const GROUP: &str = "120363000000000001";

    fn alice() -> Address {
        Address::new("acme-home", 1)
    }

    fn bob() -> Address {
        Address::new("15550100", 0)
    }

    /// Alice's store with her chain made, and Bob's store holding her SKDM.
    fn pair() -> (MemoryStore, MemoryStore) {
        let (a, b) = (MemoryStore::default(), MemoryStore::default());
        let skdm = sender_key_distribution(&a, GROUP, &alice(), &mut rand::rng()).unwrap();
        process_sender_key_distribution(&b, GROUP, &alice(), &skdm).unwrap();
        (a, b)
    }

    #[test]
    fn a_member_given_the_distribution_decrypts_the_group_message() {
        let (a, b) = pair();
        let ct = group_encrypt(&a, GROUP, &alice(), b"to the family", &mut rand::rng()).unwrap();
        assert_ne!(&ct[..], b"to the family");
        assert_eq!(
            group_decrypt(&b, GROUP, &alice(), &ct).unwrap(),
            b"to the family"
        );
    }

    #[test]
    fn a_redelivered_group_message_is_a_duplicate() {
        let (a, b) = pair();
        let ct = group_encrypt(&a, GROUP, &alice(), b"once", &mut rand::rng()).unwrap();
        group_decrypt(&b, GROUP, &alice(), &ct).unwrap();
        assert!(matches!(
            group_decrypt(&b, GROUP, &alice(), &ct),
            Err(SignalError::Duplicate)
        ));
    }

    #[test]
    fn group_messages_decrypt_out_of_order() {
        let (a, b) = pair();
        let cts: Vec<Vec<u8>> = (0..5u8)
            .map(|i| group_encrypt(&a, GROUP, &alice(), &[i], &mut rand::rng()).unwrap())
            .collect();
        for i in [4usize, 0, 2, 1, 3] {
            assert_eq!(
                group_decrypt(&b, GROUP, &alice(), &cts[i]).unwrap(),
                [i as u8]
            );
        }
    }

    #[test]
    fn a_message_more_than_the_skipped_key_bound_ahead_is_refused() {
        let (a, b) = pair();
        let mut last = Vec::new();
        for _ in 0..=MAX_SKIPPED_KEYS + 1 {
            last = group_encrypt(&a, GROUP, &alice(), b"x", &mut rand::rng()).unwrap();
        }
        assert!(matches!(
            group_decrypt(&b, GROUP, &alice(), &last),
            Err(SignalError::TooFarAhead)
        ));
    }

    #[test]
    fn without_the_distribution_there_is_no_sender_key() {
        let (a, _) = pair();
        let stranger = MemoryStore::default();
        let ct = group_encrypt(&a, GROUP, &alice(), b"x", &mut rand::rng()).unwrap();
        assert!(matches!(
            group_decrypt(&stranger, GROUP, &alice(), &ct),
            Err(SignalError::NoSenderKey { .. })
        ));
        assert!(matches!(
            group_encrypt(&stranger, GROUP, &bob(), b"x", &mut rand::rng()),
            Err(SignalError::NoSenderKey { .. })
        ));
    }

    #[test]
    fn a_rotated_chain_is_unreadable_to_a_member_who_missed_its_distribution() {
        let (a, b) = pair();
        forget_sender_key(&a, GROUP, &alice()).unwrap();
        assert!(!has_sender_key(&a, GROUP, &alice()).unwrap());
        let fresh = sender_key_distribution(&a, GROUP, &alice(), &mut rand::rng()).unwrap();
        let ct = group_encrypt(&a, GROUP, &alice(), b"after removal", &mut rand::rng()).unwrap();
        assert!(matches!(
            group_decrypt(&b, GROUP, &alice(), &ct),
            Err(SignalError::NoSenderKey { .. })
        ));
        let kept = MemoryStore::default();
        process_sender_key_distribution(&kept, GROUP, &alice(), &fresh).unwrap();
        assert_eq!(
            group_decrypt(&kept, GROUP, &alice(), &ct).unwrap(),
            b"after removal"
        );
    }

    #[test]
    fn the_distribution_names_the_current_iteration_and_is_stable() {
        let (a, _) = pair();
        group_encrypt(&a, GROUP, &alice(), b"early", &mut rand::rng()).unwrap();
        let late = sender_key_distribution(&a, GROUP, &alice(), &mut rand::rng()).unwrap();
        assert_eq!(
            late,
            sender_key_distribution(&a, GROUP, &alice(), &mut rand::rng()).unwrap(),
            "asking again neither rotates nor advances the chain"
        );
        let newcomer = MemoryStore::default();
        process_sender_key_distribution(&newcomer, GROUP, &alice(), &late).unwrap();
        let ct = group_encrypt(&a, GROUP, &alice(), b"late", &mut rand::rng()).unwrap();
        assert_eq!(
            group_decrypt(&newcomer, GROUP, &alice(), &ct).unwrap(),
            b"late"
        );
    }

    #[test]
    fn iterations_stay_consecutive_across_reloads() {
        // Every operation reloads the record from the store; a leased record would skip 64
        // iterations per reload and the receiver would buffer the gaps.
        let (a, b) = pair();
        for i in 0..4u8 {
            let ct = group_encrypt(&a, GROUP, &alice(), &[i], &mut rand::rng()).unwrap();
            let m = sp::SenderKeyMessage::try_from(&ct[..]).unwrap();
            assert_eq!(m.iteration(), u32::from(i));
            group_decrypt(&b, GROUP, &alice(), &ct).unwrap();
        }
    }

    #[test]
    fn a_tampered_group_message_fails_authentication_and_writes_nothing() {
        let (a, b) = pair();
        let mut ct = group_encrypt(&a, GROUP, &alice(), b"x", &mut rand::rng()).unwrap();
        let before = b.get(KeyTable::SenderKeys, &sender_key_key(GROUP, &alice()));
        let last = ct.len() - 1;
        ct[last] ^= 1;
        assert!(matches!(
            group_decrypt(&b, GROUP, &alice(), &ct),
            Err(SignalError::BadMac)
        ));
        assert_eq!(
            b.get(KeyTable::SenderKeys, &sender_key_key(GROUP, &alice())),
            before
        );
        assert!(matches!(
            process_sender_key_distribution(&b, GROUP, &alice(), b"\x33junk"),
            Err(SignalError::InvalidMessage { .. })
        ));
    }

    #[test]
    fn a_corrupt_row_is_the_stores_failure() {
        let (a, _) = pair();
        a.put(
            KeyTable::SenderKeys,
            &sender_key_key(GROUP, &alice()),
            b"\x02",
        )
        .unwrap();
        assert!(matches!(
            group_encrypt(&a, GROUP, &alice(), b"x", &mut rand::rng()),
            Err(SignalError::Store(_))
        ));
    }
}
