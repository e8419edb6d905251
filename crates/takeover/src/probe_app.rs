//! `takeover probe-app`: the resource tests' sample service, started by the agent as a
//! group's process resource. It answers UDP requests on `--port` (all addresses of its
//! network namespace, so it is reached through the group's virtual IP):
//!
//! - `seq N` → appends `N` to `DATA/served.log`, fsyncs it, then answers `<node> N`: an
//!   answered request is durable on the group's filesystem, which the tests check after a
//!   takeover (the client's "acknowledged" records).
//! - `who` → `<node>`.
//!
//! With `--record FILE` it also writes `start <node> <pid> <ns>` when it begins and
//! `tick <node> <pid> <ns>` every 20 ms (CLOCK_MONOTONIC), the demo app's format, so a test
//! can check that two instances never ran at overlapping times.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::demo_app::monotonic_ns;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The UDP port to answer on (every address of the namespace).
    #[arg(long)]
    port: u16,
    /// The directory on the group's filesystem where `served.log` goes.
    #[arg(long)]
    data: PathBuf,
    /// Where to write this instance's start and tick records.
    #[arg(long)]
    record: Option<PathBuf>,
}

fn note(record: &Option<PathBuf>, line: &str) {
    if let Some(path) = record
        && let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let node = std::env::var("TAKEOVER_NODE").context("TAKEOVER_NODE is not set: the agent starts this service")?;
    let socket =
        UdpSocket::bind(("0.0.0.0", args.port)).with_context(|| format!("cannot bind UDP port {}", args.port))?;
    std::fs::create_dir_all(&args.data).with_context(|| format!("creating {}", args.data.display()))?;
    let log_path = args.data.join("served.log");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let pid = std::process::id();
    note(&args.record, &format!("start {node} {pid} {}", monotonic_ns()));
    if args.record.is_some() {
        let (record, node) = (args.record.clone(), node.clone());
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(20));
                note(&record, &format!("tick {node} {pid} {}", monotonic_ns()));
            }
        });
    }
    let mut buf = [0u8; 512];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
        let answer = match request.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["seq", seq] => {
                // Durable before the answer: the client counts an answer as kept.
                writeln!(log, "{seq}").and_then(|()| log.sync_data()).with_context(|| {
                    format!("cannot write {} (the group's filesystem is gone?)", log_path.display())
                })?;
                format!("{node} {seq}")
            }
            ["who"] => node.clone(),
            _ => continue,
        };
        let _ = socket.send_to(answer.as_bytes(), from);
    }
}
