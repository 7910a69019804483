//! `server`.

use std::path::PathBuf;
use std::time::Duration;

use super::Validator;
use crate::ServerConfig;
use crate::raw::RawServer;

impl Validator<'_> {
    pub(super) fn server(&mut self, s: &RawServer) -> ServerConfig {
        ServerConfig {
            workers: self.range("server.workers", s.workers, 0, 256) as usize,
            drain_timeout: Duration::from_secs(
                self.range("server.drain_timeout_secs", s.drain_timeout_secs, 0, 600) as u64
            ),
            handover_socket: s.handover_socket.as_ref().map(PathBuf::from),
        }
    }
}
