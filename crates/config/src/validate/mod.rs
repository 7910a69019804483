//! Validation of a [`RawConfig`] into a [`Config`], one file per top-level section. Every check
//! records its problem and carries on, so one run reports everything wrong with a file (each
//! problem with its key path and line) instead of one error per rollout.

mod admin;
mod cache;
mod kube_dns_configmap;
mod limits;
mod listen;
mod log;
mod node;
mod server;
mod zones;

use std::fmt;
use std::net::SocketAddr;

use crate::raw::RawConfig;
use crate::{Config, Problem, locate};

/// Collects the problems of one file; `text` is kept to find each key's line.
pub(crate) struct Validator<'t> {
    text: &'t str,
    pub(crate) problems: Vec<Problem>,
}

impl<'t> Validator<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        Validator { text, problems: Vec::new() }
    }

    pub(crate) fn problem(&mut self, key: &str, message: impl Into<String>) {
        let line = locate::line_of(self.text, key);
        self.problems.push(Problem { key: key.into(), line, message: message.into() });
    }

    /// `v`, with a problem recorded when it is outside `[lo, hi]`.
    fn range<T: PartialOrd + fmt::Display + Copy>(&mut self, key: &str, v: T, lo: T, hi: T) -> T {
        if v < lo || v > hi {
            self.problem(key, format!("{v} is out of range [{lo}, {hi}]"));
        }
        v
    }

    /// Every section in turn. The order matters twice: node addresses add listeners, and zones
    /// are checked against the complete listener list (a forwarding loop) and inherit the cache's
    /// TTL bounds.
    pub(crate) fn validate(
        &mut self,
        raw: RawConfig,
        resolv_conf: &dyn Fn() -> Result<Vec<SocketAddr>, String>,
    ) -> Config {
        let cache = self.cache(&raw.cache);
        let mut listen = self.listen(&raw.listen);
        let node = raw.node.as_ref().map(|n| self.node(n, &mut listen));
        self.listen_not_empty(&listen);
        let zones = self.zones(&raw.zones, &raw.cache, &listen, resolv_conf);
        let admin = self.admin(&raw.admin);
        let limits = self.limits(&raw.limits);
        let log = self.log(&raw.log);
        let server = self.server(&raw.server);
        let kube_dns_configmap = raw.kube_dns_configmap.as_ref().map(|k| self.kube_dns_configmap(k));
        Config { listen, cache, zones, admin, node, limits, log, server, kube_dns_configmap }
    }
}
