//! Where tenants' instances may point (`serve --tenant-allow`).
//!
//! A tenant registers an instance by host and port, and the server then
//! connects there: without a limit, any tenant can make the server reach any
//! host its network reaches. An operator lists the networks (CIDR, or one
//! address) and host names tenants may use; the admin account is never
//! limited. An instance's host passes if it is one of the listed names, or
//! if every address it resolves to lies in a listed network. Checked when an
//! instance is registered or changed and again before each backup or check.

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// A network: address and prefix length.
    Net(IpAddr, u8),
    /// A host name, matched exactly (case-insensitive).
    Host(String),
}

impl std::str::FromStr for AllowRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || {
            format!("{s:?}: expected a network (10.0.0.0/8, fd00::/8), an address or a host name")
        };
        if s.is_empty() || s.len() > 255 {
            return Err(bad());
        }
        if let Some((a, p)) = s.split_once('/') {
            let ip: IpAddr = a.parse().map_err(|_| bad())?;
            let p: u8 = p.parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if p > max {
                return Err(bad());
            }
            // An IPv4-mapped network (::ffff:10.0.0.0/104) is an IPv4 one.
            if let IpAddr::V6(v6) = ip
                && let Some(v4) = v6.to_ipv4_mapped()
            {
                if p < 96 {
                    return Err(bad());
                }
                return Ok(AllowRule::Net(IpAddr::V4(v4), p - 96));
            }
            return Ok(AllowRule::Net(ip, p));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            let p = if ip.is_ipv4() { 32 } else { 128 };
            return Ok(AllowRule::Net(ip, p));
        }
        if s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            && !s.starts_with('-')
        {
            return Ok(AllowRule::Host(s.to_ascii_lowercase()));
        }
        Err(bad())
    }
}

impl std::fmt::Display for AllowRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllowRule::Net(ip, p) => write!(f, "{ip}/{p}"),
            AllowRule::Host(h) => f.write_str(h),
        }
    }
}

fn to_bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v) => (u32::from(v) as u128, 32),
        IpAddr::V6(v) => match v.to_ipv4_mapped() {
            Some(v4) => (u32::from(v4) as u128, 32),
            None => (u128::from(v), 128),
        },
    }
}

/// Whether `ip` lies in the network `net/prefix`.
pub fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let (a, wa) = to_bits(ip);
    let (n, wn) = to_bits(net);
    if wa != wn {
        return false;
    }
    if prefix == 0 {
        return true;
    }
    let shift = (wa - prefix.min(wa)) as u32;
    (a >> shift) == (n >> shift)
}

/// Whether a host name (as registered) is allowed by name alone.
pub fn host_allowed(rules: &[AllowRule], host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    rules
        .iter()
        .any(|r| matches!(r, AllowRule::Host(n) if *n == h))
}

/// Whether every resolved address is in an allowed network.
pub fn addrs_allowed(rules: &[AllowRule], addrs: &[IpAddr]) -> bool {
    !addrs.is_empty()
        && addrs.iter().all(|ip| {
            rules
                .iter()
                .any(|r| matches!(r, AllowRule::Net(n, p) if in_net(*ip, *n, *p)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> AllowRule {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_addresses_and_names() {
        assert_eq!(
            r("10.0.0.0/8"),
            AllowRule::Net("10.0.0.0".parse().unwrap(), 8)
        );
        assert_eq!(
            r("127.0.0.1"),
            AllowRule::Net("127.0.0.1".parse().unwrap(), 32)
        );
        assert_eq!(r("DB.internal"), AllowRule::Host("db.internal".into()));
        for bad in ["", "10.0.0.0/33", "::/129", "a b", "x/8", "-x"] {
            assert!(bad.parse::<AllowRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn matches_networks() {
        let rules = [r("10.0.0.0/8"), r("fd00::/8"), r("db.internal")];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(addrs_allowed(&rules, &[ip("10.1.2.3")]));
        assert!(addrs_allowed(&rules, &[ip("::ffff:10.1.2.3")]));
        assert!(addrs_allowed(&rules, &[ip("fd12::1")]));
        assert!(!addrs_allowed(&rules, &[ip("10.1.2.3"), ip("127.0.0.1")]));
        assert!(!addrs_allowed(&rules, &[ip("11.0.0.1")]));
        assert!(!addrs_allowed(&rules, &[]));
        assert!(host_allowed(&rules, "DB.Internal."));
        assert!(!host_allowed(&rules, "db.internal.evil"));
        assert!(in_net(ip("1.2.3.4"), ip("0.0.0.0"), 0));
        assert_eq!(r("::ffff:10.0.0.0/104"), r("10.0.0.0/8"));
        assert!("::ffff:10.0.0.0/64".parse::<AllowRule>().is_err());
    }
}
