//! `interopd demo`: the reference hub and the daemon in one process, so a newcomer sees the
//! whole loop in a minute. The hub (with its simulated WhatsApp users: `+15550100` echoes,
//! `+15550101` stays silent) runs on loopback on a thread of its own with its own CA under
//! `<state>/hub`; the daemon keeps its state in `<state>/daemon` and runs exactly as
//! `interopd run` does, on the main thread. Restarting with the same `--state` keeps the
//! identity, history and queues on both sides. Media works both ways too: the hub runs its
//! media store, and the daemon's media host listens on loopback, registered with its pin
//! as the demo account's media host, so the echo contact fetches what we send through the
//! hub's proxy and answers with a blob of its own.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config;
use crate::daemon::{self, DaemonError};
use interop_hub::server::{self, HubOptions, Provisioned};
use interop_proto::WireProfile;

/// How long the demo waits for its hub to listen, in milliseconds.
pub const HUB_START_TIMEOUT_MS: u64 = 10_000;
/// The demo's account at its own hub.
pub const DEMO_ACCOUNT: &str = "demo-home";

/// Why the demo could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum DemoError {
    /// Environment: no free loopback port, or the state directory is unusable.
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    /// Environment: the in-process hub did not come up.
    HubDidNotStart,
    /// Bug or environment: the hub could not provision the demo account.
    Provision { detail: String },
    /// The daemon failed (same causes as `interopd run`).
    Daemon(DaemonError),
}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io { what, source } => write!(f, "demo: {what}: {source}"),
            Self::HubDidNotStart => {
                write!(
                    f,
                    "demo: the hub did not start within {HUB_START_TIMEOUT_MS} ms"
                )
            }
            Self::Provision { detail } => write!(f, "demo: provisioning failed: {detail}"),
            Self::Daemon(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DemoError {}

fn free_loopback() -> Result<SocketAddr, DemoError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| DemoError::Io {
        what: "finding a free loopback port",
        source,
    })?;
    l.local_addr().map_err(|source| DemoError::Io {
        what: "finding a free loopback port",
        source,
    })
}

/// The curl lines the demo prints; each works as printed in a POSIX shell.
pub fn curl_lines(api: SocketAddr, token_file: &Path) -> [String; 3] {
    let auth = format!(
        "-H \"Authorization: Bearer $(cat '{}')\"",
        token_file.display()
    );
    [
        format!("curl {auth} -d 'Hello from the demo' 'http://{api}/v1/messages?to=%2B15550100'"),
        format!("curl {auth} 'http://{api}/v1/inbox?after=0&wait=10'"),
        format!("curl {auth} 'http://{api}/v1/contacts'"),
    ]
}

/// The demo's trigger URL: a plain GET of it sends [`DEMO_TRIGGER_TEXT`] to the echo contact.
pub const DEMO_TRIGGER: &str = "doorbell";
/// What the demo's trigger sends.
pub const DEMO_TRIGGER_TEXT: &str = "Someone is at the door";
/// The demo's config file, under its `--state`: what it runs, written out so that
/// `interopd trigger-url doorbell --config <state>/interopd.conf` works beside it.
pub const DEMO_CONFIG_FILE: &str = "interopd.conf";

/// The household examples the demo prints after the curl lines, each as `label: command`
/// (so the first three stay the only lines that start with `curl`). `$ID` stands for an id
/// that `POST /v1/messages` answered. The last fires the trigger URL with the key read from
/// its file (`daemon_dir/trigger-keys/doorbell`), so the key is not printed.
pub fn household_lines(api: SocketAddr, token_file: &Path, daemon_dir: &Path) -> [String; 7] {
    let auth = format!(
        "-H \"Authorization: Bearer $(cat '{}')\" -H 'Content-Type: application/json'",
        token_file.display()
    );
    let base = format!("http://{api}/v1");
    [
        format!(
            "reaction back:  curl {auth} -d '{{\"to\": \"+15550100\", \"text\": \"react please\", \"correlation\": \"demo-1\"}}' '{base}/messages'"
        ),
        format!(
            "a location:     curl {auth} -d '{{\"to\": \"+15550100\", \"text\": \"where\"}}' '{base}/messages'"
        ),
        format!(
            "react:          curl {auth} -d '{{\"emoji\": \"👍\"}}' \"{base}/messages/$ID/reactions\""
        ),
        format!(
            "edit (15 min):  curl {auth} -X PATCH -d '{{\"text\": \"edited\"}}' \"{base}/messages/$ID\""
        ),
        format!("delete:         curl {auth} -X DELETE \"{base}/messages/$ID\""),
        format!(
            "typing:         curl {auth} -d '{{\"state\": \"composing\"}}' '{base}/chats/%2B15550100/typing'"
        ),
        format!(
            "doorbell (GET): curl \"{base}/triggers/{DEMO_TRIGGER}?key=$(cat '{}')\"",
            crate::api::triggers::key_path(daemon_dir, DEMO_TRIGGER).display()
        ),
    ]
}

