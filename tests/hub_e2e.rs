//! End-to-end tests of the real `interop-hub` binary: started on loopback ports, provisioned
//! with its own `provision` command, driven over TLS by library clients and over its control
//! API, as a daemon and a QA script would.

mod hub_support;

use std::collections::HashSet;

use hub_support::{HubProc, WAIT_MS, client, online, provision};
use interopd::client::Event;
use interopd::jid::Jid;
use interopd::link::Connection;
use interopd::login::{self, Proof};
use interopd::stanza::Stanza;
use serde_json::json;

fn echo_user() -> Jid {
    Jid::whatsapp("15550100", None)
}

#[test]
fn login_succeeds_and_wrong_token_or_signature_fail() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), false);
    let token = provision(&hub.state, "acme-home", &hub.listen);
    smol::block_on(async {
        let c = online(&hub, client(&dir.path().join("c1"), "acme-home"), &token).await;
        drop(c);

        // Wrong token.
        let c = client(&dir.path().join("c2"), "acme-home");
        let mut conn = Connection::open(c, &hub.listen, "localhost", &hub.pin(), "nope")
            .await
            .unwrap();
        let (ev, _) = conn
            .wait_for(WAIT_MS, |e| matches!(e, Event::LoginFailed(_)))
            .await
            .unwrap();
        assert!(
            matches!(ev, Event::LoginFailed(login::LoginError::Refused { reason, .. }) if reason == "bad_token")
        );

        // Right token, signature by a key other than the one claimed.
        let c = client(&dir.path().join("c3"), "acme-home");
        let mut conn = Connection::open(c, &hub.listen, "localhost", &hub.pin(), &token)
            .await
            .unwrap();
        let challenge = conn.next_stanza(WAIT_MS).await.unwrap();
        assert_eq!(challenge.tag, "challenge");
        let other = interopd::signal::LocalIdentity::generate(&mut rand::rng());
        let auth = login::auth_stanza(&Proof {
            token: token.clone(),
            registration_id: other.registration_id(),
            identity: other.public(),
            signature: [7; 64],
        });
        assert!(
            conn.write_raw(&interopd::client::framed(&auth.to_xml()).unwrap())
                .await
        );
        let failure = conn.next_stanza(WAIT_MS).await.unwrap();
        assert_eq!(failure.tag, "failure");
        assert_eq!(failure.attr_value("reason"), Some("bad_signature"));
        assert!(
            conn.next_stanza(WAIT_MS).await.is_none(),
            "connection closed"
        );
        assert!(conn.is_closed());
    });
}

#[test]
fn text_to_echo_user_is_read_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let token = provision(&hub.state, "acme-home", &hub.listen);
    smol::block_on(async {
        let mut conn = online(&hub, client(&dir.path().join("c"), "acme-home"), &token).await;
        let id = conn
            .client()
            .send_text(&echo_user(), "Door opened", 0, &mut rand::rng())
            .unwrap();
        let (reply, seen) = conn
            .wait_for(WAIT_MS, |e| matches!(e, Event::Message { .. }))
            .await
            .unwrap();
        let Event::Message { message, from, .. } = reply else {
            unreachable!()
        };
        assert_eq!(message.text_body(), Some("echo: Door opened"));
        assert_eq!(from.to_user(), echo_user());
        assert!(seen.contains(&Event::Acked {
            class: "message".into(),
            id: id.clone(),
            error: None
        }));
        assert!(seen.iter().any(
            |e| matches!(e, Event::Receipt { id: r, kind: Some(k), .. } if *r == id && k == "read")
        ));
        let (status, got) = hub.control("GET", "/users/+15550100/received", None);
        assert_eq!(status, 200);
        assert_eq!(got[0]["text"], "Door opened");
        assert_eq!(got[0]["from"], "acme-home");
        // A client that encodes the '+' (as curl --data-urlencode users do) gets the same.
        let (status, encoded) = hub.control("GET", "/users/%2B15550100/received", None);
        assert_eq!(status, 200, "{encoded}");
        assert_eq!(encoded, got);
        let (status, bad) = hub.control("GET", "/users/%ZZ/received", None);
        assert_eq!(
            (status, bad["error"]["code"].as_str()),
            (400, Some("bad_path"))
        );
    });
}

#[test]
fn message_to_offline_client_is_delivered_after_hub_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hub");
    let hub = HubProc::start(&state, true);
    let token = provision(&hub.state, "acme-home", &hub.listen);
    let c = smol::block_on(async {
        online(&hub, client(&dir.path().join("c"), "acme-home"), &token)
            .await
            .into_client()
    });
    let (status, sent) = hub.control(
        "POST",
        "/users/+15550101/send",
        Some(json!({"to": "acme-home", "text": "parcel at the door"})),
    );
    assert_eq!(status, 200, "{sent}");
    let (_, stats) = hub.control("GET", "/stats", None);
    assert_eq!(stats["offline_queue_depth"], 1);
    hub.stop();
    let hub = HubProc::start(&state, true);
    smol::block_on(async {
        let mut conn = online(&hub, c, &token).await;
        let (ev, _) = conn
            .wait_for(WAIT_MS, |e| matches!(e, Event::Message { .. }))
            .await
            .unwrap();
        let Event::Message { id, message, .. } = ev else {
            unreachable!()
        };
        assert_eq!(message.text_body(), Some("parcel at the door"));
        assert_eq!(sent["id"], id.as_str());
    });
}

