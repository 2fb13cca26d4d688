#!/usr/bin/env python3
"""Regenerates household_vectors.txt in this directory.

The household shapes (reactions, edits and deletes for everyone as protocolMessage,
locations) encoded by Google's protobuf runtime for Python from WhatsApp's own schema,
WAProto_pb2, as the independent WhatsApp library pyaileys ships it. Neither that schema
nor that runtime is ours, so agreement checks our field numbers, wire types and presence
against WhatsApp's schema itself, not against our .proto.

Usage (from the repository root; the versions are the ones tests/python_support pins):
    pip install --target /tmp/pyaileys pyaileys==0.1.5 protobuf==7.36.2 cryptography==51.0.1 \
        cffi==2.1.1 pycparser==3.12 websockets==17.4
    PYTHONPATH=/tmp/pyaileys python3 tests/data/content/make_household_vectors.py

The samples are mirrored field for field in household_samples() in tests/content_vectors.rs;
change both together.
"""

import os

from pyaileys.proto import WAProto_pb2 as wa

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = "4915112345678@s.whatsapp.net"
ID_A = "3EB0A1B2C3D4E5F6A7B8C9"


def key(m, from_me):
    m.remoteJid = PEER
    m.fromMe = from_me
    m.id = ID_A


def samples():
    out = []
    m = wa.Message()
    key(m.reactionMessage.key, False)
    m.reactionMessage.text = "\U0001F44D"
    m.reactionMessage.senderTimestampMs = 1767225600123
    out.append(("household_reaction", m))

    m = wa.Message()
    p = m.protocolMessage
    key(p.key, True)
    p.type = wa.Message.ProtocolMessage.MESSAGE_EDIT
    p.editedMessage.conversation = "Door closed again"
    p.timestampMs = 1767225660000
    out.append(("household_edit", m))

    m = wa.Message()
    p = m.protocolMessage
    key(p.key, True)
    p.type = wa.Message.ProtocolMessage.REVOKE
    out.append(("household_revoke", m))

    m = wa.Message()
    inner = m.editedMessage.message.protocolMessage
    key(inner.key, False)
    inner.type = wa.Message.ProtocolMessage.MESSAGE_EDIT
    inner.editedMessage.conversation = "wrapped"
    inner.timestampMs = 5
    out.append(("household_wrapped_edit", m))

    m = wa.Message()
    loc = m.locationMessage
    loc.degreesLatitude = 52.520008
    loc.degreesLongitude = -13.404954
    loc.name = "Alexanderplatz"
    loc.address = "10178 Berlin"
    out.append(("household_location", m))
    return out


def main():
    lines = [f"{name} {m.SerializeToString(deterministic=True).hex()}" for name, m in samples()]
    with open(os.path.join(HERE, "household_vectors.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
