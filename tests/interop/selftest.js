#!/usr/bin/env node
// Self-test of peer.js: starts two peer processes (alice, bob) and drives them
// through the same JSON-lines protocol the Rust interop test uses, proving the
// peer is a working classic Signal implementation before anything is compared
// against it.
//
// It owns nothing but the two child processes it starts, and it ends them.
// Exit status is non-zero on any failed check; the last line printed is
// "N passed, M failed".
'use strict';

const { spawn } = require('child_process');
const crypto = require('crypto');
const path = require('path');
const readline = require('readline');

/** Longest wait for one answer from a peer, in milliseconds. */
const ANSWER_TIMEOUT_MS = 20000;
/** Longest wait for a peer to exit after quit or EOF, in milliseconds. */
const EXIT_TIMEOUT_MS = 10000;
/** Message version byte of classic Signal v3 (current 3, minimum 3). */
const VERSION_BYTE_V3 = 0x33;

const PEER_JS = path.join(__dirname, 'peer.js');

class Peer {
    constructor(label) {
        this.label = label;
        this.child = spawn(process.execPath, [PEER_JS], { stdio: ['pipe', 'pipe', 'inherit'] });
        this.pending = [];
        this.exited = new Promise((resolve) => {
            this.child.on('exit', (code, signal) => resolve({ code, signal }));
        });
        this.extraLines = [];
        readline.createInterface({ input: this.child.stdout, crlfDelay: Infinity }).on('line', (line) => {
            const waiter = this.pending.shift();
            if (waiter === undefined) {
                this.extraLines.push(line);
                return;
            }
            waiter(line);
        });
    }

    /** Sends one raw line and resolves with the parsed answer line. */
    sendLine(line) {
        return new Promise((resolve, reject) => {
            const timer = setTimeout(
                () => reject(new Error(`${this.label}: no answer within ${ANSWER_TIMEOUT_MS} ms to ${line}`)),
                ANSWER_TIMEOUT_MS);
            this.pending.push((answerLine) => {
                clearTimeout(timer);
                try {
                    resolve(JSON.parse(answerLine));
                } catch (e) {
                    reject(new Error(`${this.label}: answer is not JSON: ${answerLine}`));
                }
            });
            this.child.stdin.write(line + '\n');
        });
    }

    request(obj) {
        return this.sendLine(JSON.stringify(obj));
    }

    async waitExit() {
        let timer;
        const timeout = new Promise((resolve) => {
            timer = setTimeout(() => resolve({ code: null, signal: 'timeout' }), EXIT_TIMEOUT_MS);
        });
        const result = await Promise.race([this.exited, timeout]);
        clearTimeout(timer);
        return result;
    }

    kill() {
        if (this.child.exitCode === null && this.child.signalCode === null) {
            this.child.kill('SIGKILL');
        }
    }
}

// ---------------------------------------------------------------------------
// Tiny check harness

let passed = 0;
let failed = 0;

function check(name, condition, detail) {
    if (condition) {
        passed += 1;
        console.log(`ok   ${name}`);
    } else {
        failed += 1;
        console.log(`FAIL ${name}${detail === undefined ? '' : `: ${detail}`}`);
    }
}

const b64 = (buf) => Buffer.from(buf).toString('base64');
const unb64 = (s) => Buffer.from(s, 'base64');

function randomMessage(len) {
    return crypto.randomBytes(len);
}

/**
 * One direction of a conversation: `from` encrypts for the address it calls
 * `to`, `to` decrypts from the address it calls `from`. Device ids label
 * independent sessions between the same two identities.
 */
function link(fromPeer, fromName, toPeer, toName, device) {
    return { fromPeer, fromName, toPeer, toName, device };
}

async function encrypt(l, plaintext) {
    return l.fromPeer.request({ op: 'encrypt', name: l.toName, device: l.device, plaintext: b64(plaintext) });
}

async function decrypt(l, type, body) {
    return l.toPeer.request({ op: 'decrypt', name: l.fromName, device: l.device, type, body });
}

/** Encrypts one message and checks its envelope; returns {type, body, plaintext}. */
async function send(name, l, plaintext, expectedType) {
    const enc = await encrypt(l, plaintext);
    check(`${name}: encrypt ok`, enc.ok === true, JSON.stringify(enc));
    if (!enc.ok) {
        return null;
    }
    check(`${name}: type is ${expectedType}`, enc.type === expectedType, enc.type);
    const body = unb64(enc.body);
    check(`${name}: version byte 0x33`, body[0] === VERSION_BYTE_V3, `0x${body[0].toString(16)}`);
    return { type: enc.type, body: enc.body, plaintext };
}

