//! Message notes: what is known about a message beyond its original content, which is never
//! rewritten. A note holds the correlation a sent message carried, and the latest text and
//! the edited/revoked flags after an edit or a delete for everyone. Keyed like the message it
//! annotates: our message id for ours, the inbox dedupe key (`{from}@s.whatsapp.net|{id}`)
//! for theirs, so a peer can only amend its own messages. Row layout: docs/store.md,
//! `message_notes`.

use super::*;

/// Row version of a `message_notes` value.
pub const NOTE_ROW_VERSION: u8 = 1;
/// Longest correlation a sent message may carry, in bytes.
pub const MAX_CORRELATION_BYTES: usize = 64;
/// Longest latest text a note keeps, in bytes (an edit's text is bounded by the content
/// bound before it gets here).
pub const MAX_NOTE_TEXT_BYTES: usize = 64 * 1024;

const FLAG_EDITED: u8 = 1;
const FLAG_REVOKED: u8 = 2;

/// What a note says about one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageNote {
    /// The correlation given when we sent it (empty: none).
    pub correlation: String,
    /// Edited at least once; `text` is then the latest text.
    pub edited: bool,
    /// Deleted for everyone.
    pub revoked: bool,
    /// The latest text after an edit (empty unless `edited`).
    pub text: String,
    /// When the note last changed, in milliseconds since the Unix epoch.
    pub updated_ms: u64,
}

pub(super) fn encode_note(n: &MessageNote) -> Result<Vec<u8>, StoreError> {
    if n.correlation.len() > MAX_CORRELATION_BYTES {
        return Err(StoreError::TooLarge {
            what: "correlation",
            len: n.correlation.len() as u64,
            max: MAX_CORRELATION_BYTES as u64,
        });
    }
    if n.text.len() > MAX_NOTE_TEXT_BYTES {
        return Err(StoreError::TooLarge {
            what: "note text",
            len: n.text.len() as u64,
            max: MAX_NOTE_TEXT_BYTES as u64,
        });
    }
    let mut v = Vec::with_capacity(18 + n.correlation.len() + n.text.len());
    v.push(NOTE_ROW_VERSION);
    let flags =
        (if n.edited { FLAG_EDITED } else { 0 }) | (if n.revoked { FLAG_REVOKED } else { 0 });
    v.push(flags);
    v.extend_from_slice(&n.updated_ms.to_be_bytes());
    put_bytes(&mut v, "correlation", n.correlation.as_bytes())?;
    put_bytes(&mut v, "note text", n.text.as_bytes())?;
    Ok(v)
}

pub(super) fn decode_note(b: &[u8]) -> Result<MessageNote, StoreError> {
    let corrupt = |detail| StoreError::Corrupt {
        table: "message_notes",
        detail,
    };
    let mut r = Reader::new(b, "message_notes");
    r.version(NOTE_ROW_VERSION)?;
    let flags = r.u8()?;
    if flags & !(FLAG_EDITED | FLAG_REVOKED) != 0 {
        return Err(corrupt("unknown flags"));
    }
    let updated_ms = r.u64()?;
    let correlation = r.string()?;
    let text = r.string()?;
    r.end()?;
    if correlation.len() > MAX_CORRELATION_BYTES {
        return Err(corrupt("correlation too long"));
    }
    Ok(MessageNote {
        correlation,
        edited: flags & FLAG_EDITED != 0,
        revoked: flags & FLAG_REVOKED != 0,
        text,
        updated_ms,
    })
}

impl Txn {
    /// The note on the message keyed `key`, if any.
    pub fn note(&self, key: &str) -> Result<Option<MessageNote>, StoreError> {
        match self.inner.open_table(MESSAGE_NOTES)?.get(key)? {
            Some(v) => decode_note(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Writes the note on the message keyed `key`.
    pub fn put_note(&self, key: &str, note: &MessageNote) -> Result<(), StoreError> {
        check_key(key)?;
        let bytes = encode_note(note)?;
        self.inner
            .open_table(MESSAGE_NOTES)?
            .insert(key, bytes.as_slice())?;
        Ok(())
    }

    /// Records an edit (`Some(text)`) or a delete for everyone (`None`) of the message keyed
    /// `key`, keeping its correlation. A revoked message stays revoked.
    pub fn amend(&self, key: &str, edit: Option<&str>, now_ms: u64) -> Result<(), StoreError> {
        let mut note = self.note(key)?.unwrap_or_default();
        match edit {
            Some(text) if !note.revoked => {
                note.edited = true;
                note.text = text.to_owned();
            }
            Some(_) => {}
            None => {
                note.revoked = true;
                note.text.clear();
            }
        }
        note.updated_ms = now_ms;
        self.put_note(key, &note)
    }

    /// Forgets the note on the message keyed `key` (retention, with the message).
    pub fn remove_note(&self, key: &str) -> Result<(), StoreError> {
        self.inner.open_table(MESSAGE_NOTES)?.remove(key)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn notes_round_trip_and_amend_keeps_the_correlation() {
        let store = Store::in_memory().unwrap();
        let txn = store.begin().unwrap();
        let first = MessageNote {
            correlation: "door-42".into(),
            ..MessageNote::default()
        };
        txn.put_note("3EB0AA", &first).unwrap();
        txn.amend("3EB0AA", Some("new text"), 7).unwrap();
        let n = txn.note("3EB0AA").unwrap().unwrap();
        assert_eq!(
            (n.correlation.as_str(), n.edited, n.revoked),
            ("door-42", true, false)
        );
        assert_eq!((n.text.as_str(), n.updated_ms), ("new text", 7));
        txn.amend("3EB0AA", None, 8).unwrap();
        txn.amend("3EB0AA", Some("too late"), 9).unwrap();
        let n = txn.note("3EB0AA").unwrap().unwrap();
        assert!(
            n.revoked && n.text.is_empty(),
            "a revoked message stays revoked"
        );
        txn.remove_note("3EB0AA").unwrap();
        assert_eq!(txn.note("3EB0AA").unwrap(), None);
    }

    #[test]
    fn a_correlation_over_the_bound_is_refused() {
        let n = MessageNote {
            correlation: "x".repeat(MAX_CORRELATION_BYTES + 1),
            ..MessageNote::default()
        };
        assert!(matches!(encode_note(&n), Err(StoreError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn arbitrary_rows_never_panic_and_accepted_ones_are_canonical(b in proptest::collection::vec(any::<u8>(), 0..96)) {
            if let Ok(n) = decode_note(&b) {
                prop_assert_eq!(encode_note(&n).unwrap(), b);
            }
        }

        #[test]
        fn notes_round_trip(corr in "[ -~]{0,64}", text in ".{0,40}", edited: bool, revoked: bool, updated_ms: u64) {
            let n = MessageNote { correlation: corr, edited, revoked, text, updated_ms };
            prop_assert_eq!(decode_note(&encode_note(&n).unwrap()).unwrap(), n);
        }
    }
}
