//! A real `mosquitto` broker for integration tests, and an MQTT client that is not ours
//! (`mosquitto_sub` and `mosquitto_pub` from the same Debian packages). The broker listens on
//! a free loopback port, refuses anonymous clients and checks a password file made with
//! `mosquitto_passwd`. On a machine without mosquitto the packages are installed with
//! apt-get when we are root; otherwise [`available`] says why and the test skips.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The broker's user for the daemon and the test clients.
pub const USER: &str = "interopd";
pub const PASSWORD: &str = "broker-test-password";
/// How long any wait on the broker may take on a loaded machine.
pub const WAIT: Duration = Duration::from_secs(60);

fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The broker program: `mosquitto` on the PATH, or Debian's `/usr/sbin/mosquitto`.
fn broker_program() -> Option<String> {
    ["mosquitto", "/usr/sbin/mosquitto"]
        .into_iter()
        .find(|p| runs(p, "-h"))
        .map(str::to_owned)
}

/// Whether mosquitto and its clients are here, installing them (Debian's `mosquitto` and
/// `mosquitto-clients`) when they are not and we are root. `false` means skip: the reason
/// is printed.
pub fn available() -> bool {
    static CHECK: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let result = CHECK.get_or_init(|| {
        let have = || broker_program().is_some() && runs("mosquitto_sub", "--help");
        if have() {
            return Ok(());
        }
        if !is_root() {
            return Err("mosquitto is not installed and we are not root to apt-get it".into());
        }
        let update = Command::new("apt-get").arg("update").status();
        let install = Command::new("apt-get")
            .args(["install", "-y", "mosquitto", "mosquitto-clients"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        match (update, install) {
            (Ok(_), Ok(s)) if s.success() && have() => Ok(()),
            (u, i) => Err(format!(
                "apt-get could not install mosquitto ({u:?}, {i:?})"
            )),
        }
    });
    match result {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED: the MQTT tests need a mosquitto broker: {why}");
            false
        }
    }
}

/// A running mosquitto on `127.0.0.1:port`; killed on drop.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    /// A second listener with TLS (certificate for `localhost`, signed by `dir/ca.pem`).
    pub tls_port: Option<u16>,
    dir: PathBuf,
}

impl Broker {
    /// Starts a broker with its files (config, password file, log) in `dir`.
    pub fn start(dir: &Path) -> Broker {
        Broker::start_with(dir, false)
    }

