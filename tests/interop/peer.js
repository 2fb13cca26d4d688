#!/usr/bin/env node
// An independent classic Signal (X3DH, message version 3) peer, built on the
// `libsignal` npm package (libsignal-node), driven over stdin/stdout.
//
// It owns: one local identity held in memory, its signed prekey and one-time
// prekeys, and sessions with any number of remote addresses. It must not touch
// the file system or the network; everything lives in this process and dies
// with it.
//
// Protocol: one JSON object per line on stdin, exactly one JSON object per line
// on stdout for each input line, in order. Nothing else is ever written to
// stdout; diagnostics go to stderr, and only when INTEROP_PEER_VERBOSE=1.
// The protocol is described in README.md beside this file.
'use strict';

// libsignal-node logs with console.info (stdout) and console.warn/error. Stdout
// belongs to the protocol, so every console method is routed to stderr, and
// silenced unless asked for, so a driver that pipes stderr without reading it
// can never block this process on a full pipe.
const VERBOSE = process.env.INTEROP_PEER_VERBOSE === '1';
function log(...args) {
    if (VERBOSE) {
        process.stderr.write(
            args.map((a) => (typeof a === 'string' ? a : require('util').inspect(a))).join(' ') + '\n');
    }
}
for (const method of ['log', 'info', 'debug', 'warn', 'error', 'trace', 'dir']) {
    console[method] = log;
}

const readline = require('readline');
const libsignal = require('libsignal');

const { ProtocolAddress, SessionBuilder, SessionCipher, SessionRecord, keyhelper, curve } = libsignal;

/** Bytes of a raw Curve25519 public key on this interface (no type prefix). */
const RAW_PUBLIC_KEY_BYTES = 32;
/** The type prefix libsignal-node puts before a Curve25519 public key. */
const DJB_KEY_TYPE = 0x05;
/** Bytes of an XEdDSA signature. */
const SIGNATURE_BYTES = 64;
/** Signed prekey id handed out in every bundle. */
const SIGNED_PREKEY_ID = 1;
/** One-time prekeys generated at init, with ids 1..=ONE_TIME_PREKEY_COUNT. */
const ONE_TIME_PREKEY_COUNT = 10;
/** Largest registration id (14 bits). */
const MAX_REGISTRATION_ID = 0x3fff;
/** Longest accepted request line, in characters. */
const MAX_LINE_CHARS = 4 * 1024 * 1024;
/** Largest device id accepted on the interface. */
const MAX_DEVICE_ID = 0x7fffffff;
/** Largest prekey id accepted on the interface (prekey ids are 24-bit in Signal). */
const MAX_PREKEY_ID = 0xffffff;

class RequestError extends Error {}

// ---------------------------------------------------------------------------
// Boundary conversions

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict standard base64 (with padding) to Buffer; anything else is a RequestError. */
function fromB64(value, field) {
    if (typeof value !== 'string') {
        throw new RequestError(`${field}: expected a base64 string`);
    }
    if (!BASE64_RE.test(value)) {
        throw new RequestError(`${field}: not standard padded base64`);
    }
    return Buffer.from(value, 'base64');
}

function toB64(buf) {
    return Buffer.from(buf).toString('base64');
}

/** 32 raw bytes (base64) from the interface to libsignal-node's 33-byte 0x05-prefixed key. */
function publicKeyIn(value, field) {
    const raw = fromB64(value, field);
    if (raw.length !== RAW_PUBLIC_KEY_BYTES) {
        throw new RequestError(`${field}: expected ${RAW_PUBLIC_KEY_BYTES} bytes, got ${raw.length}`);
    }
    return Buffer.concat([Buffer.from([DJB_KEY_TYPE]), raw]);
}

/** libsignal-node's 33-byte 0x05-prefixed key to 32 raw bytes (base64) for the interface. */
function publicKeyOut(prefixed) {
    if (prefixed.length !== RAW_PUBLIC_KEY_BYTES + 1 || prefixed[0] !== DJB_KEY_TYPE) {
        throw new Error(`internal: unexpected public key encoding (${prefixed.length} bytes)`);
    }
    return toB64(prefixed.subarray(1));
}

function integerIn(value, field, min, max) {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
        throw new RequestError(`${field}: expected an integer in ${min}..=${max}`);
    }
    return value;
}

function objectIn(value, field) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        throw new RequestError(`${field}: expected an object`);
    }
    return value;
}

function addressIn(req) {
    const name = req.name;
    if (typeof name !== 'string' || name.length === 0 || name.includes('.')) {
        throw new RequestError('name: expected a non-empty string without "."');
    }
    const device = integerIn(req.device, 'device', 0, MAX_DEVICE_ID);
    return new ProtocolAddress(name, device);
}

// ---------------------------------------------------------------------------
// Storage: exactly the methods libsignal-node 6.0.0 calls
// (SessionBuilder.initOutgoing/initIncoming, SessionCipher.encrypt/decrypt*).

