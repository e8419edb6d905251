//! The agent's local HTTP/JSON API (on a Unix socket by default), its documents, and the
//! client the CLI uses.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/` | the status page for people: [`STATUS_PAGE`], which polls `/v1/status` |
//! | GET | `/v1/status` | [`StatusDoc`]: the node, its peers and links, every group |
//! | POST | `/v1/groups/{group}/force-start` | [`ForceStartDoc`] (F0.6) |
//! | POST | `/v1/groups/{group}/journal` | append the request body as one record; answers [`AppendDoc`] once the record is acknowledged (M: durable on both nodes; SM: durable here) |
//! | GET | `/v1/groups/{group}/journal?from=N&limit=M` | [`RecordsDoc`]: records from index N |
//! | POST | `/v1/groups/{group}/switchover[?to=NODE]` | [`SwitchoverDoc`]: move the group from this (active) node to its peer (F1.10) |
//! | POST | `/v1/groups/{group}/cleanup` | [`SwitchoverDoc`]: clear the group's failure counts (F1.5) |
//!
//! Errors are `{"error": "...what failed and what to do..."}` with a 4xx/5xx status. The
//! core's types are converted here, at the edge; the core itself knows nothing of JSON.

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusDoc {
    pub cluster: String,
    pub node: String,
    pub incarnation: u64,
    /// `fence` or `unsafe-assume-crash-stop` (the latter is unsafe under partitions).
    pub arbiter: String,
    /// How cluster traffic is authenticated: `chacha20-poly1305` (the cluster key) or
    /// `none` (`auth = "none"`: anyone on the links can forge traffic).
    pub auth: String,
    pub peers: Vec<PeerDoc>,
    pub groups: Vec<GroupDoc>,
    /// The most recent events, oldest first.
    pub events: Vec<EventDoc>,
    /// Traffic dropped before it reached the core, in total and by reason.
    pub dropped: DroppedDoc,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerDoc {
    pub node: String,
    pub alive: bool,
    pub incarnation: Option<u64>,
    pub links: Vec<LinkDoc>,
    /// Which link carries the peer channel, if it is up.
    pub channel_link: Option<usize>,
    pub fencing: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkDoc {
    pub index: usize,
    /// Where this node sends heartbeats for the peer on this link.
    pub address: String,
    pub up: bool,
    /// Milliseconds since the last heartbeat on this link.
    pub last_heard_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupDoc {
    pub name: String,
    /// `M`, `SM`, `SL` or `X` (F0.1).
    pub role: String,
    /// The durable server priority, 1, 2 or 3 (F0.3).
    pub priority: u8,
    /// The durable epoch (generation) as `counter.node`, with `!` when begun by a force start.
    pub epoch: String,
    pub join_only: bool,
    pub peer: String,
    pub peer_state: PeerStateDoc,
    pub journal: JournalDoc,
    /// The peer node being fenced for this group, if any.
    pub fencing: Option<String>,
    /// Why a node in X does not start the group, in plain words.
    pub waiting: Option<String>,
    /// On an SL: whether the active confirmed the sync, so this node may take over.
    pub sl_confirmed: bool,
    /// The resources in start order, with their state here.
    pub resources: Vec<ResourceDoc>,
    /// A resource would not start or kept failing here, and the group could not move: it
    /// stays down until `takeover cleanup`.
    pub failed: bool,
    /// The group came here because it failed on the peer; it will not be handed back there
    /// until `takeover cleanup` on this node.
    pub peer_failed: bool,
    /// Why the group is moving away from this node (switchover, failback, failure).
    pub moving: Option<String>,
    /// The last move of the group on this node, step by step (F2.3 step timings).
    pub last_move: Option<MoveDoc>,
}

/// One resource of a group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResourceDoc {
    pub name: String,
    /// `vip`, `disk`, `mount`, `process` or `ocf`.
    pub kind: String,
    /// `up`, `down`, `starting` or `stopping`.
    pub state: String,
    /// Failed monitors within the restart window, and failed starts (until `cleanup`).
    pub failures: usize,
    /// Restarts in place allowed within the window before the group moves.
    pub max_restarts: u32,
    /// The last operation, how it ended and how long it took.
    pub last_op: Option<String>,
    /// The last plan check (F2.3): `None` before the first one has finished.
    pub plan_ok: Option<bool>,
    /// What the plan check resolved or found wrong.
    pub plan: Vec<String>,
}

/// A move of a group (takeover, switchover, failback, start), timed step by step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveDoc {
    pub what: String,
    /// `done`, `handed over`, `FAILED` or `interrupted`.
    pub outcome: String,
    pub total_ms: u64,
    /// When it ended, in milliseconds since the agent started (as events).
    pub at_ms: u64,
    pub steps: Vec<StepDoc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDoc {
    pub step: String,
    pub ms: u64,
}

/// `POST /v1/groups/{group}/switchover` and `/cleanup`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SwitchoverDoc {
    /// `moving`, `refused` or `cleared`.
    pub outcome: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerStateDoc {
    /// `up`, `down`, `stopped` (down and known not processing) or `unknown`.
    pub status: String,
    pub incarnation: Option<u64>,
    pub role: Option<String>,
    pub priority: Option<u8>,
    pub last_index: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JournalDoc {
    /// The last record in the local journal.
    pub last_index: u64,
    /// On an active: the SL's durable position; on an SL: its own.
    pub sl_durable: Option<u64>,
    /// Appends waiting for their acknowledgement.
    pub pending_appends: usize,
    /// Records cut by rejoins and kept aside, by reason.
    pub quarantined_unreplicated: u64,
    pub quarantined_force_start: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventDoc {
    /// Milliseconds since this agent started (monotonic).
    pub t_ms: u64,
    pub text: String,
}

/// Dropped traffic. `heartbeats` and `frames` count what the network tasks refused; each
/// of those has one reason among the last five (they add up to `heartbeats + frames`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DroppedDoc {
    /// UDP heartbeats refused.
    pub heartbeats: u64,
    /// Channel frames refused (in the handshake or on an established connection).
    pub frames: u64,
    /// Authentic group messages the core refused (malformed for its state, or for a
    /// group this node does not run).
    pub messages: u64,
    /// Failed authentication: another cluster key, or forged or corrupted bytes.
    pub bad_tag: u64,
    /// Authentic but replayed, duplicated, reordered, or from an older run of the sender.
    pub replay: u64,
    /// From a node that is not a peer of this one in the configuration.
    pub unknown_sender: u64,
    /// Not a well-formed packet of this protocol version.
    pub malformed: u64,
    /// Another cluster's traffic, or addressed to another node or link.
    pub foreign: u64,
}

/// `POST /v1/groups/{group}/force-start`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForceStartDoc {
    /// `started`, `fencing` (the peer is fenced first; poll status) or `refused`.
    pub outcome: String,
    pub message: String,
    /// The [1 1] warning: what the operator must do with the peer.
    pub warning: Option<String>,
}

/// `POST /v1/groups/{group}/journal`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppendDoc {
    pub index: u64,
}

/// `GET /v1/groups/{group}/journal`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordsDoc {
    pub last_index: u64,
    pub records: Vec<RecordDoc>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordDoc {
    pub index: u64,
    pub epoch: String,
    /// The payload, base64 (standard alphabet, padded).
    pub payload: String,
}

impl RecordDoc {
    pub fn payload_bytes(&self) -> Option<Vec<u8>> {
        base64::engine::general_purpose::STANDARD.decode(&self.payload).ok()
    }
}

pub fn encode_payload(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An API failure: an HTTP status and a message for people.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// A request from the API to the agent's event loop.
#[derive(Debug)]
pub enum ApiCall {
    Status { reply: oneshot::Sender<StatusDoc> },
    ForceStart { group: String, reply: oneshot::Sender<Result<ForceStartDoc, ApiError>> },
    Append { group: String, payload: Vec<u8>, reply: oneshot::Sender<Result<AppendDoc, ApiError>> },
    Read { group: String, from: u64, limit: usize, reply: oneshot::Sender<Result<RecordsDoc, ApiError>> },
    Switchover { group: String, to: Option<String>, reply: oneshot::Sender<Result<SwitchoverDoc, ApiError>> },
    Cleanup { group: String, reply: oneshot::Sender<Result<SwitchoverDoc, ApiError>> },
}

#[derive(Deserialize)]
struct SwitchoverQuery {
    to: Option<String>,
}

#[derive(Deserialize)]
struct ReadQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

/// The API's routes; every call is forwarded to the event loop through `calls`.
pub fn router(calls: mpsc::UnboundedSender<ApiCall>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/v1/status", get(status))
        .route("/v1/groups/{group}/force-start", post(force_start))
        .route("/v1/groups/{group}/journal", post(append).get(read))
        .route("/v1/groups/{group}/switchover", post(switchover))
        .route("/v1/groups/{group}/cleanup", post(cleanup))
        .with_state(calls)
}

async fn ask<T>(
    calls: &mpsc::UnboundedSender<ApiCall>,
    make: impl FnOnce(oneshot::Sender<T>) -> ApiCall,
) -> Result<T, ApiError> {
    let (reply, answer) = oneshot::channel();
    calls.send(make(reply)).map_err(|_| ApiError::new(503, "the agent is shutting down"))?;
    answer.await.map_err(|_| ApiError::new(503, "the agent stopped before answering"))
}

/// The web status page (plain HTML, CSS and JS, no build step): nodes, links, groups,
/// roles, the last takeovers step by step and recent events, redrawn every second from
/// `GET /v1/status`.
pub const STATUS_PAGE: &str = include_str!("web/status.html");

async fn status_page() -> impl IntoResponse {
    ([(axum::http::header::CACHE_CONTROL, "no-store")], axum::response::Html(STATUS_PAGE))
}

async fn status(State(calls): State<mpsc::UnboundedSender<ApiCall>>) -> Result<axum::Json<StatusDoc>, ApiError> {
    Ok(axum::Json(ask(&calls, |reply| ApiCall::Status { reply }).await?))
}

async fn force_start(
    State(calls): State<mpsc::UnboundedSender<ApiCall>>,
    UrlPath(group): UrlPath<String>,
) -> Result<axum::Json<ForceStartDoc>, ApiError> {
    Ok(axum::Json(ask(&calls, |reply| ApiCall::ForceStart { group, reply }).await??))
}

async fn switchover(
    State(calls): State<mpsc::UnboundedSender<ApiCall>>,
    UrlPath(group): UrlPath<String>,
    Query(query): Query<SwitchoverQuery>,
) -> Result<axum::Json<SwitchoverDoc>, ApiError> {
    Ok(axum::Json(ask(&calls, |reply| ApiCall::Switchover { group, to: query.to, reply }).await??))
}

async fn cleanup(
    State(calls): State<mpsc::UnboundedSender<ApiCall>>,
    UrlPath(group): UrlPath<String>,
) -> Result<axum::Json<SwitchoverDoc>, ApiError> {
    Ok(axum::Json(ask(&calls, |reply| ApiCall::Cleanup { group, reply }).await??))
}

async fn append(
    State(calls): State<mpsc::UnboundedSender<ApiCall>>,
    UrlPath(group): UrlPath<String>,
    body: Bytes,
) -> Result<axum::Json<AppendDoc>, ApiError> {
    let payload = body.to_vec();
    Ok(axum::Json(ask(&calls, |reply| ApiCall::Append { group, payload, reply }).await??))
}

async fn read(
    State(calls): State<mpsc::UnboundedSender<ApiCall>>,
    UrlPath(group): UrlPath<String>,
    Query(query): Query<ReadQuery>,
) -> Result<axum::Json<RecordsDoc>, ApiError> {
    let (from, limit) = (query.from.unwrap_or(1).max(1), query.limit.unwrap_or(1000).clamp(1, 100_000));
    Ok(axum::Json(ask(&calls, |reply| ApiCall::Read { group, from, limit, reply }).await??))
}

/// Serves the API on a Unix socket until the listener fails.
pub async fn serve_unix(path: &Path, calls: mpsc::UnboundedSender<ApiCall>) -> std::io::Result<()> {
    let listener = bind_unix(path)?;
    axum::serve(listener, router(calls)).await
}

/// Binds the API socket, replacing a stale socket file but never another kind of file,
/// and makes it reachable by its owner only.
pub fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket; remove it or choose another api path",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::other(format!(
                "{} is the API socket of a running agent; stop it first, or give this node an api path of its own",
                path.display()
            )));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// A client of one agent's API.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn unix(socket: impl Into<PathBuf>) -> Client {
        Client { socket: socket.into() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn status(&self) -> Result<StatusDoc, ApiError> {
        self.call("GET", "/v1/status", Vec::new()).await
    }

    pub async fn force_start(&self, group: &str) -> Result<ForceStartDoc, ApiError> {
        self.call("POST", &format!("/v1/groups/{group}/force-start"), Vec::new()).await
    }

    pub async fn switchover(&self, group: &str, to: Option<&str>) -> Result<SwitchoverDoc, ApiError> {
        let query = to.map_or(String::new(), |to| format!("?to={to}"));
        self.call("POST", &format!("/v1/groups/{group}/switchover{query}"), Vec::new()).await
    }

    pub async fn cleanup(&self, group: &str) -> Result<SwitchoverDoc, ApiError> {
        self.call("POST", &format!("/v1/groups/{group}/cleanup"), Vec::new()).await
    }

    pub async fn append(&self, group: &str, payload: Vec<u8>) -> Result<AppendDoc, ApiError> {
        self.call("POST", &format!("/v1/groups/{group}/journal"), payload).await
    }

    pub async fn read(&self, group: &str, from: u64, limit: usize) -> Result<RecordsDoc, ApiError> {
        self.call("GET", &format!("/v1/groups/{group}/journal?from={from}&limit={limit}"), Vec::new()).await
    }

    /// One request on a fresh connection; status 0 means the agent could not be reached.
    async fn call<T: for<'de> Deserialize<'de>>(&self, method: &str, path: &str, body: Vec<u8>) -> Result<T, ApiError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::new(0, format!("cannot reach the agent at {}: {e}; is it running?", self.socket.display()))
        };
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| unreachable(&e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "takeover")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        let response = sender.send_request(request).await.map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.map_err(|e| unreachable(&e))?.to_bytes();
        if status >= 300 {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|it| it.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ApiError::new(status, message));
        }
        serde_json::from_slice(&bytes).map_err(|e| ApiError::new(500, format!("unreadable answer from the agent: {e}")))
    }
}
