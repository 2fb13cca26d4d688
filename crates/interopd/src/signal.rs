//! The Signal engine as the daemon uses it: the protocol crate's engine
//! ([`interop_proto::signal`]) over the daemon's redb transaction, whose
//! [`SignalStore`](interop_proto::signal_store::SignalStore) implementation lives in
//! [`crate::store`]. Its tests run the engine against the real store, so crash and rollback
//! behaviour is what a power cut would see.

pub use interop_proto::signal::*;

/// An engine error over the daemon's store.
pub type SignalError = interop_proto::signal::SignalError<crate::store::StoreError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{InboxRow, Store};

    /// One simulated device: its own state directory and store.
    struct Peer {
        _dir: tempfile::TempDir,
        store: Store,
        addr: Address,
    }

    const NOW: u64 = 1_700_000_000_000;

    fn peer(user: &str) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let txn = store.begin().unwrap();
        provision(&txn, &mut rand::rng(), NOW, 10).unwrap();
        txn.commit().unwrap();
        Peer {
            _dir: dir,
            store,
            addr: Address::new(user, 1),
        }
    }

    fn bundle(p: &Peer, with_prekey: bool) -> WireBundle {
        let txn = p.store.begin().unwrap();
        let id = if with_prekey {
            prekey_ids(&txn, 1).unwrap().first().copied()
        } else {
            None
        };
        own_bundle(&txn, id).unwrap()
    }

    fn connect(from: &Peer, to: &Peer, with_prekey: bool) -> IdentityEvent {
        let txn = from.store.begin().unwrap();
        let ev = process_bundle(
            &txn,
            &to.addr,
            &bundle(to, with_prekey),
            &mut rand::rng(),
            NOW,
        )
        .unwrap();
        txn.commit().unwrap();
        ev
    }

    fn send(from: &Peer, to: &Peer, text: &[u8]) -> Ciphertext {
        let txn = from.store.begin().unwrap();
        let ct = encrypt(&txn, &to.addr, text, NOW).unwrap();
        txn.commit().unwrap();
        ct
    }

    fn recv(at: &Peer, from: &Peer, ct: &Ciphertext) -> Result<Decrypted, SignalError> {
        let txn = at.store.begin().unwrap();
        let d = decrypt(&txn, &from.addr, ct, &mut rand::rng(), NOW)?;
        txn.commit().unwrap();
        Ok(d)
    }

    #[test]
    fn registration_id_is_14_bit_and_nonzero() {
        for _ in 0..200 {
            let id = LocalIdentity::generate(&mut rand::rng()).registration_id();
            assert!((1..=0x3FFF).contains(&id));
        }
    }

    #[test]
    fn sessions_work_in_both_directions() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        assert_eq!(connect(&alice, &bob, true), IdentityEvent::New);
        let ct = send(&alice, &bob, b"hello bob");
        assert_eq!(ct.kind, EncType::PkMsg);
        assert_eq!(ct.body.first(), Some(&0x33), "message version 3");
        let d = recv(&bob, &alice, &ct).unwrap();
        assert_eq!(d.plaintext, b"hello bob");
        assert_eq!(d.identity, IdentityEvent::New);
        let reply = send(&bob, &alice, b"hi alice");
        assert_eq!(reply.kind, EncType::Msg);
        assert_eq!(recv(&alice, &bob, &reply).unwrap().plaintext, b"hi alice");
        // Once bob has answered, alice's messages are plain `msg`.
        let next = send(&alice, &bob, b"again");
        assert_eq!(next.kind, EncType::Msg);
        assert_eq!(recv(&bob, &alice, &next).unwrap().plaintext, b"again");
    }

    #[test]
    fn session_without_one_time_prekey_works() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        connect(&alice, &bob, false);
        let ct = send(&alice, &bob, b"no otk");
        let d = recv(&bob, &alice, &ct).unwrap();
        assert_eq!(d.plaintext, b"no otk");
        assert_eq!(d.consumed_prekey, None);
    }

    #[test]
    fn consumed_prekey_is_deleted_with_the_session_commit() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        let b = bundle(&bob, true);
        let used = b.prekey.unwrap().id;
        let txn = alice.store.begin().unwrap();
        process_bundle(&txn, &bob.addr, &b, &mut rand::rng(), NOW).unwrap();
        txn.commit().unwrap();
        let ct = send(&alice, &bob, b"x");
        let before = prekey_count(&bob.store.begin().unwrap()).unwrap();
        let d = recv(&bob, &alice, &ct).unwrap();
        assert_eq!(d.consumed_prekey, Some(used));
        let txn = bob.store.begin().unwrap();
        assert_eq!(prekey_count(&txn).unwrap(), before - 1);
        assert!(!prekey_ids(&txn, 100).unwrap().contains(&used));
    }

    #[test]
    fn out_of_order_delivery_decrypts_every_message() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        connect(&alice, &bob, true);
        let first = send(&alice, &bob, b"m0");
        recv(&bob, &alice, &first).unwrap();
        let cts: Vec<_> = (1..=6)
            .map(|i| send(&alice, &bob, format!("m{i}").as_bytes()))
            .collect();
        for i in [5usize, 0, 3, 1, 4, 2] {
            assert_eq!(
                recv(&bob, &alice, &cts[i]).unwrap().plaintext,
                format!("m{}", i + 1).as_bytes()
            );
        }
        // And the other way, across a ratchet step.
        let back: Vec<_> = (0..4)
            .map(|i| send(&bob, &alice, format!("r{i}").as_bytes()))
            .collect();
        for i in [3usize, 1, 0, 2] {
            assert_eq!(
                recv(&alice, &bob, &back[i]).unwrap().plaintext,
                format!("r{i}").as_bytes()
            );
        }
    }

    #[test]
    fn replayed_message_is_rejected() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        connect(&alice, &bob, true);
        let ct = send(&alice, &bob, b"once");
        recv(&bob, &alice, &ct).unwrap();
        let m = send(&alice, &bob, b"twice?");
        recv(&bob, &alice, &m).unwrap();
        assert!(matches!(
            recv(&bob, &alice, &m),
            Err(SignalError::Duplicate)
        ));
    }

    #[test]
    fn skipping_more_than_the_bound_is_an_error_not_a_crash() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        connect(&alice, &bob, true);
        recv(&bob, &alice, &send(&alice, &bob, b"start")).unwrap();
        // Produce MAX_SKIPPED_KEYS + 2 messages in one transaction (fast), deliver only the last.
        let txn = alice.store.begin().unwrap();
        let mut last = None;
        for _ in 0..MAX_SKIPPED_KEYS + 2 {
            last = Some(encrypt(&txn, &bob.addr, b"far", NOW).unwrap());
        }
        txn.commit().unwrap();
        let err = recv(&bob, &alice, &last.unwrap()).unwrap_err();
        assert!(matches!(err, SignalError::TooFarAhead), "{err:?}");
        // The session is untouched by the refused message: the next in-bound one still fails
        // the same way, and bob can still talk to alice.
        let reply = send(&bob, &alice, b"still here");
        assert_eq!(recv(&alice, &bob, &reply).unwrap().plaintext, b"still here");
    }

    #[test]
    fn skipping_exactly_the_bound_still_decrypts() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        connect(&alice, &bob, true);
        recv(&bob, &alice, &send(&alice, &bob, b"start")).unwrap();
        let txn = alice.store.begin().unwrap();
        let mut all = Vec::new();
        for i in 0..MAX_SKIPPED_KEYS {
            all.push(encrypt(&txn, &bob.addr, format!("{i}").as_bytes(), NOW).unwrap());
        }
        txn.commit().unwrap();
        let last = all.last().unwrap();
        assert_eq!(
            recv(&bob, &alice, last).unwrap().plaintext,
            format!("{}", MAX_SKIPPED_KEYS - 1).as_bytes()
        );
        // A skipped one arriving late still decrypts from the stored keys.
        assert_eq!(recv(&bob, &alice, &all[10]).unwrap().plaintext, b"10");
    }

    #[test]
    fn bad_prekey_signature_is_rejected_and_nothing_is_stored() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        let mut b = bundle(&bob, true);
        b.signed_prekey.signature[5] ^= 0x01;
        let txn = alice.store.begin().unwrap();
        let err = process_bundle(&txn, &bob.addr, &b, &mut rand::rng(), NOW).unwrap_err();
        assert!(matches!(err, SignalError::BadSignature));
        assert!(!has_session(&txn, &bob.addr).unwrap());
        assert!(remote_identity(&txn, &bob.addr).unwrap().is_none());
    }

    #[test]
    fn signature_by_another_identity_is_rejected() {
        let (alice, bob, mallory) = (peer("alice"), peer("bob"), peer("mallory"));
        let mut b = bundle(&bob, false);
        b.signed_prekey = bundle(&mallory, false).signed_prekey;
        let txn = alice.store.begin().unwrap();
        assert!(matches!(
            process_bundle(&txn, &bob.addr, &b, &mut rand::rng(), NOW),
            Err(SignalError::BadSignature)
        ));
    }

    #[test]
    fn identity_change_is_detected_on_bundle_and_on_pkmsg() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        connect(&alice, &bob, true);
        recv(&bob, &alice, &send(&alice, &bob, b"v1")).unwrap();
        // Bob reinstalls: same address, new identity.
        let bob2 = Peer {
            addr: bob.addr.clone(),
            ..peer("bob")
        };
        assert_eq!(
            connect(&alice, &bob2, true),
            IdentityEvent::Changed {
                previous: bundle(&bob, false).identity,
                current: bundle(&bob2, false).identity,
            }
        );
        let txn = alice.store.begin().unwrap();
        let r = remote_identity(&txn, &bob.addr).unwrap().unwrap();
        assert_eq!(r.trust, TrustState::Changed);
        assert_eq!(r.key, bundle(&bob2, false).identity);
        drop(txn);
        // And the receiving side: alice reinstalls and sends a pkmsg to bob.
        let alice2 = Peer {
            addr: alice.addr.clone(),
            ..peer("alice")
        };
        connect(&alice2, &bob2, true);
        let d = recv(&bob2, &alice2, &send(&alice2, &bob2, b"new me")).unwrap();
        assert_eq!(d.identity, IdentityEvent::New);
        let alice3 = Peer {
            addr: alice.addr.clone(),
            ..peer("alice")
        };
        connect(&alice3, &bob2, true);
        let d = recv(&bob2, &alice3, &send(&alice3, &bob2, b"newer me")).unwrap();
        assert_eq!(
            d.identity,
            IdentityEvent::Changed {
                previous: bundle(&alice2, false).identity,
                current: bundle(&alice3, false).identity,
            }
        );
        assert_eq!(d.plaintext, b"newer me");
    }

    #[test]
    fn verified_contact_identity_change_blocks_until_trusted() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        connect(&alice, &bob, true);
        let txn = alice.store.begin().unwrap();
        assert_eq!(trust_contact(&txn, "bob", NOW).unwrap(), 1);
        txn.commit().unwrap();
        let bob2 = Peer {
            addr: bob.addr.clone(),
            ..peer("bob")
        };
        let txn = alice.store.begin().unwrap();
        let err = process_bundle(&txn, &bob.addr, &bundle(&bob2, true), &mut rand::rng(), NOW)
            .unwrap_err();
        assert!(matches!(err, SignalError::UntrustedIdentity { .. }));
        txn.commit().unwrap();
        let txn = alice.store.begin().unwrap();
        let r = remote_identity(&txn, &bob.addr).unwrap().unwrap();
        assert_eq!(r.pending, Some(bundle(&bob2, false).identity));
        assert_ne!(r.key, bundle(&bob2, false).identity);
        trust_contact(&txn, "bob", NOW).unwrap();
        txn.commit().unwrap();
        assert_eq!(connect(&alice, &bob2, true), IdentityEvent::Unchanged);
        let d = recv(&bob2, &alice, &send(&alice, &bob2, b"after trust")).unwrap();
        assert_eq!(d.plaintext, b"after trust");
    }

    #[test]
    fn verified_contact_pkmsg_from_new_identity_is_held() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        connect(&alice, &bob, true);
        recv(&bob, &alice, &send(&alice, &bob, b"hi")).unwrap();
        let txn = bob.store.begin().unwrap();
        trust_contact(&txn, "alice", NOW).unwrap();
        txn.commit().unwrap();
        let alice2 = Peer {
            addr: alice.addr.clone(),
            ..peer("alice")
        };
        connect(&alice2, &bob, true);
        let ct = send(&alice2, &bob, b"held");
        // The refusal records the offered identity as pending; the caller commits that.
        let txn = bob.store.begin().unwrap();
        let err = decrypt(&txn, &alice.addr, &ct, &mut rand::rng(), NOW).unwrap_err();
        assert!(matches!(err, SignalError::UntrustedIdentity { .. }));
        txn.commit().unwrap();
        let txn = bob.store.begin().unwrap();
        trust_contact(&txn, "alice", NOW).unwrap();
        txn.commit().unwrap();
        assert_eq!(recv(&bob, &alice2, &ct).unwrap().plaintext, b"held");
    }

    #[test]
    fn store_survives_reopen_with_sessions_intact() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        connect(&alice, &bob, true);
        recv(&bob, &alice, &send(&alice, &bob, b"before")).unwrap();
        let (dir, addr) = (bob._dir, bob.addr);
        drop(bob.store);
        let bob = Peer {
            store: Store::open(dir.path()).unwrap(),
            _dir: dir,
            addr,
        };
        let ct = send(&alice, &bob, b"after reopen");
        assert_eq!(recv(&bob, &alice, &ct).unwrap().plaintext, b"after reopen");
        let reply = send(&bob, &alice, b"me too");
        assert_eq!(recv(&alice, &bob, &reply).unwrap().plaintext, b"me too");
    }

    #[test]
    fn dropped_transaction_leaves_neither_session_update_nor_row() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        connect(&alice, &bob, true);
        recv(&bob, &alice, &send(&alice, &bob, b"first")).unwrap();
        let ct = send(&alice, &bob, b"second");
        {
            // Decrypt and add the inbox row, then crash before commit.
            let txn = bob.store.begin().unwrap();
            let d = decrypt(&txn, &alice.addr, &ct, &mut rand::rng(), NOW).unwrap();
            let row = InboxRow {
                group: String::new(),
                id: "A".into(),
                from: "alice".into(),
                t_secs: 1,
                received_ms: 1,
                content: d.plaintext,
            };
            txn.inbox_insert("alice/A", &row).unwrap();
        }
        let txn = bob.store.begin().unwrap();
        assert!(
            txn.inbox_after(0, 10).unwrap().is_empty(),
            "row must not survive"
        );
        drop(txn);
        // The session was not advanced either: the same ciphertext decrypts (not a duplicate).
        assert_eq!(recv(&bob, &alice, &ct).unwrap().plaintext, b"second");
    }

    #[test]
    fn dropped_encrypt_transaction_reuses_nothing_and_loses_nothing() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        connect(&alice, &bob, true);
        recv(&bob, &alice, &send(&alice, &bob, b"first")).unwrap();
        {
            let txn = alice.store.begin().unwrap();
            encrypt(&txn, &bob.addr, b"never sent", NOW).unwrap();
        }
        let ct = send(&alice, &bob, b"sent");
        assert_eq!(recv(&bob, &alice, &ct).unwrap().plaintext, b"sent");
    }

    #[test]
    fn prekey_ids_increase_and_wrap_within_24_bits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let txn = store.begin().unwrap();
        ensure_identity(&txn, &mut rand::rng()).unwrap();
        let a = generate_prekeys(&txn, &mut rand::rng(), 3).unwrap();
        assert_eq!(a.iter().map(|k| k.id).collect::<Vec<_>>(), [1, 2, 3]);
        txn.set_counter(META_NEXT_PREKEY_ID, MAX_PREKEY_ID - 1)
            .unwrap();
        let b = generate_prekeys(&txn, &mut rand::rng(), 3).unwrap();
        assert_eq!(
            b.iter().map(|k| k.id).collect::<Vec<_>>(),
            [MAX_PREKEY_ID - 1, MAX_PREKEY_ID, 1]
        );
    }

    #[test]
    fn signed_prekey_rotates_and_old_ones_still_decrypt() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        let old = bundle(&bob, true);
        let txn = bob.store.begin().unwrap();
        assert!(!signed_prekey_due(&txn, NOW).unwrap());
        assert!(signed_prekey_due(&txn, NOW + SIGNED_PREKEY_ROTATION_MS).unwrap());
        let new =
            rotate_signed_prekey(&txn, &mut rand::rng(), NOW + SIGNED_PREKEY_ROTATION_MS).unwrap();
        txn.commit().unwrap();
        assert_ne!(new.id, old.signed_prekey.id);
        check_signed_prekey(&bob.store.begin().unwrap()).unwrap();
        // A pkmsg built from the old bundle still decrypts after the rotation.
        let txn = alice.store.begin().unwrap();
        process_bundle(&txn, &bob.addr, &old, &mut rand::rng(), NOW).unwrap();
        txn.commit().unwrap();
        assert_eq!(
            recv(&bob, &alice, &send(&alice, &bob, b"late"))
                .unwrap()
                .plaintext,
            b"late"
        );
    }

    #[test]
    fn signed_prekeys_beyond_the_bound_are_pruned() {
        let bob = peer("bob");
        let txn = bob.store.begin().unwrap();
        for _ in 0..MAX_SIGNED_PREKEYS_KEPT + 3 {
            rotate_signed_prekey(&txn, &mut rand::rng(), NOW).unwrap();
        }
        assert_eq!(
            txn.count_ids(IdTable::SignedPreKeys).unwrap(),
            MAX_SIGNED_PREKEYS_KEPT as u64
        );
    }

    #[test]
    fn garbage_ciphertext_is_a_typed_error() {
        let (alice, bob) = (peer("alice"), peer("bob"));
        connect(&alice, &bob, true);
        for body in [vec![], vec![0x33], vec![0x33; 80], vec![0x22; 80]] {
            for kind in [EncType::PkMsg, EncType::Msg] {
                let r = recv(
                    &bob,
                    &alice,
                    &Ciphertext {
                        kind,
                        body: body.clone(),
                    },
                );
                assert!(r.is_err());
            }
        }
        let mut ct = send(&alice, &bob, b"tamper");
        let last = ct.body.len() - 1;
        ct.body[last] ^= 1;
        assert!(recv(&bob, &alice, &ct).is_err());
    }

    #[test]
    fn login_signature_verifies_only_for_its_message_and_key() {
        let me = LocalIdentity::generate(&mut rand::rng());
        let other = LocalIdentity::generate(&mut rand::rng());
        let sig = me.sign(b"nonce+account", &mut rand::rng()).unwrap();
        assert!(verify_signature(&me.public(), b"nonce+account", &sig));
        assert!(!verify_signature(&me.public(), b"nonce+accounT", &sig));
        assert!(!verify_signature(&other.public(), b"nonce+account", &sig));
    }

    #[test]
    fn fingerprints_are_30_digits_and_safety_number_is_symmetric() {
        let a = LocalIdentity::generate(&mut rand::rng()).public();
        let b = LocalIdentity::generate(&mut rand::rng()).public();
        let f = fingerprint(&a, "alice");
        assert_eq!(f.len(), 35);
        assert_eq!(f.chars().filter(char::is_ascii_digit).count(), 30);
        assert_eq!(
            safety_number((&a, "alice"), (&b, "bob")),
            safety_number((&b, "bob"), (&a, "alice"))
        );
        assert_ne!(fingerprint(&a, "alice"), fingerprint(&b, "alice"));
    }
}
