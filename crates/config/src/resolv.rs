//! Reads upstream nameservers from resolv.conf (resolv.conf(5)).

use std::net::{IpAddr, SocketAddr};

/// The `nameserver` entries of a resolv.conf text, on port 53. Entries that are not IP
/// addresses (or carry an IPv6 zone, which a socket address cannot name) are skipped.
pub fn nameservers_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then(|| words.next()).flatten()
        })
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

pub(crate) fn read_system_resolv_conf() -> Result<Vec<SocketAddr>, String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| nameservers_from_resolv_conf(&t))
        .map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameservers() {
        let t = "# comment\nsearch a.b\nnameserver 10.0.0.1\nnameserver  fd00::1\nnameserver fe80::1%eth0\noptions ndots:5\n";
        assert_eq!(
            nameservers_from_resolv_conf(t),
            vec!["10.0.0.1:53".parse().unwrap(), "[fd00::1]:53".parse().unwrap()]
        );
    }
}
