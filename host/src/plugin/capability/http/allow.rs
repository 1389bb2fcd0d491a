//! Which outbound HTTP requests a subscriber's grant admits (issue 25,
//! `[subscribers.NAME.http] allow = [...]`), decided twice: on the URL before any connection
//! ([`AllowList::admits`]), and on every address its host name resolves to
//! ([`Admitted::address_allowed`]), so a granted DNS name cannot be pointed at localhost,
//! a private network or the metadata service.
//!
//! The grammar follows Spin's `allowed_outbound_hosts`, narrowed to what the issue asks:
//! `scheme://host[:port]` with `scheme` `http` or `https`; `host` a name, a name with a
//! leading `*.` (any subdomain, not the name itself), an IP literal (`[…]` for IPv6) or a
//! CIDR block; an omitted port is the scheme's default (80, 443). Paths, queries, user info
//! and other schemes are refused when the grant is read, with the entry and the reason.
//!
//! Addresses: a name's resolved addresses must all be public, unless an address is itself
//! covered by an IP or CIDR entry of the grant (for the same scheme and port): the operator
//! who names `http://127.0.0.1:8080` or `http://10.0.0.0/8` means it; one who names
//! `https://api.example.com` does not mean whatever that name resolves to today.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A grant entry that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("http.allow entry {entry:?}: {reason}")]
pub struct AllowError {
    /// The entry as written (cut to 200 characters).
    pub entry: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The scheme of a request or an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `http` or `https` (any case); `None` otherwise.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Some(Self::Http),
            "https" => Some(Self::Https),
            _ => None,
        }
    }

    /// The port a URL without one uses.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// What an entry's host part matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// Exactly this name (lower case, no trailing dot).
    Name(String),
    /// Any name ending in `.suffix` (from `*.suffix`), not `suffix` itself.
    Subdomains(String),
    /// Addresses in this block (a literal is a block of one).
    Block(IpAddr, u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    scheme: Scheme,
    host: Host,
    port: u16,
}

/// A subscriber's outbound HTTP grant. Empty (the default): every request is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Entry>,
}

/// A request's URL admitted by the grant; its resolved addresses are checked with
/// [`Admitted::address_allowed`] before connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted<'a> {
    list: &'a AllowList,
    scheme: Scheme,
    port: u16,
    /// The URL's host is an IP literal admitted by an IP or CIDR entry: its one address is
    /// allowed whatever its range.
    literal: bool,
}

impl AllowList {
    /// Read a grant; the first bad entry is the error.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, AllowError> {
        let entries = entries.iter().map(|e| parse_entry(e.as_ref())).collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// Whether the grant admits nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a request to `scheme://host:port` is admitted (`port` already defaulted by
    /// the caller from the scheme when the URL has none; `host` as in the URL, IPv6 with or
    /// without brackets).
    pub fn admits(&self, scheme: Scheme, host: &str, port: u16) -> Option<Admitted<'_>> {
        let name = normalise_name(host);
        let ip = parse_ip(host);
        let mut literal = false;
        let mut admitted = false;
        for e in self.entries.iter().filter(|e| e.scheme == scheme && e.port == port) {
            match (&e.host, ip) {
                (Host::Block(net, bits), Some(ip)) if in_block(ip, *net, *bits) => {
                    admitted = true;
                    literal = true;
                }
                (Host::Name(n), None) if *n == name => admitted = true,
                (Host::Subdomains(s), None) if name.len() > s.len() + 1 && name.ends_with(&format!(".{s}")) => {
                    admitted = true
                }
                _ => {}
            }
        }
        admitted.then_some(Admitted { list: self, scheme, port, literal })
    }
}

impl Admitted<'_> {
    /// Whether the request may connect to `addr`, one of the addresses its host resolved to:
    /// a public address, or one an IP or CIDR entry of the grant names (same scheme and port).
    pub fn address_allowed(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        if self.literal || is_public(addr) {
            return true;
        }
        self.list.entries.iter().any(|e| {
            e.scheme == self.scheme
                && e.port == self.port
                && matches!(e.host, Host::Block(net, bits) if in_block(addr, net, bits))
        })
    }
}

