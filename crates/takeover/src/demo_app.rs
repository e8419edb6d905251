//! `takeover demo-app`: the demo's sample service, started by the agent while its node is
//! active. It serves on its node's address:
//! - `GET /` → the node's name (which node serves);
//! - `POST /append` → appends the body to the group's journal through the local agent and
//!   answers `200 <index>` once the record is acknowledged, `503` otherwise;
//! - `GET /count` → how many records the group's journal holds.
//!
//! It also writes its own record of when it served, with CLOCK_MONOTONIC (one machine,
//! one clock), so tests can check that two instances never served at overlapping times
//! without trusting the agents: `start <node> <pid> <ns>` when it begins serving and
//! `ack <node> <pid> <ns> <index>` for every acknowledged append, and with `--tick-ms`
//! `tick <node> <pid> <ns>` periodically.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use takeover_agent::api::Client;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `NODE=ADDR` pairs: where each node's instance listens.
    #[arg(long, value_delimiter = ',')]
    listen: Vec<String>,
    /// Where to append this instance's start and ack records.
    #[arg(long)]
    record: PathBuf,
    /// Also write a `tick` record this often while running (milliseconds; 0 = never), so
    /// that a test can see when an instance ran even if no client reached it.
    #[arg(long, default_value_t = 0)]
    tick_ms: u64,
}

#[derive(Clone)]
struct App {
    node: String,
    group: String,
    agent: Client,
    record: PathBuf,
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

impl App {
    fn note(&self, line: &str) {
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(&self.record) {
            let _ = writeln!(file, "{line}");
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let node = std::env::var("TAKEOVER_NODE").context("TAKEOVER_NODE is not set: the agent starts this service")?;
    let group = std::env::var("TAKEOVER_GROUP").context("TAKEOVER_GROUP is not set")?;
    let api = std::env::var("TAKEOVER_API").context("TAKEOVER_API is not set")?;
    let socket = api.strip_prefix("unix:").ok_or_else(|| anyhow!("the demo app needs a unix API, got {api}"))?;
    let addr: SocketAddr = args
        .listen
        .iter()
        .find_map(|pair| pair.strip_prefix(&format!("{node}=")))
        .ok_or_else(|| anyhow!("no --listen address for node {node}"))?
        .parse()?;
    let app = App { node: node.clone(), group, agent: Client::unix(socket), record: args.record };
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    app.note(&format!("start {} {} {}", app.node, std::process::id(), monotonic_ns()));
    if args.tick_ms > 0 {
        let (ticker, every) = (app.clone(), std::time::Duration::from_millis(args.tick_ms));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                ticker.note(&format!("tick {} {} {}", ticker.node, std::process::id(), monotonic_ns()));
            }
        });
    }
    let router = Router::new()
        .route("/", get(|State(app): State<App>| async move { format!("{}\n", app.node) }))
        .route("/append", post(append))
        .route("/count", get(count))
        .with_state(app);
    axum::serve(listener, router).await?;
    Ok(())
}

async fn append(State(app): State<App>, body: Bytes) -> (StatusCode, String) {
    match app.agent.append(&app.group, body.to_vec()).await {
        Ok(answer) => {
            app.note(&format!("ack {} {} {} {}", app.node, std::process::id(), monotonic_ns(), answer.index));
            (StatusCode::OK, format!("{}\n", answer.index))
        }
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", error.message)),
    }
}

async fn count(State(app): State<App>) -> (StatusCode, String) {
    match app.agent.status().await {
        Ok(status) => match status.groups.iter().find(|it| it.name == app.group) {
            Some(group) => (StatusCode::OK, format!("{}\n", group.journal.last_index)),
            None => (StatusCode::NOT_FOUND, "no such group\n".into()),
        },
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", error.message)),
    }
}