class MemoryStore {
    constructor(identityKeyPair, registrationId, signedPreKey, preKeys) {
        this.identityKeyPair = identityKeyPair;
        this.registrationId = registrationId;
        this.signedPreKey = signedPreKey; // { keyId, keyPair, signature }
        this.preKeys = preKeys; // Map<id, keyPair>
        // Sessions are kept serialized, so a failed operation that mutated a
        // loaded record in memory never leaks into stored state.
        this.sessions = new Map(); // Map<"name.device", JSON string>
    }

    async getOurIdentity() {
        return this.identityKeyPair;
    }

    async getOurRegistrationId() {
        return this.registrationId;
    }

    // Called with the bare name (outgoing, encrypt, decrypt) and with the
    // full "name.device" (incoming prekey message). This test peer trusts
    // every identity: identity policy is not what the interop test checks.
    async isTrustedIdentity(_id, _identityKey) {
        return true;
    }

    async loadSession(fqAddr) {
        const stored = this.sessions.get(fqAddr);
        return stored === undefined ? undefined : SessionRecord.deserialize(JSON.parse(stored));
    }

    async storeSession(fqAddr, record) {
        this.sessions.set(fqAddr, JSON.stringify(record.serialize()));
    }

    async loadPreKey(id) {
        const keyPair = this.preKeys.get(id);
        return keyPair === undefined ? undefined : { pubKey: keyPair.pubKey, privKey: keyPair.privKey };
    }

    async removePreKey(id) {
        this.preKeys.delete(id);
    }

    async loadSignedPreKey(id) {
        if (id !== this.signedPreKey.keyId) {
            return undefined;
        }
        const keyPair = this.signedPreKey.keyPair;
        return { pubKey: keyPair.pubKey, privKey: keyPair.privKey };
    }
}

// ---------------------------------------------------------------------------
// Peer state and operations

const state = {
    store: null, // MemoryStore once initialised
    nextPreKeyId: 1, // next one-time prekey id to hand out in a bundle
};

function requireStore() {
    if (state.store === null) {
        throw new RequestError('not initialised: send {"op":"init",...} first');
    }
    return state.store;
}

function opInit(req) {
    if (state.store !== null) {
        throw new RequestError('already initialised: one identity per process');
    }
    addressIn(req); // validated for shape; the local address is informative only
    const identityKeyPair = keyhelper.generateIdentityKeyPair();
    let registrationId = 0;
    while (registrationId === 0) {
        registrationId = keyhelper.generateRegistrationId() & MAX_REGISTRATION_ID;
    }
    const signedPreKey = keyhelper.generateSignedPreKey(identityKeyPair, SIGNED_PREKEY_ID);
    const preKeys = new Map();
    for (let id = 1; id <= ONE_TIME_PREKEY_COUNT; id++) {
        preKeys.set(id, keyhelper.generatePreKey(id).keyPair);
    }
    state.store = new MemoryStore(identityKeyPair, registrationId, signedPreKey, preKeys);
    state.nextPreKeyId = 1;
    return { ok: true, identity: publicKeyOut(identityKeyPair.pubKey), registration_id: registrationId };
}

function opBundle(req) {
    const store = requireStore();
    if (typeof req.with_prekey !== 'boolean') {
        throw new RequestError('with_prekey: expected a boolean');
    }
    let prekey = null;
    if (req.with_prekey) {
        if (state.nextPreKeyId > ONE_TIME_PREKEY_COUNT) {
            throw new RequestError(`one-time prekeys exhausted (all ${ONE_TIME_PREKEY_COUNT} handed out)`);
        }
        const id = state.nextPreKeyId;
        state.nextPreKeyId += 1;
        const keyPair = store.preKeys.get(id);
        if (keyPair === undefined) {
            throw new Error(`internal: one-time prekey ${id} missing`);
        }
        prekey = { id, public: publicKeyOut(keyPair.pubKey) };
    }
    const spk = store.signedPreKey;
    return {
        ok: true,
        registration_id: store.registrationId,
        identity: publicKeyOut(store.identityKeyPair.pubKey),
        signed_prekey: {
            id: spk.keyId,
            public: publicKeyOut(spk.keyPair.pubKey),
            signature: toB64(spk.signature),
        },
        prekey,
    };
}

