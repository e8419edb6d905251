//! The guard: what stops this node's services when its agent stops renewing (issue 6,
//! seeds' "a node that cannot act must not keep processing").
//!
//! A peer takes over once this node has been silent for `dead_after` and (with a power
//! fence) once the fence confirmed. Without a fence that really cuts power — or when a
//! fence lies — a paused or wedged agent would leave its services running next to the
//! new active. The guard bounds that: the agent renews it from the same event loop that
//! sends heartbeats, every `timeout / 4`; when `timeout` passes without a renewal, the
//! guard kills the agent (a watchdog reset of the agent, not of the machine), every
//! process in this node's cgroups, and removes this node's virtual IPs. With
//! `timeout ≤ dead_after` the services are gone before the peer even declares the node
//! failed.
//!
//! Two implementations behind one interface ([`Watchdog`]):
//!
//! - **A guard process** (`takeover guard`, started by the agent with a pipe on its
//!   stdin): a separate process, so a SIGSTOP of the agent, a deadlock or a stalled event
//!   loop does not stop it. It reads one byte per renewal (`p`); `q` means the agent
//!   stopped its resources and is exiting cleanly; end of file without `q` (the agent
//!   died) acts at once. It ignores SIGINT, SIGTERM and SIGHUP (the agent decides when it
//!   ends) and, when it has acted, exits with status 1 after printing what it did.
//!   A renewal that arrives after the deadline does not save the agent: a whole frozen
//!   node that resumes is treated like a watchdog reset, because its peer may already
//!   have taken over.
//! - **`/dev/watchdog`** (`[guard] device = "/dev/watchdog"`): the kernel's watchdog
//!   interface, renewed by any write; a clean stop writes the magic `V` before closing so
//!   the device disarms. Its timeout is the device's own (set it with the driver, e.g.
//!   `softdog soft_margin=`); the agent renews it at `timeout / 4` all the same. When it
//!   fires, the whole machine resets.
//!
//! What the guard process does not do: unmount filesystems (with every process killed
//! nothing writes to them any more), release disk reservations (the peer takes a
//! reservation of an older generation anyway), or stop OCF resources (their processes
//! are not in takeover's cgroups; a power fence or `/dev/watchdog` covers them).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::resources::vip::VipSpec;

/// What the guard process kills and removes when it acts (`takeover guard`'s arguments).
#[derive(Clone, Debug)]
pub struct GuardArgs {
    /// How long without a renewal before acting.
    pub timeout: Duration,
    /// The agent's pid (the guard's parent), killed first.
    pub agent_pid: i32,
    /// The node's cgroup scope (`<node>-<hash>`): every cgroup `<scope>.*` is killed.
    pub scope: String,
    /// Virtual IPs to remove, `ADDRESS/PREFIX@INTERFACE`.
    pub vips: Vec<String>,
    /// Mount points of the node's `mount` resources: shut down and detached when it acts
    /// ([`crate::resources::mount::cut_off`]).
    pub mounts: Vec<PathBuf>,
    /// The storage fence slot to watch, if any.
    pub storage: Option<StorageWatch>,
}

/// A storage fence slot the guard reads every `timeout / 4` (see [`crate::storage_fence`]).
#[derive(Clone, Debug)]
pub struct StorageWatch {
    pub device: PathBuf,
    pub slot: u16,
    /// No successful read for this long: act.
    pub timeout: Duration,
}

/// The agent's side of the guard.
pub enum Watchdog {
    /// `[guard] enabled = false`.
    Off,
    Process {
        child: Child,
        pipe: ChildStdin,
        every: Duration,
    },
    Device {
        file: Option<File>,
        path: PathBuf,
        every: Duration,
    },
}

