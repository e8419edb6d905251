//! The agent's HTTP/JSON API, its documents, and the client the CLI uses.
//!
//! The API is served on the node's `api` address (a Unix socket, mode 0600, by default)
//! and, when `api_listen` and `api_token_file` are configured, also on TCP, where every
//! request must carry `Authorization: Bearer TOKEN`.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/` | the status page for people: [`STATUS_PAGE`], which polls `/v1/status` |
//! | GET | `/v1/status` | [`StatusDoc`]: the node, its peers and links, every group |
//! | GET | `/v1/events?after=SEQ&limit=N&wait_ms=MS` | [`EventsDoc`]: the node's event history after `SEQ`; waits up to `wait_ms` for a new one |
//! | POST | `/v1/groups/{group}/force-start` | [`ForceStartDoc`] (F0.6) |
//! | POST | `/v1/groups/{group}/journal` | append the request body as one record; answers [`AppendDoc`] once the record is acknowledged (M: durable on both nodes; SM: durable here) |
//! | GET | `/v1/groups/{group}/journal?from=N&limit=M` | [`RecordsDoc`]: records from index N |
//! | POST | `/v1/groups/{group}/switchover[?to=NODE]` | [`SwitchoverDoc`]: move the group from this (active) node to its peer (F1.10) |
//! | POST | `/v1/groups/{group}/cleanup` | [`SwitchoverDoc`]: clear the group's failure counts (F1.5) |
//! | GET | `/v1/openapi.json` | the OpenAPI 3.1 document of all of these (checked in as `docs/openapi.json`) |
//! | GET | `/metrics` | Prometheus metrics (see [`crate::metrics`]) |
//!
//! The OpenAPI document is generated from the handlers below (utoipa): a route exists only
//! with its description. Errors are `{"error": "...what failed and what to do..."}` with a
//! 4xx/5xx status, for unknown routes and malformed queries too. The core's types are
//! converted here, at the edge; the core itself knows nothing of JSON.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::events::SharedLog;

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
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
    /// The most recent events (at most 200), oldest first; `GET /v1/events` has the history.
    pub events: Vec<EventDoc>,
    /// Traffic dropped before it reached the core, in total and by reason.
    pub dropped: DroppedDoc,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PeerDoc {
    pub node: String,
    pub alive: bool,
    pub incarnation: Option<u64>,
    pub links: Vec<LinkDoc>,
    /// Which link carries the peer channel, if it is up.
    pub channel_link: Option<usize>,
    pub fencing: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LinkDoc {
    pub index: usize,
    /// Where this node sends heartbeats for the peer on this link.
    pub address: String,
    pub up: bool,
    /// Milliseconds since the last heartbeat on this link.
    pub last_heard_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
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
    /// With a `[witness]`: this node's lease of the group in words (`held for 5.2s`,
    /// `not held: ...`); absent without a witness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// One resource of a group.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MoveDoc {
    pub what: String,
    /// `done`, `handed over`, `FAILED` or `interrupted`.
    pub outcome: String,
    pub total_ms: u64,
    /// When it ended, in milliseconds since the agent started (as events).
    pub at_ms: u64,
    pub steps: Vec<StepDoc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StepDoc {
    pub step: String,
    pub ms: u64,
}

/// `POST /v1/groups/{group}/switchover` and `/cleanup`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SwitchoverDoc {
    /// `moving`, `refused` or `cleared`.
    pub outcome: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PeerStateDoc {
    /// `up`, `down`, `stopped` (down and known not processing) or `unknown`.
    pub status: String,
    pub incarnation: Option<u64>,
    pub role: Option<String>,
    pub priority: Option<u8>,
    pub last_index: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
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

/// One event of the node's history (see [`crate::events`]). The fields after `t_ms` and
/// `text` came later: a status document saved before them still reads (they default).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventDoc {
    /// The event's number on this node: increasing, kept across restarts.
    #[serde(default)]
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    #[serde(default)]
    pub at_unix_ms: u64,
    /// Milliseconds since the agent run that recorded it started (monotonic).
    pub t_ms: u64,
    /// The agent run (incarnation) that recorded it.
    #[serde(default)]
    pub incarnation: u64,
    /// `agent`, `link`, `peer`, `transition`, `move`, `fence`, `resource`,
    /// `monitor-failure`, `journal`, `operator` or `group`.
    #[serde(default)]
    pub kind: String,
    /// `info`, `warning` or `alarm`.
    #[serde(default)]
    pub level: String,
    /// The group it is about, if any.
    pub group: Option<String>,
    /// What happened and why, in plain words.
    pub text: String,
}

/// `GET /v1/events`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventsDoc {
    pub node: String,
    /// The events after `after`, oldest first (at most `limit`: the newest ones).
    pub events: Vec<EventDoc>,
    /// The newest event's number: ask again with `after` set to it for what follows.
    pub newest: u64,
}

/// The body of every error answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDoc {
    /// What failed and what to do.
    pub error: String,
}

