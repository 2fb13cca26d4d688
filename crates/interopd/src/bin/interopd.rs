//! `interopd`: the daemon's command line. Thin: argument parsing, exit codes, and handing over
//! to the library. Exit codes: 0 clean stop, 1 runtime failure, 2 usage error, 78 bad config.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use interopd::config;

const USAGE: &str = "\
usage: interopd <command> [options]

commands:
  demo [--state DIR] [--api ADDR] [--api-rate N] [--profile wa|interop-xml/1]
                                       run the reference hub and the daemon in one process;
                                       --api-rate sets api.rate_requests_per_sec and
                                       api.rate_burst_requests to N (for load and fuzz runs);
                                       --profile is the wire profile both speak (default wa)
  run [--config FILE] [--state DIR] [--api ADDR] [--reset-identity]
                                       run the daemon (default config /etc/interopd/interopd.conf);
                                       --reset-identity starts a new identity on purpose where
                                       the state directory had one but its store is empty
  check-config [--config FILE]         validate a config file; exit 0 if OK, 78 if not
  backup --out FILE [--config FILE] [--state DIR] (--passphrase-file FILE | --no-encrypt)
                                       write a backup of the state directory and config,
                                       also while the daemon runs; encrypted with the
                                       passphrase in FILE (`-` reads standard input)
  restore --in FILE --state DIR [--config FILE] [--passphrase-file FILE] [--force]
                                       restore a backup into an empty state directory (with
                                       --force, an existing one is moved aside); with --config,
                                       also write the backed-up config file there
  trigger-url NAME [--config FILE] [--state DIR] [--api ADDR] [--rotate]
                                       print the URL that fires [[trigger]] NAME (its last
                                       line), making its key if needed; --rotate replaces the
                                       key, and the old URL stops working at once; --api is
                                       the address `run --api` was given, for the URL
  media-pin [--config FILE] [--state DIR]
                                       print the media host's TLS pin (sha256//BASE64) for
                                       the gatekeeper's registration, making its key if needed
  --version                            print the version
";

/// Exit status for a bad configuration (sysexits EX_CONFIG); systemd does not restart on it.
const EXIT_CONFIG: u8 = 78;
const EXIT_USAGE: u8 = 2;

struct Args {
    command: String,
    config: Option<PathBuf>,
    state: Option<PathBuf>,
    api: Option<String>,
    api_rate: Option<String>,
    profile: Option<String>,
    reset_identity: bool,
    out: Option<PathBuf>,
    input: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    no_encrypt: bool,
    force: bool,
    rotate: bool,
    /// The operand after the command (`trigger-url NAME`).
    operand: Option<String>,
}

fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let mut args = Args {
        command: String::new(),
        config: None,
        state: None,
        api: None,
        api_rate: None,
        profile: None,
        reset_identity: false,
        out: None,
        input: None,
        passphrase_file: None,
        no_encrypt: false,
        force: false,
        rotate: false,
        operand: None,
    };
    while let Some(arg) = p.next()? {
        match arg {
            Long("config") => args.config = Some(p.value()?.into()),
            Long("state") => args.state = Some(p.value()?.into()),
            Long("api") => args.api = Some(p.value()?.string()?),
            Long("api-rate") => args.api_rate = Some(p.value()?.string()?),
            Long("profile") => args.profile = Some(p.value()?.string()?),
            Long("reset-identity") => args.reset_identity = true,
            Long("out") => args.out = Some(p.value()?.into()),
            Long("in") => args.input = Some(p.value()?.into()),
            Long("passphrase-file") => args.passphrase_file = Some(p.value()?.into()),
            Long("no-encrypt") => args.no_encrypt = true,
            Long("force") => args.force = true,
            Long("rotate") => args.rotate = true,
            Long("version") => args.command = "version".into(),
            Long("help") | Short('h') => args.command = "help".into(),
            Value(v) if args.command.is_empty() => args.command = v.string()?,
            Value(v) if args.command == "trigger-url" && args.operand.is_none() => {
                args.operand = Some(v.string()?);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(args)
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let checked = config::parse(&text, path).and_then(|c| {
        c.check_files()?;
        interopd::backup::scheduled::check_files(&c)
    });
    match checked {
        Ok(()) => {
            println!("configuration OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `interopd run`: the config file, with `--state` and `--api` overriding it, then the daemon.
/// Reads and validates the config file, applying `--state`; the exit code on failure.
fn load_config(
    config_path: &std::path::Path,
    state: Option<PathBuf>,
) -> Result<config::Config, ExitCode> {
    let text = match std::fs::read_to_string(config_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", config_path.display());
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    let parsed = config::parse(&text, config_path).and_then(|c| {
        c.check_files()?;
        interopd::backup::scheduled::check_files(&c)?;
        Ok(c)
    });
    let mut config = match parsed {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", config_path.display());
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    if let Some(dir) = state {
        config.state_dir = dir;
    }
    Ok(config)
}

/// `interopd media-pin`: the pin the gatekeeper needs to fetch from our media host.
fn media_pin(config_path: &std::path::Path, state: Option<PathBuf>) -> ExitCode {
    let config = match load_config(config_path, state) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = interopd::store::ensure_state_dir(&config.state_dir) {
        eprintln!("interopd: {e}");
        return ExitCode::FAILURE;
    }
    match interopd::media_host::load_or_create_identity(&config.state_dir, &config.media) {
        Ok((_, pin)) => {
            println!("{pin}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("interopd: media host identity: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `interopd trigger-url NAME [--rotate]`: the URL of a configured trigger, as the last line.
fn trigger_url(config_path: &std::path::Path, args: &Args) -> ExitCode {
    let Some(name) = &args.operand else {
        eprintln!("interopd: trigger-url needs the trigger's NAME\n\n{USAGE}");
        return ExitCode::from(EXIT_USAGE);
    };
    let mut config = match load_config(config_path, args.state.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(addr) = args.api.as_deref() {
        let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
            eprintln!("interopd: --api {addr:?} must be an IP address and port");
            return ExitCode::from(EXIT_USAGE);
        };
        config.api_addr = addr;
    }
    if !config.triggers.iter().any(|t| t.name == *name) {
        let names: Vec<&str> = config.triggers.iter().map(|t| t.name.as_str()).collect();
        eprintln!(
            "interopd: {} has no [[trigger]] named {name:?} (it has: {})",
            config_path.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
        return ExitCode::from(EXIT_USAGE);
    }
    if let Err(e) = interopd::store::ensure_state_dir(&config.state_dir) {
        eprintln!("interopd: {e}");
        return ExitCode::FAILURE;
    }
    let state = &config.state_dir;
    let key = if args.rotate {
        interopd::api::triggers::rotate_key(state, name)
    } else {
        interopd::api::triggers::load_or_create_key(state, name)
    };
    match key {
        Ok(key) => {
            if args.rotate {
                eprintln!("interopd: trigger {name}: new key; the old URL no longer works");
            }
            println!("{}", interopd::api::triggers::url(&config, name, &key));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("interopd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `interopd backup`: the archive of the config's state directory (or `--state`).
fn backup(config_path: &std::path::Path, args: &Args) -> ExitCode {
    let Some(out) = &args.out else {
        eprintln!("interopd: backup needs --out FILE\n\n{USAGE}");
        return ExitCode::from(EXIT_USAGE);
    };
    let passphrase = match (&args.passphrase_file, args.no_encrypt) {
        (Some(_), true) => {
            eprintln!("interopd: give --passphrase-file or --no-encrypt, not both");
            return ExitCode::from(EXIT_USAGE);
        }
        (None, false) => {
            eprintln!(
                "interopd: a backup holds the household's private keys; give --passphrase-file FILE to encrypt it, or --no-encrypt"
            );
            return ExitCode::from(EXIT_USAGE);
        }
        (Some(path), false) => match interopd::backup::read_passphrase(path) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("interopd: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        (None, true) => None,
    };
    let config = match load_config(config_path, args.state.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if passphrase.is_none() {
        log::warn!(
            "backup: --no-encrypt: {} will hold the identity's private keys and the API token in the clear; keep it where only you can read it",
            out.display()
        );
    }
    let req = interopd::backup::write::BackupRequest {
        state_dir: &config.state_dir,
        config_file: Some(config_path),
        out,
        passphrase,
        now_ms: now_ms(),
    };
    match interopd::backup::write::backup(&req) {
        Ok(s) => {
            log::info!(
                "backup: wrote {} ({} bytes, {} entries, schema version {}, {} media blobs gone before they were reached)",
                out.display(),
                s.bytes,
                s.manifest.entries.len() + 1,
                s.manifest.schema_version,
                s.manifest.media_missing
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("backup: {e}");
            ExitCode::from(1)
        }
    }
}

/// `interopd restore`: an archive into an empty `--state` directory.
fn restore(args: &Args) -> ExitCode {
    let (Some(input), Some(state)) = (&args.input, &args.state) else {
        eprintln!("interopd: restore needs --in FILE and --state DIR\n\n{USAGE}");
        return ExitCode::from(EXIT_USAGE);
    };
    if args.no_encrypt || args.out.is_some() {
        eprintln!("interopd: restore takes --in, --state, --config, --passphrase-file and --force");
        return ExitCode::from(EXIT_USAGE);
    }
    let passphrase = match &args.passphrase_file {
        None => None,
        Some(path) => match interopd::backup::read_passphrase(path) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("interopd: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let req = interopd::backup::restore::RestoreRequest {
        input,
        state_dir: state,
        config_out: args.config.as_deref(),
        passphrase,
        force: args.force,
        now_ms: now_ms(),
    };
    match interopd::backup::restore::restore(&req) {
        Ok(s) => {
            if let Some(old) = &s.replaced {
                log::warn!(
                    "restore: the directory that was there is kept as {}",
                    old.display()
                );
            }
            if let Some(c) = args.config.as_deref() {
                if s.config_written {
                    log::info!("restore: wrote the config file {}", c.display());
                } else {
                    log::warn!(
                        "restore: the backup holds no config file; {} was not written",
                        c.display()
                    );
                }
            }
            log::info!(
                "restore: {} restored into {} (schema version {}, {} entries); start it with `interopd run --state {}`",
                input.display(),
                state.display(),
                s.manifest.schema_version,
                s.manifest.entries.len() + 1,
                state.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("restore: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(
    config_path: &std::path::Path,
    state: Option<PathBuf>,
    api: Option<&str>,
    reset_identity: bool,
) -> ExitCode {
    let mut config = match load_config(config_path, state) {
        Ok(c) => c,
        Err(code) => return code,
    };
    config.reset_identity = reset_identity;
    if let Some(addr) = api {
        let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
            eprintln!("interopd: --api {addr:?} must be an IP address and port");
            return ExitCode::from(EXIT_CONFIG);
        };
        // A LAN address needs the config's explicit consent, which it gave only if its own
        // api.listen is already a non-loopback address.
        if !addr.ip().is_loopback() && config.api_addr.ip().is_loopback() {
            eprintln!(
                "interopd: --api {addr} is not a loopback address; set api.listen and api.allow_non_loopback in the config to expose the API"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        config.api_addr = addr;
    }
    let start_link: interopd::daemon::LinkStarter = Box::new(interopd::link::start);
    match interopd::daemon::run(config, start_link) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `interopd demo`: defaults `--state ./interopd-demo`, `--api 127.0.0.1:8787`,
/// `--profile wa`.
#[cfg(feature = "demo")]
fn demo(
    state: Option<PathBuf>,
    api: Option<&str>,
    api_rate: Option<&str>,
    profile: Option<&str>,
) -> ExitCode {
    let profile = match profile {
        None => interopd::demo::DEMO_PROFILE,
        Some(p) => match interop_proto::WireProfile::parse(p) {
            Some(p) => p,
            None => {
                eprintln!("interopd: --profile {p:?} must be wa or interop-xml/1");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let state = state.unwrap_or_else(|| PathBuf::from("./interopd-demo"));
    let api = api.unwrap_or(config::DEFAULT_API_ADDR);
    let Ok(addr) = api.parse::<std::net::SocketAddr>() else {
        eprintln!("interopd: --api {api:?} must be an IP address and port");
        return ExitCode::from(EXIT_USAGE);
    };
    if !addr.ip().is_loopback() {
        eprintln!("interopd: the demo listens on loopback only; --api {addr} is not");
        return ExitCode::from(EXIT_USAGE);
    }
    let rate = match api_rate.map(str::parse::<u32>) {
        None => None,
        Some(Ok(n)) if (1..=config::MAX_API_RATE_REQUESTS).contains(&n) => Some(config::ApiRate {
            burst_requests: n,
            requests_per_sec: n,
        }),
        Some(_) => {
            eprintln!(
                "interopd: --api-rate must be 1 to {}",
                config::MAX_API_RATE_REQUESTS
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match interopd::demo::run(&state, addr, rate, profile) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    interopd::logger::init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("interopd: {e}\n\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH));
    match args.command.as_str() {
        "check-config" => check_config(&config_path),
        "version" => {
            println!("interopd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "help" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        "run" => run(
            &config_path,
            args.state.clone(),
            args.api.as_deref(),
            args.reset_identity,
        ),
        "media-pin" => media_pin(&config_path, args.state.clone()),
        "trigger-url" => trigger_url(&config_path, &args),
        "backup" => backup(&config_path, &args),
        "restore" => restore(&args),
        #[cfg(feature = "demo")]
        "demo" => demo(
            args.state.clone(),
            args.api.as_deref(),
            args.api_rate.as_deref(),
            args.profile.as_deref(),
        ),
        #[cfg(not(feature = "demo"))]
        "demo" => {
            eprintln!(
                "interopd: this is the appliance build, without the demo; build with the default \
                 features (`cargo run --release -- demo`) to run it"
            );
            ExitCode::from(EXIT_USAGE)
        }
        "" => {
            eprint!("{USAGE}");
            ExitCode::from(EXIT_USAGE)
        }
        other => {
            eprintln!("interopd: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
