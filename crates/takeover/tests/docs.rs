//! The guide (`docs/`) against the code: the configuration reference lists exactly the
//! keys the parser accepts, table by table, with the code's defaults; the quickstart's
//! configuration passes `config check`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use takeover_agent::config;

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

/// A file of the right shape with `key = value` added to one table, marked `{table}`.
fn probe(table: &str, line: &str) -> String {
    let slot = |name: &str| if name == table { line } else { "" };
    format!(
        r#"
{top}
[cluster]
name = "x"
auth = "none"
{cluster}
[fence]
{fence}
[[fence.level]]
devices = [{{ command = ["x"] {device} }}]
{level}
[guard]
{guard}
[witness]
{witness}
[storage_fence]
{storage}
[[node]]
name = "a"
state_dir = "/tmp/a"
api = "unix:/tmp/a.sock"
links = ["127.0.0.1:1"]
{node}
[[group]]
name = "g"
nodes = ["a"]
{group}
[[group.resource]]
name = "r"
type = "process"
{resource}
"#,
        top = slot("top"),
        cluster = slot("cluster"),
        fence = slot("fence"),
        device = if table == "fence.device" { format!(", {line}") } else { String::new() },
        level = slot("fence.level"),
        guard = slot("guard"),
        witness = slot("witness"),
        storage = slot("storage_fence"),
        node = slot("node"),
        group = slot("group"),
        resource = slot("group.resource"),
    )
}

/// The keys the parser accepts in `table`, from its own error for an unknown one.
fn accepted(table: &str) -> BTreeSet<String> {
    let line = "zz_not_a_key = 1";
    let errors = match config::parse(&probe(table, line), "probe.toml") {
        Ok(_) => panic!("an unknown key in [{table}] was accepted"),
        Err(errors) => errors.to_string(),
    };
    let message = errors.lines().find(|it| it.contains("unknown field `zz_not_a_key`")).unwrap_or_else(|| {
        panic!("no unknown-field error for [{table}]:\n{errors}");
    });
    let expected = message.split_once("expected").expect("serde lists the expected keys").1;
    let keys: BTreeSet<String> = expected.split('`').skip(1).step_by(2).map(str::to_string).collect();
    assert!(!keys.is_empty(), "{message}");
    keys
}

/// The reference's sections (`<!-- keys: ID -->` in the heading) and, for each, its rows:
/// key → default column.
fn documented() -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(docs().join("configuration.md")).unwrap();
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            current = line.split_once("<!-- keys: ").map(|it| it.1.trim_end_matches(" -->").trim().to_string());
            if let Some(id) = &current {
                assert!(sections.insert(id.clone(), BTreeMap::new()).is_none(), "section {id} twice");
            }
        } else if let (Some(id), Some(row)) = (&current, line.strip_prefix("| `")) {
            let (key, rest) = row.split_once('`').unwrap();
            let default = rest.split('|').nth(1).unwrap_or("").trim().to_string();
            let previous = sections.get_mut(id).unwrap().insert(key.to_string(), default);
            assert!(previous.is_none(), "`{key}` twice in section {id}");
        }
    }
    sections
}

#[test]
fn the_configuration_reference_lists_exactly_the_keys_the_parser_accepts() {
    let docs = documented();
    let tables = [
        "cluster",
        "fence",
        "fence.level",
        "fence.device",
        "guard",
        "witness",
        "storage_fence",
        "node",
        "group",
        "group.resource",
    ];
    // Every top-level table has a section.
    let top = accepted("top");
    let sections: BTreeSet<&str> = docs.keys().map(String::as_str).collect();
    for key in &top {
        assert!(sections.contains(key.as_str()), "the top-level table `{key}` has no section in configuration.md");
    }
    let mut problems = Vec::new();
    for table in tables {
        let code = accepted(table);
        let Some(section) = docs.get(table) else {
            problems.push(format!("no section <!-- keys: {table} -->"));
            continue;
        };
        let written: BTreeSet<String> = section.keys().cloned().collect();
        // The resource section lists the keys every type takes; the types list theirs.
        let code: BTreeSet<String> = if table == "group.resource" {
            let specific: BTreeSet<&str> =
                ["vip", "disk", "mount", "process", "ocf"].iter().flat_map(|it| config::keys_of(it)).copied().collect();
            code.into_iter().filter(|it| !specific.contains(it.as_str())).collect()
        } else {
            code
        };
        for key in code.difference(&written) {
            problems.push(format!("[{table}] `{key}` is accepted by the parser but not documented"));
        }
        for key in written.difference(&code) {
            problems.push(format!("[{table}] `{key}` is documented but the parser refuses it"));
        }
    }
    for kind in ["vip", "disk", "mount", "process", "ocf"] {
        let code: BTreeSet<String> = config::keys_of(kind).iter().map(|it| it.to_string()).collect();
        assert!(!code.is_empty(), "{kind} is a resource type");
        let written: BTreeSet<String> = docs.get(kind).map(|it| it.keys().cloned().collect()).unwrap_or_default();
        for key in code.symmetric_difference(&written) {
            problems.push(format!("type = \"{kind}\": `{key}` differs between the code and configuration.md"));
        }
    }
    assert!(problems.is_empty(), "docs/configuration.md and the parser disagree:\n{}", problems.join("\n"));
}

