//! systemd's readiness and watchdog protocol (`sd_notify(3)`), without libsystemd.
//!
//! Under a unit of `Type=notify`, systemd passes `NOTIFY_SOCKET` (a unix datagram socket:
//! a path, or `@name` for the abstract namespace) and, with `WatchdogSec=`,
//! `WATCHDOG_USEC` (and `WATCHDOG_PID`, the pid the watchdog is meant for). The agent
//! sends `READY=1` once it is up (state loaded, leftovers stopped, guard running, API
//! answering), `WATCHDOG=1` from its event loop every half `WATCHDOG_USEC` (so a stalled
//! loop is restarted by systemd as well as stopped by the guard), `STATUS=…` lines
//! `systemctl status` shows, and `STOPPING=1` when it begins a clean stop.
//!
//! Without `NOTIFY_SOCKET` (not under systemd, or another unit type) every call does
//! nothing. A send that fails is logged once and otherwise ignored: systemd's view of
//! the agent must never stop the agent. Children do not inherit the variables
//! ([`CHILD_ENV`]: the resources remove them), so an application that speaks sd_notify
//! itself cannot report for the agent.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// The variables a child process must not inherit from the agent.
pub const CHILD_ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Where notifications go, read from the environment once at start.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<Target>,
    /// systemd's watchdog interval for this process, if any.
    watchdog: Option<Duration>,
    warned: bool,
}

#[derive(Debug)]
enum Target {
    Path(PathBuf),
    /// The abstract namespace (`@name` in `NOTIFY_SOCKET`), without the `@`.
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From this process's environment.
    pub fn from_env() -> Notifier {
        Notifier::from_vars(
            std::env::var_os("NOTIFY_SOCKET").map(|it| it.into_encoded_bytes()),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    /// From the three variables' values and this process's pid (testable).
    pub fn from_vars(
        socket: Option<Vec<u8>>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Notifier {
        let target = match socket {
            None => None,
            Some(bytes) if bytes.is_empty() => None,
            Some(bytes) => match bytes.strip_prefix(b"@") {
                Some(name) => Some(Target::Abstract(name.to_vec())),
                None if bytes.starts_with(b"/") => Some(Target::Path(PathBuf::from(OsString::from_vec(bytes)))),
                // systemd only passes absolute paths or abstract names; anything else is
                // not for us.
                None => None,
            },
        };
        // The watchdog is meant for this process only if WATCHDOG_PID (when set) is ours.
        let for_us = match watchdog_pid {
            None => true,
            Some(text) => text.trim().parse::<u32>().is_ok_and(|it| it == pid),
        };
        let watchdog = watchdog_usec
            .and_then(|text| text.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { watchdog: if target.is_some() { watchdog } else { None }, target, warned: false }
    }

    /// Whether systemd is listening.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1`: half systemd's interval, as `sd_watchdog_enabled(3)`
    /// advises; `None` without a watchdog.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|it| (it / 2).max(Duration::from_millis(1)))
    }

    /// `READY=1` with a status line.
    pub fn ready(&mut self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}\n", one_line(status)));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&mut self) {
        self.send("WATCHDOG=1\n");
    }

    /// `STATUS=` alone (what `systemctl status` shows under the unit).
    pub fn status(&mut self, status: &str) {
        self.send(&format!("STATUS={}\n", one_line(status)));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&mut self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}\n", one_line(status)));
    }

    fn send(&mut self, message: &str) {
        let Some(target) = &self.target else { return };
        let result = UnixDatagram::unbound().and_then(|socket| match target {
            Target::Path(path) => socket.send_to(message.as_bytes(), path).map(|_| ()),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr).map(|_| ())
            }
        });
        if let Err(error) = result
            && !self.warned
        {
            self.warned = true;
            tracing::warn!(
                "cannot notify systemd through NOTIFY_SOCKET ({target:?}): {error}; systemd may consider the agent not started or hung (further failures are not logged)"
            );
        }
    }
}

/// A status line must stay one line of the protocol's `KEY=value` list.
fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification within 5 s");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn without_notify_socket_nothing_is_enabled() {
        let n = Notifier::from_vars(None, Some("1000000"), None, 7);
        assert!(!n.enabled());
        assert_eq!(n.watchdog_every(), None, "no watchdog without a socket to send it to");
        let n = Notifier::from_vars(Some(Vec::new()), None, None, 7);
        assert!(!n.enabled());
        let n = Notifier::from_vars(Some(b"relative/path".to_vec()), None, None, 7);
        assert!(!n.enabled());
    }

    #[test]
    fn the_watchdog_interval_is_half_of_systemds_and_only_for_our_pid() {
        let n = Notifier::from_vars(Some(b"/run/x".to_vec()), Some("10000000"), None, 7);
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(5)));
        let n = Notifier::from_vars(Some(b"/run/x".to_vec()), Some("10000000"), Some("7"), 7);
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(5)));
        let n = Notifier::from_vars(Some(b"/run/x".to_vec()), Some("10000000"), Some("8"), 7);
        assert_eq!(n.watchdog_every(), None, "WATCHDOG_PID names another process");
        let n = Notifier::from_vars(Some(b"/run/x".to_vec()), Some("0"), None, 7);
        assert_eq!(n.watchdog_every(), None);
        let n = Notifier::from_vars(Some(b"/run/x".to_vec()), Some("soon"), None, 7);
        assert_eq!(n.watchdog_every(), None);
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let mut n = Notifier::from_vars(Some(path.as_os_str().as_encoded_bytes().to_vec()), None, None, 1);
        assert!(n.enabled());
        n.ready("node alpha\nup");
        let text = receive(&socket);
        assert_eq!(text, "READY=1\nSTATUS=node alpha up\n");
        n.watchdog();
        assert_eq!(receive(&socket), "WATCHDOG=1\n");
        n.status("2 groups");
        assert_eq!(receive(&socket), "STATUS=2 groups\n");
        n.stopping("stopping");
        assert_eq!(receive(&socket), "STOPPING=1\nSTATUS=stopping\n");
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("takeover-sdnotify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        let mut n = Notifier::from_vars(Some(format!("@{name}").into_bytes()), None, None, 1);
        n.watchdog();
        assert_eq!(receive(&socket), "WATCHDOG=1\n");
    }

    #[test]
    fn a_socket_nobody_listens_on_is_reported_once_and_never_fails_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let mut n = Notifier::from_vars(Some(path.as_os_str().as_encoded_bytes().to_vec()), None, None, 1);
        n.ready("up");
        assert!(n.warned);
        n.watchdog();
    }
}
