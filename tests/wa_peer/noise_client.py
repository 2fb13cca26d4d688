"""The independent side of tests/wa_noise_interop.rs: pyaileys' own Noise handler
(pyaileys/crypto/noise.py, ported from Baileys) as a client of our responder, over plain TCP.

Usage: noise_client.py PORT ROOT_PUBLIC_HEX ROOT_SERIAL [--hash-empty-hello-payload]
It connects to 127.0.0.1:PORT, runs the handshake with pyaileys' certificate check on and its
pinned root replaced by ours, sends a ClientPayload with product INTEROP and interopData,
then one sealed frame ("ping from pyaileys"). It prints, as one JSON line, its static public
key and the first sealed frame the server sends back. A refusal prints {"error": "..."} and
exits 1.

With --hash-empty-hello-payload the client also mixes the empty payload of its ClientHello
into the handshake hash, as standard Noise does (MixHash of a zero-length payload) and as
WhatsApp's handshake does not. Our responder follows WhatsApp, so with the flag the client
cannot open our ServerHello; the negative test uses it to show that.
"""

import asyncio
import json
import socket
import sys

import pyaileys.crypto.noise as noise
from pyaileys.crypto.curve import DefaultCurve25519Provider
from pyaileys.proto import WAProto_pb2 as proto


def read_frame(sock, handler):
    got = []

    async def take(frame):
        got.append(frame)

    while not got:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        asyncio.run(handler.decode_frame(data, take))
    return got[0]


def main():
    port, root_hex, root_serial = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    # pyaileys pins WhatsApp's root; the check is the same code, pointed at our root.
    noise.WA_CERT_PUBLIC_KEY = bytes.fromhex(root_hex)
    noise.WA_CERT_SERIAL = root_serial
    curve = DefaultCurve25519Provider()
    ephemeral, static = curve.generate_keypair(), curve.generate_keypair()
    handler = noise.NoiseHandler(key_pair=ephemeral)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        hello = proto.HandshakeMessage()
        hello.clientHello.ephemeral = ephemeral.public
        sock.sendall(handler.encode_frame(hello.SerializeToString()))
        if "--hash-empty-hello-payload" in sys.argv:
            handler.authenticate(b"")

        server_hello = proto.HandshakeMessage()
        server_hello.ParseFromString(read_frame(sock, handler))
        key_enc = handler.process_handshake(server_hello, static, verify_certificates=True)

        payload = proto.ClientPayload(
            username=4915112345678,
            passive=False,
            product=proto.ClientPayload.Product.Value("INTEROP"),
            connectType=proto.ClientPayload.ConnectType.WIFI_UNKNOWN,
            interopData=proto.ClientPayload.InteropData(
                accountId=7, token=b"header.claims.signature", enableReadReceipts=True
            ),
        )
        finish = proto.HandshakeMessage()
        finish.clientFinish.static = key_enc
        finish.clientFinish.payload = handler.encrypt(payload.SerializeToString())
        sock.sendall(handler.encode_frame(finish.SerializeToString()))
        asyncio.run(handler.finish_init())

        sock.sendall(handler.encode_frame(b"ping from pyaileys"))
        answer = read_frame(sock, handler)
        print(json.dumps({"static": static.public.hex(), "answer": answer.hex()}))
    except Exception as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
    finally:
        sock.close()


main()