/// Dropped traffic. `heartbeats` and `frames` count what the network tasks refused; each
/// of those has one reason among the last five (they add up to `heartbeats + frames`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
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
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ForceStartDoc {
    /// `started`, `fencing` (the peer is fenced first; poll status) or `refused`.
    pub outcome: String,
    pub message: String,
    /// The [1 1] warning: what the operator must do with the peer.
    pub warning: Option<String>,
}

/// `POST /v1/groups/{group}/journal`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AppendDoc {
    pub index: u64,
}

/// `GET /v1/groups/{group}/journal`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordsDoc {
    pub last_index: u64,
    pub records: Vec<RecordDoc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
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
        (status, axum::Json(ErrorDoc { error: self.message })).into_response()
    }
}

/// A request from the API to the agent's event loop.
#[derive(Debug)]
pub enum ApiCall {
    Status {
        reply: oneshot::Sender<StatusDoc>,
    },
    ForceStart {
        group: String,
        reply: oneshot::Sender<Result<ForceStartDoc, ApiError>>,
    },
    Append {
        group: String,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<AppendDoc, ApiError>>,
    },
    Read {
        group: String,
        from: u64,
        limit: usize,
        reply: oneshot::Sender<Result<RecordsDoc, ApiError>>,
    },
    Switchover {
        group: String,
        to: Option<String>,
        reply: oneshot::Sender<Result<SwitchoverDoc, ApiError>>,
    },
    Cleanup {
        group: String,
        reply: oneshot::Sender<Result<SwitchoverDoc, ApiError>>,
    },
    /// The Prometheus page.
    Metrics {
        reply: oneshot::Sender<String>,
    },
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SwitchoverQuery {
    /// The node to move to: the group's peer (the only one possible).
    to: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ReadQuery {
    /// The first index to read (default 1).
    from: Option<u64>,
    /// At most this many records (default 1000, at most 100000; the answer is also
    /// limited to about 4 MiB).
    limit: Option<usize>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Only events with a larger number (default 0: the whole history).
    after: Option<u64>,
    /// At most this many events, the newest ones (default 1000).
    limit: Option<usize>,
    /// When there is no newer event yet, wait this long for one (default 0, at most 60000).
    wait_ms: Option<u64>,
}

/// What every handler shares: the way to the event loop and the event history.
#[derive(Clone)]
pub struct ApiState {
    pub calls: mpsc::UnboundedSender<ApiCall>,
    pub events: SharedLog,
}

/// The OpenAPI document's frame; its paths and schemas come from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "takeover agent API",
        description = "The local API of a takeover agent: status, event history, operator commands, the replicated journal and metrics. Served on the node's Unix socket (`api`), and on TCP (`api_listen`) with `Authorization: Bearer TOKEN` (the contents of `api_token_file`). Errors are JSON `{\"error\": \"...\"}` with what failed and what to do.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorDoc)),
    modifiers(&BearerToken)
)]
struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Required on the TCP listener only (api_listen); the Unix socket needs none."))
                    .build(),
            ),
        );
    }
}

fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status_page))
        .routes(routes!(status))
        .routes(routes!(events))
        .routes(routes!(force_start))
        .routes(routes!(append, read))
        .routes(routes!(switchover))
        .routes(routes!(cleanup))
        .routes(routes!(openapi_json))
        .routes(routes!(metrics))
}

/// The OpenAPI document of the API, generated from its handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