async function receive(name, l, sent) {
    if (sent === null) {
        check(`${name}: decrypt (nothing was sent)`, false);
        return;
    }
    const dec = await decrypt(l, sent.type, sent.body);
    check(`${name}: decrypt ok`, dec.ok === true, JSON.stringify(dec));
    if (dec.ok) {
        check(`${name}: plaintext matches`, unb64(dec.plaintext).equals(sent.plaintext));
    }
}

/** Starts a session from `forward.fromPeer` using `bundle`; checks a full exchange. */
async function conversation(label, forward, backward, withPrekey) {
    const bundle = await forward.toPeer.request({ op: 'bundle', with_prekey: withPrekey });
    check(`${label}: bundle ok`, bundle.ok === true, JSON.stringify(bundle));
    check(`${label}: bundle prekey presence`, withPrekey ? bundle.prekey !== null : bundle.prekey === null);
    const proc = await forward.fromPeer.request({
        op: 'process_bundle', name: forward.toName, device: forward.device, bundle,
    });
    check(`${label}: process_bundle ok`, proc.ok === true, JSON.stringify(proc));

    // Several messages before any reply: all are prekey messages.
    const first = [];
    for (let i = 0; i < 3; i++) {
        first.push(await send(`${label}: initiator msg ${i}`, forward, randomMessage(1 + i * 37), 'pkmsg'));
    }
    for (let i = 0; i < first.length; i++) {
        await receive(`${label}: responder gets msg ${i}`, forward, first[i]);
    }
    // Replies, then a few rounds each way, including empty and large payloads.
    const sizes = [0, 1, 15, 16, 17, 4096];
    for (let round = 0; round < 3; round++) {
        for (let i = 0; i < 2; i++) {
            const size = sizes[(round * 2 + i) % sizes.length];
            const m = await send(`${label}: round ${round} reply ${i}`, backward, randomMessage(size), 'msg');
            await receive(`${label}: round ${round} reply ${i} received`, backward, m);
        }
        for (let i = 0; i < 2; i++) {
            const size = sizes[(round * 2 + i + 1) % sizes.length];
            const m = await send(`${label}: round ${round} forward ${i}`, forward, randomMessage(size), 'msg');
            await receive(`${label}: round ${round} forward ${i} received`, forward, m);
        }
    }
}

async function outOfOrder(label, forward, backward) {
    // Within one chain: five messages delivered 3,1,5,2,4.
    const batch = [];
    for (let i = 0; i < 5; i++) {
        batch.push(await send(`${label}: chain msg ${i}`, forward, randomMessage(20 + i), 'msg'));
    }
    for (const i of [2, 0, 4, 1, 3]) {
        await receive(`${label}: chain msg ${i} out of order`, forward, batch[i]);
    }
    // A replayed message is refused.
    if (batch[0] !== null) {
        const replay = await decrypt(forward, batch[0].type, batch[0].body);
        check(`${label}: replayed message refused`, replay.ok === false, JSON.stringify(replay));
    }
    // Across a ratchet step: a1, a2 sent; only a2 arrives; reply; a3 on the
    // new chain arrives; then the late a1 from the old chain.
    const a1 = await send(`${label}: old-chain a1`, forward, randomMessage(33), 'msg');
    const a2 = await send(`${label}: old-chain a2`, forward, randomMessage(34), 'msg');
    await receive(`${label}: a2 before a1`, forward, a2);
    const r = await send(`${label}: reply after a2`, backward, randomMessage(35), 'msg');
    await receive(`${label}: reply received`, backward, r);
    const a3 = await send(`${label}: new-chain a3`, forward, randomMessage(36), 'msg');
    await receive(`${label}: a3 on new chain`, forward, a3);
    await receive(`${label}: late a1 from old chain`, forward, a1);
    // The other direction, out of order within one chain: 3,1,2.
    const back = [];
    for (let i = 0; i < 3; i++) {
        back.push(await send(`${label}: back msg ${i}`, backward, randomMessage(40 + i), 'msg'));
    }
    for (const i of [2, 0, 1]) {
        await receive(`${label}: back msg ${i} out of order`, backward, back[i]);
    }
}

