//! The README works as printed. Its ```sh blocks are read from `README.md` when the test runs
//! (no copy of a command lives here) and run with bash in a temporary directory, with the ports
//! and paths they name:
//!
//! - "Try it": `cargo run --release -- demo`, then the curl lines the demo prints: the send is
//!   queued, the echo contact's answer reaches the inbox, and Ctrl-C stops the demo with 0.
//! - The pieces run separately: the hub and its users, `provision`, the `[media]` section,
//!   `media-pin`, the media host's registration, `check-config` and `run`.
//! - Every example of "The local API", against that daemon, in order: each curl must answer
//!   the status `docs/api.md` gives it, and the answers must say what the README says.
//!
//! What cannot run unchanged inside `cargo test` is changed in one place, [`adapt`], which
//! lists every adaptation; everything else runs as typed. The README's ports are fixed (5222,
//! 5280, 5443, 8443, 8787). They lie below Linux's ephemeral range (32768-60999), from which
//! the other tests take their ports, and the two scenarios here take turns ([`README_PORTS`]).
//! Every wait is bounded, and every process a scenario starts is killed when it ends, passed
//! or failed ([`Session`]'s `Drop`).

mod api_common;
mod hub_support;
mod media_support;

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest any one README command may take (the longest wait it asks for is 30 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest a server the README starts may take to listen (or the demo to print its banner).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a server may take to exit after Ctrl-C.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an SSE stream (`curl -N`) is read before the test moves on.
const STREAM_SECONDS: u32 = 2;
/// curl's exit status when `--max-time` ends a transfer.
const CURL_TIMED_OUT: i32 = 28;
/// Marks the line curl writes to stderr with each response's status (see [`adapt`]).
const STATUS_MARK: &str = "readme-http-status:";

/// The README's ports are fixed, so its scenarios run one at a time.
static README_PORTS: Mutex<()> = Mutex::new(());

fn readme_ports() -> std::sync::MutexGuard<'static, ()> {
    // A failed scenario cleaned up after itself (Drop), so the next one may go ahead.
    README_PORTS.lock().unwrap_or_else(|e| e.into_inner())
}

// ------------------------------------------------------------------------------------------
// Reading the README

/// One ```sh block: the `## ` section it sits in, and its commands.
struct Block {
    section: String,
    commands: Vec<String>,
}

/// The repository's root: the nearest directory at or above this package that holds
/// `README.md` (the package may be a workspace member below the root).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("README.md").is_file())
        .expect("README.md at or above the package")
        .to_path_buf()
}

fn readme_blocks() -> Vec<Block> {
    let path = repo_root().join("README.md");
    let text = std::fs::read_to_string(&path).expect("read README.md");
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(title) = line.strip_prefix("## ") {
            section = title.trim().to_owned();
        } else if line.trim() == "```sh" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(Block {
                section: section.clone(),
                commands: split_commands(&body),
            });
        }
    }
    blocks
}

/// Commands as the shell reads them: a line, plus the lines a trailing `\` continues, plus
/// the body of a here-document. Blank lines and comment lines are not commands.
fn split_commands(lines: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = lines.iter();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let mut command = (*line).to_owned();
        while command.ends_with('\\') {
            let Some(next) = lines.next() else { break };
            command.push('\n');
            command.push_str(next);
        }
        if let Some(word) = here_document_word(&command) {
            for body in lines.by_ref() {
                command.push('\n');
                command.push_str(body);
                if *body == word {
                    break;
                }
            }
        }
        out.push(command);
    }
    out
}

