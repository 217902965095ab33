//! Address-based access control: allow and deny lists of networks.

use ipnet::IpNet;
use std::net::IpAddr;

/// An access list. Deny wins over allow; an empty allow list allows everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl Acl {
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Acl { allow, deny }
    }

    /// Whether `addr` may connect. IPv4 peers seen on an IPv6 socket
    /// (`::ffff:a.b.c.d`) are matched as IPv4.
    pub fn permits(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        if self.deny.iter().any(|net| net.contains(&addr)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&addr))
    }
}

/// Parses one ACL entry: a network in CIDR notation or a single address.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    match text.parse::<IpAddr>() {
        Ok(addr) => Ok(IpNet::from(addr)),
        Err(_) => Err(format!(
            "\"{text}\" is neither an address nor a network in CIDR notation"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(allow: &[&str], deny: &[&str]) -> Acl {
        let nets = |v: &[&str]| v.iter().map(|s| parse_net(s).unwrap()).collect();
        Acl::new(nets(allow), nets(deny))
    }

    #[test]
    fn empty_allows_everyone() {
        assert!(acl(&[], &[]).permits("192.0.2.1".parse().unwrap()));
        assert!(acl(&[], &[]).permits("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn deny_wins_over_allow() {
        let a = acl(&["10.0.0.0/8"], &["10.1.0.0/16"]);
        assert!(a.permits("10.2.3.4".parse().unwrap()));
        assert!(!a.permits("10.1.3.4".parse().unwrap()));
        assert!(!a.permits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_rules() {
        let a = acl(&["127.0.0.1"], &[]);
        assert!(a.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!a.permits("::ffff:127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn bad_entry_is_named() {
        let err = parse_net("10.0.0.0/33").unwrap_err();
        assert!(err.contains("10.0.0.0/33"), "{err}");
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    }
}