/// File under the demo's state that remembers the daemon's media host port, so a restart
/// keeps the origin registered at the hub (and the URLs in sent messages) valid.
pub const MEDIA_PORT_FILE: &str = "media-port";

/// Turns on the daemon's media host on loopback and registers it, with its pin, as the demo
/// account's media host at the hub, so the echo contact can fetch what we send.
fn enable_media_host(
    state: &Path,
    hub_dir: &Path,
    cfg: &mut config::Config,
) -> Result<(), DemoError> {
    let port_file = state.join(MEDIA_PORT_FILE);
    let remembered = std::fs::read_to_string(&port_file)
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .filter(|a| TcpListener::bind(a).is_ok());
    let addr = match remembered {
        Some(a) => a,
        None => {
            let a = free_loopback()?;
            std::fs::write(&port_file, a.port().to_string()).map_err(|source| DemoError::Io {
                what: "writing the media port file",
                source,
            })?;
            a
        }
    };
    let origin = format!("https://{addr}");
    cfg.media.listen = Some(addr);
    cfg.media.public_url = Some(origin.clone());
    crate::store::ensure_state_dir(&cfg.state_dir).map_err(|e| DemoError::Provision {
        detail: e.to_string(),
    })?;
    let (_, pin) =
        crate::media_host::load_or_create_identity(&cfg.state_dir, &cfg.media).map_err(|e| {
            DemoError::Provision {
                detail: format!("media host identity: {e}"),
            }
        })?;
    interop_hub::proxy::register_host(hub_dir, DEMO_ACCOUNT, &origin, &pin).map_err(|e| {
        DemoError::Provision {
            detail: format!("media host registration: {e}"),
        }
    })?;
    Ok(())
}

/// Adds the [`DEMO_TRIGGER`] trigger to the echo contact, makes its key, and writes the whole
/// config the demo runs to `<state>/`[`DEMO_CONFIG_FILE`] (0600: it holds the provider token);
/// its path.
fn add_doorbell(state: &Path, cfg: &mut config::Config) -> Result<PathBuf, DemoError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    cfg.triggers.retain(|t| t.name != DEMO_TRIGGER);
    cfg.triggers.push(config::TriggerConfig {
        name: DEMO_TRIGGER.into(),
        to: "15550100".into(),
        text: DEMO_TRIGGER_TEXT.into(),
        media_file: None,
        rate_burst: config::trigger::DEFAULT_TRIGGER_RATE_BURST,
        rate_interval_secs: config::trigger::DEFAULT_TRIGGER_RATE_INTERVAL_SECS,
    });
    crate::api::triggers::load_or_create_key(&cfg.state_dir, DEMO_TRIGGER).map_err(|e| {
        DemoError::Provision {
            detail: format!("trigger key: {e}"),
        }
    })?;
    let path = state.join(DEMO_CONFIG_FILE);
    let io = |source| DemoError::Io {
        what: "writing the demo's config file",
        source,
    };
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    file.write_all(cfg.to_string().as_bytes()).map_err(io)?;
    Ok(path)
}

/// The profile `interopd demo` speaks without `--profile`.
pub const DEMO_PROFILE: WireProfile = WireProfile::Wa;