impl Watchdog {
    /// Starts the guard process (`binary guard …`) or opens the watchdog device.
    pub fn start(
        guard: &crate::config::GuardConfig,
        binary: &std::path::Path,
        scope: &str,
        vips: &[VipSpec],
        mounts: &[PathBuf],
        storage: Option<&StorageWatch>,
    ) -> anyhow::Result<Watchdog> {
        if !guard.enabled {
            return Ok(Watchdog::Off);
        }
        let every = renew_every(guard.timeout);
        if let Some(path) = &guard.device {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("cannot open the watchdog device {} ([guard] device)", path.display()))?;
            return Ok(Watchdog::Device { file: Some(file), path: path.clone(), every });
        }
        let mut command = Command::new(binary);
        command
            .arg("guard")
            .arg("--timeout")
            .arg(crate::config::format_duration(guard.timeout))
            .arg("--agent-pid")
            .arg(std::process::id().to_string())
            .arg("--scope")
            .arg(scope)
            .stdin(Stdio::piped());
        for vip in vips {
            command.arg("--vip").arg(format!("{}/{}@{}", vip.address, vip.prefix_len, vip.interface));
        }
        for mount in mounts {
            command.arg("--mount").arg(mount);
        }
        if let Some(s) = storage {
            command
                .arg("--storage-device")
                .arg(&s.device)
                .arg("--storage-slot")
                .arg(s.slot.to_string())
                .arg("--storage-timeout")
                .arg(crate::config::format_duration(s.timeout));
        }
        let mut child =
            command.spawn().with_context(|| format!("cannot start the guard ({} guard)", binary.display()))?;
        let pipe = child.stdin.take().expect("piped stdin");
        nix::fcntl::fcntl(pipe.as_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .context("cannot make the guard's pipe non-blocking")?;
        Ok(Watchdog::Process { child, pipe, every })
    }

    /// How often [`Watchdog::renew`] must be called; `None` when off.
    pub fn every(&self) -> Option<Duration> {
        match self {
            Watchdog::Off => None,
            Watchdog::Process { every, .. } | Watchdog::Device { every, .. } => Some(*every),
        }
    }

    /// What it is, for the start-up event.
    pub fn describe(&self) -> String {
        match self {
            Watchdog::Off => {
                "off ([guard] enabled = false): a paused agent's services keep running until fenced".into()
            }
            Watchdog::Process { child, every, .. } => {
                format!("guard process {} renewed every {}", child.id(), crate::config::format_duration(*every))
            }
            Watchdog::Device { path, every, .. } => {
                format!("{} renewed every {}", path.display(), crate::config::format_duration(*every))
            }
        }
    }

    /// One renewal. Never blocks: a full pipe already holds plenty of renewals.
    pub fn renew(&mut self) -> anyhow::Result<()> {
        match self {
            Watchdog::Off => Ok(()),
            Watchdog::Process { pipe, child, .. } => match pipe.write(b"p") {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => bail!(
                    "the guard process {} is gone ({e}): nothing would stop this node's services if the agent stalled",
                    child.id()
                ),
            },
            Watchdog::Device { file, path, .. } => match file.as_mut() {
                Some(f) => f.write_all(b"\0").with_context(|| format!("cannot renew {}", path.display())),
                None => Ok(()),
            },
        }
    }