/// The terminator of `<<WORD` or `<<'WORD'`, if the command opens a here-document.
fn here_document_word(command: &str) -> Option<String> {
    let after = &command[command.find("<<")? + 2..];
    let word: String = after
        .trim_start_matches('-')
        .trim_start()
        .trim_matches(|c| c == '\'' || c == '"')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

fn blocks_in(blocks: &[Block], section: &str) -> Vec<Vec<String>> {
    let found: Vec<Vec<String>> = blocks
        .iter()
        .filter(|b| b.section == section)
        .map(|b| b.commands.clone())
        .collect();
    assert!(
        !found.is_empty(),
        "README.md has no ```sh block under `## {section}`"
    );
    found
}

/// What `API=` is set to in the README's API section.
fn readme_api(api_blocks: &[Vec<String>]) -> String {
    api_blocks
        .iter()
        .flatten()
        .find_map(|c| c.strip_prefix("API="))
        .expect("the API section sets API=")
        .trim()
        .to_owned()
}

/// The package's `default-run`: the binary `cargo run` without `--bin` starts. Without it cargo
/// refuses to choose between the two binaries, and so does this test.
fn default_run() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let text = std::fs::read_to_string(path).expect("read Cargo.toml");
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(value) = line.strip_prefix("default-run") {
            return value
                .trim_start_matches([' ', '='])
                .trim_matches('"')
                .to_owned();
        }
    }
    panic!(
        "`cargo run` without `--bin` fails: Cargo.toml's [package] has no default-run, and there are two binaries"
    );
}

// ------------------------------------------------------------------------------------------
// Adapting a command to run inside `cargo test`

