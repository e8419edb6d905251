//! The shell of takeover: everything that touches the disk, the network and processes.
//! The decisions live in `takeover-core`; this crate performs them.
//!
//! - [`agent`]: `takeover agent`: start-up and the event loop around the core.
//! - [`auth`]: the cluster key and its file, and the sealing and opening of heartbeats
//!   and channel frames (ChaCha20-Poly1305): nothing unauthenticated reaches the core.
//! - [`api`]: the HTTP/JSON API (Unix socket, optional TCP with a token), its documents,
//!   its OpenAPI document (generated, checked in as docs/openapi.json) and the CLI's client.
//! - [`events`]: the node's bounded event history on disk (`takeover events`), logged
//!   one line per event.
//! - [`metrics`]: Prometheus metrics at `/metrics`.
//! - [`localnet`]: real agents on loopback with a cuttable link, for the demo and tests.
//! - [`netbed`]: nodes in network namespaces on two bridged links, with nftables partitions,
//!   power-off and a test fence agent (root only; tests).
//! - [`net`]: heartbeat receivers and the peer channel's connections.
//! - [`config`]: the cluster configuration file, with file:line:column errors.
//! - [`store`]: atomically written, checksummed state files (group state, incarnation,
//!   pid file).
//! - [`journal`]: the append-only journal of handover records, with torn-tail recovery
//!   and quarantine of cut records.
//! - [`service`]: the group's application process: dies with its agent, own process
//!   group, leftovers killed at start.
//! - [`wire`]: heartbeat datagrams and peer-channel frames, with total decoders.
//! - [`fence`]: fence levels (fence-agents devices and plain commands, with retries,
//!   timeouts and a status check), and `fence-local`, the power-off of a node that runs
//!   on this machine.
//! - [`sdnotify`]: systemd's readiness and watchdog notifications (`Type=notify`).

pub mod agent;
pub mod api;
pub mod auth;
pub mod config;
pub mod events;
pub mod fence;
pub mod guard;
pub mod journal;
pub mod localnet;
pub mod metrics;
pub mod net;
pub mod netbed;
pub mod resources;
pub mod sdnotify;
pub mod service;
pub mod simulate;
pub mod storage_fence;
pub mod store;
pub mod wire;
pub mod witness;
pub mod words;