/// The OpenAPI document as served and checked in (`docs/openapi.json`): pretty JSON with a
/// final newline.
pub fn openapi_text() -> String {
    let mut text = openapi().to_pretty_json().expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// The API's routes (as on the Unix socket: no token).
pub fn router(state: ApiState) -> Router {
    routes().split_for_parts().0.fallback(unknown_route).method_not_allowed_fallback(wrong_method).with_state(state)
}

/// The API's routes for the TCP listener: every request needs `Authorization: Bearer TOKEN`.
pub fn router_with_token(state: ApiState, token: String) -> Router {
    let token = Arc::new(token);
    router(state).layer(axum::middleware::from_fn(move |request: Request, next: Next| {
        let token = token.clone();
        async move {
            let given = request
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|it| it.to_str().ok())
                .and_then(|it| it.strip_prefix("Bearer "));
            match given {
                None => ApiError::new(
                    401,
                    "this API listener needs a token: send `Authorization: Bearer TOKEN` with the contents of the node's api_token_file (the CLI: --token-file or TAKEOVER_API_TOKEN)",
                )
                .into_response(),
                Some(given) if !same_token(given.trim().as_bytes(), token.as_bytes()) => ApiError::new(
                    401,
                    "wrong API token: send the contents of the node's api_token_file as `Authorization: Bearer TOKEN`",
                )
                .into_response(),
                Some(_) => next.run(request).await,
            }
        }
    }))
}

/// Compares tokens in time independent of where they differ.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::new(404, format!("no such API route: {}; the routes are listed in GET /v1/openapi.json", uri.path()))
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        405,
        format!("{method} is not allowed on {}; the methods are listed in GET /v1/openapi.json", uri.path()),
    )
}

fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::new(400, format!("bad query string: {}", rejection.body_text()))
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

/// The web status page: the cluster at a glance, refreshed every second from
/// `GET /v1/status` (plain HTML, CSS and JS served by the agent; no build step).
#[utoipa::path(get, path = "/", tag = "status",
    responses((status = 200, description = "the web status page", content_type = "text/html")))]
async fn status_page() -> impl IntoResponse {
    ([(axum::http::header::CACHE_CONTROL, "no-store")], axum::response::Html(STATUS_PAGE))
}

/// The node, its peers and links, and every group: role, priority, epoch, journal,
/// resources, failures, the plan check and the last move.
#[utoipa::path(get, path = "/v1/status", tag = "status",
    responses((status = 200, description = "the status document", body = StatusDoc), (status = 503, body = ErrorDoc, description = "the agent is stopping")))]
async fn status(State(state): State<ApiState>) -> Result<axum::Json<StatusDoc>, ApiError> {
    Ok(axum::Json(ask(&state.calls, |reply| ApiCall::Status { reply }).await?))
}

/// The node's event history (bounded, kept across restarts), oldest first. With
/// `wait_ms`, waits for an event newer than `after` (long poll: `takeover events --follow`).
#[utoipa::path(get, path = "/v1/events", tag = "status", params(EventsQuery),
    responses((status = 200, description = "the events after `after`", body = EventsDoc), (status = 400, description = "a malformed query", body = ErrorDoc)))]
async fn events(
    State(state): State<ApiState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<axum::Json<EventsDoc>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(1000).clamp(1, 100_000);
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0).min(60_000));
    let (events, newest) = crate::events::wait_after(&state.events, after, limit, wait).await;
    let node = state.events.lock().unwrap_or_else(|it| it.into_inner()).node().to_string();
    Ok(axum::Json(EventsDoc { node, events, newest }))
}

/// Start a group on this node although the seed's rule says wait (F0.6); the peer is
/// fenced first. Read the warning.
#[utoipa::path(post, path = "/v1/groups/{group}/force-start", tag = "operator",
    params(("group" = String, Path, description = "the group's name")),
    responses((status = 200, description = "the force start's outcome (`refused` is an answer, not an error)", body = ForceStartDoc), (status = 404, body = ErrorDoc, description = "no such group on this node")))]
async fn force_start(
    State(state): State<ApiState>,
    UrlPath(group): UrlPath<String>,
) -> Result<axum::Json<ForceStartDoc>, ApiError> {
    Ok(axum::Json(ask(&state.calls, |reply| ApiCall::ForceStart { group, reply }).await??))
}

/// Move a group from this (active) node to its peer (F1.10).
#[utoipa::path(post, path = "/v1/groups/{group}/switchover", tag = "operator",
    params(("group" = String, Path, description = "the group's name"), SwitchoverQuery),
    responses((status = 200, description = "the outcome (`refused` is an answer, not an error)", body = SwitchoverDoc), (status = 404, description = "no such group on this node", body = ErrorDoc), (status = 409, body = ErrorDoc, description = "`to` is not the group's peer")))]
