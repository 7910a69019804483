//! nodedns: a node-local DNS cache for Kubernetes.
//!
//! The binary (`main.rs`) only parses the command line; everything else lives here:
//! [`config`] (YAML → validated `Config`), [`engine`] (cache + miss path), [`server`]
//! (UDP workers with batched I/O, pipelined TCP), [`admin`] (metrics, health, readiness),
//! [`node_setup`] (interface + conntrack bypass wiring), [`reload`], [`probe`], [`daemon`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_socket;
pub mod app;
pub mod daemon;
pub mod discover;
pub mod dnstap;
pub mod handover;
pub mod logging;
pub mod metrics;
pub mod node_setup;
pub mod privileges;
pub mod probe;
pub mod querylog;
pub mod ratelimit;
pub mod readiness;
pub mod reload;
pub mod rlimit;
pub mod server;

// The configuration lives in its own crate; these keep the `crate::config::...` and
// `crate::kubedns::...` paths of the daemon working.
pub use nodedns_config as config;
pub use nodedns_config::kubedns;
