"""The independent side of tests/wa_binary_interop.rs: WhatsApp binary nodes read and written
by pyaileys (a pure-Python port of Baileys' WABinary, with its own dictionary tables).

Reads one JSON array of requests on stdin and writes one JSON array of answers on stdout:
- {"decode": "<hex frame payload>"} -> {"node": NODE} or {"error": "..."}
- {"encode": NODE}                  -> {"hex": "<frame payload>"} or {"error": "..."}
NODE is {"tag": str, "attrs": [[key, value], ...], "content": null | {"bytes": hex} |
{"children": [NODE, ...]}}. Content that pyaileys reads as a string is given as its UTF-8 bytes,
and an empty list or byte string as null, which is how our stanza model holds them.
"""

import json
import sys

from pyaileys.wabinary import BinaryNode, decode_binary_node, encode_binary_node


def to_json(node):
    content = node.content
    if isinstance(content, str):
        content = content.encode("utf-8")
    if isinstance(content, (bytes, bytearray)):
        content = {"bytes": bytes(content).hex()} if content else None
    elif isinstance(content, list):
        content = {"children": [to_json(c) for c in content]} if content else None
    elif content is not None:
        raise TypeError(f"unexpected content {type(content).__name__}")
    return {"tag": node.tag, "attrs": [[k, v] for k, v in node.attrs.items()], "content": content}


def from_json(obj):
    content = obj["content"]
    if content is not None:
        if "bytes" in content:
            content = bytes.fromhex(content["bytes"])
        else:
            content = [from_json(c) for c in content["children"]]
    return BinaryNode(tag=obj["tag"], attrs=dict(obj["attrs"]), content=content)


def answer(request):
    try:
        if "decode" in request:
            return {"node": to_json(decode_binary_node(bytes.fromhex(request["decode"])))}
        return {"hex": encode_binary_node(from_json(request["encode"])).hex()}
    except Exception as e:  # the Rust side reports which request failed and why
        return {"error": f"{type(e).__name__}: {e}"}


json.dump([answer(r) for r in json.load(sys.stdin)], sys.stdout)
