//! Row codecs of the daemon's own tables: fixed-width big-endian fields, a one-byte row
//! version first, bounded lengths (docs/store.md). Pure bytes in and out.

use super::*;

pub(super) const OUTBOX_ROW_VERSION: u8 = 1;
pub(super) const INBOX_ROW_VERSION: u8 = 1;
/// An inbox row from a group: version 1's fields, then the group id (schema 4).
pub(super) const INBOX_GROUP_ROW_VERSION: u8 = 2;

pub(super) fn put_bytes(out: &mut Vec<u8>, what: &'static str, b: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(b.len()).map_err(|_| StoreError::TooLarge {
        what,
        len: b.len() as u64,
        max: u64::from(u32::MAX),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

pub(super) fn encode_outbox(r: &OutboxRow) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::with_capacity(64 + r.content.len() + r.stanza.len());
    v.push(OUTBOX_ROW_VERSION);
    v.push(r.kind);
    v.push(r.status as u8);
    v.extend_from_slice(&r.created_ms.to_be_bytes());
    v.extend_from_slice(&r.updated_ms.to_be_bytes());
    put_bytes(&mut v, "outbox id", r.id.as_bytes())?;
    put_bytes(&mut v, "outbox to", r.to.as_bytes())?;
    put_bytes(&mut v, "outbox error", r.error_code.as_bytes())?;
    put_bytes(&mut v, "outbox content", &r.content)?;
    put_bytes(&mut v, "outbox stanza", &r.stanza)?;
    Ok(v)
}

pub(super) fn decode_outbox(b: &[u8]) -> Result<OutboxRow, StoreError> {
    let mut r = Reader::new(b, "outbox");
    r.version(OUTBOX_ROW_VERSION)?;
    let kind = r.u8()?;
    let status = OutboxStatus::from_byte(r.u8()?).ok_or(StoreError::Corrupt {
        table: "outbox",
        detail: "unknown status",
    })?;
    let created_ms = r.u64()?;
    let updated_ms = r.u64()?;
    let id = r.string()?;
    let to = r.string()?;
    let error_code = r.string()?;
    let content = r.bytes()?.to_vec();
    let stanza = r.bytes()?.to_vec();
    r.end()?;
    Ok(OutboxRow {
        id,
        to,
        kind,
        status,
        created_ms,
        updated_ms,
        error_code,
        content,
        stanza,
    })
}

pub(super) fn encode_inbox(r: &InboxRow) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::with_capacity(40 + r.content.len() + r.group.len());
    // A 1:1 row keeps version 1's bytes exactly; only a group row needs version 2.
    v.push(if r.group.is_empty() {
        INBOX_ROW_VERSION
    } else {
        INBOX_GROUP_ROW_VERSION
    });
    v.extend_from_slice(&r.t_secs.to_be_bytes());
    v.extend_from_slice(&r.received_ms.to_be_bytes());
    put_bytes(&mut v, "inbox id", r.id.as_bytes())?;
    put_bytes(&mut v, "inbox from", r.from.as_bytes())?;
    put_bytes(&mut v, "inbox content", &r.content)?;
    if !r.group.is_empty() {
        put_bytes(&mut v, "inbox group", r.group.as_bytes())?;
    }
    Ok(v)
}

/// The `idempotency` value: version, then the message id as length-prefixed UTF-8.
pub(super) fn encode_idempotency(message_id: &str) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::with_capacity(5 + message_id.len());
    v.push(IDEMPOTENCY_ROW_VERSION);
    put_bytes(&mut v, "idempotency message id", message_id.as_bytes())?;
    Ok(v)
}

pub(super) fn decode_idempotency(b: &[u8]) -> Result<String, StoreError> {
    let mut r = Reader::new(b, "idempotency");
    r.version(IDEMPOTENCY_ROW_VERSION)?;
    let id = r.string()?;
    r.end()?;
    Ok(id)
}

pub(super) fn decode_pending(b: &[u8]) -> Result<PendingInbox, StoreError> {
    let mut r = Reader::new(b, "pending_inbox");
    r.version(PENDING_INBOX_ROW_VERSION)?;
    let attempts = r.u32()?;
    let next_ms = r.u64()?;
    let row = decode_inbox(r.bytes()?)?;
    r.end()?;
    Ok(PendingInbox {
        attempts,
        next_ms,
        row,
    })
}

pub(super) fn decode_inbox(b: &[u8]) -> Result<InboxRow, StoreError> {
    let mut r = Reader::new(b, "inbox");
    let version = r.u8()?;
    if version != INBOX_ROW_VERSION && version != INBOX_GROUP_ROW_VERSION {
        return Err(StoreError::Corrupt {
            table: "inbox",
            detail: "unknown row version",
        });
    }
    let t_secs = r.u64()?;
    let received_ms = r.u64()?;
    let id = r.string()?;
    let from = r.string()?;
    let content = r.bytes()?.to_vec();
    let group = if version == INBOX_GROUP_ROW_VERSION {
        let g = r.string()?;
        if g.is_empty() {
            return Err(StoreError::Corrupt {
                table: "inbox",
                detail: "empty group",
            });
        }
        g
    } else {
        String::new()
    };
    r.end()?;
    Ok(InboxRow {
        id,
        from,
        group,
        t_secs,
        received_ms,
        content,
    })
}

pub(super) fn be_u32(b: &[u8], table: &'static str) -> Result<u32, StoreError> {
    let a: [u8; 4] = b.try_into().map_err(|_| StoreError::Corrupt {
        table,
        detail: "bad u32",
    })?;
    Ok(u32::from_be_bytes(a))
}

pub(super) fn be_u64(b: &[u8], table: &'static str) -> Result<u64, StoreError> {
    let a: [u8; 8] = b.try_into().map_err(|_| StoreError::Corrupt {
        table,
        detail: "bad u64",
    })?;
    Ok(u64::from_be_bytes(a))
}
