#!/usr/bin/env python3
"""Regenerates vectors.txt and message_ids.txt in this directory.

vectors.txt: sample content messages encoded by Google's protobuf runtime for
Python from crates/interop-proto/proto/content.proto, compiled by the protoc that grpcio-tools ships.
That is an implementation independent of prost, so agreement checks our field
numbers, wire types and presence handling.

message_ids.txt: message ids computed with hashlib, independent of the Rust sha2
crate and of our hex formatting.

Usage (from the repository root):
    pip install protobuf grpcio-tools
    python3 tests/data/content/make_vectors.py

The samples here are mirrored field for field in tests/content_vectors.rs; change
both together.
"""

import hashlib
import importlib
import os
import sys
import tempfile

from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
PROTO_DIR = os.path.join(ROOT, "crates", "interop-proto", "proto")


def load_schema():
    out = tempfile.mkdtemp(prefix="content_pb2_")
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", "content.proto"])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out)
    return importlib.import_module("content_pb2")


def seq(start, n):
    """n bytes counting up from start (mod 256), standing in for hashes and keys."""
    return bytes((start + i) % 256 for i in range(n))


PEER = "4915112345678@s.whatsapp.net"
OWN = "acme-alice@interop"
ID_A = "3EB0A1B2C3D4E5F6A7B8C9"
ID_B = "3EB000112233445566778F"


def samples(pb):
    out = []

    m = pb.Message()
    m.conversation = "Ding dong: someone is at the front door \U0001F514"
    out.append(("text", m))

    m = pb.Message()
    m.extendedTextMessage.text = "On my way"
    ci = m.extendedTextMessage.contextInfo
    ci.stanzaId = ID_A
    ci.participant = PEER
    ci.quotedMessage.conversation = "Are you home?"
    out.append(("reply", m))

    m = pb.Message()
    i = m.imageMessage
    i.url = "https://media.acme.example/m/9f3a"
    i.mimetype = "image/jpeg"
    i.caption = "Front door, 07:42"
    i.fileSha256 = seq(0x00, 32)
    i.fileLength = 48213
    i.height = 1080
    i.width = 1920
    i.mediaKey = seq(0x20, 32)
    i.fileEncSha256 = seq(0x40, 32)
    i.directPath = "/m/9f3a"
    i.mediaKeyTimestamp = 1767225600
    i.contextInfo.stanzaId = ID_B
    i.contextInfo.participant = PEER
    out.append(("image", m))

    m = pb.Message()
    a = m.audioMessage
    a.url = "https://media.acme.example/m/a001"
    a.mimetype = "audio/mpeg"
    a.fileSha256 = seq(0x60, 32)
    a.fileLength = 734003
    a.seconds = 42
    a.ptt = False
    a.mediaKey = seq(0x80, 32)
    a.fileEncSha256 = seq(0xA0, 32)
    a.directPath = "/m/a001"
    a.mediaKeyTimestamp = 1767225601
    out.append(("audio", m))

    m = pb.Message()
    a = m.audioMessage
    a.url = "https://media.acme.example/m/v002"
    a.mimetype = "audio/ogg; codecs=opus"
    a.fileSha256 = seq(0xC0, 32)
    a.fileLength = 9120
    a.seconds = 3
    a.ptt = True
    a.mediaKey = seq(0xE0, 32)
    a.fileEncSha256 = seq(0x10, 32)
    a.directPath = "/m/v002"
    a.mediaKeyTimestamp = 1767225602
    out.append(("voice", m))

    m = pb.Message()
    v = m.videoMessage
    v.url = "https://media.acme.example/m/c0de"
    v.mimetype = "video/mp4"
    v.fileSha256 = seq(0x30, 32)
    v.fileLength = 1 << 40
    v.seconds = 3600
    v.mediaKey = seq(0x50, 32)
    v.caption = "Garden camera"
    v.height = 720
    v.width = 1280
    v.fileEncSha256 = seq(0x70, 32)
    v.directPath = "/m/c0de"
    v.mediaKeyTimestamp = 1767225603
    out.append(("video", m))

    m = pb.Message()
    d = m.documentMessage
    d.url = "https://media.acme.example/m/d0c5"
    d.mimetype = "application/pdf"
    d.title = "Invoice March"
    d.fileSha256 = seq(0x90, 32)
    d.fileLength = 5_000_000_000
    d.mediaKey = seq(0xB0, 32)
    d.fileName = "invoice-2026-03.pdf"
    d.fileEncSha256 = seq(0xD0, 32)
    d.directPath = "/m/d0c5"
    d.mediaKeyTimestamp = 1767225604
    d.caption = "For the records"
    out.append(("document", m))

    m = pb.Message()
    r = m.reactionMessage
    r.key.remoteJid = PEER
    r.key.fromMe = True
    r.key.id = ID_A
    r.key.participant = OWN
    r.text = "\U0001F44D"
    r.senderTimestampMs = 1767225605123
    out.append(("reaction", m))

    # Removal: present-but-empty text and present-but-false fromMe must survive.
    m = pb.Message()
    r = m.reactionMessage
    r.key.remoteJid = PEER
    r.key.fromMe = False
    r.key.id = ID_B
    r.text = ""
    r.senderTimestampMs = 1767225606000
    out.append(("reaction_removed", m))

    # int64, not sint64: a negative timestamp is a ten-byte varint.
    m = pb.Message()
    m.imageMessage.mediaKeyTimestamp = -1
    out.append(("negative_timestamp", m))

    return out


def message_id(unix_secs, own_user, random16):
    digest = hashlib.sha256(
        unix_secs.to_bytes(8, "big") + own_user.encode("utf-8") + random16
    ).digest()
    return "3EB0" + digest[:9].hex().upper()


ID_CASES = [
    (0, "", bytes(16)),
    (1767225600, "acme-alice", seq(0x00, 16)),
    (1700000000, "acme-bob", seq(0xF0, 16)),
    (2**64 - 1, "h\u00e4ndler-\u00fc", b"\xff" * 16),
]


def main():
    pb = load_schema()
    with open(os.path.join(HERE, "vectors.txt"), "w") as f:
        f.write("# Made by make_vectors.py with Python protobuf; do not edit by hand.\n")
        f.write("# name, then the Message's protobuf bytes (no padding) in hex.\n")
        for name, msg in samples(pb):
            f.write(f"{name} {msg.SerializeToString(deterministic=True).hex()}\n")
    with open(os.path.join(HERE, "message_ids.txt"), "w") as f:
        f.write("# Made by make_vectors.py with hashlib; do not edit by hand.\n")
        f.write("# unix_secs, own_user as UTF-8 hex, 16 random bytes hex, expected id.\n")
        for secs, user, rnd in ID_CASES:
            f.write(f"{secs} {user.encode('utf-8').hex()} {rnd.hex()} {message_id(secs, user, rnd)}\n")


if __name__ == "__main__":
    main()