async fn switchover(
    State(state): State<ApiState>,
    UrlPath(group): UrlPath<String>,
    query: Result<Query<SwitchoverQuery>, QueryRejection>,
) -> Result<axum::Json<SwitchoverDoc>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    Ok(axum::Json(ask(&state.calls, |reply| ApiCall::Switchover { group, to: query.to, reply }).await??))
}

/// Clear a group's failure counts on this node (F1.5); a group that failed here starts
/// again if this node is active.
#[utoipa::path(post, path = "/v1/groups/{group}/cleanup", tag = "operator",
    params(("group" = String, Path, description = "the group's name")),
    responses((status = 200, description = "the outcome (`refused` is an answer, not an error)", body = SwitchoverDoc), (status = 404, description = "no such group on this node", body = ErrorDoc)))]
async fn cleanup(
    State(state): State<ApiState>,
    UrlPath(group): UrlPath<String>,
) -> Result<axum::Json<SwitchoverDoc>, ApiError> {
    Ok(axum::Json(ask(&state.calls, |reply| ApiCall::Cleanup { group, reply }).await??))
}

/// Append the request body as one record; answers once it is acknowledged (M: durable on
/// both nodes; SM: durable here).
#[utoipa::path(post, path = "/v1/groups/{group}/journal", tag = "journal",
    params(("group" = String, Path, description = "the group's name")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the record's payload"),
    responses((status = 200, description = "acknowledged at this index", body = AppendDoc), (status = 404, description = "no such group on this node", body = ErrorDoc),
        (status = 409, body = ErrorDoc, description = "this node is not the group's active node"),
        (status = 503, body = ErrorDoc, description = "the group is moving, or stopped being active before the acknowledgement")))]
async fn append(
    State(state): State<ApiState>,
    UrlPath(group): UrlPath<String>,
    body: Bytes,
) -> Result<axum::Json<AppendDoc>, ApiError> {
    let payload = body.to_vec();
    Ok(axum::Json(ask(&state.calls, |reply| ApiCall::Append { group, payload, reply }).await??))
}

/// Read records of a group's local journal.
#[utoipa::path(get, path = "/v1/groups/{group}/journal", tag = "journal",
    params(("group" = String, Path, description = "the group's name"), ReadQuery),
    responses((status = 200, description = "the records", body = RecordsDoc), (status = 400, description = "a malformed query", body = ErrorDoc), (status = 404, description = "no such group on this node", body = ErrorDoc)))]
async fn read(
    State(state): State<ApiState>,
    UrlPath(group): UrlPath<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<axum::Json<RecordsDoc>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let (from, limit) = (query.from.unwrap_or(1).max(1), query.limit.unwrap_or(1000).clamp(1, 100_000));
    Ok(axum::Json(ask(&state.calls, |reply| ApiCall::Read { group, from, limit, reply }).await??))
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], openapi_text()).into_response()
}

/// Prometheus metrics, text exposition format 0.0.4.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "the metrics", content_type = "text/plain")))]
async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let text = ask(&state.calls, |reply| ApiCall::Metrics { reply }).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

/// Reads an API token file: its contents without surrounding white space, at least 16
/// characters, in a file no one else may read.
pub fn load_token(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the API token file {}: {e}; write one with e.g. `head -c 32 /dev/urandom | base64 > {0}; chmod 600 {0}`",
            path.display()
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "the API token file {} can be read by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the API token file {}: {e}", path.display()))?;
    let token = text.trim().to_string();
    if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!(
            "the API token in {} must be one word of at least 16 characters (it has {}); write one with e.g. `head -c 32 /dev/urandom | base64`",
            path.display(),
            token.len()
        );
    }
    Ok(token)
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

/// A client of one agent's API: on its Unix socket, or on its TCP listener with a token.
#[derive(Clone, Debug)]
pub struct Client {
    to: Transport,
}

#[derive(Clone, Debug)]
enum Transport {
    Unix(PathBuf),
    Tcp { addr: String, token: Option<String> },
}

impl Client {
    pub fn unix(socket: impl Into<PathBuf>) -> Client {
        Client { to: Transport::Unix(socket.into()) }
    }