    /// [`Broker::start`], with a TLS listener too when `tls`: a CA (`dir/ca.pem`) and a
    /// certificate for `localhost` made by the shared TLS code.
    pub fn start_with(dir: &Path, tls: bool) -> Broker {
        std::fs::create_dir_all(dir).unwrap();
        let passwd = dir.join("passwd");
        let out = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args([USER, PASSWORD])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mosquitto_passwd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            drop(interop_io::tls::ensure_hub_ca(dir, &["localhost"]).unwrap());
        }
        let mut b = Broker {
            child: None,
            port: crate::api_common::free_port(),
            tls_port: tls.then(crate::api_common::free_port),
            dir: dir.to_path_buf(),
        };
        b.run();
        b
    }

    fn run(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        let tls = match self.tls_port {
            None => String::new(),
            Some(p) => format!(
                "listener {p} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server-key.pem\n",
                self.dir.display()
            ),
        };
        std::fs::write(
            &conf,
            tls + &format!(
                // `user root`: as root, mosquitto would drop to its own user, which cannot
                // write the persistence file in our directory (ignored when not root).
                "user root\nlistener {} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence true\npersistence_location {}/\nlog_dest stderr\nlog_type all\n",
                self.port,
                self.dir.join("passwd").display(),
                self.dir.display(),
            ),
        )
        .unwrap();
        let program = broker_program().expect("mosquitto is available");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .unwrap();
        let child = Command::new(program)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || self
                .tls_port
                .is_some_and(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_err())
        {
            assert!(t0.elapsed() < WAIT, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The `[mqtt]` section for a daemon whose password file is written to `dir`, with
    /// `extra` keys added.
    pub fn daemon_section(&self, dir: &Path, password: &str, extra: &str) -> String {
        let pw = dir.join("mqtt-password");
        std::fs::write(&pw, format!("{password}\n")).unwrap();
        format!(
            "\n[mqtt]\nurl = \"{}\"\nusername = \"{USER}\"\npassword_file = \"{}\"\nnode_id = \"home\"\nkeepalive_secs = 5\n{extra}",
            self.url(),
            pw.display()
        )
    }

    /// Stops the broker as systemd does (SIGTERM): it saves its retained messages and
    /// persistent sessions, and a restart brings them back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let t0 = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if t0.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn client_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-u".into(),
            USER.into(),
            "-P".into(),
            PASSWORD.into(),
            "-V".into(),
            "mqttv311".into(),
        ]
    }

    /// `mosquitto_pub` one message at QoS 1 (retained when `retain`).
    pub fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = self.dir.join(format!("payload-{n}"));
        std::fs::write(&file, payload).unwrap();
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(self.client_args())
            .args(["-q", "1", "-t", topic, "-f"])
            .arg(&file);
        if retain {
            cmd.arg("-r");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The retained messages under `filter` now, as (topic, payload); an empty retained
    /// message is not kept by the broker, so a deleted config is absent.
    pub fn retained(&self, filter: &str) -> Vec<(String, String)> {
        let out = Command::new("mosquitto_sub")
            .args(self.client_args())
            .args(["--retained-only", "-W", "2", "-v", "-t", filter])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(t, p)| (t.to_owned(), p.to_owned())))
            .collect()
    }

    /// Polls until the retained message on `topic` is `want`.
    pub fn wait_retained(&self, topic: &str, want: &str) {
        let t0 = Instant::now();
        loop {
            let got = self.retained(topic);
            if got.iter().any(|(t, p)| t == topic && p == want) {
                return;
            }
            assert!(t0.elapsed() < WAIT, "{topic} never read {want:?}: {got:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A subscriber on `topics` that is subscribed when this returns: it publishes a probe
    /// on a topic of its own until the probe comes back.
    pub fn subscribe(&self, topics: &[&str]) -> Sub {
        self.subscribe_as(None, topics)
    }

    /// [`Broker::subscribe`] with a persistent session under client id `id`: the broker
    /// keeps its QoS 1 messages while it is away, also across a broker restart, and
    /// `mosquitto_sub` connects again by itself.
    pub fn subscribe_as(&self, id: Option<&str>, topics: &[&str]) -> Sub {
        let probe = format!(
            "test-probe/{}/{}",
            std::process::id(),
            crate::api_common::free_port()
        );
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(self.client_args())
            .args(["-q", "1", "-v", "-t", &probe]);
        if let Some(id) = id {
            cmd.args(["-c", "-i", id]);
        }
        for t in topics {
            cmd.args(["-t", t]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let sub = Sub {
            child,
            lines,
            probe: probe.clone(),
        };
        let t0 = Instant::now();
        while sub.on(&probe).is_empty() {
            assert!(t0.elapsed() < WAIT, "mosquitto_sub never subscribed");
            self.publish(&probe, b"probe", false);
            std::thread::sleep(Duration::from_millis(100));
        }
        sub
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `mosquitto_sub -v`; killed on drop.
pub struct Sub {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    probe: String,
}

impl Sub {
    /// The payloads received on `topic` so far, in order.
    pub fn on(&self, topic: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.split_once(' '))
            .filter(|(t, _)| *t == topic)
            .map(|(_, p)| p.to_owned())
            .collect()
    }

    /// Polls until `n` payloads on `topic` satisfy `ok`; returns every payload on it.
    pub fn wait_for(&self, topic: &str, n: usize, ok: impl Fn(&str) -> bool) -> Vec<String> {
        let t0 = Instant::now();
        loop {
            let got = self.on(topic);
            if got.iter().filter(|p| ok(p)).count() >= n {
                return got;
            }
            assert!(
                t0.elapsed() < WAIT,
                "{n} wanted payloads never came on {topic}: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
