#!/usr/bin/env python3
"""Writes the hostile sample frames listed in README.md into this directory.

Run from anywhere: `python3 tests/data/frames/make_samples.py`. The output is
deterministic, so re-running it must leave `git status` clean.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def billion_laughs():
    # The classic entity bomb: ten levels of tenfold expansion, ~3 GB if expanded.
    lines = ['<!DOCTYPE lolz [', ' <!ENTITY lol "lol">']
    for i in range(1, 10):
        prev = "lol" if i == 1 else f"lol{i - 1}"
        lines.append(f' <!ENTITY lol{i} "' + f"&{prev};" * 10 + '">')
    lines.append(']>')
    lines.append('<message id="&lol9;">&lol9;</message>')
    return "\n".join(lines).encode()


SAMPLES = {
    # Stanza payloads (what one frame carries, without the 3-byte header).
    "billion_laughs.bin": billion_laughs(),
    "external_entity.bin": (
        b'<!DOCTYPE iq [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b'<iq id="1" type="get">&xxe;</iq>'
    ),
    "doctype.bin": b'<!DOCTYPE stream><stream/>',
    "xml_declaration.bin": b'<?xml version="1.0" encoding="UTF-8"?><iq id="1"/>',
    "undefined_entity.bin": b'<message id="&foo;" to="1@s.whatsapp.net"/>',
    "deep_nesting.bin": b"<a>" * 5000 + b"</a>" * 5000,
    "bad_utf8.bin": b'<message id="\xc3\x28" to="\xff\xfe"/>',
    "too_many_children.bin": (
        b"<participants>"
        + b"".join(b'<to jid="%d:1@s.whatsapp.net"/>' % i for i in range(2049))
        + b"</participants>"
    ),
    "comment_before_root.bin": b'<!-- hello --><iq id="1"/>',
    "cdata_payload.bin": b'<enc v="2" type="msg"><![CDATA[\x01\x02]]></enc>',
    "mixed_content.bin": b'<message id="1">hello<body/></message>',
    # Raw framed streams (3-byte big-endian length, then payload).
    "oversize_length_header.bin": b"\xff\xff\xff<a/>",
    "zero_length_frame.bin": b"\x00\x00\x00",
}


def main():
    for name, data in sorted(SAMPLES.items()):
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