/// What the test does with one README command.
#[derive(Debug)]
enum Step {
    /// Run it in the scenario's shell. `stream`: an SSE stream, ended by `--max-time`.
    Shell { command: String, stream: bool },
    /// Start it as a tracked background process, then wait until it is `ready`.
    Background { command: String, ready: Ready },
    /// Do not run it, for the reason given.
    Skip(&'static str),
}

/// When a background process counts as started.
#[derive(Debug)]
enum Ready {
    /// Every `IP:PORT` its command line names accepts connections.
    Listening(Vec<SocketAddr>),
    /// `interopd run`: the README's `$API/healthz` reports the link up.
    LinkUp,
    /// `interopd demo`: it printed its three curl lines and its API reports the link up.
    DemoBanner,
}

/// The one place where a README command is changed to run inside `cargo test`. Every change:
///
/// 1. `cargo run [-q] [--release] [--bin NAME] --` becomes the path of binary NAME that cargo
///    built for this test (`CARGO_BIN_EXE_*`, the test profile): a nested `cargo run` would
///    wait on the build directory lock this test run holds, or rebuild in release mode. Without
///    `--bin`, NAME is the package's `default-run`, and the test fails without one, as cargo
///    would. `.ci/newcomer.sh` runs the demo command through cargo itself.
/// 2. `cargo test` is skipped: it is what runs this test.
/// 3. A trailing `&` becomes a tracked background process (its own process group, killed when
///    the scenario ends); the test then waits until every `IP:PORT` on its command line
///    accepts connections, as a person waits for the server's log line.
/// 4. `interopd run` and `interopd demo`, which the README runs in the foreground of a terminal
///    of their own, also become tracked background processes. `run` is ready when `$API/healthz`
///    reports the link up; `demo` when it has printed its curl lines and its link is up. At the
///    end both get SIGINT (Ctrl-C) and must exit with 0.
/// 5. `curl -N` (an SSE stream, which never ends) gets `--max-time 2`; ending by that time-out
///    (exit status 28) is the expected outcome.
/// 6. In the scenario's shell, `curl` is a function that runs the real curl with `-sS` (no
///    progress meter, errors still shown) and `-w` writing each response's status to stderr,
///    so the test checks each against the status `docs/api.md` gives ([`expected_status`]).
/// 7. Every command may take at most [`COMMAND_TIMEOUT`], its stdin is `/dev/null`, and its
///    output is kept for the failure message. (The README's `until` loop, which waits for the
///    echo's photo, is bounded this way.)
///
/// Background processes see the shell's working directory but not its variables; the README
/// starts none that needs one.
fn adapt(command: &str) -> Step {
    let trimmed = command.trim();
    if trimmed == "cargo test" || trimmed.starts_with("cargo test ") {
        return Step::Skip("`cargo test` is what runs this test");
    }
    let command = replace_cargo_run(trimmed);
    if let Some(background) = command.strip_suffix('&') {
        let background = background.trim_end().to_owned();
        let addrs = background
            .split_whitespace()
            .filter_map(|w| w.trim_matches(['\'', '"']).parse::<SocketAddr>().ok())
            .collect();
        return Step::Background {
            command: background,
            ready: Ready::Listening(addrs),
        };
    }
    let interopd = shell_quote(env!("CARGO_BIN_EXE_interopd"));
    let mut words = command.split_whitespace();
    if words.next() == Some(interopd.as_str()) {
        match words.next() {
            Some("run") => {
                return Step::Background {
                    command,
                    ready: Ready::LinkUp,
                };
            }
            Some("demo") => {
                return Step::Background {
                    command,
                    ready: Ready::DemoBanner,
                };
            }
            _ => {}
        }
    }
    if command.contains("curl -N ") {
        return Step::Shell {
            command: command.replacen(
                "curl -N ",
                &format!("curl -N --max-time {STREAM_SECONDS} "),
                1,
            ),
            stream: true,
        };
    }
    Step::Shell {
        command,
        stream: false,
    }
}

/// The shell function of adaptation 6, defined first in every scenario's shell.
fn curl_function() -> String {
    format!("curl() {{ command curl -sS -w '%{{stderr}}{STATUS_MARK} %{{http_code}}\\n' \"$@\"; }}")
}

/// Adaptation 1: every `cargo run … --` becomes the built binary's path.
fn replace_cargo_run(command: &str) -> String {
    let mut out = String::new();
    let mut rest = command;
    while let Some(at) = rest.find("cargo run") {
        out.push_str(&rest[..at]);
        let mut args = &rest[at + "cargo run".len()..];
        let mut bin = None;
        loop {
            let (word, after) = next_word(args);
            args = after;
            match word {
                "-q" | "--quiet" | "--release" | "--locked" => {}
                "--bin" => {
                    let (name, after) = next_word(args);
                    args = after;
                    bin = Some(name.to_owned());
                }
                "--" => break,
                other => panic!("`cargo run` argument {other:?} is not understood here: {command}"),
            }
        }
        let name = bin.unwrap_or_else(default_run);
        let path = match name.as_str() {
            "interopd" => env!("CARGO_BIN_EXE_interopd"),
            "interop-hub" => env!("CARGO_BIN_EXE_interop-hub"),
            other => panic!("the package has no binary {other:?}: {command}"),
        };
        out.push_str(&shell_quote(path));
        rest = args;
    }
    out.push_str(rest);
    out
}

/// The next whitespace-separated word of `s`, and what follows it.
fn next_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The status `docs/api.md` gives the curl calls of `command`: 202 for what is queued (a sent
/// message or media, a read mark), 200 for everything else.
fn expected_status(command: &str) -> u16 {
    let sends = (command.contains(" -d ") || command.contains("--data-binary"))
        && (command.contains("/v1/messages") || command.contains("/v1/media"));
    if sends || command.contains("/read\"") {
        202
    } else if command.contains(" -d ") && command.contains("/v1/groups\"") {
        201
    } else {
        200
    }
}

// ------------------------------------------------------------------------------------------
// Running commands

/// What one command did.
struct Outcome {
    code: i32,
    stdout: String,
    /// Stderr without the status lines.
    stderr: String,
    statuses: Vec<u16>,
}

/// A background process the README started.
struct Background {
    command: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// One scenario: a temporary working directory, a bash that runs the README's commands one
/// after another (so variables carry over from one to the next, as in a terminal), and the
/// background processes. Dropping it kills them all.
struct Session {
    dir: tempfile::TempDir,
    logs: tempfile::TempDir,
    shell: Child,
    stdin: ChildStdin,
    background: Vec<Background>,
    count: usize,
    transcript: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        for b in &mut self.background {
            kill_group(&mut b.child);
        }
        kill_group(&mut self.shell);
    }
}

/// SIGKILL to the process group `child` leads (it and everything it started), then reaps it.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Session {
    fn start() -> Session {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = tempfile::tempdir().expect("log dir");
        let mut shell = Command::new("bash")
            .args(["--noprofile", "--norc", "-s"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.path().join("shell.err")).expect("log file"))
            .process_group(0)
            .spawn()
            .expect("these tests need bash on PATH");
        let stdin = shell.stdin.take().expect("piped stdin");
        let mut session = Session {
            dir,
            logs,
            shell,
            stdin,
            background: Vec::new(),
            count: 0,
            transcript: String::new(),
        };
        let defined = session.shell_run(&curl_function());
        assert_eq!(defined.code, 0, "defining the curl function failed");
        session.transcript.clear();
        session
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Panics with `what`, the commands run so far and the background processes' output.
    fn fail(&self, what: &str) -> ! {
        let mut report = format!(
            "{what}\n\n--- README commands run so far\n{}",
            self.transcript
        );
        for b in &self.background {
            let tail = |p: &Path| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            };
            report.push_str(&format!(
                "\n--- background: {}\nstdout:\n{}\nstderr (last lines):\n{}\n",
                b.command,
                tail(&b.stdout),
                tail(&b.stderr)
            ));
        }
        let shell_err = std::fs::read_to_string(self.logs.path().join("shell.err"));
        report.push_str(&format!("\n--- shell: {}", shell_err.unwrap_or_default()));
        panic!("{report}");
    }

    /// Runs `command` in the scenario's shell and waits (bounded) for it to finish.
    fn shell_run(&mut self, command: &str) -> Outcome {
        let syntax = Command::new("bash")
            .args(["-n", "-c", command])
            .output()
            .expect("run bash -n");
        if !syntax.status.success() {
            self.fail(&format!(
                "README command is not valid shell: {command}\n{}",
                String::from_utf8_lossy(&syntax.stderr)
            ));
        }
        self.count += 1;
        let base = self.logs.path().join(self.count.to_string());
        let (out, err, rc) = (
            base.with_extension("out"),
            base.with_extension("err"),
            base.with_extension("rc"),
        );
        let script = format!(
            "{{\n{command}\n}} </dev/null >'{}' 2>'{}'; echo $? >'{rc}.tmp'; mv '{rc}.tmp' '{rc}'\n",
            out.display(),
            err.display(),
            rc = rc.display()
        );
        if self.stdin.write_all(script.as_bytes()).is_err() {
            self.fail(&format!("the shell is gone before: {command}"));
        }
        let t0 = Instant::now();
        let code = loop {
            if let Ok(text) = std::fs::read_to_string(&rc) {
                break text.trim().parse::<i32>().unwrap_or(-1);
            }
            if let Ok(Some(status)) = self.shell.try_wait() {
                self.fail(&format!("the shell exited ({status}) during: {command}"));
            }
            if t0.elapsed() > COMMAND_TIMEOUT {
                self.fail(&format!(
                    "README command still running after {COMMAND_TIMEOUT:?}: {command}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        let raw_err = std::fs::read_to_string(&err).unwrap_or_default();
        let mut statuses = Vec::new();
        let mut stderr = String::new();
        for line in raw_err.lines() {
            match line.strip_prefix(STATUS_MARK) {
                Some(s) => statuses.push(s.trim().parse().unwrap_or(0)),
                None => {
                    stderr.push_str(line);
                    stderr.push('\n');
                }
            }
        }
        self.transcript.push_str(&format!(
            "$ {command}\n{}{}[exit {code}, HTTP {statuses:?}]\n",
            clip(&stdout),
            clip(&stderr)
        ));
        Outcome {
            code,
            stdout,
            stderr,
            statuses,
        }
    }

    /// Runs one README command, adapted ([`adapt`]), and checks that it succeeded: exit 0 (or
    /// the stream's time-out) and every curl answering its expected status.
    fn step(&mut self, readme_command: &str) -> Option<Outcome> {
        match adapt(readme_command) {
            Step::Skip(reason) => {
                self.transcript
                    .push_str(&format!("$ {readme_command}   (not run: {reason})\n"));
                None
            }
            Step::Background { command, ready } => {
                self.start_background(&command, &ready);
                None
            }
            Step::Shell { command, stream } => {
                let outcome = self.shell_run(&command);
                let exit_ok = outcome.code == 0 || (stream && outcome.code == CURL_TIMED_OUT);
                if !exit_ok {
                    self.fail(&format!(
                        "README command failed with exit status {}: {readme_command}\n{}",
                        outcome.code, outcome.stderr
                    ));
                }
                if command.contains("curl") {
                    let want = expected_status(&command);
                    if outcome.statuses.is_empty() || outcome.statuses.iter().any(|s| *s != want) {
                        self.fail(&format!(
                            "README command answered HTTP {:?}, not {want}: {readme_command}\n{}",
                            outcome.statuses, outcome.stdout
                        ));
                    }
                }
                Some(outcome)
            }
        }
    }

    fn start_background(&mut self, command: &str, ready: &Ready) {
        let n = self.background.len();
        let stdout = self.logs.path().join(format!("background-{n}.out"));
        let stderr = self.logs.path().join(format!("background-{n}.err"));
        let child = Command::new("bash")
            .args(["-c", &format!("exec {command}")])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("log file"))
            .stderr(std::fs::File::create(&stderr).expect("log file"))
            .process_group(0)
            .spawn()
            .expect("start bash");
        self.transcript
            .push_str(&format!("$ {command} &   (in the background)\n"));
        self.background.push(Background {
            command: command.to_owned(),
            child,
            stdout: stdout.clone(),
            stderr,
        });
        match ready {
            Ready::Listening(addrs) => {
                for addr in addrs {
                    self.wait_until(&format!("{command} listens on {addr}"), || {
                        TcpStream::connect(addr).is_ok()
                    });
                }
            }
            Ready::LinkUp => {
                let api = readme_api(&blocks_in(&readme_blocks(), "The local API"));
                self.wait_until(&format!("{command} reports the link up at {api}"), || {
                    link_is_up(&api)
                });
            }
            Ready::DemoBanner => {
                self.wait_until(&format!("{command} prints its curl lines"), || {
                    demo_banner(&std::fs::read_to_string(&stdout).unwrap_or_default()).is_some()
                });
                let api = self.demo_api();
                self.wait_until(&format!("the demo reports the link up at {api}"), || {
                    link_is_up(&api)
                });
            }
        }
    }

    /// Waits (bounded) until `done`, failing early if the newest background process exited.
    fn wait_until(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !done() {
            if let Some(b) = self.background.last_mut()
                && let Ok(Some(status)) = b.child.try_wait()
            {
                self.fail(&format!("exited ({status}) before this: {what}"));
            }
            if t0.elapsed() > START_TIMEOUT {
                self.fail(&format!("not within {START_TIMEOUT:?}: {what}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The curl lines the demo (the first background process) printed.
    fn demo_curl_lines(&self) -> Vec<String> {
        let banner = std::fs::read_to_string(&self.background[0].stdout).unwrap_or_default();
        demo_banner(&banner).unwrap_or_else(|| self.fail("the demo printed no curl lines"))
    }

    fn demo_api(&self) -> String {
        let banner = std::fs::read_to_string(&self.background[0].stdout).unwrap_or_default();
        banner
            .lines()
            .find_map(|l| l.trim().strip_prefix("API:"))
            .map(|a| a.trim().to_owned())
            .unwrap_or_else(|| self.fail("the demo printed no API address"))
    }

    /// Sends SIGINT (Ctrl-C) to the background process whose command contains `needle` and
    /// waits (bounded) for its exit status.
    fn interrupt(&mut self, needle: &str) -> ExitStatus {
        let Some(i) = self
            .background
            .iter()
            .position(|b| b.command.contains(needle))
        else {
            self.fail(&format!("no background process runs {needle:?}"));
        };
        let pid = self.background[i].child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status();
        if !sent.is_ok_and(|s| s.success()) {
            self.fail(&format!("could not send SIGINT to {needle:?}"));
        }
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = self.background[i].child.try_wait() {
                return status;
            }
            if t0.elapsed() > STOP_TIMEOUT {
                self.fail(&format!(
                    "{needle:?} did not stop within {STOP_TIMEOUT:?} of SIGINT"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The three curl lines of the demo's banner, once all are printed.
fn demo_banner(stdout: &str) -> Option<Vec<String>> {
    let lines: Vec<String> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl "))
        .map(str::to_owned)
        .collect();
    (lines.len() >= 3).then_some(lines)
}

fn link_is_up(api: &str) -> bool {
    Command::new("curl")
        .args(["-s", "--max-time", "2", &format!("{api}/healthz")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("\"link\":\"up\""))
        .unwrap_or(false)
}

/// A command's output, shortened for the transcript.
fn clip(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    let mut short: String = text.chars().take(400).collect();
    if short.len() < text.len() {
        short.push_str(" …");
    }
    if !short.ends_with('\n') {
        short.push('\n');
    }
    short
}

/// Fails unless nothing listens on the loopback ports the README's commands name: another
/// program there would be talked to instead of ours.
fn assert_ports_free(commands: &[String]) {
    let text = commands.join("\n");
    for (at, _) in text.match_indices("127.0.0.1:") {
        let port: String = text[at + 10..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let addr = format!("127.0.0.1:{port}");
        assert!(
            TcpStream::connect(&addr).is_err(),
            "{addr} is in use by another program; the README's commands need it"
        );
    }
}

// ------------------------------------------------------------------------------------------
// The scenarios

/// A check on the answer of the README commands that contain `command`.
struct Expect {
    command: &'static str,
    answer: &'static str,
}

/// What the README says its examples answer. Each must match at least one command, so a
/// README that loses an example fails here too.
const EXPECTED: &[Expect] = &[
    Expect {
        command: "5280/users",
        answer: "+15550100",
    },
    Expect {
        command: "-d 'Door opened' \"$API/v1/messages?to=",
        answer: "\"status\":\"queued\"",
    },
    Expect {
        command: "Idempotency-Key",
        answer: "\"status\":\"queued\"",
    },
    Expect {
        command: "/v1/messages/$ID",
        answer: "\"status\":",
    },
    Expect {
        command: "/v1/inbox?after=0",
        answer: "echo: Door opened",
    },
    Expect {
        command: "/v1/inbox/1/read",
        answer: "\"read\":\"queued\"",
    },
    Expect {
        command: "/v1/groups/$GROUP",
        answer: "\"subject\":\"Family\"",
    },
    Expect {
        command: "\"$API/v1/groups\"",
        answer: "+15550101",
    },
    Expect {
        command: "/v1/events",
        answer: "retry:",
    },
    Expect {
        command: "\"$API/v1/contacts\"",
        answer: "+15550100",
    },
    Expect {
        command: "/trust",
        answer: "+15550100",
    },
    Expect {
        command: "/v1/identity",
        answer: "{",
    },
    Expect {
        command: "/healthz",
        answer: "\"link\":\"up\"",
    },
    Expect {
        command: "/metrics",
        answer: "interopd_messages",
    },
    Expect {
        command: "kind=image",
        answer: "\"status\":\"queued\"",
    },
    Expect {
        command: "kind=voice",
        answer: "\"status\":\"queued\"",
    },
    Expect {
        command: "kind=file",
        answer: "\"status\":\"queued\"",
    },
];

#[test]
fn try_it_demo_and_its_printed_curl_lines_work() {
    let _ports = readme_ports();
    let blocks = readme_blocks();
    let try_it = blocks_in(&blocks, "Try it");
    let demo_block = try_it
        .iter()
        .find(|b| b.iter().any(|c| c.contains("-- demo")))
        .expect("`## Try it` has the demo command");
    let first: Vec<&str> = demo_block[0].split_whitespace().take(5).collect();
    assert_eq!(
        first,
        ["cargo", "run", "--release", "--", "demo"],
        "the README's first command is `cargo run --release -- demo`"
    );

    let mut s = Session::start();
    for command in demo_block {
        s.step(command);
    }
    let lines = s.demo_curl_lines();
    assert_eq!(lines.len(), 3, "the demo prints three curl lines");
    let sent = s.step(&lines[0]).expect("a shell command");
    assert!(
        sent.stdout.contains("\"status\":\"queued\""),
        "{}",
        sent.stdout
    );
    let inbox = s.step(&lines[1]).expect("a shell command");
    assert!(
        inbox.stdout.contains("echo: Hello from the demo"),
        "{}",
        inbox.stdout
    );
    let contacts = s.step(&lines[2]).expect("a shell command");
    assert!(contacts.stdout.contains("+15550100"), "{}", contacts.stdout);
    assert!(
        s.path("interopd-demo").is_dir(),
        "the demo keeps its state in ./interopd-demo"
    );
    let status = s.interrupt(" demo");
    assert_eq!(status.code(), Some(0), "Ctrl-C stops the demo cleanly");
}

#[test]
fn the_pieces_run_separately_and_every_api_example_works() {
    let _ports = readme_ports();
    let blocks = readme_blocks();
    let pieces: Vec<String> = blocks_in(&blocks, "Try it")
        .into_iter()
        .filter(|b| !b.iter().any(|c| c.contains("-- demo")))
        .flatten()
        .collect();
    let api: Vec<String> = blocks_in(&blocks, "The local API")
        .into_iter()
        .flatten()
        .collect();
    for needle in [
        "provision",
        "media-pin",
        "--media-host",
        "[media]",
        "check-config",
        "-- run",
    ] {
        assert!(
            pieces.iter().any(|c| c.contains(needle)),
            "the README's pieces no longer include {needle:?}"
        );
    }
    assert_ports_free(&pieces.iter().chain(&api).cloned().collect::<Vec<_>>());

    let mut s = Session::start();
    let data = repo_root().join("tests/data/readme");
    for name in ["doorbell.jpg", "bill.pdf"] {
        std::fs::copy(data.join(name), s.path(name)).expect("copy test data");
    }
    std::fs::write(s.path("note.ogg"), media_support::ogg_opus(2)).expect("write note.ogg");

    let mut matched = vec![false; EXPECTED.len()];
    for command in pieces.iter().chain(&api) {
        let Some(outcome) = s.step(command) else {
            continue;
        };
        if !command.starts_with("curl") {
            continue;
        }
        for (i, e) in EXPECTED.iter().enumerate() {
            if command.contains(e.command) {
                matched[i] = true;
                if !outcome.stdout.contains(e.answer) {
                    s.fail(&format!(
                        "the answer to `{command}` does not contain {:?}: {}",
                        e.answer, outcome.stdout
                    ));
                }
            }
        }
    }
    for (e, matched) in EXPECTED.iter().zip(matched) {
        assert!(
            matched,
            "no README command contains {:?} any more",
            e.command
        );
    }
    let photo = std::fs::read(s.path("photo.jpg")).expect("the README fetched photo.jpg");
    assert!(
        photo.starts_with(&[0xff, 0xd8, 0xff]),
        "photo.jpg is a JPEG"
    );
    let status = s.interrupt(" run ");
    assert_eq!(status.code(), Some(0), "Ctrl-C stops the daemon cleanly");
}
