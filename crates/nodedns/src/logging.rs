//! Logging setup, the live `log.level`, and rate limiting of repeated warnings (so a flood
//! cannot fill a disk).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogConfig, LogFormat};

pub use nodedns_resolver::RateLimitedWarn;

/// Changes the log filter of the subscriber [`init`] installed (`log.level` reloaded). Owned by
/// whoever called [`init`] and handed on to the reload watcher: no process-wide state beyond the
/// subscriber itself. The default value controls nothing (tests, or no subscriber installed).
#[derive(Clone, Default)]
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    /// `RUST_LOG` was set at startup: it wins over `log.level`, on reload too.
    from_env: bool,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("controls", &self.handle.is_some())
            .field("from_env", &self.from_env)
            .finish()
    }
}

impl LogControl {
    /// Whether `RUST_LOG` decides the filter, so `log.level` is not applied.
    pub fn overridden_by_env(&self) -> bool {
        self.from_env
    }

    /// Applies `level` (an `EnvFilter` directive such as `debug` or `info,nodedns=debug`). Returns
    /// false when nothing changed: `RUST_LOG` overrides it, no subscriber is controlled, or the
    /// directive is invalid (config validation rejects those first).
    pub fn set_level(&self, level: &str) -> bool {
        let Some(handle) = &self.handle else { return false };
        if self.from_env {
            return false;
        }
        match EnvFilter::try_new(level) {
            Ok(filter) => handle.reload(filter).is_ok(),
            Err(_) => false,
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` wins over `log.level`. The returned control
/// changes the level later (hot reload).
pub fn init(config: &LogConfig) -> LogControl {
    let from_env = EnvFilter::try_from_default_env();
    let env_set = from_env.is_ok();
    let filter = from_env.or_else(|_| EnvFilter::try_new(&config.level)).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // Colour only on a terminal: container logs and files must stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match config.format {
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    LogControl { handle: Some(handle), from_env: env_set }
}