async function opProcessBundle(req) {
    const store = requireStore();
    const addr = addressIn(req);
    const bundle = objectIn(req.bundle, 'bundle');
    const identityKey = publicKeyIn(bundle.identity, 'bundle.identity');
    const registrationId = integerIn(bundle.registration_id, 'bundle.registration_id', 0, 0xffffffff);
    const spkIn = objectIn(bundle.signed_prekey, 'bundle.signed_prekey');
    const signedPreKey = {
        keyId: integerIn(spkIn.id, 'bundle.signed_prekey.id', 0, MAX_PREKEY_ID),
        publicKey: publicKeyIn(spkIn.public, 'bundle.signed_prekey.public'),
        signature: fromB64(spkIn.signature, 'bundle.signed_prekey.signature'),
    };
    if (signedPreKey.signature.length !== SIGNATURE_BYTES) {
        throw new RequestError(`bundle.signed_prekey.signature: expected ${SIGNATURE_BYTES} bytes`);
    }
    let preKey;
    if (bundle.prekey !== null && bundle.prekey !== undefined) {
        const pkIn = objectIn(bundle.prekey, 'bundle.prekey');
        preKey = {
            keyId: integerIn(pkIn.id, 'bundle.prekey.id', 1, MAX_PREKEY_ID),
            publicKey: publicKeyIn(pkIn.public, 'bundle.prekey.public'),
        };
    }
    // libsignal-node 6.0.0's SessionBuilder.initOutgoing calls
    // curve.verifySignature(..., isInit=true), which skips verification and
    // returns true. A classic Signal peer must reject a bundle whose signed
    // prekey is not signed by the identity key, so the check is done here:
    // XEdDSA over the 33-byte 0x05-prefixed signed prekey public key.
    if (!curve.verifySignature(identityKey, signedPreKey.publicKey, signedPreKey.signature, false)) {
        throw new RequestError('bad signed prekey signature');
    }
    const device = { identityKey, registrationId, signedPreKey };
    if (preKey !== undefined) {
        device.preKey = preKey;
    }
    await new SessionBuilder(store, addr).initOutgoing(device);
    return { ok: true };
}

async function opEncrypt(req) {
    const store = requireStore();
    const addr = addressIn(req);
    const plaintext = fromB64(req.plaintext, 'plaintext');
    const result = await new SessionCipher(store, addr).encrypt(plaintext);
    let type;
    if (result.type === 3) {
        type = 'pkmsg';
    } else if (result.type === 1) {
        type = 'msg';
    } else {
        throw new Error(`internal: unknown libsignal message type ${result.type}`);
    }
    return { ok: true, type, body: toB64(result.body) };
}

async function opDecrypt(req) {
    const store = requireStore();
    const addr = addressIn(req);
    const body = fromB64(req.body, 'body');
    if (body.length === 0) {
        throw new RequestError('body: empty');
    }
    const cipher = new SessionCipher(store, addr);
    let plaintext;
    if (req.type === 'pkmsg') {
        plaintext = await cipher.decryptPreKeyWhisperMessage(body);
    } else if (req.type === 'msg') {
        plaintext = await cipher.decryptWhisperMessage(body);
    } else {
        throw new RequestError('type: expected "pkmsg" or "msg"');
    }
    return { ok: true, plaintext: toB64(plaintext) };
}

const OPS = {
    init: opInit,
    bundle: opBundle,
    process_bundle: opProcessBundle,
    encrypt: opEncrypt,
    decrypt: opDecrypt,
};

function describeError(e) {
    if (e instanceof Error) {
        const name = e.name && e.name !== 'Error' ? `${e.name}: ` : '';
        return `${name}${e.message || '(no message)'}`;
    }
    return String(e);
}

/** Handles one request line; returns the answer object and whether to quit. */
async function handleLine(line) {
    if (line.length > MAX_LINE_CHARS) {
        return [{ ok: false, error: `request longer than ${MAX_LINE_CHARS} characters` }, false];
    }
    let req;
    try {
        req = JSON.parse(line);
    } catch (e) {
        return [{ ok: false, error: `not JSON: ${describeError(e)}` }, false];
    }
    if (req === null || typeof req !== 'object' || Array.isArray(req)) {
        return [{ ok: false, error: 'request must be a JSON object' }, false];
    }
    if (req.op === 'quit') {
        return [{ ok: true }, true];
    }
    const op = typeof req.op === 'string' && Object.prototype.hasOwnProperty.call(OPS, req.op)
        ? OPS[req.op]
        : undefined;
    if (op === undefined) {
        return [{ ok: false, error: `unknown op: ${JSON.stringify(req.op)}` }, false];
    }
    try {
        return [await op(req), false];
    } catch (e) {
        log(`op ${req.op} failed:`, e);
        return [{ ok: false, error: describeError(e) }, false];
    }
}

function main() {
    // A driver that closes our stdout has gone away: nothing more to answer.
    process.stdout.on('error', () => process.exit(0));
    const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false });
    let chain = Promise.resolve();
    let quitting = false;
    rl.on('line', (rawLine) => {
        chain = chain.then(async () => {
            if (quitting) {
                return;
            }
            const [answer, quit] = await handleLine(rawLine.trim());
            process.stdout.write(JSON.stringify(answer) + '\n');
            if (quit) {
                quitting = true;
                rl.close();
                process.stdout.write('', () => process.exit(0));
            }
        });
    });
    rl.on('close', () => {
        chain.then(() => {
            if (!quitting) {
                process.stdout.write('', () => process.exit(0));
            }
        });
    });
}

main();