    /// A clean stop (every resource is down): the guard exits without acting; the device
    /// is disarmed with the magic close.
    pub fn disarm(&mut self) {
        match self {
            Watchdog::Off => {}
            Watchdog::Process { pipe, child, .. } => {
                let _ = pipe.write_all(b"q");
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                tracing::warn!(pid = child.id(), "the guard did not exit after the agent's clean stop; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
            Watchdog::Device { file, .. } => {
                if let Some(mut f) = file.take() {
                    let _ = f.write_all(b"V");
                }
            }
        }
    }
}

/// Renewals come four times per timeout, at most every second and at least every 10 ms.
pub fn renew_every(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Parses `ADDRESS/PREFIX@INTERFACE`.
pub fn parse_vip(text: &str) -> anyhow::Result<VipSpec> {
    let (cidr, interface) =
        text.split_once('@').with_context(|| format!("{text:?} is not ADDRESS/PREFIX@INTERFACE"))?;
    let (address, prefix) = cidr.split_once('/').with_context(|| format!("{text:?} has no /PREFIX"))?;
    Ok(VipSpec {
        address: address.parse().with_context(|| format!("{address:?} is not an IP address"))?,
        prefix_len: prefix.parse().with_context(|| format!("{prefix:?} is not a prefix length"))?,
        interface: interface.to_string(),
        announce_count: 0,
        announce_interval: Duration::ZERO,
    })
}

/// Why the guard acted.
#[derive(Debug, PartialEq, Eq)]
pub enum Trip {
    /// No renewal within the timeout (the agent paused, stalled or deadlocked).
    Expired { silent: Duration },
    /// The pipe closed without `q`: the agent died without stopping its resources.
    AgentGone,
    /// A peer wrote the poison pill into this node's storage fence slot.
    Poisoned { by: String, sequence: u64 },
    /// The storage fence slot could not be read for its timeout.
    StorageUnreadable { for_: Duration, error: String },
}

/// Reads the slot every `timeout / 4` on a thread of its own (a read may hang on a dead
/// device; the guard's deadlines do not).
fn spawn_reader(watch: StorageWatch) -> std::sync::mpsc::Receiver<Result<crate::storage_fence::Slot, String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        loop {
            let read = crate::storage_fence::read_slot(&watch.device, watch.slot);
            if tx.send(read).is_err() {
                return;
            }
            std::thread::sleep(renew_every(watch.timeout));
        }
    });
    rx
}

/// Reads renewals from `input` until a clean stop (`Ok(None)`) or a trip. The deadline
/// is measured on CLOCK_MONOTONIC; data that arrives after it does not count. With
/// `storage`, the slot is read too (see [`Trip::Poisoned`], [`Trip::StorageUnreadable`]).
pub fn watch(input: &mut File, timeout: Duration, storage: Option<StorageWatch>) -> std::io::Result<Option<Trip>> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut last = Instant::now();
    let mut buf = [0u8; 256];
    let storage_timeout = storage.as_ref().map(|it| it.timeout);
    let reader = storage.map(spawn_reader);
    let mut last_read = Instant::now();
    let mut read_error = String::from("no read finished yet");
    loop {
        if let (Some(rx), Some(bound)) = (&reader, storage_timeout) {
            while let Ok(read) = rx.try_recv() {
                match read {
                    Ok(slot) if slot.poison => {
                        return Ok(Some(Trip::Poisoned { by: slot.sender, sequence: slot.sequence }));
                    }
                    Ok(_) => last_read = Instant::now(),
                    Err(e) => read_error = e,
                }
            }
            if last_read.elapsed() >= bound {
                return Ok(Some(Trip::StorageUnreadable { for_: last_read.elapsed(), error: read_error }));
            }
        }
        let left = timeout.saturating_sub(last.elapsed());
        if left.is_zero() {
            return Ok(Some(Trip::Expired { silent: last.elapsed() }));
        }
        let left = if reader.is_some() { left.min(Duration::from_millis(20)) } else { left };
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        // Late: the node was frozen past the deadline; what it says now is too late.
        if last.elapsed() >= timeout {
            return Ok(Some(Trip::Expired { silent: last.elapsed() }));
        }
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(Some(Trip::AgentGone));
        }
        if buf[..n].contains(&b'q') {
            return Ok(None);
        }
        last = Instant::now();
    }
}

