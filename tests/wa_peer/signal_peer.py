"""The independent side of the Signal checks in tests/wa_hub_interop.rs: pyaileys as a client of
the real interop-hub on profile `wa` that exchanges end-to-end encrypted messages with the
hub's simulated echo user. Everything on the client's side is pyaileys 0.1.5 as published:
its Noise handler and node codec (through hub_client.Conn), its Signal layer
(pyaileys/signal/repository.py: X3DH, the double ratchet and the message MAC in pure Python,
over `cryptography`'s X25519, AES-CBC and HMAC, and its own Curve25519 signatures in
pyaileys/crypto/curve25519_signature.py), its prekey upload node (WASocket._upload_prekeys),
its `encrypt` bundle parser (WhatsAppClient._parse_encrypt_iq), its padding
(pyaileys/messages/wa_message.py) and its `Message` protobuf class. Only the stanzas around
them (the `<message>`, acks and receipts) are assembled here, in the shapes of
docs/protocol.md sections 10 to 12, because pyaileys' own senders expect a paired phone.

Usage: signal_peer.py CONFIG_JSON CASE [CASE ...]
CONFIG_JSON is hub_client.py's (port, root, serial, account_id, token), plus echo (the echo
user's phone digits) and control (the hub's control API address). Each CASE logs in afresh
with a new identity key, which is also the Noise static key (the hub binds the device to it),
uploads prekeys and fetches the echo user's bundle, then:
- echo: sends two texts, the first as `pkmsg`, the second as `msg` once the echo's reply has
  completed the session; for each, reads the hub's ack, the user's delivery and read receipts
  and its reply, decrypts the reply, acks everything and sends delivery and read receipts.
- tampered: sends a `pkmsg` whose ciphertext has one byte flipped, then a ping, and reports
  what came back before the ping's result and the ids the echo user has recorded by then
  (GET /users/{phone}/received on the control API); then resends the same text, properly encrypted,
  under the same id with count="1", as the retry receipt asks, and reads the echo.
It prints one JSON line per case; an unexpected error prints {"case", "error"}. The exit
status is 0 either way, the Rust side asserts on the lines.
"""

import asyncio
import json
import os
import time
import urllib.request

from hub_client import REGISTRATION_ID, TIMEOUT_S, Conn, client_payload, run_cases

import pyaileys.crypto.noise as noise
from pyaileys.auth.state import AuthenticationState
from pyaileys.auth.utils import init_auth_creds
from pyaileys.client import WhatsAppClient
from pyaileys.crypto.curve import DefaultCurve25519Provider
from pyaileys.messages.wa_message import decode_wa_message_bytes, encode_wa_message_bytes
from pyaileys.proto import WAProto_pb2 as proto
from pyaileys.signal.repository import SignalRepository
from pyaileys.socket import WASocket
from pyaileys.wabinary import S_WHATSAPP_NET, BinaryNode, decode_binary_node

# One-time prekeys uploaded per login (pyaileys uploads 30 when the server holds none).
PREKEYS = 30
# Most stanzas read while waiting for one; the hub sends a handful per message.
MAX_STANZAS = 64


class MemoryKeys:
    """pyaileys' SignalKeyStore protocol, in memory: {key type: {id: value}}."""

    def __init__(self):
        self.data = {}

    async def get(self, key_type, ids):
        table = self.data.get(key_type, {})
        return {i: table[i] for i in ids if i in table}

    async def set(self, data):
        for key_type, items in data.items():
            table = self.data.setdefault(key_type, {})
            for k, v in items.items():
                if v is None:
                    table.pop(k, None)
                else:
                    table[k] = v

    async def clear(self):
        self.data.clear()


