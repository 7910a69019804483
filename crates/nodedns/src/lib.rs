//! nodedns: a node-local DNS cache for Kubernetes — the daemon.
//!
//! `main.rs` parses the command line, wires signals and drops privileges; [`daemon`] runs the
//! node-facing start steps; [`app`] is the App that serves until told to stop. Serving:
//! [`server`] (the front door shared by UDP and TCP, the UDP workers, pipelined TCP), the
//! resolver from `nodedns-resolver`; around it [`admin`] (metrics, health, readiness),
//! [`readiness`], [`metrics`], [`dnstap`], [`querylog`], [`reload`], [`discover`],
//! [`node_setup`], [`handover`], [`probe`]. The config is the `nodedns-config` crate, re-exported
//! as [`config`].
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