/// `takeover guard`: runs until the agent's clean stop (exit 0) or a trip, after which it
/// kills the agent, the node's cgroups and removes its virtual IPs (exit 1).
pub fn main(args: GuardArgs) -> anyhow::Result<bool> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { signal(sig, SigHandler::SigIgn) }.context("cannot ignore signals")?;
    }
    let vips: Vec<VipSpec> = args.vips.iter().map(|it| parse_vip(it)).collect::<anyhow::Result<_>>()?;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().context("no stdin pipe from the agent")?;
    let mut input = File::from(fd);
    let Some(trip) = watch(&mut input, args.timeout, args.storage.clone())? else {
        return Ok(true);
    };
    let why = match &trip {
        Trip::Expired { silent } => format!(
            "the agent (pid {}) did not renew for {} ms (timeout {})",
            args.agent_pid,
            silent.as_millis(),
            crate::config::format_duration(args.timeout)
        ),
        Trip::AgentGone => format!("the agent (pid {}) exited without stopping its resources", args.agent_pid),
        Trip::Poisoned { by, sequence } => {
            format!("{by} fenced this node through the storage device (poison message {sequence})")
        }
        Trip::StorageUnreadable { for_, error } => format!(
            "cannot read this node's storage fence slot for {} ms ({error}): a peer may be fencing it unseen",
            for_.as_millis()
        ),
    };
    eprintln!(
        "takeover guard: {why}: killing the agent and this node's services, cutting it off its filesystems, removing its virtual IPs"
    );
    // The agent first, so it cannot start anything again; only while it is still our
    // parent (otherwise the pid may be someone else's now).
    if nix::unistd::getppid().as_raw() == args.agent_pid {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(args.agent_pid), Signal::SIGKILL);
    }
    let mut failed = Vec::new();
    // Then the shared disks: no write of this node (its services', or the kernel's
    // writeback) may reach them once the peer may take them over.
    for mount in &args.mounts {
        match crate::resources::mount::cut_off(mount) {
            Ok(true) => eprintln!("takeover guard: cut off {} (shut down, detached)", mount.display()),
            Ok(false) => {}
            Err(e) => failed.push(e),
        }
    }
    match crate::resources::process::kill_leftover_cgroups(&args.scope) {
        Ok(killed) => eprintln!("takeover guard: removed {} cgroup(s) of {}", killed.len(), args.scope),
        Err(e) => failed.push(format!("{e:#}")),
    }
    if !vips.is_empty() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        for vip in vips {
            let what = format!("{}/{} on {}", vip.address, vip.prefix_len, vip.interface);
            match runtime.block_on(crate::resources::vip::release(vip)) {
                Ok(()) => eprintln!("takeover guard: removed {what}"),
                Err(e) => failed.push(format!("cannot remove {what}: {e}")),
            }
        }
    }
    if !failed.is_empty() {
        eprintln!("takeover guard: ALARM: {}", failed.join("; "));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (File::from(r), File::from(w))
    }

    #[test]
    fn renewals_keep_it_quiet_and_q_ends_it_cleanly() {
        let (mut r, mut w) = pipe();
        let writer = std::thread::spawn(move || {
            for _ in 0..10 {
                w.write_all(b"p").unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            w.write_all(b"q").unwrap();
        });
        assert_eq!(watch(&mut r, Duration::from_millis(150), None).unwrap(), None);
        writer.join().unwrap();
    }

    #[test]
    fn silence_past_the_timeout_trips() {
        let (mut r, _w) = pipe();
        let started = Instant::now();
        match watch(&mut r, Duration::from_millis(100), None).unwrap() {
            Some(Trip::Expired { silent }) => assert!(silent >= Duration::from_millis(100), "{silent:?}"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn the_agent_closing_without_q_trips_at_once() {
        let (mut r, w) = pipe();
        drop(w);
        assert_eq!(watch(&mut r, Duration::from_secs(10), None).unwrap(), Some(Trip::AgentGone));
    }

    #[test]
    fn a_renewal_after_the_deadline_does_not_count() {
        // The writer stalls past the timeout, then renews: a frozen node that resumed.
        let (mut r, mut w) = pipe();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            let _ = w.write_all(b"pppp");
        });
        assert!(matches!(watch(&mut r, Duration::from_millis(100), None).unwrap(), Some(Trip::Expired { .. })));
        writer.join().unwrap();
    }

    #[test]
    fn a_poison_in_the_slot_trips_and_so_does_an_unreadable_device() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("sbd.img");
        std::fs::File::create(&device).unwrap().set_len(1 << 20).unwrap();
        crate::storage_fence::init(&device, "c", &["alpha".into(), "beta".into()]).unwrap();
        let watch_of = |path: &std::path::Path| StorageWatch {
            device: path.to_path_buf(),
            slot: 1,
            timeout: Duration::from_millis(200),
        };
        // Renewed and clear: quiet until the pill arrives.
        let (mut r, mut w) = pipe();
        let dev = device.clone();
        let writer = std::thread::spawn(move || {
            for i in 0..20 {
                w.write_all(b"p").unwrap();
                std::thread::sleep(Duration::from_millis(20));
                if i == 10 {
                    crate::storage_fence::poison(&dev, 1, "beta", 0, "alpha").unwrap();
                }
            }
            drop(w);
        });
        let trip = watch(&mut r, Duration::from_secs(10), Some(watch_of(&device))).unwrap();
        assert_eq!(trip, Some(Trip::Poisoned { by: "alpha".into(), sequence: 1 }));
        writer.join().unwrap();
        // The device gone: trips after the storage timeout although renewals go on.
        let (mut r, mut w) = pipe();
        let renew = std::thread::spawn(move || {
            while w.write_all(b"p").is_ok() {
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let started = Instant::now();
        let trip = watch(&mut r, Duration::from_secs(10), Some(watch_of(&dir.path().join("gone")))).unwrap();
        drop(r);
        renew.join().unwrap();
        match trip {
            Some(Trip::StorageUnreadable { for_, error }) => {
                assert!(for_ >= Duration::from_millis(200) && started.elapsed() < Duration::from_secs(5), "{for_:?}");
                assert!(error.contains("gone"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn vip_arguments_parse() {
        let v = parse_vip("10.200.0.100/24@eth0").unwrap();
        assert_eq!((v.address.to_string(), v.prefix_len, v.interface.as_str()), ("10.200.0.100".into(), 24, "eth0"));
        let v = parse_vip("fd00::5/64@br-1").unwrap();
        assert_eq!((v.address.to_string(), v.prefix_len), ("fd00::5".into(), 64));
        assert!(parse_vip("10.0.0.1/24").is_err());
        assert!(parse_vip("10.0.0.1@eth0").is_err());
    }

    #[test]
    fn renewal_interval_is_a_quarter_of_the_timeout_within_bounds() {
        assert_eq!(renew_every(Duration::from_millis(500)), Duration::from_millis(125));
        assert_eq!(renew_every(Duration::from_millis(20)), Duration::from_millis(10));
        assert_eq!(renew_every(Duration::from_secs(60)), Duration::from_secs(1));
    }

    #[test]
    fn a_device_is_renewed_by_writes_and_disarmed_with_the_magic_close() {
        // A regular file stands in for /dev/watchdog: what matters is what is written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watchdog");
        std::fs::write(&path, b"").unwrap();
        let cfg = crate::config::GuardConfig {
            enabled: true,
            timeout: Duration::from_millis(400),
            device: Some(path.clone()),
        };
        let mut dog = Watchdog::start(&cfg, std::path::Path::new("/nonexistent"), "x-0", &[], &[], None).unwrap();
        assert_eq!(dog.every(), Some(Duration::from_millis(100)));
        dog.renew().unwrap();
        dog.renew().unwrap();
        dog.disarm();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0V");
        // A missing device is a clear error naming the setting.
        let cfg = crate::config::GuardConfig { device: Some(dir.path().join("missing")), ..cfg };
        let err = Watchdog::start(&cfg, std::path::Path::new("/nonexistent"), "x-0", &[], &[], None).err().unwrap();
        assert!(format!("{err:#}").contains("[guard] device"), "{err:#}");
    }

    #[test]
    fn off_does_nothing() {
        let cfg = crate::config::GuardConfig { enabled: false, timeout: Duration::from_millis(400), device: None };
        let mut dog = Watchdog::start(&cfg, std::path::Path::new("/nonexistent"), "x-0", &[], &[], None).unwrap();
        assert_eq!(dog.every(), None);
        dog.renew().unwrap();
        dog.disarm();
    }
}