/// Runs the demo on `profile` until SIGTERM or SIGINT. `api_rate` replaces the API's default
/// rate limit.
pub fn run(
    state: &Path,
    api: SocketAddr,
    api_rate: Option<config::ApiRate>,
    profile: WireProfile,
) -> Result<(), DemoError> {
    crate::store::ensure_state_dir(state).map_err(|e| DemoError::Provision {
        detail: e.to_string(),
    })?;
    let state = std::path::absolute(state).map_err(|source| DemoError::Io {
        what: "resolving --state",
        source,
    })?;
    let hub_dir = state.join("hub");
    let daemon_dir = state.join("daemon");
    let (listen, control, hub_media) = (free_loopback()?, free_loopback()?, free_loopback()?);
    let opts = HubOptions {
        state_dir: hub_dir.clone(),
        listen,
        control,
        media: Some(hub_media),
        demo_users: true,
    };
    std::thread::Builder::new()
        .name("demo-hub".into())
        .spawn(move || {
            if let Err(e) = smol::block_on(server::run(opts)) {
                log::error!("demo hub stopped: {e}");
            }
        })
        .map_err(|source| DemoError::Io {
            what: "starting the hub thread",
            source,
        })?;
    let t0 = Instant::now();
    while TcpStream::connect(control).is_err() {
        if t0.elapsed() > Duration::from_millis(HUB_START_TIMEOUT_MS) {
            return Err(DemoError::HubDidNotStart);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let provisioned = server::provision(&hub_dir, DEMO_ACCOUNT, &listen.to_string(), profile)
        .map_err(|e| DemoError::Provision {
            detail: e.to_string(),
        })?;
    // Through the rendered text, as `interop-hub provision` hands it to a user, so the demo
    // runs exactly the config a user would get.
    let text = provisioned_config(&provisioned).to_string();
    let mut cfg =
        config::parse(&text, &hub_dir.join("interopd.conf")).map_err(|e| DemoError::Provision {
            detail: e.to_string(),
        })?;
    cfg.state_dir = daemon_dir.clone();
    cfg.api_addr = api;
    if let Some(rate) = api_rate {
        cfg.api_rate = rate;
    }
    enable_media_host(&state, &hub_dir, &mut cfg)?;
    let group = demo_group(&state, control)?;
    let config_file = add_doorbell(&state, &mut cfg)?;
    let token_file: PathBuf = daemon_dir.join("api-token");
    // The banner is best effort: a closed stdout (a pipe nobody reads) must not stop the demo.
    let mut banner = format!(
        "interopd demo: the hub and the daemon are running on loopback, speaking profile {profile}.\n  API:          http://{api}\n  token file:   {}\n  contacts:     +15550100 echoes and reads, +15550101 stays silent\n  hub control:  http://{control}/users\n  config file:  {}\n  trigger URL:  interopd trigger-url {DEMO_TRIGGER} --config {}\n\nTry (Ctrl-C stops the demo):\n",
        token_file.display(),
        config_file.display(),
        config_file.display()
    );
    for line in curl_lines(api, &token_file) {
        banner.push_str(&format!("  {line}\n"));
    }
    banner.push_str(&format!(
        "\nThe demo group {group} holds you and both contacts; the echo contact answers there too:\n  {}\n",
        group_line(api, &token_file, &group)
    ));
    banner.push_str(
        "\nThe echo contact reacts to a text starting with \"react\", shares a place when asked\n\"where\", echoes your edits and deletes on its echo, and shows typing first. A plain GET of\nthe doorbell's trigger URL sends it \"Someone is at the door\":\n",
    );
    for line in household_lines(api, &token_file, &daemon_dir) {
        banner.push_str(&format!("  {line}\n"));
    }
    banner.push('\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    drop(out);
    daemon::run(cfg, Box::new(crate::link::start)).map_err(DemoError::Daemon)
}
/// The demo group's send line, as `label: command` like the household lines.
pub fn group_line(api: SocketAddr, token_file: &Path, group: &str) -> String {
    let auth = format!(
        "-H \"Authorization: Bearer $(cat '{}')\" -H 'Content-Type: application/json'",
        token_file.display()
    );
    format!(
        "group:          curl {auth} -d '{{\"group\": \"{group}\", \"text\": \"Hello family\"}}' 'http://{api}/v1/messages'"
    )
}

/// Subject of the group the demo makes on its first start.
pub const DEMO_GROUP_SUBJECT: &str = "Family (demo)";
/// File under the demo's state directory naming its group, so a restart reuses it.
pub const DEMO_GROUP_FILE: &str = "demo-group";
/// Largest answer read from the hub's control API when making the demo group, in bytes.
const DEMO_GROUP_ANSWER_BYTES: u64 = 64 * 1024;

/// The demo group's id: the one made on an earlier start, or a new group (us as its admin,
/// and both simulated contacts) made now through the hub's control API. The daemon learns
/// of it from the gatekeeper's `create` notification when it logs in.
fn demo_group(state: &Path, control: SocketAddr) -> Result<String, DemoError> {
    let file = state.join(DEMO_GROUP_FILE);
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(g) = crate::group::GroupId::new(text.trim())
    {
        return Ok(g.as_str().to_owned());
    }
    let failed = |detail: String| DemoError::Provision {
        detail: format!("making the demo group: {detail}"),
    };
    let body = serde_json::json!({
        "subject": DEMO_GROUP_SUBJECT,
        "members": [DEMO_ACCOUNT, "+15550100", "+15550101"],
    })
    .to_string();
    let host = control.to_string();
    let answer = smol::block_on(async {
        let mut stream = smol::net::TcpStream::connect(control)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let req = crate::http::ClientRequest {
            method: "POST",
            target: "/groups",
            host: &host,
            headers: &[("Content-Type", "application/json")],
            body: body.as_bytes(),
        };
        let resp = crate::http::request(&mut stream, &req, 16 * 1024)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = resp.head.status;
        let bytes = resp
            .read_to_end(DEMO_GROUP_ANSWER_BYTES)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if status != 201 {
            return Err(failed(format!(
                "the hub answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        Ok(bytes)
    })?;
    let v: serde_json::Value =
        serde_json::from_slice(&answer).map_err(|e| failed(e.to_string()))?;
    let id = v
        .get("id")
        .and_then(|i| i.as_str())
        .and_then(|i| crate::group::GroupId::new(i).ok())
        .ok_or_else(|| failed("the hub's answer has no group id".into()))?;
    std::fs::write(&file, id.as_str()).map_err(|source| DemoError::Io {
        what: "writing the demo group file",
        source,
    })?;
    Ok(id.as_str().to_owned())
}

/// The daemon config for an account the hub provisioned: dial the hub on its profile, pin its
/// CA (and on `wa` its Noise root, serial `server::ROOT_SERIAL`), and defaults for
/// everything else (what `interop-hub provision` prints). A Noise root that is not 64 hex
/// digits is left out, so the printed config fails `check-config` saying it is missing.
pub fn provisioned_config(p: &Provisioned) -> config::Config {
    let noise_root = p
        .noise_root
        .as_deref()
        .and_then(config::parse_noise_root)
        .map(|key| interop_proto::noise::RootPin {
            key,
            serial: server::ROOT_SERIAL,
        });
    config::Config {
        integrator: p.integrator.clone(),
        user: p.user.clone(),
        token: p.token.clone(),
        profile: p.profile,
        noise_root,
        server_addr: p.server_addr.clone(),
        server_name: p.server_name.clone(),
        pin: config::ServerPin::CaFile(p.ca_file.clone()),
        keepalive_secs: config::DEFAULT_KEEPALIVE_SECS,
        api_addr: config::DEFAULT_API_SOCKET,
        api_host_names: Vec::new(),
        api_rate: config::ApiRate::default(),
        state_dir: std::path::PathBuf::from(config::DEFAULT_STATE_DIR),
        webhook: None,
        media: config::MediaConfig::default(),
        triggers: Vec::new(),
        mqtt: None,
        backup: None,
        reset_identity: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn household_lines_name_every_new_route_and_never_start_with_curl() {
        let api: SocketAddr = "127.0.0.1:8787".parse().unwrap();
        let lines = household_lines(api, Path::new("/tmp/t"), Path::new("/tmp/d"));
        assert!(lines.iter().all(|l| !l.trim_start().starts_with("curl ")));
        for route in [
            "/reactions",
            "-X PATCH",
            "-X DELETE",
            "/typing",
            "where",
            "react please",
            "/v1/triggers/doorbell?key=$(cat '/tmp/d/trigger-keys/doorbell')",
        ] {
            assert!(lines.iter().any(|l| l.contains(route)), "{route}");
        }
    }
}
