//! `log`, `log.dnstap` included.

use std::path::PathBuf;

use super::Validator;
use crate::raw::{RawDnstap, RawLog, RawLogFormat};
use crate::{DnstapConfig, DnstapTarget, LogConfig, LogFormat};

/// sun_path holds 108 bytes with its terminating NUL (unix(7)).
const MAX_SOCKET_PATH: usize = 107;

impl Validator<'_> {
    pub(super) fn log(&mut self, l: &RawLog) -> LogConfig {
        if tracing_subscriber::EnvFilter::try_new(&l.level).is_err() {
            self.problem("log.level", format!("`{}` is not a log level or filter", l.level));
        }
        let rate = l.queries_sample_rate;
        if !(0.0..=1.0).contains(&rate) {
            self.problem("log.queries_sample_rate", format!("{rate} is out of range [0, 1]"));
        }
        LogConfig {
            format: match l.format {
                RawLogFormat::Text => LogFormat::Text,
                RawLogFormat::Json => LogFormat::Json,
            },
            level: l.level.clone(),
            queries_sample_rate: rate,
            dnstap: l.dnstap.as_ref().and_then(|d| self.dnstap(d)),
        }
    }

    fn dnstap_path(&mut self, key: &str, path: &str) -> Option<PathBuf> {
        if path.is_empty() {
            self.problem(key, "empty path");
            return None;
        }
        if !path.starts_with('/') {
            self.problem(key, format!("`{path}` is not an absolute path"));
            return None;
        }
        Some(PathBuf::from(path))
    }

    fn dnstap(&mut self, d: &RawDnstap) -> Option<DnstapConfig> {
        let target = match (&d.socket, &d.file) {
            (Some(_), Some(_)) => {
                self.problem("log.dnstap", "set one of socket and file, not both");
                None
            }
            (None, None) => {
                self.problem("log.dnstap", "set socket (a Frame Streams unix socket path) or file");
                None
            }
            (Some(s), None) => {
                let p = self.dnstap_path("log.dnstap.socket", s);
                if s.len() > MAX_SOCKET_PATH {
                    self.problem(
                        "log.dnstap.socket",
                        format!("{} bytes is longer than a unix socket path can be ({MAX_SOCKET_PATH})", s.len()),
                    );
                    return None;
                }
                p.map(DnstapTarget::Socket)
            }
            (None, Some(f)) => self.dnstap_path("log.dnstap.file", f).map(DnstapTarget::File),
        };
        if let Some(id) = &d.identity
            && id.trim().is_empty()
        {
            self.problem("log.dnstap.identity", "empty (leave it out for the node or host name)");
        }
        Some(DnstapConfig { target: target?, identity: d.identity.clone() })
    }
}