async function tampering(label, forward) {
    const m = await send(`${label}: message to tamper`, forward, randomMessage(50), 'msg');
    if (m === null) {
        return;
    }
    const body = unb64(m.body);
    const flipped = Buffer.from(body);
    flipped[flipped.length - 1] ^= 0x01; // last MAC byte
    const bad = await decrypt(forward, m.type, b64(flipped));
    check(`${label}: tampered MAC refused`, bad.ok === false, JSON.stringify(bad));
    const garbage = await decrypt(forward, 'msg', b64(Buffer.from([VERSION_BYTE_V3, 1, 2, 3])));
    check(`${label}: garbage body refused`, garbage.ok === false, JSON.stringify(garbage));
    await receive(`${label}: genuine message still decrypts after tampering`, forward, m);
}

async function badSignature(label, alice, bob) {
    const bundle = await bob.request({ op: 'bundle', with_prekey: true });
    check(`${label}: bundle ok`, bundle.ok === true);
    const sig = unb64(bundle.signed_prekey.signature);
    sig[0] ^= 0x01;
    const badSig = { ...bundle, signed_prekey: { ...bundle.signed_prekey, signature: b64(sig) } };
    const r1 = await alice.request({ op: 'process_bundle', name: 'bob', device: 90, bundle: badSig });
    check(`${label}: flipped signature bit rejected`, r1.ok === false, JSON.stringify(r1));
    check(`${label}: rejection names the signature`, r1.ok === false && /signature/i.test(r1.error), r1.error);

    // A genuine signature, but by another identity (alice's own bundle's signature).
    const other = await alice.request({ op: 'bundle', with_prekey: false });
    const swapped = { ...bundle, signed_prekey: { ...bundle.signed_prekey, signature: other.signed_prekey.signature } };
    const r2 = await alice.request({ op: 'process_bundle', name: 'bob', device: 91, bundle: swapped });
    check(`${label}: signature by another identity rejected`, r2.ok === false, JSON.stringify(r2));

    // A signed prekey swapped for another key, signature left as is.
    const swappedKey = { ...bundle, signed_prekey: { ...bundle.signed_prekey, public: other.signed_prekey.public } };
    const r3 = await alice.request({ op: 'process_bundle', name: 'bob', device: 92, bundle: swappedKey });
    check(`${label}: substituted signed prekey rejected`, r3.ok === false, JSON.stringify(r3));

    for (const device of [90, 91, 92]) {
        const enc = await alice.request({ op: 'encrypt', name: 'bob', device, plaintext: b64(Buffer.from('x')) });
        check(`${label}: no session left behind (device ${device})`, enc.ok === false, JSON.stringify(enc));
    }
}

async function malformed(label, peer) {
    const cases = [
        ['not JSON', 'this is not json'],
        ['empty line', ''],
        ['array', '[]'],
        ['missing op', '{}'],
        ['unknown op', '{"op":"dance"}'],
        ['second init', '{"op":"init","name":"x","device":1}'],
        ['bundle without flag', '{"op":"bundle"}'],
        ['bad base64', '{"op":"encrypt","name":"bob","device":1,"plaintext":"***"}'],
        ['unpadded base64', '{"op":"encrypt","name":"bob","device":1,"plaintext":"aGk"}'],
        ['name with dot', '{"op":"encrypt","name":"b.ob","device":1,"plaintext":"aGk="}'],
        ['fractional device', '{"op":"encrypt","name":"bob","device":1.5,"plaintext":"aGk="}'],
        ['unknown message type', '{"op":"decrypt","name":"bob","device":1,"type":"skmsg","body":"MwE="}'],
        ['short identity key', JSON.stringify({
            op: 'process_bundle', name: 'bob', device: 93,
            bundle: { registration_id: 1, identity: b64(Buffer.alloc(31)),
                signed_prekey: { id: 1, public: b64(Buffer.alloc(32)), signature: b64(Buffer.alloc(64)) },
                prekey: null },
        })],
        ['33-byte prefixed key', JSON.stringify({
            op: 'process_bundle', name: 'bob', device: 94,
            bundle: { registration_id: 1, identity: b64(Buffer.concat([Buffer.from([5]), Buffer.alloc(32)])),
                signed_prekey: { id: 1, public: b64(Buffer.alloc(32)), signature: b64(Buffer.alloc(64)) },
                prekey: null },
        })],
        ['no session', '{"op":"encrypt","name":"nobody","device":1,"plaintext":"aGk="}'],
    ];
    for (const [name, line] of cases) {
        const answer = await peer.sendLine(line);
        check(`${label}: ${name} gives ok:false with an error`,
            answer.ok === false && typeof answer.error === 'string' && answer.error.length > 0,
            JSON.stringify(answer));
    }
}

