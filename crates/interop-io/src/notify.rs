//! systemd notification (`sd_notify`), written by hand: one datagram per state change to the
//! socket named by `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). Sends
//! `READY=1`, `STATUS=...`, `WATCHDOG=1` and `STOPPING=1`. Without `NOTIFY_SOCKET` (not under
//! systemd) every call is a no-op. Failures are returned, never fatal: the caller logs them.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyTarget {
    Path(PathBuf),
    /// A Linux abstract socket name (without the leading `@`).
    Abstract(Vec<u8>),
}

/// Sends notifications to systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<NotifyTarget>,
    socket: Option<UnixDatagram>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; inert if it is unset or empty.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|v| {
            let bytes = v.into_encoded_bytes();
            match bytes.split_first() {
                None => None,
                Some((b'@', rest)) => Some(NotifyTarget::Abstract(rest.to_vec())),
                Some(_) => Some(NotifyTarget::Path(PathBuf::from(
                    String::from_utf8_lossy(&bytes).into_owned(),
                ))),
            }
        });
        Notifier::new(target)
    }

    pub fn new(target: Option<NotifyTarget>) -> Notifier {
        let socket = target.as_ref().and_then(|_| UnixDatagram::unbound().ok());
        Notifier { target, socket }
    }

    /// Whether systemd is listening.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends raw `KEY=VALUE` lines.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let (Some(target), Some(socket)) = (&self.target, &self.socket) else {
            return Ok(());
        };
        match target {
            NotifyTarget::Path(p) => socket.send_to(state.as_bytes(), p).map(|_| ()),
            NotifyTarget::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr).map(|_| ())
            }
        }
    }

    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }

    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as systemd recommends; `None` if
/// the watchdog is off or the value is malformed.
pub fn watchdog_interval(watchdog_usec: Option<&str>) -> Option<Duration> {
    let usec: u64 = watchdog_usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_systemd() -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, listener, Notifier::new(Some(NotifyTarget::Path(path))))
    }

    fn recv(l: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = l.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn lifecycle_messages_reach_the_socket() {
        let (_d, l, n) = fake_systemd();
        n.ready("link up").unwrap();
        assert_eq!(recv(&l), "READY=1\nSTATUS=link up");
        n.watchdog().unwrap();
        assert_eq!(recv(&l), "WATCHDOG=1");
        n.status("reconnecting\nin 2 s").unwrap();
        assert_eq!(recv(&l), "STATUS=reconnecting in 2 s");
        n.stopping().unwrap();
        assert_eq!(recv(&l), "STOPPING=1");
    }

    #[test]
    fn abstract_socket_target_works() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("interopd-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let l = UnixDatagram::bind_addr(&addr).unwrap();
        l.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::new(Some(NotifyTarget::Abstract(name.into_bytes())));
        n.ready("ok").unwrap();
        assert_eq!(recv(&l), "READY=1\nSTATUS=ok");
    }

    #[test]
    fn without_systemd_notifications_are_no_ops() {
        let n = Notifier::new(None);
        assert!(!n.is_active());
        n.ready("x").unwrap();
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout() {
        assert_eq!(
            watchdog_interval(Some("30000000")),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval(Some("0")), None);
        assert_eq!(watchdog_interval(Some("soon")), None);
        assert_eq!(watchdog_interval(None), None);
    }
}
