//! Property tests of the egress proxy's host normalisation and of the
//! allowlist's decisions under every rewriting a client could use to
//! sneak past it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use berth_proxies::egress::{Allowlist, Host, normalise_host, parse_authority};
use proptest::prelude::*;

/// A DNS label: letters, digits, inner hyphens.
fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
}

/// A domain that does not end in a number (so it is not read as IPv4).
fn domain() -> impl Strategy<Value = String> {
    (prop::collection::vec(label(), 0..3), "[a-z]{2,6}").prop_map(|(mut labels, tld)| {
        labels.insert(0, "host".into());
        labels.push(tld);
        labels.join(".")
    })
}

/// Rewrites a domain the ways a client may spell it: random case, a
/// trailing dot, percent-encoding of some letters.
fn spelling(d: String) -> impl Strategy<Value = String> {
    let n = d.len();
    (
        prop::collection::vec(any::<bool>(), n),
        prop::collection::vec(any::<bool>(), n),
        any::<bool>(),
    )
        .prop_map(move |(upper, encode, dot)| {
            let mut out = String::new();
            for (i, c) in d.chars().enumerate() {
                let c = if upper[i] { c.to_ascii_uppercase() } else { c };
                if encode[i] && c != '.' {
                    out.push_str(&format!("%{:02X}", c as u32));
                } else {
                    out.push(c);
                }
            }
            if dot {
                out.push('.');
            }
            out
        })
}

