"""Sender keys (Signal group cipher) by an implementation we did not write: pyaileys'
`signal/group.py`, a pure-Python port of Baileys' `Signal/Group` (AES via `cryptography`,
XEdDSA by pyaileys' own curve25519 signature code), not built from the whatsapp-rust project.

Driven by tests/sender_key_interop.rs. One JSON object on stdin:
  {"group": str, "ours": {"skdm": b64, "messages": [b64, ...], "order": [int, ...]},
   "theirs": {"count": int, "plaintexts": [b64, ...]}}
- ours: process our SenderKeyDistributionMessage under (group, "us"), then decrypt our
  SenderKeyMessages in `order`; a message that fails is reported as {"error": text}.
- theirs: make a chain of its own under (group, "them") and encrypt each plaintext.
One JSON object on stdout:
  {"decrypted": [b64 | {"error": text}, ...], "skdm": b64, "messages": [b64, ...]}
"""

import asyncio
import base64
import json
import sys

from pyaileys.proto import WAProto_pb2 as proto
from pyaileys.signal.address import SignalAddress
from pyaileys.signal.group import (
    GroupCipher,
    GroupSessionBuilder,
    SenderKeyDistributionMessage,
    SenderKeyName,
)


class MemoryStore:
    def __init__(self):
        self.records = {}

    async def load_sender_key(self, name):
        return self.records.setdefault(name.serialize(), proto.SenderKeyRecordStructure())

    async def store_sender_key(self, name, record):
        self.records[name.serialize()] = record


def b64(data):
    return base64.b64encode(data).decode()


async def main():
    req = json.load(sys.stdin)
    store = MemoryStore()
    group = req["group"]

    ours = SenderKeyName(group_id=group, sender=SignalAddress(name="us", device=1))
    skdm = SenderKeyDistributionMessage(serialized=base64.b64decode(req["ours"]["skdm"]))
    await GroupSessionBuilder(store).process(ours, skdm)
    cipher = GroupCipher(store, ours)
    decrypted = []
    for i in req["ours"]["order"]:
        try:
            pt = await cipher.decrypt(base64.b64decode(req["ours"]["messages"][i]))
            decrypted.append(b64(pt))
        except Exception as e:  # reported to the Rust side, which asserts on it
            decrypted.append({"error": str(e)})

    theirs = SenderKeyName(group_id=group, sender=SignalAddress(name="them", device=0))
    their_skdm = await GroupSessionBuilder(store).create(theirs)
    cipher = GroupCipher(store, theirs)
    messages = []
    for pt in req["theirs"]["plaintexts"]:
        messages.append(b64(await cipher.encrypt(base64.b64decode(pt))))

    json.dump(
        {"decrypted": decrypted, "skdm": b64(their_skdm.serialize()), "messages": messages},
        sys.stdout,
    )


asyncio.run(main())