fn parse_entry(raw: &str) -> Result<Entry, AllowError> {
    let fail = |reason| AllowError { entry: raw.chars().take(200).collect(), reason };
    let (scheme, rest) = raw.split_once("://").ok_or_else(|| fail("expected scheme://host[:port]"))?;
    let scheme = Scheme::parse(scheme).ok_or_else(|| fail("the scheme must be http or https"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(fail("no host"));
    }
    if rest.contains(['/', '?', '#', '@']) && !looks_like_cidr(rest) {
        return Err(fail("only scheme://host[:port]: no path, query, fragment or user info"));
    }
    let (host, port) = split_port(rest).map_err(fail)?;
    let port = port.unwrap_or(scheme.default_port());
    let host = parse_host(host).map_err(fail)?;
    Ok(Entry { scheme, host, port })
}

/// `host[:port]`, with `[v6]` or a CIDR block (`10.0.0.0/8`, `[fd00::]/8`) as the host.
fn split_port(rest: &str) -> Result<(&str, Option<u16>), &'static str> {
    let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p > 0).ok_or("the port must be 1-65535");
    if let Some(inner) = rest.strip_prefix('[') {
        let end = inner.find(']').ok_or("an IPv6 address needs its closing ]")?;
        let after = &inner[end + 1..];
        // `[v6]/bits[:port]` or `[v6][:port]`.
        let (bits, after) = match after.strip_prefix('/') {
            Some(b) => b.split_once(':').map_or((Some(b), ""), |(b, p)| (Some(b), p)),
            None => (None, after.strip_prefix(':').unwrap_or(after)),
        };
        let host_len = 1 + end + 1 + bits.map_or(0, |b| 1 + b.len());
        let port = if after.is_empty() { None } else { Some(port(after)?) };
        return Ok((&rest[..host_len], port));
    }
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h, Some(port(p)?))),
        Some(_) => Err("an IPv6 address must be written in brackets: [::1]:8080"),
        None => Ok((rest, None)),
    }
}

fn looks_like_cidr(rest: &str) -> bool {
    let host = rest.split(':').next().unwrap_or(rest);
    rest.starts_with('[')
        || host.split_once('/').is_some_and(|(a, b)| a.parse::<Ipv4Addr>().is_ok() && b.parse::<u8>().is_ok())
}