    /// The agent's TCP listener at `addr` (`HOST:PORT`), sending `token` if given.
    pub fn tcp(addr: impl Into<String>, token: Option<String>) -> Client {
        Client { to: Transport::Tcp { addr: addr.into(), token } }
    }

    /// Where the agent is, for messages: the socket path or `http://HOST:PORT`.
    pub fn target(&self) -> String {
        match &self.to {
            Transport::Unix(path) => path.display().to_string(),
            Transport::Tcp { addr, .. } => format!("http://{addr}"),
        }
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

    /// The event history after `after`; waits up to `wait_ms` for a newer event.
    pub async fn events(&self, after: u64, limit: usize, wait_ms: u64) -> Result<EventsDoc, ApiError> {
        self.call("GET", &format!("/v1/events?after={after}&limit={limit}&wait_ms={wait_ms}"), Vec::new()).await
    }

    /// The Prometheus metrics page.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let (status, bytes) = self.raw("GET", "/metrics", Vec::new()).await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status >= 300 {
            return Err(ApiError::new(status, error_message(&bytes)));
        }
        Ok(text)
    }

    /// The OpenAPI document the agent serves.
    pub async fn openapi(&self) -> Result<String, ApiError> {
        let (status, bytes) = self.raw("GET", "/v1/openapi.json", Vec::new()).await?;
        if status >= 300 {
            return Err(ApiError::new(status, error_message(&bytes)));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// One request on a fresh connection: the status and the body. An error (status 0)
    /// means the agent could not be reached.
    pub async fn raw(&self, method: &str, path: &str, body: Vec<u8>) -> Result<(u16, Bytes), ApiError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::new(0, format!("cannot reach the agent at {}: {e}; is it running?", self.target()))
        };
        let (mut sender, token) = match &self.to {
            Transport::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| unreachable(&e))?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
                tokio::spawn(connection);
                (sender, None)
            }
            Transport::Tcp { addr, token } => {
                let stream = tokio::net::TcpStream::connect(addr.as_str()).await.map_err(|e| unreachable(&e))?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
                tokio::spawn(connection);
                (sender, token.as_deref())
            }
        };
        let mut request = hyper::Request::builder().method(method).uri(path).header("host", "takeover");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::from(body))).expect("a valid request");
        let response = sender.send_request(request).await.map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.map_err(|e| unreachable(&e))?.to_bytes();
        Ok((status, bytes))
    }

    async fn call<T: for<'de> Deserialize<'de>>(&self, method: &str, path: &str, body: Vec<u8>) -> Result<T, ApiError> {
        let (status, bytes) = self.raw(method, path, body).await?;
        if status >= 300 {
            return Err(ApiError::new(status, error_message(&bytes)));
        }
        serde_json::from_slice(&bytes).map_err(|e| ApiError::new(500, format!("unreadable answer from the agent: {e}")))
    }
}

/// The message of an error answer (`{"error": ...}`), or the body as text.
fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<ErrorDoc>(bytes)
        .map(|it| it.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    /// `docs/openapi.json` is the document the agent serves. After changing the API, write
    /// it anew with `UPDATE_OPENAPI=1 cargo test -p takeover-agent --lib openapi`.
    #[test]
    fn the_checked_in_openapi_document_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let generated = super::openapi_text();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{} differs from the API's generated OpenAPI document; if the API change is intended, run `UPDATE_OPENAPI=1 cargo test -p takeover-agent --lib openapi` and commit docs/openapi.json",
            path.display()
        );
    }

    #[test]
    fn every_route_is_documented_with_its_methods() {
        let doc = super::openapi();
        let paths: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        for path in [
            "/v1/status",
            "/v1/events",
            "/v1/groups/{group}/force-start",
            "/v1/groups/{group}/journal",
            "/v1/groups/{group}/switchover",
            "/v1/groups/{group}/cleanup",
            "/v1/openapi.json",
            "/metrics",
        ] {
            assert!(paths.contains(&path), "{path} is not in the OpenAPI document: {paths:?}");
        }
        let journal = &doc.paths.paths["/v1/groups/{group}/journal"];
        assert!(journal.get.is_some() && journal.post.is_some(), "journal: GET and POST");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(super::same_token(b"abc", b"abc"));
        assert!(!super::same_token(b"abc", b"abd"));
        assert!(!super::same_token(b"abc", b"abcd"));
        assert!(!super::same_token(b"", b"a"));
    }
}
