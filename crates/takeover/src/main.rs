//! `takeover`: the agent, the CLI and the demo in one binary.

mod demo;
mod demo_app;
mod probe_app;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{CommandFactory, Parser, Subcommand};
use takeover_agent::api::Client;
use takeover_agent::config::{self, ApiAddr};

#[derive(Parser)]
#[command(
    name = "takeover",
    version,
    about = "High-availability cluster manager: seed-000 role machine, fencing, replicated journal",
    after_long_help = "Files: /etc/takeover/cluster.toml (the cluster's configuration, the same on every node), \
/etc/takeover/cluster.key (the cluster key, mode 0600), /etc/default/takeover (TAKEOVER_NODE and the other \
settings of takeover.service), /run/takeover/api.sock and /var/lib/takeover under the unit.\n\
Environment: TAKEOVER_CONFIG, TAKEOVER_NODE, TAKEOVER_JOIN_ONLY, TAKEOVER_LOG (a tracing filter, default info).\n\
Guide: /usr/share/doc/takeover/docs/ (quickstart, configuration, decisions, migration, install)."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum StorageFenceCmd {
    /// Write the device's header and a clear slot for every node of the file.
    Init,
    /// Show every node's slot: clear, or a poison pill and who wrote it.
    List,
    /// Clear one node's slot (a restarted agent clears its own).
    Clear { target: String },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent of one node.
    Agent {
        /// The cluster configuration file (the same file on every node).
        #[arg(long, env = "TAKEOVER_CONFIG")]
        config: PathBuf,
        /// Which node of the file this is.
        #[arg(long, env = "TAKEOVER_NODE")]
        node: String,
        /// After a force start on the peer: do not start any group here until it has
        /// rejoined its active peer as SL (remembered on disk until then). Under systemd:
        /// TAKEOVER_JOIN_ONLY=1 in /etc/default/takeover.
        #[arg(long, env = "TAKEOVER_JOIN_ONLY", value_parser = clap::builder::BoolishValueParser::new())]
        join_only: bool,
    },
    /// Show the node, its links and peers, every group's role, priority, generation,
    /// where it runs, its resources and failure counts, the plan check and recent events.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the status document as JSON: the StatusDoc schema of docs/openapi.json,
        /// stable (fields are only ever added).
        #[arg(long)]
        json: bool,
        /// Refresh in place every INTERVAL (default 2s) until interrupted.
        #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s", value_parser = parse_duration)]
        watch: Option<Duration>,
    },
    /// Show the node's event history (kept on disk across restarts): transitions,
    /// takeovers, fences, monitor failures, operator commands, each with its cause.
    Events {
        #[command(flatten)]
        target: Target,
        /// Keep printing new events as they happen, until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Print the last N events (default 50).
        #[arg(long, short = 'n', default_value_t = 50)]
        last: usize,
        /// One JSON event (EventDoc of docs/openapi.json) per line.
        #[arg(long)]
        json: bool,
    },
    /// What the cluster would do after a failure, step by step (like crm_simulate): the
    /// agents' own decision code runs on a simulated cluster built from the status and
    /// the configuration. Nothing on the machines is touched.
    Simulate {
        /// What fails: a node (it powers off), `link:K` (link K stops between every pair
        /// of nodes) or a resource as GROUP/RESOURCE (its monitor fails where it runs).
        #[arg(long)]
        fail: String,
        /// For a resource: how many of its monitors in a row fail.
        #[arg(long, default_value_t = 1)]
        times: u32,
        /// A saved status document (`takeover status --json`) instead of the live agent's.
        #[arg(long, conflicts_with_all = ["socket", "api"])]
        status: Option<PathBuf>,
        /// The live agent's API socket (the same as --api).
        #[arg(long, conflicts_with = "api")]
        socket: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Start a group on this node although the seed's rule says wait (F0.6). The peer is
    /// fenced first; see the warning it prints.
    ForceStart {
        group: String,
        #[command(flatten)]
        target: Target,
    },
    /// Move a group from this node (its active node) to its peer: resources stop here in
    /// reverse order, then start there once the peer holds every record (F1.10).
    Switchover {
        group: String,
        /// The node to move to (a group runs on a pair: only its peer is possible).
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Clear a group's failure counts on this node; a group that failed here starts again.
    Cleanup {
        group: String,
        #[command(flatten)]
        target: Target,
    },
    /// Write a new cluster key: 32 random bytes, mode 0600, written atomically. Copy the
    /// same file to every node and name it in `[cluster] key_file`.
    Keygen {
        /// Where to write the key.
        #[arg(long, default_value = takeover_agent::auth::keyfile::DEFAULT_PATH)]
        out: PathBuf,
        /// Replace an existing key file (every node then needs the new key).
        #[arg(long)]
        force: bool,
    },
    /// Print a shell completion script: `takeover completions bash >
    /// /etc/bash_completion.d/takeover` (the .deb installs them for bash, zsh and fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (takeover(1) and one per subcommand, e.g. takeover-status(1))
    /// into a directory, generated from these very definitions.
    Man {
        /// The directory to write them to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a configuration file (errors come as file:line:column) and its key file.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Append to or read a group's replicated journal through the local agent.
    Journal {
        #[command(subcommand)]
        command: JournalCmd,
    },
    /// Two agents on loopback and a walk through the seed's five operations.
    Demo {
        /// Where the demo keeps its files (default: a new temporary directory, removed at the end).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the demo directory afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Power off a node that runs on this machine: SIGKILL every process of its agent's
    /// session, then wait until none is left. Exit 0 = confirmed off.
    FenceLocal {
        /// The agent pid file of the node to power off (STATE_DIR/agent.pid).
        #[arg(long)]
        pidfile: PathBuf,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        deadline: Duration,
    },
    /// The demo's sample service (started by the agent).
    #[command(hide = true)]
    DemoApp(demo_app::Args),
    /// The resource tests' sample service: UDP answers, durable on the group's filesystem.
    #[command(hide = true)]
    ProbeApp(probe_app::Args),
    /// The guard process (started by the agent, renewed through its stdin): kills the
    /// agent, the node's cgroups and removes its virtual IPs when renewals stop.
    #[command(hide = true)]
    Guard {
        #[arg(long, value_parser = parse_duration)]
        timeout: Duration,
        #[arg(long)]
        agent_pid: i32,
        #[arg(long)]
        scope: String,
        /// ADDRESS/PREFIX@INTERFACE, repeated.
        #[arg(long = "vip")]
        vips: Vec<String>,
        /// A mount point to shut down and detach when it acts, repeated.
        #[arg(long = "mount")]
        mounts: Vec<PathBuf>,
        /// The storage fence device whose slot to watch.
        #[arg(long, requires_all = ["storage_slot", "storage_timeout"])]
        storage_device: Option<PathBuf>,
        #[arg(long)]
        storage_slot: Option<u16>,
        #[arg(long, value_parser = parse_duration)]
        storage_timeout: Option<Duration>,
    },
    /// The witness for a third machine: grants each group's lease to at most one node at
    /// a time (UDP). Give it the same lease and margin as the cluster's [witness] table.
    Witness {
        /// Address and port to listen on, e.g. 0.0.0.0:7400.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Where the current holders are kept (survives restarts; without it the witness
        /// grants nothing for lease + margin after it starts).
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value = "6s", value_parser = parse_duration)]
        lease: Duration,
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        margin: Duration,
        /// The cluster's name ([cluster] name): bound into every datagram's seal.
        #[arg(long)]
        cluster: String,
        /// The cluster's key file (the nodes' key_file): witness traffic is sealed with it.
        #[arg(long, required_unless_present = "unauthenticated")]
        key_file: Option<PathBuf>,
        /// For a cluster with auth = "none": accept traffic sealed with the public
        /// all-zero key, which anyone can forge. Test clusters only.
        #[arg(long, conflicts_with = "key_file")]
        unauthenticated: bool,
    },
    /// The storage fence device ([storage_fence]): `init` writes its header and a clear
    /// slot per node; `list` shows the slots (like `sbd list`); `clear NODE` clears one.
    StorageFence {
        #[command(subcommand)]
        command: StorageFenceCmd,
        #[arg(long, env = "TAKEOVER_CONFIG", default_value = "/etc/takeover/cluster.toml", global = true)]
        config: PathBuf,
        /// Whose path of the device to use (per-node device paths).
        #[arg(long, env = "TAKEOVER_NODE", global = true)]
        node: Option<String>,
    },
    /// The network-namespace test bed's fence agent (fence-agents stdin protocol).
    #[command(hide = true)]
    FenceNetns {
        #[arg(long)]
        bed: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Parse and validate a configuration file.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum JournalCmd {
    /// Append one record (the text given) and wait for its acknowledgement.
    Append {
        group: String,
        data: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print records from index FROM.
    Read {
        group: String,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        target: Target,
    },
}

/// Which agent to talk to.
#[derive(clap::Args)]
struct Target {
    /// The agent's API (overrides --config/--node): a Unix socket path (or unix:PATH), or
    /// http://HOST:PORT for its TCP listener (api_listen), which needs the token.
    #[arg(long, env = "TAKEOVER_API")]
    api: Option<String>,
    /// The file holding the token of the TCP listener (api_token_file); or give the token
    /// itself in TAKEOVER_API_TOKEN.
    #[arg(long, env = "TAKEOVER_API_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The cluster configuration file, to find the node's API socket.
    #[arg(long, env = "TAKEOVER_CONFIG", default_value = "/etc/takeover/cluster.toml")]
    config: PathBuf,
    /// Which node's agent to ask (default: the one whose API socket exists here).
    #[arg(long, env = "TAKEOVER_NODE")]
    node: Option<String>,
}

impl Target {
    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(file) = &self.token_file {
            return Ok(Some(takeover_agent::api::load_token(file)?));
        }
        Ok(std::env::var("TAKEOVER_API_TOKEN").ok().map(|it| it.trim().to_string()).filter(|it| !it.is_empty()))
    }

    /// The node's state directory, when the configuration names the node.
    fn state_dir(&self) -> Option<PathBuf> {
        let cfg = config::load(&self.config).ok()?;
        let name = self.node.as_deref()?;
        cfg.node(name).map(|it| it.state_dir.clone())
    }

    fn client(&self) -> anyhow::Result<Client> {
        if let Some(api) = &self.api {
            if let Some(addr) = api.strip_prefix("http://").or_else(|| api.strip_prefix("tcp:")) {
                return Ok(Client::tcp(addr.trim_end_matches('/'), self.token()?));
            }
            return Ok(Client::unix(api.strip_prefix("unix:").unwrap_or(api)));
        }
        let cfg = config::load(&self.config)?;
        let node = match &self.node {
            Some(name) => cfg.node(name).ok_or_else(|| anyhow!("node `{name}` is not in {}", self.config.display()))?,
            None => {
                // The one node of the file whose API socket exists here.
                let local: Vec<_> =
                    cfg.nodes.iter().filter(|it| matches!(&it.api, ApiAddr::Unix(path) if path.exists())).collect();
                match local.as_slice() {
                    [one] => *one,
                    // Every node of the file at the same path (`/run/takeover/api.sock` on
                    // each machine): one socket, this machine's agent.
                    [first, rest @ ..] if rest.iter().all(|it| it.api == first.api) => *first,
                    _ => bail!(
                        "say which node with --node (or TAKEOVER_NODE); nodes in {}: {}",
                        self.config.display(),
                        cfg.nodes.iter().map(|it| it.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                }
            }
        };
        match &node.api {
            ApiAddr::Unix(path) => Ok(Client::unix(path)),
            ApiAddr::Tcp(addr) => Ok(Client::tcp(addr.to_string(), self.token()?)),
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    config::parse_duration(text)
}

/// Logs go to stderr, one line per event: colours only on a terminal; no timestamp under
/// journald (`JOURNAL_STREAM`), which stamps lines itself; `TAKEOVER_LOG_FORMAT=json`
/// writes one JSON object per line instead. `TAKEOVER_LOG` filters (default `info`).
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAKEOVER_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let json = std::env::var("TAKEOVER_LOG_FORMAT").is_ok_and(|it| it == "json");
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    match (json, journald) {
        (true, _) => builder.json().flatten_event(true).init(),
        (false, true) => builder.without_time().init(),
        (false, false) => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            // Configuration errors are already worded as file:line:column reports.
            match error.downcast_ref::<config::ConfigErrors>() {
                Some(errors) => eprintln!("{errors}"),
                None => eprintln!("error: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Agent { config, node, join_only } => {
            takeover_agent::agent::run(takeover_agent::agent::AgentOptions { config, node, join_only }).await?;
        }
        Cmd::Status { target, json, watch } => {
            let client = target.client()?;
            let Some(every) = watch else {
                let status = client.status().await.map_err(|e| anyhow!(e.message))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    print!("{}", render::status(&status, render::Paint::for_stdout()));
                }
                return Ok(ExitCode::SUCCESS);
            };
            let paint = render::Paint::for_stdout();
            loop {
                let text = match client.status().await {
                    Ok(status) if json => format!("{}\n", serde_json::to_string(&status)?),
                    Ok(status) => render::status(&status, paint),
                    // The agent may be restarting: say so and keep watching.
                    Err(e) => format!("{}\n", e.message),
                };
                if paint == render::Paint::Ansi && !json {
                    // Home, the text, then clear what the previous screen left below it.
                    print!("\x1b[H{}\x1b[J", text.replace('\n', "\x1b[K\n"));
                } else {
                    print!("{text}");
                    if !json {
                        println!("--");
                    }
                }
                use std::io::Write;
                std::io::stdout().flush()?;
                tokio::time::sleep(every).await;
            }
        }
        Cmd::Events { target, follow, last, json } => {
            let client = target.client()?;
            let paint = render::Paint::for_stdout();
            let print = |events: &[takeover_agent::api::EventDoc]| -> anyhow::Result<()> {
                for event in events {
                    if json {
                        println!("{}", serde_json::to_string(event)?);
                    } else {
                        println!("{}", render::event_line(event, paint));
                    }
                }
                use std::io::Write;
                std::io::stdout().flush()?;
                Ok(())
            };
            let first = match client.events(0, last.max(1), 0).await {
                Ok(first) => first,
                // The agent does not run: its history is on disk.
                Err(e) if e.status == 0 && !follow => match target.state_dir() {
                    Some(dir) => {
                        let events = takeover_agent::events::read_dir(&dir, last.max(1)).with_context(|| {
                            format!("{}; and cannot read the history in {}", e.message, dir.display())
                        })?;
                        eprintln!(
                            "the agent does not answer ({}); its history from {}:",
                            e.message,
                            dir.join(takeover_agent::events::FILE_NAME).display()
                        );
                        print(&events)?;
                        return Ok(ExitCode::SUCCESS);
                    }
                    None => bail!(e.message),
                },
                Err(e) => bail!(e.message),
            };
            print(&first.events)?;
            let mut after = first.newest;
            if follow {
                loop {
                    match client.events(after, 1000, 25_000).await {
                        Ok(doc) => {
                            print(&doc.events)?;
                            after = doc.newest;
                        }
                        Err(e) => {
                            eprintln!("{} (retrying)", e.message);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        }
        Cmd::Simulate { fail, times, status, socket, mut target } => {
            if socket.is_some() {
                target.api = socket.map(|it| it.display().to_string());
            }
            let cfg = config::load(&target.config)?;
            let status: takeover_agent::api::StatusDoc = match &status {
                Some(file) => {
                    let text = std::fs::read_to_string(file)
                        .with_context(|| format!("cannot read the saved status {}", file.display()))?;
                    serde_json::from_str(&text).with_context(|| {
                        format!("{} is not a status document as `takeover status --json` prints it", file.display())
                    })?
                }
                None => target.client()?.status().await.map_err(|e| anyhow!(e.message))?,
            };
            if times == 0 {
                bail!("--times must be at least 1");
            }
            let failure = takeover_agent::simulate::parse_failure(&cfg, &fail, times).map_err(|e| anyhow!(e))?;
            let plan = takeover_agent::simulate::simulate(&cfg, &status, &failure).map_err(|e| anyhow!(e))?;
            print!("{plan}");
        }
        Cmd::ForceStart { group, target } => {
            let answer = target.client()?.force_start(&group).await.map_err(|e| anyhow!(e.message))?;
            println!("{}: {}", answer.outcome, answer.message);
            if let Some(warning) = answer.warning {
                println!("WARNING: {warning}");
            }
            if answer.outcome == "refused" {
                return Ok(ExitCode::from(3));
            }
        }
        Cmd::Switchover { group, to, target } => {
            let answer = target.client()?.switchover(&group, to.as_deref()).await.map_err(|e| anyhow!(e.message))?;
            println!("{}: {}", answer.outcome, answer.message);
            if answer.outcome == "refused" {
                return Ok(ExitCode::from(3));
            }
        }
        Cmd::Cleanup { group, target } => {
            let answer = target.client()?.cleanup(&group).await.map_err(|e| anyhow!(e.message))?;
            println!("{}: {}", answer.outcome, answer.message);
        }
        Cmd::Keygen { out, force } => {
            takeover_agent::auth::keyfile::write_new(&out, force)?;
            println!(
                "wrote a new cluster key to {path} (32 random bytes, mode 0600). Copy it to every node with its mode kept (e.g. `scp -p {path} NODE:{path}`), set key_file = \"{path}\" in [cluster], and restart the agents: nodes with different keys cannot hear each other.",
                path = out.display()
            );
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "takeover", &mut std::io::stdout());
        }
        Cmd::Man { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
            clap_mangen::generate_to(Cli::command(), &out)
                .with_context(|| format!("cannot write the man pages to {}", out.display()))?;
            let mut pages: Vec<String> = std::fs::read_dir(&out)?
                .filter_map(|it| it.ok()?.file_name().into_string().ok())
                .filter(|it| it.starts_with("takeover") && it.ends_with(".1"))
                .collect();
            pages.sort();
            println!("wrote {} man pages to {}: {}", pages.len(), out.display(), pages.join(" "));
        }
        Cmd::Config { command: ConfigCmd::Check { file } } => match config::load(&file) {
            Ok(cfg) => {
                let auth = match &cfg.auth {
                    config::AuthConfig::Key { key_file } => {
                        if let Err(error) = takeover_agent::auth::keyfile::load(key_file) {
                            eprintln!("{}: error: {error}", file.display());
                            return Ok(ExitCode::from(2));
                        }
                        format!("{} with the key in {}", takeover_agent::auth::ALGORITHM, key_file.display())
                    }
                    config::AuthConfig::None => "none (UNAUTHENTICATED: anyone on the links can forge traffic)".into(),
                };
                let witness = match &cfg.witness {
                    Some(w) => format!(
                        ", witness {} (lease {}, margin {})",
                        w.address,
                        config::format_duration(w.lease),
                        config::format_duration(w.margin)
                    ),
                    None => String::new(),
                };
                println!(
                    "{}: ok: cluster {}, {} node(s), {} group(s), heartbeat every {}, a peer is failed after {} of silence on every link, arbiter {}, auth {auth}{witness}",
                    file.display(),
                    cfg.name,
                    cfg.nodes.len(),
                    cfg.groups.len(),
                    config::format_duration(cfg.heartbeat_interval),
                    config::format_duration(cfg.dead_after),
                    match cfg.arbiter {
                        takeover_core::group::Arbiter::Fence => "fence",
                        takeover_core::group::Arbiter::UnsafeAssumeCrashStop =>
                            "unsafe-assume-crash-stop (UNSAFE under partitions)",
                    }
                )
            }
            Err(errors) => {
                eprintln!("{errors}");
                return Ok(ExitCode::from(2));
            }
        },
        Cmd::Journal { command } => match command {
            JournalCmd::Append { group, data, target } => {
                let answer =
                    target.client()?.append(&group, data.into_bytes()).await.map_err(|e| anyhow!(e.message))?;
                println!("acknowledged at index {}", answer.index);
            }
            JournalCmd::Read { group, from, limit, target } => {
                let answer = target.client()?.read(&group, from, limit).await.map_err(|e| anyhow!(e.message))?;
                for record in &answer.records {
                    let payload = record.payload_bytes().unwrap_or_default();
                    println!("{}\t{}\t{}", record.index, record.epoch, String::from_utf8_lossy(&payload));
                }
            }
        },
        Cmd::Demo { dir, keep } => return demo::run(dir, keep).await,
        Cmd::FenceLocal { pidfile, deadline } => {
            let report = tokio::task::spawn_blocking(move || takeover_agent::fence::fence_local(&pidfile, deadline))
                .await
                .context("the fence task failed")??;
            println!("{report:?}");
        }
        Cmd::DemoApp(args) => demo_app::run(args).await?,
        Cmd::ProbeApp(args) => tokio::task::spawn_blocking(move || probe_app::run(args)).await??,
        Cmd::Guard { timeout, agent_pid, scope, vips, mounts, storage_device, storage_slot, storage_timeout } => {
            let storage = match (storage_device, storage_slot, storage_timeout) {
                (Some(device), Some(slot), Some(timeout)) => {
                    Some(takeover_agent::guard::StorageWatch { device, slot, timeout })
                }
                _ => None,
            };
            let args = takeover_agent::guard::GuardArgs { timeout, agent_pid, scope, vips, mounts, storage };
            let clean = tokio::task::spawn_blocking(move || takeover_agent::guard::main(args)).await??;
            return Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Cmd::Witness { listen, state_dir, lease, margin, cluster, key_file, unauthenticated: _ } => {
            if cluster.trim().is_empty() {
                bail!(
                    "--cluster is empty: give the cluster's name ([cluster] name in the nodes' configuration; TAKEOVER_WITNESS_CLUSTER in /etc/default/takeover-witness under systemd)"
                );
            }
            let auth = match key_file {
                Some(path) => {
                    takeover_agent::auth::Auth::with_key(&cluster, &takeover_agent::auth::keyfile::load(&path)?)
                }
                None => {
                    eprintln!(
                        "witness: WARNING: --unauthenticated: anyone who can send to {listen} can take or release a group's lease"
                    );
                    takeover_agent::auth::Auth::unauthenticated(&cluster)
                }
            };
            let args = takeover_agent::witness::WitnessArgs { listen, state_dir, lease, margin, auth };
            tokio::task::spawn_blocking(move || takeover_agent::witness::main(args)).await??;
        }
        Cmd::StorageFence { command, config: file, node } => {
            let cfg = config::load(&file)?;
            let Some(sf) = &cfg.storage_fence else {
                bail!("{} has no [storage_fence] table", file.display());
            };
            let node = match node {
                Some(node) => node,
                None => match &sf.device {
                    config::PerNode::All(_) => cfg.nodes[0].name.clone(),
                    config::PerNode::Each(_) => {
                        bail!("the device path differs per node: say whose with --node (or TAKEOVER_NODE)")
                    }
                },
            };
            if cfg.node(&node).is_none() {
                bail!("node `{node}` is not in {}", file.display());
            }
            let device = sf.device.on(&node).clone();
            let names: Vec<String> = cfg.nodes.iter().map(|it| it.name.clone()).collect();
            match command {
                StorageFenceCmd::Init => {
                    takeover_agent::storage_fence::init(&device, &cfg.name, &names).map_err(|e| anyhow!(e))?;
                    println!("{}: initialised for cluster {} with {} slots", device.display(), cfg.name, names.len());
                }
                StorageFenceCmd::List => {
                    takeover_agent::storage_fence::check_header(&device, &cfg.name, names.len())
                        .map_err(|e| anyhow!(e))?;
                    for (i, name) in names.iter().enumerate() {
                        let slot =
                            takeover_agent::storage_fence::read_slot(&device, i as u16).map_err(|e| anyhow!(e))?;
                        let state = if slot.poison { format!("POISON from {}", slot.sender) } else { "clear".into() };
                        println!("{i}\t{name}\t{state}\t(message {})", slot.sequence);
                    }
                }
                StorageFenceCmd::Clear { target } => {
                    let Some(index) = names.iter().position(|it| *it == target) else {
                        bail!("node `{target}` is not in {}", file.display());
                    };
                    takeover_agent::storage_fence::clear(&device, index as u16, &target).map_err(|e| anyhow!(e))?;
                    println!("{target}: slot cleared");
                }
            }
        }
        Cmd::FenceNetns { bed } => {
            let code = tokio::task::spawn_blocking(move || {
                takeover_agent::netbed::fence_agent_main(std::io::stdin().lock(), &bed)
            })
            .await?;
            return Ok(ExitCode::from(code as u8));
        }
    }
    Ok(ExitCode::SUCCESS)
}