fn parse_host(host: &str) -> Result<Host, &'static str> {
    let unbracket = |h: &str| h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(h).to_string();
    if let Some((addr, bits)) = host.split_once('/') {
        let ip: IpAddr = unbracket(addr).parse().map_err(|_| "a CIDR block needs an IP address before the /")?;
        let bits: u8 = bits.parse().map_err(|_| "a CIDR block's prefix must be a number")?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err("a CIDR block's prefix is longer than the address");
        }
        return Ok(Host::Block(canonical(ip), bits));
    }
    if let Some(ip) = parse_ip(host) {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        return Ok(Host::Block(ip, bits));
    }
    if host == "*" {
        return Err("a bare * would admit any host: name the hosts (a leading *. admits subdomains)");
    }
    let (wild, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    let name = normalise_name(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !valid {
        return Err("not a host name, IP address or CIDR block (a * is allowed only as a leading *.)");
    }
    Ok(if wild { Host::Subdomains(name) } else { Host::Name(name) })
}

fn normalise_name(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn parse_ip(host: &str) -> Option<IpAddr> {
    let h = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    h.parse::<IpAddr>().ok().map(canonical)
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let mask = |width: u32| if bits == 0 { 0 } else { u128::MAX << (width - u32::from(bits)) };
    match (canonical(ip), net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = mask(32) as u32;
            u32::from(a) & m == u32::from(n) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = mask(128);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// Not loopback, private, link-local, shared (CGNAT), unspecified, multicast, broadcast,
/// documentation or otherwise reserved.
pub fn is_public(ip: IpAddr) -> bool {
    const V4: &[(Ipv4Addr, u8)] = &[
        (Ipv4Addr::new(0, 0, 0, 0), 8),
        (Ipv4Addr::new(10, 0, 0, 0), 8),
        (Ipv4Addr::new(100, 64, 0, 0), 10),
        (Ipv4Addr::new(127, 0, 0, 0), 8),
        (Ipv4Addr::new(169, 254, 0, 0), 16),
        (Ipv4Addr::new(172, 16, 0, 0), 12),
        (Ipv4Addr::new(192, 0, 0, 0), 24),
        (Ipv4Addr::new(192, 0, 2, 0), 24),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
        (Ipv4Addr::new(198, 18, 0, 0), 15),
        (Ipv4Addr::new(198, 51, 100, 0), 24),
        (Ipv4Addr::new(203, 0, 113, 0), 24),
        (Ipv4Addr::new(224, 0, 0, 0), 4),
        (Ipv4Addr::new(240, 0, 0, 0), 4),
    ];
    const V6: &[(Ipv6Addr, u8)] = &[
        (Ipv6Addr::UNSPECIFIED, 128),
        (Ipv6Addr::LOCALHOST, 128),
        (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
        (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
    ];
    match canonical(ip) {
        IpAddr::V4(a) => !V4.iter().any(|&(n, b)| in_block(IpAddr::V4(a), IpAddr::V4(n), b)),
        IpAddr::V6(a) => !V6.iter().any(|&(n, b)| in_block(IpAddr::V6(a), IpAddr::V6(n), b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(entries).expect("grant")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn names_wildcards_ports_and_schemes_are_matched_as_written() {
        let l = list(&["https://api.example.com", "https://*.mail.example:8443", "http://127.0.0.1:8080"]);
        assert!(l.admits(Scheme::Https, "api.example.com", 443).is_some());
        assert!(l.admits(Scheme::Https, "API.Example.COM.", 443).is_some(), "case and a trailing dot");
        assert!(l.admits(Scheme::Http, "api.example.com", 80).is_none(), "other scheme");
        assert!(l.admits(Scheme::Https, "api.example.com", 8443).is_none(), "other port");
        assert!(l.admits(Scheme::Https, "evil-api.example.com", 443).is_none());
        assert!(l.admits(Scheme::Https, "a.b.mail.example", 8443).is_some());
        assert!(l.admits(Scheme::Https, "mail.example", 8443).is_none(), "*. is subdomains only");
        assert!(l.admits(Scheme::Https, "xmail.example", 8443).is_none());
        assert!(l.admits(Scheme::Http, "127.0.0.1", 8080).is_some());
        assert!(l.admits(Scheme::Http, "127.0.0.1", 8081).is_none());
        assert!(l.admits(Scheme::Http, "localhost", 8080).is_none(), "a name is not its address");
        assert!(AllowList::default().admits(Scheme::Https, "api.example.com", 443).is_none(), "no grant");
    }

    #[test]
    fn a_granted_name_may_not_resolve_to_a_private_address_unless_the_grant_names_it() {
        let l = list(&["https://api.example.com", "http://internal.example:8080", "http://10.1.0.0/16:8080"]);
        let a = l.admits(Scheme::Https, "api.example.com", 443).expect("admitted");
        assert!(a.address_allowed(ip("93.184.215.14")));
        for private in [
            "127.0.0.1",
            "10.0.0.5",
            "169.254.169.254",
            "192.168.1.1",
            "172.20.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
        ] {
            assert!(!a.address_allowed(ip(private)), "{private}");
        }
        let b = l.admits(Scheme::Http, "internal.example", 8080).expect("admitted");
        assert!(b.address_allowed(ip("10.1.2.3")), "inside a granted CIDR block, same scheme and port");
        assert!(!b.address_allowed(ip("10.2.0.1")));
        assert!(l.admits(Scheme::Http, "10.1.200.7", 8080).is_some_and(|a| a.address_allowed(ip("10.1.200.7"))));
    }

    #[test]
    fn ipv6_literals_and_blocks_are_read() {
        let l = list(&["http://[::1]:8080", "https://[fd00::]/8"]);
        assert!(l.admits(Scheme::Http, "[::1]", 8080).is_some());
        assert!(l.admits(Scheme::Http, "::1", 8080).is_some());
        assert!(l.admits(Scheme::Https, "[fd12::5]", 443).is_some());
        assert!(l.admits(Scheme::Https, "[fe80::5]", 443).is_none());
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        for (entry, why) in [
            ("api.example.com", "scheme://"),
            ("ftp://api.example.com", "http or https"),
            ("https://api.example.com/v1", "no path"),
            ("https://user@api.example.com", "no path"),
            ("https://api.example.com:0", "1-65535"),
            ("https://api.example.com:99999", "1-65535"),
            ("https://*", "bare *"),
            ("https://a*.example.com", "leading *."),
            ("https://10.0.0.0/33", "longer than the address"),
            ("https://::1", "brackets"),
            ("https://", "no host"),
        ] {
            let e = AllowList::parse(&[entry]).expect_err(entry);
            assert!(e.to_string().contains(why), "{entry}: {e}");
        }
    }
}