class Peer:
    """One logged-in connection with pyaileys' Signal state; every stanza read is kept."""

    def __init__(self, cfg):
        noise.WA_CERT_PUBLIC_KEY = bytes.fromhex(cfg["root"])
        noise.WA_CERT_SERIAL = cfg["serial"]
        creds = init_auth_creds()
        creds.registration_id = REGISTRATION_ID
        self.auth = AuthenticationState(creds=creds, keys=MemoryKeys())
        self.signal = SignalRepository(self.auth)
        # The Signal identity is the Noise static key: the hub binds the device to it.
        self.identity = creds.signed_identity_key
        self.conn = Conn(cfg["port"], self.identity)
        self.echo_user = f"{cfg['echo']}@s.whatsapp.net"
        # WhatsApp names the phone (device 0) by its user JID; pyaileys' encoder writes
        # `x:0@s.whatsapp.net` as an AD_JID of device 0, which means the same.
        self.echo_device = f"{cfg['echo']}:0@s.whatsapp.net"
        self.seen = []
        self.next_id = 0
        # For WASocket._upload_prekeys, which this object stands in for.
        self._curve = DefaultCurve25519Provider()
        self.events = self

    async def emit(self, *_args, **_kwargs):
        return True

    def login(self, cfg):
        self.conn.handshake(lambda static: client_payload(cfg["account_id"], cfg["token"], static))
        first = self.conn.next_node()
        if first is None or first.tag != "success":
            raise RuntimeError(f"expected <success>, got {first}")
        return first.attrs

    async def next_node(self):
        """Conn.next_node, awaited: Conn's own runs an event loop, and the cases run in one."""

        async def take(frame):
            self.conn.frames.append(frame)

        while not self.conn.frames:
            data = self.conn.sock.recv(65536)
            if not data:
                return None
            await self.conn.handler.decode_frame(data, take)
        return decode_binary_node(self.conn.frames.pop(0))

    def tag(self):
        self.next_id += 1
        return f"p{self.next_id}-{os.urandom(2).hex()}"

    async def query(self, node, timeout_s=None):
        """Sends an iq and returns its answer; what comes in meanwhile is handled. The
        signature is WASocket.query's, which _upload_prekeys calls; the socket's own timeout
        (TIMEOUT_S) bounds the wait."""
        node.attrs.setdefault("id", self.tag())
        self.conn.send_node(node)
        got = await self.until(lambda n: n.tag == "iq" and n.attrs.get("id") == node.attrs["id"])
        if got.attrs.get("type") != "result":
            raise RuntimeError(f"iq {node.attrs.get('xmlns')} refused: {describe(got)}")
        return got

    async def ping(self):
        """A keepalive; its answer comes after everything the hub sent before it."""
        await self.query(
            BinaryNode(
                tag="iq",
                attrs={"type": "get", "xmlns": "w:p"},
                content=[BinaryNode(tag="ping", attrs={})],
            )
        )

    async def until(self, done):
        """Reads and handles stanzas until `done(node)`; returns that node."""
        for _ in range(MAX_STANZAS):
            node = await self.next_node()
            if node is None:
                raise ConnectionError(f"the hub closed; seen {[describe(n) for n in self.seen]}")
            await self.handle(node)
            if done(node):
                return node
        raise RuntimeError(f"gave up after {MAX_STANZAS} stanzas")

    async def handle(self, node):
        """Acks what the hub delivers, decrypts messages and answers them with receipts."""
        entry = describe(node)
        self.seen.append(entry)
        a = node.attrs
        if node.tag == "receipt":
            ack = {"class": "receipt", "id": a.get("id", "")}
            if a.get("type"):
                ack["type"] = a["type"]
            self.conn.send_node(BinaryNode(tag="ack", attrs=ack))
        elif node.tag == "notification":
            ack = {"class": "notification", "id": a.get("id", ""), "type": a.get("type", "")}
            self.conn.send_node(BinaryNode(tag="ack", attrs=ack))
        elif node.tag == "message":
            enc = child(node, "enc")
            try:
                padded = await self.signal.decrypt_message(
                    a["from"], message_type=enc.attrs["type"], ciphertext=bytes(enc.content)
                )
                msg = proto.Message()
                msg.ParseFromString(decode_wa_message_bytes(padded))
                entry["enc_type"] = enc.attrs["type"]
                entry["text"] = msg.conversation
            except Exception as e:
                entry["decrypt_error"] = f"{type(e).__name__}: {e}"
            # Acked either way, so the hub does not redeliver it forever.
            self.conn.send_node(
                BinaryNode(tag="ack", attrs={"class": "message", "id": a["id"], "to": a["from"]})
            )
            if "text" in entry:
                sender = a["from"].split(":")[0].split("@")[0] + "@s.whatsapp.net"
                self.conn.send_node(BinaryNode(tag="receipt", attrs={"id": a["id"], "to": sender}))
                self.conn.send_node(
                    BinaryNode(tag="receipt", attrs={"id": a["id"], "to": sender, "type": "read"})
                )

    async def upload_prekeys(self):
        # pyaileys' own node: registration, type, identity, PREKEYS one-time keys and the
        # signed prekey it signed with its own Curve25519 signature code.
        await WASocket._upload_prekeys(self, PREKEYS)

    async def fetch_echo_bundle(self):
        res = await self.query(
            BinaryNode(
                tag="iq",
                attrs={"to": S_WHATSAPP_NET, "xmlns": "encrypt", "type": "get"},
                content=[
                    BinaryNode(
                        tag="key",
                        attrs={},
                        content=[BinaryNode(tag="user", attrs={"jid": self.echo_device})],
                    )
                ],
            )
        )
        bundles = WhatsAppClient._parse_encrypt_iq(None, res)
        if len(bundles) != 1:
            raise RuntimeError(f"expected one bundle, got {describe(res)}")
        (bundle,) = bundles.values()
        await self.signal.inject_outgoing_session(self.echo_device, bundle)
        return {
            "registration_id": bundle.registration_id,
            "has_one_time_key": bundle.pre_key is not None,
        }

    async def encrypt_text(self, text):
        plain = encode_wa_message_bytes(proto.Message(conversation=text).SerializeToString())
        return await self.signal.encrypt_message(self.echo_device, data=plain)

    def send_message(self, msg_id, enc_type, body, count=None):
        attrs = {"id": msg_id, "to": self.echo_user, "type": "text", "t": str(int(time.time()))}
        if count is not None:
            attrs["count"] = str(count)
        enc = BinaryNode(tag="enc", attrs={"v": "2", "type": enc_type}, content=body)
        to = BinaryNode(tag="to", attrs={"jid": self.echo_device}, content=[enc])
        participants = BinaryNode(tag="participants", attrs={}, content=[to])
        self.conn.send_node(BinaryNode(tag="message", attrs=attrs, content=[participants]))

    async def round_trip(self, msg_id, text, enc_type, body, count=None):
        """Sends one text and reads until the echo's reply to it is in; then a ping, so the
        hub has taken our acks and receipts."""
        start = len(self.seen)
        self.send_message(msg_id, enc_type, body, count)
        want = f"echo: {text}"
        await self.until(lambda n: n.tag == "message" and self.seen[-1].get("text") == want)
        await self.ping()
        return self.seen[start:]


