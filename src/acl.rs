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

    /// Entries, as ("allow" or "deny", entry), that look as if they covered
    /// IPv4 clients but do not: IPv6 networks such as `::/0` that contain
    /// the IPv4-mapped range. IPv4 clients, also those seen on an IPv6
    /// socket, are matched as IPv4, by IPv4 entries only.
    pub fn ipv6_entries_that_miss_ipv4(&self) -> Vec<(&'static str, IpNet)> {
        let mapped: IpAddr = IpAddr::V6(std::net::Ipv4Addr::UNSPECIFIED.to_ipv6_mapped());
        let lists = [("allow", &self.allow), ("deny", &self.deny)];
        lists
            .into_iter()
            .flat_map(|(name, nets)| nets.iter().map(move |net| (name, *net)))
            .filter(|(_, net)| matches!(net, IpNet::V6(_)) && net.contains(&mapped))
            .collect()
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

/// Load balancers whose connections begin with a PROXY protocol header
/// (`trusted_proxies`): the address in it is then the client's. Matched as
/// [`Acl`] matches, IPv4 peers on an IPv6 socket as IPv4.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    /// Whether a connection from `addr` must begin with a PROXY header.
    pub fn trusts(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0.iter().any(|net| net.contains(&addr))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Why entries do not do what they seem to: one of prefix 0 trusts
    /// every client of its family to name any address it likes; an IPv6
    /// one that would cover IPv4 clients covers none (they are matched as
    /// IPv4, as in the access lists).
    pub fn warnings(&self) -> Vec<String> {
        let mapped: IpAddr = IpAddr::V6(std::net::Ipv4Addr::UNSPECIFIED.to_ipv6_mapped());
        self.0
            .iter()
            .filter_map(|net| {
                if net.prefix_len() == 0 {
                    Some(format!(
                        "\"{net}\" trusts every address of its family: any client there can \
                         claim to be any other with a PROXY header; list only the balancers"
                    ))
                } else if matches!(net, IpNet::V6(_)) && net.contains(&mapped) {
                    Some(format!(
                        "\"{net}\" is IPv6 and covers no IPv4 balancer, not even one seen on an \
                         IPv6 socket (IPv4 balancers are matched by IPv4 entries)"
                    ))
                } else {
                    None
                }
            })
            .collect()
    }
}

/// Parses one ACL entry: a network in CIDR notation or a single address.
/// IPv4-mapped IPv6 entries (`::ffff:10.0.0.0/104`) are made IPv4
/// (`10.0.0.0/8`), as client addresses are, so that they match.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let net = match (text.parse::<IpNet>(), text.parse::<IpAddr>()) {
        (Ok(net), _) => net.trunc(),
        (_, Ok(addr)) => IpNet::from(addr),
        _ => {
            return Err(format!(
                "\"{text}\" is neither an address nor a network in CIDR notation"
            ));
        }
    };
    Ok(canonical(net))
}

/// `net`, with an IPv4-mapped IPv6 network written as IPv4. (A network
/// with a prefix shorter than /96 is never mapped once truncated: it is
/// plain IPv6, and IPv4 clients are matched by IPv4 entries only.)
fn canonical(net: IpNet) -> IpNet {
    const MAPPED_PREFIX: u8 = 96;
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= MAPPED_PREFIX => v6
            .network()
            .to_ipv4_mapped()
            .and_then(|v4| ipnet::Ipv4Net::new(v4, v6.prefix_len() - MAPPED_PREFIX).ok())
            .map_or(net, IpNet::V4),
        _ => net,
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
    fn mapped_entries_are_made_ipv4() {
        assert_eq!(
            parse_net("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_net("::ffff:127.0.0.1").unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert_eq!(parse_net("::ffff:0:0/96").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(parse_net("::/0").unwrap().to_string(), "::/0");
        assert_eq!(
            parse_net("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        let a = acl(&["::ffff:127.0.0.0/104"], &[]);
        assert!(a.permits("127.1.2.3".parse().unwrap()));
        assert!(a.permits("::ffff:127.1.2.3".parse().unwrap()));
    }

    #[test]
    fn ipv6_entries_covering_the_mapped_range_are_found() {
        let a = acl(&["::/0", "2001:db8::/32", "0.0.0.0/0"], &["::/8", "::1"]);
        let found: Vec<String> = a
            .ipv6_entries_that_miss_ipv4()
            .iter()
            .map(|(list, net)| format!("{list} {net}"))
            .collect();
        assert_eq!(found, ["allow ::/0", "deny ::/8"]);
        // They indeed miss IPv4 clients, mapped or not.
        let deny_all_v6 = acl(&[], &["::/0"]);
        assert!(deny_all_v6.permits("192.0.2.1".parse().unwrap()));
        assert!(deny_all_v6.permits("::ffff:192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn bad_entry_is_named() {
        let err = parse_net("10.0.0.0/33").unwrap_err();
        assert!(err.contains("10.0.0.0/33"), "{err}");
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    }
}