#[test]
fn one_time_prekeys_are_never_handed_out_twice_and_low_count_is_notified() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), false);
    let t1 = provision(&hub.state, "acme-home", &hub.listen);
    let t2 = provision(&hub.state, "acme-shed", &hub.listen);
    smol::block_on(async {
        let mut a = online(&hub, client(&dir.path().join("a"), "acme-home"), &t1).await;
        let mut b = online(&hub, client(&dir.path().join("b"), "acme-shed"), &t2).await;
        let target = "acme-home:1@interop";
        let mut ids = HashSet::new();
        for n in 0..interopd::signal::PREKEY_BATCH_SIZE {
            let iq = Stanza::new("iq")
                .attr("id", format!("f{n}"))
                .attr("type", "get")
                .attr("xmlns", "encrypt")
                .child(Stanza::new("key").child(Stanza::new("user").attr("jid", target)));
            b.client().send_raw(&iq, 0);
            let reply = b.next_stanza(WAIT_MS).await.unwrap();
            let user = reply
                .child_named("list")
                .unwrap()
                .child_named("user")
                .unwrap();
            let bundle = interopd::prekeys::parse_bundle(user).unwrap();
            let id = bundle.prekey.expect("a prekey while any remain").id;
            assert!(ids.insert(id), "prekey {id} handed out twice");
        }
        let (ev, _) = a
            .wait_for(WAIT_MS, |e| matches!(e, Event::PrekeysLow { .. }))
            .await
            .unwrap();
        assert!(
            matches!(ev, Event::PrekeysLow { count } if count < interop_hub::state::PREKEY_LOW_COUNT)
        );
        a.wait_for(WAIT_MS, |e| *e == Event::KeysUploaded)
            .await
            .unwrap();
    });
}

#[test]
fn not_opted_in_user_gets_the_documented_error_ack() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), false);
    let token = provision(&hub.state, "acme-home", &hub.listen);
    let (status, _) = hub.control(
        "POST",
        "/users",
        Some(json!({"phone": "+15550199", "devices": 1, "behavior": "not_opted_in"})),
    );
    assert_eq!(status, 201);
    smol::block_on(async {
        let mut conn = online(&hub, client(&dir.path().join("c"), "acme-home"), &token).await;
        let id = conn
            .client()
            .send_text(&Jid::whatsapp("15550199", None), "hi", 0, &mut rand::rng())
            .unwrap();
        let (ev, _) = conn
            .wait_for(WAIT_MS, |e| matches!(e, Event::Acked { .. }))
            .await
            .unwrap();
        assert_eq!(
            ev,
            Event::Acked {
                class: "message".into(),
                id,
                error: Some("not_opted_in".into())
            }
        );
    });
}

#[test]
fn reinstall_shows_identity_change_and_a_new_session_works() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let token = provision(&hub.state, "acme-home", &hub.listen);
    smol::block_on(async {
        let mut conn = online(&hub, client(&dir.path().join("c"), "acme-home"), &token).await;
        conn.client()
            .send_text(&echo_user(), "one", 0, &mut rand::rng())
            .unwrap();
        conn.wait_for(WAIT_MS, |e| matches!(e, Event::Message { .. }))
            .await
            .unwrap();
        let (status, _) = hub.control("POST", "/users/+15550100/reinstall", None);
        assert_eq!(status, 200);
        conn.wait_for(WAIT_MS, |e| {
            *e == Event::IdentityAnnounced { user: echo_user() }
        })
        .await
        .unwrap();
        conn.client()
            .send_text(&echo_user(), "two", 0, &mut rand::rng())
            .unwrap();
        let (ev, _) = conn
            .wait_for(WAIT_MS, |e| matches!(e, Event::Message { .. }))
            .await
            .unwrap();
        let Event::Message { message, .. } = ev else {
            unreachable!()
        };
        assert_eq!(message.text_body(), Some("echo: two"));
    });
}

#[test]
fn drop_closes_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), false);
    let t1 = provision(&hub.state, "acme-home", &hub.listen);
    let t2 = provision(&hub.state, "acme-shed", &hub.listen);
    smol::block_on(async {
        let mut a = online(&hub, client(&dir.path().join("a"), "acme-home"), &t1).await;
        let mut b = online(&hub, client(&dir.path().join("b"), "acme-shed"), &t2).await;
        let (status, body) = hub.control("POST", "/connections/drop", None);
        assert_eq!((status, body["dropped"].as_u64()), (200, Some(2)));
        for c in [&mut a, &mut b] {
            c.wait_for(WAIT_MS, |e| *e == Event::Disconnected)
                .await
                .unwrap();
        }
        let (_, stats) = hub.control("GET", "/stats", None);
        assert_eq!(stats["connections"], 0);
        assert_eq!(stats["logins"], 2);
    });
}