def child(node, tag):
    if isinstance(node.content, list):
        for c in node.content:
            if isinstance(c, BinaryNode) and c.tag == tag:
                return c
    return None


def describe(node):
    """A node as JSON: tag, attrs, and its children's tags and attrs (bytes as sizes)."""
    out = {"tag": node.tag, "attrs": dict(node.attrs)}
    if isinstance(node.content, list):
        kids = [c for c in node.content if isinstance(c, BinaryNode)]
        out["children"] = [{"tag": c.tag, "attrs": dict(c.attrs)} for c in kids]
    elif isinstance(node.content, (bytes, bytearray)):
        out["bytes"] = len(node.content)
    return out


def tamper(enc_type, body):
    """Flips the first byte of the AES ciphertext inside a pkmsg's SignalMessage, keeping
    every length and the MAC as they were, so only the MAC check can notice."""
    if enc_type != "pkmsg":
        raise RuntimeError(f"expected a pkmsg, got {enc_type}")
    pk = proto.PreKeySignalMessage()
    pk.ParseFromString(body[1:])
    whisper = bytes(pk.message)
    sm = proto.SignalMessage()
    sm.ParseFromString(whisper[1:-8])
    ct = bytearray(sm.ciphertext)
    ct[0] ^= 0x01
    sm.ciphertext = bytes(ct)
    pk.message = whisper[:1] + sm.SerializeToString() + whisper[-8:]
    out = body[:1] + pk.SerializeToString()
    if len(out) != len(body) or out == body:
        raise RuntimeError("tampering changed the length or nothing")
    return out


async def setup(peer):
    await peer.upload_prekeys()
    return await peer.fetch_echo_bundle()


async def echo_case(peer, success, _cfg):
    bundle = await setup(peer)
    rounds = []
    for n in (1, 2):
        text = f"hello {n} from pyaileys {os.urandom(3).hex()}"
        msg_id = peer.signal.new_message_id()
        enc_type, body = await peer.encrypt_text(text)
        seen = await peer.round_trip(msg_id, text, enc_type, body)
        rounds.append({"id": msg_id, "text": text, "sent_type": enc_type, "seen": seen})
    return {"success": success, "bundle": bundle, "rounds": rounds}


async def tampered_case(peer, success, cfg):
    bundle = await setup(peer)
    text = f"tampered from pyaileys {os.urandom(3).hex()}"
    msg_id = peer.signal.new_message_id()
    enc_type, body = await peer.encrypt_text(text)
    start = len(peer.seen)
    peer.send_message(msg_id, enc_type, tamper(enc_type, body))
    await peer.ping()
    first = peer.seen[start:]
    # The hub lets its simulated users act on each stanza before it reads the next, so by the
    # ping's answer the echo user has done all it will do with the tampered message.
    url = f"http://{cfg['control']}/users/+{cfg['echo']}/received"
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
        recorded = [m["id"] for m in json.load(r)]
    # The answer to a retry receipt: the same content, encrypted anew, under the same id.
    enc_type, body = await peer.encrypt_text(text)
    resend = await peer.round_trip(msg_id, text, enc_type, body, count=1)
    return {
        "success": success,
        "bundle": bundle,
        "id": msg_id,
        "text": text,
        "first": first,
        "recorded_after_first": recorded,
        "resend_type": enc_type,
        "resend": resend,
    }


CASES = {"echo": echo_case, "tampered": tampered_case}


def run_case(case, cfg):
    peer = Peer(cfg)
    try:
        success = peer.login(cfg)
        line = asyncio.run(CASES[case](peer, success, cfg))
        line["static"] = peer.identity.public.hex()
        return {"case": case, **line}
    finally:
        peer.conn.close()


if __name__ == "__main__":
    run_cases(run_case)
