//! `admin`.

use super::Validator;
use crate::AdminConfig;
use crate::parse_socket_addr;
use crate::raw::{OneOrMany, RawAdmin};

impl Validator<'_> {
    pub(super) fn admin(&mut self, a: &RawAdmin) -> AdminConfig {
        let mut listen = Vec::new();
        for (i, l) in a.listen.items().iter().enumerate() {
            let key = match &a.listen {
                OneOrMany::One(_) => "admin.listen".to_string(),
                OneOrMany::Many(_) => format!("admin.listen[{i}]"),
            };
            match parse_socket_addr(l, 9253) {
                Ok(a) => listen.push(a),
                Err(e) => self.problem(&key, e),
            }
        }
        AdminConfig { listen, coredns_compatible_metrics: a.coredns_compatible_metrics }
    }
}
