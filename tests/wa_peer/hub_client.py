"""The independent side of tests/wa_hub_interop.rs: pyaileys as a client of the real
interop-hub on profile `wa`, with its own Noise handler (pyaileys/crypto/noise.py), its own
ClientPayload classes (pyaileys/proto/WAProto_pb2.py) and its own binary node encoder and
decoder (pyaileys/wabinary). Provider tokens for the refusal cases are signed with PyJWT.

Usage: hub_client.py CONFIG_JSON CASE [CASE ...]
CONFIG_JSON holds: port, root (the hub's Noise root public key, hex), serial (its serial),
account, account_id, token (the hub-provisioned JWT for account), other_token (one for
another account of the same integrator), key_der (path of the integrator's PKCS#8 key).

Each CASE is one connection with a fresh static key and prints one JSON line:
- login: the right token; decodes <success>, sends a ping iq, reads the iq result.
  {"case", "static", "success": {attrs}, "ping_id", "result": {"tag", "attrs", "other"}}
- relogin: as login, with the previous case's static key.
- expired, other_account, foreign_key, foreign_key_hub_kid, bad_ident: a login the hub must
  refuse. {"case", "failure": {attrs} | null, "closed": bool, "other": [tags seen instead]}
- wrong_pin: the client pins another root. {"case", "refused": "<error>"} or
  {"case", "success": ...} if it did not refuse.
An unexpected error prints {"case", "error": "..."}; the exit status is 0 either way, the
Rust side asserts on the lines.
"""

import asyncio
import base64
import hashlib
import json
import os
import socket
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import pyaileys.crypto.noise as noise
from pyaileys.crypto.curve import DefaultCurve25519Provider
from pyaileys.proto import WAProto_pb2 as proto
from pyaileys.wabinary import BinaryNode, decode_binary_node, encode_binary_node

TIMEOUT_S = 10
# Registration ids are 14 bits, never 0 (libsignal's generateRegistrationId range).
REGISTRATION_ID = 4242
AUDIENCE = "interop-hub"


class Conn:
    """One TCP connection driven by pyaileys' NoiseHandler; frames are queued in order."""

    def __init__(self, port, static):
        curve = DefaultCurve25519Provider()
        self.ephemeral = curve.generate_keypair()
        self.static = static
        self.handler = noise.NoiseHandler(key_pair=self.ephemeral)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.frames = []
        self.eof = False

    def next_frame(self):
        """The next frame's payload (decrypted once the transport is up), or None at EOF."""

        async def take(frame):
            self.frames.append(frame)

        while not self.frames:
            data = self.sock.recv(65536)
            if not data:
                self.eof = True
                return None
            asyncio.run(self.handler.decode_frame(data, take))
        return self.frames.pop(0)

    def handshake(self, payload_for):
        """Runs XX with certificate verification on; `payload_for(static_public)` builds the
        ClientPayload."""
        hello = proto.HandshakeMessage()
        hello.clientHello.ephemeral = self.ephemeral.public
        self.sock.sendall(self.handler.encode_frame(hello.SerializeToString()))
        server_hello = proto.HandshakeMessage()
        frame = self.next_frame()
        if frame is None:
            raise ConnectionError("the hub closed before its ServerHello")
        server_hello.ParseFromString(frame)
        key_enc = self.handler.process_handshake(
            server_hello, self.static, verify_certificates=True
        )
        finish = proto.HandshakeMessage()
        finish.clientFinish.static = key_enc
        finish.clientFinish.payload = self.handler.encrypt(payload_for(self.static.public))
        self.sock.sendall(self.handler.encode_frame(finish.SerializeToString()))
        asyncio.run(self.handler.finish_init())

    def next_node(self):
        frame = self.next_frame()
        return None if frame is None else decode_binary_node(frame)

    def send_node(self, node):
        self.sock.sendall(self.handler.encode_frame(encode_binary_node(node)))

    def closed(self):
        """True if the hub closes the connection with nothing more to say."""
        try:
            return self.next_frame() is None
        except (socket.timeout, TimeoutError):
            return False

    def close(self):
        self.sock.close()


