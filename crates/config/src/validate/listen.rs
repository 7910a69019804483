//! `listen` (node addresses add to it: see `node.rs`).

use std::net::SocketAddr;

use super::Validator;
use crate::parse_socket_addr;

impl Validator<'_> {
    pub(super) fn listen(&mut self, raw: &[String]) -> Vec<SocketAddr> {
        let mut listen = Vec::new();
        for (i, l) in raw.iter().enumerate() {
            match parse_socket_addr(l, 53) {
                Ok(a) => listen.push(a),
                Err(e) => self.problem(&format!("listen[{i}]"), e),
            }
        }
        listen
    }

    /// Once the node's addresses are in: a daemon with nothing to serve on is a mistake.
    pub(super) fn listen_not_empty(&mut self, listen: &[SocketAddr]) {
        if listen.is_empty() {
            self.problem("listen", "no listen address: set `listen` or `node.addresses`");
        }
    }
}
