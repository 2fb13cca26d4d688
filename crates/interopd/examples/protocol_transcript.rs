//! Prints a whole `interop-xml/1` conversation, frame by frame, between the hub core and a
//! client core running in one process with a fixed clock and a seeded RNG: login, prekey
//! upload, device list, bundle fetch, a text to the echo contact, its receipts and reply.
//! docs/protocol.md's worked example and tests/data/protocol/transcript.txt come from it:
//!
//! ```sh
//! cargo run --example protocol_transcript > tests/data/protocol/transcript.txt
//! ```
#![forbid(unsafe_code)]

use std::collections::HashMap;

use base64::Engine as _;
use interop_hub::state::{AccountBook, Hub, Output};
use interopd::client::{Client, Event, framed};
use interopd::jid::Jid;
use interopd::login::AccountRecord;
use interopd::store::{Store, StoreError};
use rand::SeedableRng as _;
use rand::rngs::StdRng;

struct Accounts(HashMap<String, AccountRecord>);

impl AccountBook for Accounts {
    fn lookup(&self, account: &str) -> Result<Option<AccountRecord>, StoreError> {
        Ok(self.0.get(account).cloned())
    }
}

const T0_MS: u64 = 1_700_000_000_000;

fn show(dir: &str, payload: &[u8]) {
    let text = String::from_utf8_lossy(payload);
    let header = framed(payload)
        .ok()
        .and_then(|f| {
            f.get(..3)
                .map(|h| format!("{:02x} {:02x} {:02x}", h[0], h[1], h[2]))
        })
        .unwrap_or_default();
    println!("{dir} [{header}] {text}");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut rng = StdRng::seed_from_u64(2024);
    let mut accounts = HashMap::new();
    accounts.insert(
        "acme-home".to_owned(),
        AccountRecord {
            token: "5f2b8c1e9d7a4b3c6e0f1a2b3c4d5e6f".into(),
            integrator: "acme".into(),
        },
    );
    let mut hub = Hub::open(
        &dir.path().join("hub"),
        Box::new(Accounts(accounts)),
        T0_MS,
        &mut rng,
    )?;
    hub.create_user("+15550100", 1, "echo", T0_MS, &mut rng)?;
    let store = Store::open(&dir.path().join("client"))?;
    let mut client = Client::new(store, "acme-home", 1, &mut rng)?;
    let conn = hub.connect(T0_MS);
    client.start("5f2b8c1e9d7a4b3c6e0f1a2b3c4d5e6f", T0_MS);
    let mut sent = false;
    for _ in 0..1000 {
        let mut moved = false;
        while let Some(p) = client.poll_transmit() {
            moved = true;
            show("C->S", &p);
            hub.handle_frame(conn, &p, T0_MS, &mut rng);
        }
        while let Some(o) = hub.poll_output() {
            moved = true;
            if let Output::Send { payload, .. } = o {
                show("S->C", &payload);
                client.handle_frame(&payload, T0_MS, &mut rng);
            }
        }
        while let Some(e) = client.poll_event() {
            if e == Event::KeysUploaded && !sent {
                sent = true;
                client.send_text(
                    &Jid::whatsapp("15550100", None),
                    "Door opened",
                    T0_MS,
                    &mut rng,
                )?;
                moved = true;
            }
            if let Event::Message { message, .. } = &e {
                println!("# client decrypted: {:?}", message.text_body());
            }
        }
        if !moved {
            break;
        }
    }
    println!(
        "# proof domain base64: {}",
        base64::engine::general_purpose::STANDARD.encode(interopd::login::PROOF_DOMAIN)
    );
    Ok(())
}
