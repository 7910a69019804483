//! `kube_dns_configmap` (the ConfigMap's own content is checked by [`crate::kubedns`]).

use std::path::PathBuf;
use std::time::Duration;

use super::Validator;
use crate::KubeDnsConfigMap;
use crate::raw::{RawKubeDnsConfigMap, RawTransport};

impl Validator<'_> {
    pub(super) fn kube_dns_configmap(&mut self, k: &RawKubeDnsConfigMap) -> KubeDnsConfigMap {
        if k.path.is_empty() {
            self.problem("kube_dns_configmap.path", "required");
        }
        KubeDnsConfigMap {
            path: PathBuf::from(&k.path),
            reload_interval: Duration::from_secs(self.range(
                "kube_dns_configmap.reload_interval_secs",
                k.reload_interval_secs,
                1,
                3600,
            ) as u64),
            transport: match k.transport {
                Some(RawTransport::Tcp) => nodedns_upstream::Transport::Tcp,
                Some(RawTransport::Udp) | None => nodedns_upstream::Transport::Udp,
            },
        }
    }
}
