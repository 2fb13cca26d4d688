#!/usr/bin/env python3
"""Writes receipt_count2.xml: a retry receipt laid out byte for byte as docs/protocol.md
section 12 shows, with fixed byte patterns instead of real keys. Run from this directory."""
from base64 import b64encode

def b(data):
    return b64encode(bytes(data)).decode()

reg = (0x1673).to_bytes(4, "big")
xml = (
    '<receipt id="3EB0AEFD7C7033F19C38DE" to="acme-home:1@interop" type="retry">'
    '<retry count="2" id="3EB0AEFD7C7033F19C38DE" t="1700000000" v="1"/>'
    f"<registration>{b(reg)}</registration>"
    "<keys>"
    f"<type>{b([5])}</type>"
    f"<identity>{b([0x11] * 32)}</identity>"
    f"<key><id>{b([1, 2, 3])}</id><value>{b([0x44] * 32)}</value></key>"
    f"<skey><id>{b([0, 0, 1])}</id><value>{b([0x22] * 32)}</value>"
    f"<signature>{b([0x33] * 64)}</signature></skey>"
    "</keys>"
    "</receipt>"
)
with open("receipt_count2.xml", "w") as f:
    f.write(xml + "\n")