def client_payload(account_id, token, ident):
    return proto.ClientPayload(
        passive=False,
        product=proto.ClientPayload.Product.Value("INTEROP"),
        connectType=proto.ClientPayload.ConnectType.WIFI_UNKNOWN,
        connectReason=proto.ClientPayload.ConnectReason.USER_ACTIVATED,
        device=1,
        devicePairingData=proto.ClientPayload.DevicePairingRegistrationData(
            eRegid=REGISTRATION_ID.to_bytes(4, "big"), eKeytype=b"\x05", eIdent=ident
        ),
        interopData=proto.ClientPayload.InteropData(
            accountId=account_id, token=token.encode(), enableReadReceipts=True
        ),
    ).SerializeToString()


def kid_of(public_key):
    """The hub's kid rule: the first 16 hex digits of SHA-256 of the uncompressed point."""
    point = public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return hashlib.sha256(point).hexdigest()[:16]


def header_kid(token):
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"]


def token_for(case, cfg):
    """The provider token a case presents."""
    integrator = cfg["account"].split("-", 1)[0]
    now = int(time.time())
    claims = {"iss": integrator, "sub": cfg["account"], "aud": AUDIENCE}
    if case == "expired":
        # The hub's own key and kid; expired an hour ago, well past the 60 s leeway.
        with open(cfg["key_der"], "rb") as f:
            key = serialization.load_der_private_key(f.read(), password=None)
        claims.update(iat=now - 7200, exp=now - 3600)
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid_of(key.public_key())})
    if case in ("foreign_key", "foreign_key_hub_kid"):
        key = ec.generate_private_key(ec.SECP256R1())
        kid = header_kid(cfg["token"]) if case == "foreign_key_hub_kid" else kid_of(key.public_key())
        claims.update(iat=now, exp=now + 3600)
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})
    if case == "other_account":
        return cfg["other_token"]
    return cfg["token"]


def run_case(case, cfg):
    curve = DefaultCurve25519Provider()
    if case == "relogin":
        static = cfg["last_static"]
    else:
        static = curve.generate_keypair()
    cfg["last_static"] = static
    if case == "wrong_pin":
        # pyaileys' pin, pointed at a root key the hub does not hold.
        noise.WA_CERT_PUBLIC_KEY = curve.generate_keypair().public
    else:
        noise.WA_CERT_PUBLIC_KEY = bytes.fromhex(cfg["root"])
    noise.WA_CERT_SERIAL = cfg["serial"]
    token = token_for(case, cfg)

    def payload_for(static_public):
        ident = os.urandom(32) if case == "bad_ident" else static_public
        return client_payload(cfg["account_id"], token, ident)

    conn = Conn(cfg["port"], static)
    try:
        try:
            conn.handshake(payload_for)
        except Exception as e:
            if case == "wrong_pin":
                return {"case": case, "refused": f"{type(e).__name__}: {e}"}
            raise
        first = conn.next_node()
        if case in ("login", "relogin", "wrong_pin"):
            if first is None or first.tag != "success":
                return {"case": case, "error": f"expected <success>, got {first}"}
            ping_id = "ping-" + os.urandom(4).hex()
            conn.send_node(
                BinaryNode(
                    tag="iq",
                    attrs={"id": ping_id, "type": "get", "xmlns": "w:p"},
                    content=[BinaryNode(tag="ping", attrs={})],
                )
            )
            # The hub may send other stanzas first (e.g. offline notices); skip them.
            other = []
            while True:
                node = conn.next_node()
                if node is None:
                    return {"case": case, "error": f"closed before the iq result, saw {other}"}
                if node.tag == "iq" and node.attrs.get("id") == ping_id:
                    break
                other.append(node.tag)
            return {
                "case": case,
                "static": static.public.hex(),
                "success": first.attrs,
                "ping_id": ping_id,
                "result": {"tag": node.tag, "attrs": node.attrs, "other": other},
            }
        failure = first if first is not None and first.tag == "failure" else None
        return {
            "case": case,
            "failure": None if failure is None else failure.attrs,
            "other": [] if failure is not None or first is None else [first.tag],
            "closed": conn.closed(),
        }
    finally:
        conn.close()


def run_cases(run):
    """The peers' command line, CONFIG_JSON CASE [CASE ...]: runs each case with `run(case,
    cfg)` and prints one JSON line per case; an unexpected error prints {"case", "error"}."""
    cfg = json.loads(sys.argv[1])
    for case in sys.argv[2:]:
        try:
            line = run(case, cfg)
        except Exception as e:
            line = {"case": case, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    run_cases(run_case)