async function main() {
    const alice = new Peer('alice');
    const bob = new Peer('bob');
    const deadline = setTimeout(() => {
        console.log('FAIL selftest: overall timeout');
        alice.kill();
        bob.kill();
        process.exit(1);
    }, 5 * 60 * 1000);
    try {
        const ia = await alice.request({ op: 'init', name: 'alice', device: 1 });
        const ib = await bob.request({ op: 'init', name: 'bob', device: 1 });
        for (const [who, init] of [['alice', ia], ['bob', ib]]) {
            check(`${who}: init ok`, init.ok === true, JSON.stringify(init));
            check(`${who}: identity is 32 raw bytes`, init.ok && unb64(init.identity).length === 32);
            check(`${who}: registration id is 14-bit`, init.ok && Number.isInteger(init.registration_id)
                && init.registration_id >= 1 && init.registration_id <= 0x3fff, String(init.registration_id));
        }

        // Bundles hand out each one-time prekey once.
        const seen = new Set();
        for (let i = 0; i < 3; i++) {
            const b = await alice.request({ op: 'bundle', with_prekey: true });
            check(`bundle ${i}: prekey present`, b.ok === true && b.prekey !== null, JSON.stringify(b));
            if (b.ok && b.prekey !== null) {
                check(`bundle ${i}: prekey id not seen before`, !seen.has(b.prekey.id), String(b.prekey.id));
                seen.add(b.prekey.id);
                check(`bundle ${i}: keys are 32 raw bytes`, unb64(b.identity).length === 32
                    && unb64(b.signed_prekey.public).length === 32 && unb64(b.prekey.public).length === 32);
                check(`bundle ${i}: signature is 64 bytes`, unb64(b.signed_prekey.signature).length === 64);
                check(`bundle ${i}: identity matches init`, b.identity === ia.identity);
            }
        }

        // Device ids label independent sessions between the same two identities.
        const scenarios = [
            ['alice starts, with prekey', alice, 'alice', bob, 'bob', 1, true],
            ['bob starts, with prekey', bob, 'bob', alice, 'alice', 2, true],
            ['alice starts, no prekey', alice, 'alice', bob, 'bob', 3, false],
            ['bob starts, no prekey', bob, 'bob', alice, 'alice', 4, false],
        ];
        for (const [label, initiator, iName, responder, rName, device, withPrekey] of scenarios) {
            const forward = link(initiator, iName, responder, rName, device);
            const backward = link(responder, rName, initiator, iName, device);
            await conversation(label, forward, backward, withPrekey);
            await outOfOrder(`${label}, out of order`, forward, backward);
            await outOfOrder(`${label}, out of order reversed`, backward, forward);
            await tampering(`${label}, tampering`, forward);
        }

        // A pkmsg whose one-time prekey was already consumed is refused by a
        // fresh session attempt (the prekey is gone after first use).
        {
            const bundle = await bob.request({ op: 'bundle', with_prekey: true });
            await alice.request({ op: 'process_bundle', name: 'bob', device: 5, bundle });
            const m = await send('consumed prekey: first', link(alice, 'alice', bob, 'bob', 5), randomMessage(8), 'pkmsg');
            await receive('consumed prekey: first', link(alice, 'alice', bob, 'bob', 5), m);
            if (m !== null) {
                const again = await bob.request({ op: 'decrypt', name: 'alice', device: 6, type: 'pkmsg', body: m.body });
                check('consumed prekey: reuse from another address refused', again.ok === false, JSON.stringify(again));
            }
        }

        await badSignature('bad signature', alice, bob);
        await malformed('malformed', bob);

        // Still alive and working after all the malformed input.
        {
            const l = link(bob, 'bob', alice, 'alice', 1);
            const m = await send('after malformed input', l, randomMessage(12), 'msg');
            await receive('after malformed input', l, m);
        }

        // quit answers and exits 0; EOF exits 0.
        const q = await alice.request({ op: 'quit' });
        check('quit answers ok', q.ok === true, JSON.stringify(q));
        const ea = await alice.waitExit();
        check('quit exits 0', ea.code === 0, JSON.stringify(ea));
        bob.child.stdin.end();
        const eb = await bob.waitExit();
        check('EOF exits 0', eb.code === 0, JSON.stringify(eb));
        check('no unsolicited stdout lines', alice.extraLines.length === 0 && bob.extraLines.length === 0,
            JSON.stringify([...alice.extraLines, ...bob.extraLines]));
    } catch (e) {
        check('selftest ran to the end', false, e && e.stack ? e.stack : String(e));
    } finally {
        clearTimeout(deadline);
        alice.kill();
        bob.kill();
    }
    console.log(`${passed} passed, ${failed} failed`);
    process.exit(failed === 0 ? 0 : 1);
}

main();