#[test]
fn the_configuration_reference_gives_the_codes_defaults() {
    let docs = documented();
    let d = |d| format!("`\"{}\"`", config::format_duration(d));
    let n = |n: u64| format!("`{n}`");
    let expected = [
        ("cluster", "heartbeat_interval", d(config::DEFAULT_HEARTBEAT_INTERVAL)),
        ("cluster", "dead_after", d(config::DEFAULT_DEAD_AFTER)),
        ("cluster", "startup_wait", d(config::DEFAULT_STARTUP_WAIT)),
        ("cluster", "fence_retry", d(config::DEFAULT_FENCE_RETRY)),
        ("cluster", "fence_delay", d(config::DEFAULT_FENCE_DELAY)),
        ("cluster", "catch_up_window", n(config::DEFAULT_CATCH_UP_WINDOW)),
        ("fence", "timeout", d(config::DEFAULT_FENCE_TIMEOUT)),
        ("fence", "retries", n(config::DEFAULT_FENCE_RETRIES.into())),
        ("witness", "lease", d(config::DEFAULT_WITNESS_LEASE)),
        ("witness", "margin", d(config::DEFAULT_WITNESS_MARGIN)),
        ("storage_fence", "timeout", d(config::DEFAULT_STORAGE_TIMEOUT)),
        ("group", "stop_timeout", d(config::DEFAULT_STOP_TIMEOUT)),
        ("group", "failback_delay", d(config::DEFAULT_FAILBACK_DELAY)),
        ("group.resource", "start_timeout", d(config::DEFAULT_OP_TIMEOUT)),
        ("group.resource", "stop_timeout", d(config::DEFAULT_OP_TIMEOUT)),
        ("group.resource", "monitor_timeout", d(config::DEFAULT_OP_TIMEOUT)),
        (
            "group.resource",
            "monitor_interval",
            format!("{} (a vip: {})", d(config::DEFAULT_MONITOR_INTERVAL), d(config::DEFAULT_VIP_MONITOR_INTERVAL)),
        ),
        ("group.resource", "max_restarts", n(config::DEFAULT_MAX_RESTARTS.into())),
        ("group.resource", "restart_window", d(config::DEFAULT_RESTART_WINDOW)),
        ("vip", "announce", n(config::DEFAULT_ANNOUNCE.into())),
        ("vip", "announce_interval", d(config::DEFAULT_ANNOUNCE_INTERVAL)),
    ];
    let mut problems = Vec::new();
    for (table, key, default) in expected {
        let written = docs.get(table).and_then(|it| it.get(key)).map(String::as_str).unwrap_or("(missing)");
        if written != default {
            problems.push(format!("[{table}] {key}: configuration.md says {written}, the code {default}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_quickstart_configuration_passes_config_check() {
    let text = std::fs::read_to_string(docs().join("quickstart.md")).unwrap();
    // The file the quickstart writes: its ```toml block after "cluster.toml".
    let start = text.find("```toml").expect("a toml block in the quickstart") + "```toml".len();
    let toml = &text[start..start + text[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    // The key file it names, made the way the quickstart makes it.
    let key = dir.path().join("cluster.key");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_takeover"))
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = dir.path().join("cluster.toml");
    std::fs::write(&file, toml.replace("/etc/takeover/cluster.key", key.to_str().unwrap())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_takeover"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the quickstart's cluster.toml fails `config check`:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("2 node(s), 1 group(s)"), "{said}");
}

#[test]
fn the_quickstarts_status_needs_no_node_when_every_node_has_the_same_socket_path() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let file = dir.path().join("cluster.toml");
    let node = |name: &str, port: u16| {
        format!(
            "[[node]]\nname = \"{name}\"\nstate_dir = \"/tmp/{name}\"\napi = \"unix:{}\"\nlinks = [\"127.0.0.1:{port}\"]\n",
            socket.display()
        )
    };
    std::fs::write(
        &file,
        format!(
            "[cluster]\nname = \"q\"\nauth = \"none\"\narbiter = \"unsafe-assume-crash-stop\"\n{}{}",
            node("alpha", 7101),
            node("beta", 7102)
        ),
    )
    .unwrap();
    // A stand-in for this machine's agent: answers one request with an API error.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let agent = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = conn.read(&mut request).unwrap();
        let body = r#"{"error":"the stand-in agent answered"}"#;
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(answer.as_bytes()).unwrap();
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_takeover"))
        .args(["status", "--config"])
        .arg(&file)
        .env_remove("TAKEOVER_NODE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // (Checked before joining: a CLI that never connected would leave the stand-in waiting.)
    assert!(stderr.contains("the stand-in agent answered"), "the CLI did not ask the socket:\n{stderr}");
    agent.join().unwrap();
}