#[test]
fn control_api_lists_creates_and_changes_users() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let (status, users) = hub.control("GET", "/users", None);
    assert_eq!(status, 200);
    assert_eq!(
        users,
        json!([
            {"phone": "+15550100", "devices": 1, "behavior": "echo"},
            {"phone": "+15550101", "devices": 1, "behavior": "silent"}
        ])
    );
    let (status, _) = hub.control(
        "POST",
        "/users",
        Some(json!({"phone": "+15550102", "devices": 2, "behavior": "read_after:3"})),
    );
    assert_eq!(status, 201);
    let (status, u) = hub.control(
        "POST",
        "/users/+15550102/behavior",
        Some(json!({"behavior": "offline"})),
    );
    assert_eq!((status, u["behavior"].as_str()), (200, Some("offline")));
    let (status, e) = hub.control("POST", "/users", Some(json!({"phone": "x"})));
    assert_eq!(status, 400);
    assert_eq!(e["error"]["code"], "bad_request");
    let (status, _) = hub.control("GET", "/users/+19999999/received", None);
    assert_eq!(status, 404);
}

#[test]
fn simulated_user_sends_media_from_the_hub_media_store() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start_with(&dir.path().join("hub"), true, true);
    let token = provision(&hub.state, "acme-home", &hub.listen);
    let picture: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    smol::block_on(async {
        let mut conn = online(&hub, client(&dir.path().join("c"), "acme-home"), &token).await;
        let (status, sent) = hub.control(
            "POST",
            "/users/+15550101/send",
            Some(json!({"to": "acme-home", "media": {
                "kind": "image", "mimetype": "image/png",
                "data_base64": base64::engine::general_purpose::STANDARD.encode(&picture)}})),
        );
        assert_eq!(status, 200, "{sent}");
        let (ev, _) = conn
            .wait_for(WAIT_MS, |e| matches!(e, Event::Message { .. }))
            .await
            .unwrap();
        let Event::Message { message, .. } = ev else {
            unreachable!()
        };
        let img = message.image_message.clone().unwrap();
        assert_eq!(img.mimetype.as_deref(), Some("image/png"));
        let blob = hub_support::https_get(&hub, img.url.as_deref().unwrap()).await;
        let key: [u8; 32] = img.media_key.unwrap().try_into().unwrap();
        let enc: [u8; 32] = img.file_enc_sha256.unwrap().try_into().unwrap();
        let sha: [u8; 32] = img.file_sha256.unwrap().try_into().unwrap();
        let plain = interopd::media_crypto::decrypt_all(
            &key,
            interopd::media_crypto::MediaKind::Image,
            &blob,
            &enc,
            &sha,
        )
        .unwrap();
        assert_eq!(plain, picture);
    });
}

/// A provider's media host for the proxy test: TLS with its own key, serving one blob.
fn provider_media_host(dir: &std::path::Path, blob: Vec<u8>) -> (String, String) {
    let tls = interopd::tls::ensure_hub_ca(dir, &["localhost"]).unwrap();
    let pin = interopd::tls::spki_pin_to_string(&tls.server_spki_sha256());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = tls.server_config();
    std::thread::spawn(move || {
        smol::block_on(async move {
            use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
            let listener = smol::net::TcpListener::try_from(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(mut s) = interopd::tls::accept(config.clone(), tcp).await else {
                    continue;
                };
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut b).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&b[..n]);
                }
                let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", blob.len());
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.write_all(&blob).await;
                let _ = s.flush().await;
                let _ = s.close().await;
            }
        })
    });
    (format!("https://localhost:{}", addr.port()), pin)
}

#[test]
fn proxy_fetches_only_from_registered_media_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let (origin, pin) = provider_media_host(&dir.path().join("provider"), blob.clone());
    let hub = HubProc::start_with(&dir.path().join("hub"), false, true);
    hub_support::provision_with(
        &hub.state,
        "acme-home",
        &hub.listen,
        &["--media-host", &origin, "--media-pin", &pin],
    );
    let media = hub.media.clone().unwrap();
    let enc = |u: &str| u.replace(':', "%3A").replace('/', "%2F");
    smol::block_on(async {
        let url = format!(
            "https://{media}/proxy/acme-home?url={}",
            enc(&format!("{origin}/m/1"))
        );
        let got = hub_support::https_get(&hub, &url).await;
        assert_eq!(got, blob);
        // Another provider has not registered that host.
        let url = format!(
            "https://{media}/proxy/acme-shed?url={}",
            enc(&format!("{origin}/m/1"))
        );
        let (status, body) = hub_support::https_get_status(&hub, &url).await;
        assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
        // Nor is any other origin registered.
        let url = format!(
            "https://{media}/proxy/acme-home?url={}",
            enc("https://localhost:1/m/1")
        );
        let (status, _) = hub_support::https_get_status(&hub, &url).await;
        assert_eq!(status, 403);
    });
    let (_, stats) = hub.control("GET", "/stats", None);
    assert_eq!(stats["media_proxied"], 1);
}
