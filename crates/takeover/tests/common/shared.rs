//! What the resource tests share: a dual-ported disk (one image file, one loop device per
//! node), a client probe that asks the service through the virtual IP every few
//! milliseconds, and small readers of the client's neighbour table.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use takeover_agent::netbed::{CLIENT, Netbed};

/// Size of the shared image.
const DISK_MIB: u64 = 64;

/// One image file attached once per node through its own loop device: two paths to one
/// disk, so a double mount would really corrupt it. The filesystem ends 4 KiB before the
/// end, where the disk resource keeps its reservation record.
pub struct SharedDisk {
    pub image: PathBuf,
    /// Node → its loop device.
    pub paths: BTreeMap<String, PathBuf>,
}

fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(out.status.success(), "{argv:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl SharedDisk {
    /// A blank image `name` of `mib` MiB, attached once per node.
    pub fn create_raw(dir: &Path, name: &str, mib: u64, nodes: &[&str]) -> SharedDisk {
        let image = dir.join(name);
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(mib << 20).unwrap();
        let mut disk = SharedDisk { image: image.clone(), paths: BTreeMap::new() };
        for node in nodes {
            let dev = run(&["losetup", "--find", "--show", &image.display().to_string()]);
            disk.paths.insert(node.to_string(), PathBuf::from(dev));
        }
        disk
    }

    pub fn create(dir: &Path, nodes: &[&str]) -> SharedDisk {
        let disk = SharedDisk::create_raw(dir, "shared.img", DISK_MIB, nodes);
        // 4 KiB blocks: every block but the last, which holds the reservation.
        let first = disk.paths.values().next().unwrap().display().to_string();
        let blocks = ((DISK_MIB << 20) / 4096 - 1).to_string();
        run(&["mkfs.ext4", "-q", "-F", "-b", "4096", &first, &blocks]);
        disk
    }

    pub fn path(&self, node: &str) -> String {
        self.paths[node].display().to_string()
    }

    /// `{ alpha = "/dev/loopN", beta = "/dev/loopM" }`.
    pub fn per_node(&self) -> String {
        let pairs: Vec<String> =
            self.paths.iter().map(|(n, p)| format!("{n} = {:?}", p.display().to_string())).collect();
        format!("{{ {} }}", pairs.join(", "))
    }
}

impl Drop for SharedDisk {
    fn drop(&mut self) {
        // Anything still mounted from these devices goes first (a failed test).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for dev in self.paths.values() {
            let dev = dev.display().to_string();
            for line in mounts.lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                let source = fields.iter().skip_while(|it| **it != "-").nth(2);
                if source == Some(&dev.as_str()) {
                    let _ = nix::mount::umount2(fields[4], nix::mount::MntFlags::MNT_DETACH);
                }
            }
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
    }
}

/// One request of the probe.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    pub seq: u64,
    /// The node that answered; `None`: no answer within the wait.
    pub node: Option<String>,
}

/// A client in the client namespace sending `seq N` to the service's address every
/// `every` and recording every answer and every miss.
pub struct Probe {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

impl Probe {
    pub fn start(bed: &Netbed, to: SocketAddrV4, every: Duration) -> Probe {
        let socket: UdpSocket = bed.udp_socket(CLIENT, 0).expect("a UDP socket in the client namespace");
        socket.set_read_timeout(Some(Duration::from_millis(40))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                seq += 1;
                let at = Instant::now();
                let _ = socket.send_to(format!("seq {seq}").as_bytes(), to);
                let mut node = None;
                let deadline = at + Duration::from_millis(40);
                while Instant::now() < deadline {
                    let Ok((n, _)) = socket.recv_from(&mut buf) else { break };
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if let Some((who, got)) = text.split_once(' ')
                        && got == seq.to_string()
                    {
                        node = Some(who.to_string());
                        break;
                    }
                }
                out.lock().unwrap().push(Sample { at, seq, node });
                std::thread::sleep(every.saturating_sub(at.elapsed()));
            }
        });
        Probe { stop, samples, thread: Some(thread) }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Requests answered, by sequence number → node.
    pub fn answered(&self) -> BTreeMap<u64, String> {
        self.samples().into_iter().filter_map(|it| Some((it.seq, it.node?))).collect()
    }

    /// Polls until `n` more answers from `node` than now arrive, or panics with `context`.
    pub async fn wait_answers_from(&self, node: &str, n: usize, timeout: Duration, context: impl Fn() -> String) {
        let count = || self.samples().iter().filter(|it| it.node.as_deref() == Some(node)).count();
        let target = count() + n;
        let deadline = Instant::now() + timeout;
        while count() < target {
            assert!(
                Instant::now() < deadline,
                "no {n} answers from {node} through the VIP within {timeout:?}\n{}",
                context()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The longest run without an answer, from its first miss to the next answer.
    pub fn longest_outage(&self) -> Duration {
        let samples = self.samples();
        let mut worst = Duration::ZERO;
        let mut since: Option<Instant> = None;
        for s in &samples {
            match (&s.node, since) {
                (None, None) => since = Some(s.at),
                (Some(_), Some(start)) => {
                    worst = worst.max(s.at - start);
                    since = None;
                }
                _ => {}
            }
        }
        worst
    }

    /// Nodes that answered, in the order they first did after each other.
    pub fn answer_sequence(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in self.samples() {
            if let Some(node) = s.node
                && out.last() != Some(&node)
            {
                out.push(node);
            }
        }
        out
    }

    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.samples()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The MAC address of `member`'s `eth0`.
pub fn mac(bed: &Netbed, member: &str) -> String {
    let out = bed.exec(member, &["ip", "-o", "link", "show", "dev", "eth0"]).expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("link/ether ").nth(1).and_then(|it| it.split_whitespace().next()).expect("a MAC address").to_string()
}

/// The MAC address the client's neighbour table holds for `addr`, if any.
pub fn client_neighbour(bed: &Netbed, addr: Ipv4Addr) -> Option<String> {
    let out = bed.exec(CLIENT, &["ip", "neigh", "show", &addr.to_string()]).ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("lladdr ").nth(1).and_then(|it| it.split_whitespace().next()).map(str::to_string)
}

/// Whether `member`'s `eth0` carries `addr`.
pub fn has_address(bed: &Netbed, member: &str, addr: Ipv4Addr) -> bool {
    let out = bed.exec(member, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).expect("ip addr show");
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {addr}/"))
}

/// Whether something is mounted at `path` (the namespaces share the host's mount table).
pub fn mounted(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.display().to_string();
    text.lines().any(|line| line.split(' ').nth(4) == Some(want.as_str()))
}
