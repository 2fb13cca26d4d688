//! `interop-hub`: the reference gatekeeper's command line. Thin: argument parsing, exit codes,
//! and handing over to [`interop_hub::server`]. Exit codes: 0 clean stop, 1 runtime failure,
//! 2 usage error.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use interop_hub::server::{self, HubOptions};

const USAGE: &str = "\
usage:
  interop-hub --state DIR --listen ADDR --control ADDR [--media ADDR] [--demo-users]
      run the reference gatekeeper: both wire profiles on --listen (wa, or TLS for
      interop-xml/1, chosen by the first byte), the loopback control API on --control
  interop-hub provision --state DIR --account NAME --connect HOST:PORT
                        [--profile wa|interop-xml/1]
                        [--media-host https://HOST:PORT --media-pin sha256//BASE64]
      create provider account NAME ({integrator}-{user}) and print an interopd.conf for it
      on the profile (default wa: a provider JWT signed by the hub as test provider, and
      the hub's Noise root to pin); optionally register a media host the proxy may fetch
      from, pinned to its key
  interop-hub --version

control API (plain HTTP on the loopback --control address; docs/protocol.md section 19):
  GET  /users                          list simulated users
  POST /users                          {\"phone\", \"devices\"?, \"behavior\"?} create one
  POST /users/{phone}/send             {\"to\", \"text\"} or {\"to\", \"media\": {...}};
                                       to: an account, or +phone of a simulated user
  GET  /users/{phone}/received         what that user decrypted (media: checked sha256)
  POST /users/{phone}/reinstall        new identities; body {\"notify\": false} tells no
                                       contact (they learn only from retry receipts)
  POST /users/{phone}/behavior         {\"behavior\"}
  POST /connections/drop               close every client connection
  GET  /stats                          counters
";

const EXIT_USAGE: u8 = 2;

#[derive(Default)]
struct Args {
    command: Option<String>,
    state: Option<PathBuf>,
    listen: Option<String>,
    control: Option<String>,
    media: Option<String>,
    demo_users: bool,
    account: Option<String>,
    connect: Option<String>,
    media_host: Option<String>,
    media_pin: Option<String>,
    profile: Option<String>,
    version: bool,
    help: bool,
}

fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let mut a = Args::default();
    while let Some(arg) = p.next()? {
        match arg {
            Long("state") => a.state = Some(p.value()?.into()),
            Long("listen") => a.listen = Some(p.value()?.string()?),
            Long("control") => a.control = Some(p.value()?.string()?),
            Long("media") => a.media = Some(p.value()?.string()?),
            Long("demo-users") => a.demo_users = true,
            Long("account") => a.account = Some(p.value()?.string()?),
            Long("connect") => a.connect = Some(p.value()?.string()?),
            Long("media-host") => a.media_host = Some(p.value()?.string()?),
            Long("media-pin") => a.media_pin = Some(p.value()?.string()?),
            Long("profile") => a.profile = Some(p.value()?.string()?),
            Long("version") => a.version = true,
            Long("help") | Short('h') => a.help = true,
            Value(v) if a.command.is_none() => a.command = Some(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(a)
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("interop-hub: {msg}\n\n{USAGE}");
    ExitCode::from(EXIT_USAGE)
}

fn addr(name: &str, v: Option<String>) -> Result<SocketAddr, ExitCode> {
    let v = v.ok_or_else(|| usage(&format!("--{name} ADDR is required")))?;
    v.parse()
        .map_err(|_| usage(&format!("--{name} {v:?} must be IP:PORT")))
}

fn main() -> ExitCode {
    interopd::logger::init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => return usage(&e.to_string()),
    };
    if args.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.version {
        println!("interop-hub {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(state) = args.state.clone() else {
        return usage("--state DIR is required");
    };
    match args.command.as_deref() {
        Some("provision") => {
            let (Some(account), Some(connect)) = (&args.account, &args.connect) else {
                return usage("provision needs --account NAME and --connect HOST:PORT");
            };
            let profile = match args.profile.as_deref() {
                None => interop_proto::WireProfile::Wa,
                Some(p) => match interop_proto::WireProfile::parse(p) {
                    Some(p) => p,
                    None => return usage(&format!("--profile {p:?} must be wa or interop-xml/1")),
                },
            };
            let config = server::provision(&state, account, connect, profile);
            let registered = match (&config, &args.media_host, &args.media_pin) {
                (Ok(_), Some(host), Some(pin)) => {
                    interop_hub::proxy::register_host(&state, account, host, pin).map(|_| ())
                }
                (Ok(_), None, None) | (Err(_), _, _) => Ok(()),
                _ => return usage("--media-host and --media-pin go together"),
            };
            if let Err(e) = registered {
                return usage(&format!("--media-host: {e}"));
            }
            match config {
                Ok(provisioned) => {
                    print!("{}", interopd::demo::provisioned_config(&provisioned));
                    ExitCode::SUCCESS
                }
                Err(e @ server::ProvisionError::BadAccount { .. })
                | Err(e @ server::ProvisionError::BadConnect { .. }) => usage(&e.to_string()),
                Err(e) => {
                    eprintln!("interop-hub: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(other) => usage(&format!("unknown command {other:?}")),
        None => {
            let listen = match addr("listen", args.listen) {
                Ok(a) => a,
                Err(code) => return code,
            };
            let control = match addr("control", args.control) {
                Ok(a) => a,
                Err(code) => return code,
            };
            let media = match args.media {
                Some(m) => match m.parse() {
                    Ok(a) => Some(a),
                    Err(_) => return usage(&format!("--media {m:?} must be IP:PORT")),
                },
                None => None,
            };
            let opts = HubOptions {
                state_dir: state,
                listen,
                control,
                media,
                demo_users: args.demo_users,
            };
            match smol::block_on(server::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("interop-hub: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