/// Every way the WHATWG host parser reads one IPv4 address.
fn ipv4_spellings(a: Ipv4Addr) -> Vec<String> {
    let n = u32::from(a);
    let o = a.octets();
    vec![
        a.to_string(),
        format!("{a}."),
        n.to_string(),
        format!("0x{n:x}"),
        format!("0X{n:X}"),
        format!("0{n:o}"),
        format!("0x{:x}.0x{:x}.0x{:x}.0x{:x}", o[0], o[1], o[2], o[3]),
        format!("0{:o}.0{:o}.0{:o}.0{:o}", o[0], o[1], o[2], o[3]),
        format!("{}.{}", o[0], n & 0x00ff_ffff),
        format!("{}.{}.{}", o[0], o[1], n & 0xffff),
        format!("[::ffff:{a}]"),
        format!("[::ffff:{:x}:{:x}]", n >> 16, n & 0xffff),
        format!("[0:0:0:0:0:FFFF:{a}]"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Normalising is idempotent: the canonical form reads back as itself.
    #[test]
    fn normalisation_is_idempotent(s in "[ -~]{0,40}") {
        if let Ok(host) = normalise_host(&s) {
            prop_assert_eq!(normalise_host(&host.to_string()).unwrap(), host);
        }
        if let Ok(t) = parse_authority(&s, Some(80)) {
            prop_assert_eq!(parse_authority(&t.to_string(), None).unwrap(), t);
        }
    }

    /// Arbitrary bytes never panic, and never yield a host with anything
    /// outside `[a-z0-9._-]` (or an IP address).
    #[test]
    fn accepted_domains_are_plain(s in "\\PC{0,40}") {
        if let Ok(Host::Domain(d)) = normalise_host(&s) {
            prop_assert!(d.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)), "{}", d);
            prop_assert!(!d.ends_with('.') && !d.starts_with('.') && !d.contains(".."), "{}", d);
        }
    }

    /// Case, a trailing dot and percent-encoding all name the same host.
    #[test]
    fn spellings_of_a_domain_are_one_host(s in domain().prop_flat_map(|d| (Just(d.clone()), spelling(d)))) {
        let (plain, spelled) = s;
        prop_assert_eq!(normalise_host(&spelled).unwrap(), Host::Domain(plain));
    }

    /// Every IPv4 spelling is the one address.
    #[test]
    fn spellings_of_an_ipv4_address_are_one_address(n in any::<u32>()) {
        let a = Ipv4Addr::from(n);
        for s in ipv4_spellings(a) {
            prop_assert_eq!(normalise_host(&s), Ok(Host::Ip(IpAddr::V4(a))), "{}", s);
        }
    }

    /// The allowlist's decision does not depend on the spelling, and a
    /// name that merely contains an allowed one is not allowed.
    #[test]
    fn decisions_do_not_depend_on_spelling(
        (allowed, spelled) in domain().prop_flat_map(|d| (Just(d.clone()), spelling(d))),
        other in label(),
    ) {
        let list = Allowlist::from_toml(&format!("[[allow]]\ndomain = \"{allowed}\"\nports = [443]\n"), "p").unwrap();
        let allow = |a: &str| parse_authority(a, None).map(|t| list.check(&t).is_ok()).unwrap_or(false);
        assert!(allow(&format!("{spelled}:443")));
        assert!(!allow(&format!("{spelled}:80")));
        assert!(!allow(&format!("{other}.{allowed}:443")));
        assert!(!allow(&format!("{other}{allowed}:443")));
        assert!(!allow(&format!("{allowed}.{other}.com:443")));
        assert!(!allow(&format!("{allowed}@{other}.com:443")));
        assert!(!allow(&format!("{other}.com@{allowed}:443")));
        assert!(!allow(&format!("{allowed}%00.{other}.com:443")));
    }

    /// A `*.suffix` entry allows every name below the suffix, in every
    /// spelling, and neither the suffix itself nor a look-alike.
    #[test]
    fn wildcards_cover_names_below_only(suffix in domain(), sub in label()) {
        let list = Allowlist::from_toml(&format!("[[allow]]\ndomain = \"*.{suffix}\"\n"), "p").unwrap();
        let allow = |a: &str| parse_authority(a, None).map(|t| list.check(&t).is_ok()).unwrap_or(false);
        assert!(allow(&format!("{sub}.{suffix}:443")));
        assert!(allow(&format!("{}.{}.:80", sub.to_uppercase(), suffix)));
        assert!(!allow(&format!("{suffix}:443")));
        assert!(!allow(&format!("{sub}{suffix}:443")));
        assert!(!allow(&format!("{sub}.{suffix}:8443")));
    }

    /// Loopback, private and link-local addresses are never reachable
    /// through a domain entry, in IPv4 or IPv6-mapped form, without a
    /// CIDR entry for them.
    #[test]
    fn special_addresses_need_a_cidr(host in 0u32..=0x00ff_ffff, which in 0usize..4) {
        let base: [u32; 4] = [0x7f00_0000, 0x0a00_0000, 0xa9fe_0000, 0xc0a8_0000]; // 127/8 10/8 169.254/16 192.168/16
        let mask: [u32; 4] = [0x00ff_ffff, 0x00ff_ffff, 0xffff, 0xffff];
        let v4 = Ipv4Addr::from(base[which] | (host & mask[which]));
        let list = Allowlist::from_toml("[[allow]]\ndomain = \"example.com\"\n", "p").unwrap();
        prop_assert!(!list.address_allowed(IpAddr::V4(v4), 443));
        prop_assert!(!list.address_allowed(IpAddr::V6(v4.to_ipv6_mapped()), 443));
        let open = Allowlist::from_toml(&format!("[[allow]]\ndomain = \"example.com\"\n[[allow]]\ncidr = \"{v4}\"\nports = [443]\n"), "p").unwrap();
        prop_assert!(open.address_allowed(IpAddr::V4(v4), 443));
        prop_assert!(open.address_allowed(IpAddr::V6(v4.to_ipv6_mapped()), 443));
        prop_assert!(!open.address_allowed(IpAddr::V4(v4), 80));
    }
}

#[test]
fn ipv6_literals_are_canonical() {
    let one = Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
    for s in ["[::1]", "[0:0:0:0:0:0:0:1]", "[0000::0001]"] {
        assert_eq!(normalise_host(s).unwrap(), one, "{s}");
    }
}
