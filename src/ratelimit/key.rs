//! Bucket keys: composing resolved parts, and the client address behind trusted proxies.

use std::net::{IpAddr, SocketAddr};

/// Joins already-resolved parts (`ip=1.2.3.4`, `sub=alice`, `route=orders`) as
/// netstrings (`<len>:<part>,`), so no part's content can imitate a separator:
/// `["a,b"]` and `["a", "b"]` give different keys.
pub fn compose<I, S>(parts: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    for part in parts {
        let part = part.as_ref();
        out.push_str(&part.len().to_string());
        out.push(':');
        out.push_str(part);
        out.push(',');
    }
    out
}

/// The bucket key of a client whose TCP peer is unknown (see `peer_is_from_header`).
pub const UNKNOWN_PEER: &str = "unknown-peer";

/// The client address, given `x-forwarded-for` (all its values joined with `,`), the
/// number of trusted proxies in front of us, and the connection peer as Envoy reports it
/// (`source.address`).
///
/// Each trusted proxy appends the address it received the request from, so with `N`
/// trusted hops the client is the `N`th entry from the right; everything left of it
/// was written by the client and may be spoofed. `trusted_hops == 0` means the peer is
/// the client and the header is ignored. When the header has fewer than `N` entries,
/// or the chosen entry is not an IP address, the request did not come through the
/// expected chain and we use the peer: never an entry the client could have written.
/// If Envoy itself appends to `x-forwarded-for` (`use_remote_address: true`) before
/// this filter runs, count that append as one hop.
///
/// The peer is the TCP peer only if Envoy says so: without `use_remote_address: true` (or
/// with `xff_num_trusted_hops` set) Envoy replaces it with an address taken from
/// `x-forwarded-for`, and no property exposes the real one. Such a peer (see
/// `peer_is_from_header`) is never used as a key: all of them share the `UNKNOWN_PEER`
/// bucket, so a client that writes a new address per request still meets the limit.
///
/// Addresses are returned in canonical form with any port removed (`1.2.3.4:80` and
/// `[::1]:80` give `1.2.3.4` and `::1`); an unparsable peer is returned as given.
pub fn client_ip(xff: Option<&str>, trusted_hops: u32, peer: &str) -> String {
    let from_peer = || {
        if peer_is_from_header(peer) {
            return UNKNOWN_PEER.to_string();
        }
        parse_addr(peer).map_or_else(|| peer.trim().to_string(), |ip| ip.to_string())
    };
    if trusted_hops == 0 {
        return from_peer();
    }
    let Some(xff) = xff else {
        return from_peer();
    };
    let Ok(skip) = usize::try_from(trusted_hops.saturating_sub(1)) else {
        return from_peer();
    };
    xff.rsplit(',')
        .nth(skip)
        .and_then(parse_addr)
        .map_or_else(from_peer, |ip| ip.to_string())
}

/// True when Envoy's `source.address` was taken from a request header rather than the
/// connection: Envoy builds those addresses without a port (`7.7.7.7:0`, measured in
/// Envoy 1.40 for `x-forwarded-for`), while a TCP peer always has one.
pub fn peer_is_from_header(peer: &str) -> bool {
    peer.trim()
        .parse::<SocketAddr>()
        .is_ok_and(|sa| sa.port() == 0)
}

/// An IP address, bare, bracketed, or with a port.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compose_is_unambiguous() {
        assert_eq!(
            compose(["ip=1.2.3.4", "sub=alice"]),
            "10:ip=1.2.3.4,9:sub=alice,"
        );
        assert_ne!(compose(["a,b"]), compose(["a", "b"]));
        assert_ne!(compose(["1:a,"]), compose(["a", ""]));
        assert_ne!(compose(Vec::<String>::new()), compose([""]));
    }

    #[test]
    fn xff_trusted_hops() {
        let xff = Some("6.6.6.6, 1.1.1.1, 10.0.0.1");
        assert_eq!(client_ip(xff, 0, "10.0.0.2:4000"), "10.0.0.2");
        assert_eq!(client_ip(xff, 1, "10.0.0.2"), "10.0.0.1");
        assert_eq!(client_ip(xff, 2, "10.0.0.2"), "1.1.1.1");
        assert_eq!(client_ip(xff, 3, "10.0.0.2"), "6.6.6.6");
        // Fewer entries than trusted hops: the chain was bypassed; the peer it is.
        assert_eq!(client_ip(xff, 4, "10.0.0.2"), "10.0.0.2");
        assert_eq!(client_ip(xff, u32::MAX, "10.0.0.2"), "10.0.0.2");
        assert_eq!(client_ip(None, 1, "10.0.0.2"), "10.0.0.2");
    }

    #[test]
    fn xff_entries_are_normalized_or_rejected() {
        assert_eq!(client_ip(Some("[2001:DB8::1]:443"), 1, "p"), "2001:db8::1");
        assert_eq!(client_ip(Some("1.2.3.4:80"), 1, "p"), "1.2.3.4");
        assert_eq!(client_ip(Some("[::1]"), 1, "p"), "::1");
        assert_eq!(client_ip(Some("unknown"), 1, "9.9.9.9"), "9.9.9.9");
        assert_eq!(client_ip(Some("1.2.3.4,"), 1, "9.9.9.9"), "9.9.9.9");
        assert_eq!(client_ip(Some(""), 1, "[::2]:1"), "::2");
        assert_eq!(client_ip(None, 0, " not-an-ip "), "not-an-ip");
    }

    #[test]
    fn a_peer_envoy_took_from_a_header_is_never_a_key() {
        // Without `use_remote_address`, Envoy reports the last x-forwarded-for entry as the
        // peer, with port 0: every such request shares one bucket.
        for peer in ["7.7.7.7:0", "[2001:db8::1]:0", " 1.2.3.4:0 "] {
            assert!(peer_is_from_header(peer), "{peer}");
            assert_eq!(client_ip(Some("7.7.7.7"), 0, peer), UNKNOWN_PEER);
            assert_eq!(client_ip(None, 3, peer), UNKNOWN_PEER);
            assert_eq!(client_ip(Some("1.1.1.1, x"), 1, peer), UNKNOWN_PEER);
        }
        // Trusted hops still read the header; a real TCP peer is still the peer.
        assert_eq!(
            client_ip(Some("9.9.9.9, 1.1.1.1"), 1, "1.1.1.1:0"),
            "1.1.1.1"
        );
        for peer in ["127.0.0.1:41432", "[::1]:443", "10.0.0.2", "pipe"] {
            assert!(!peer_is_from_header(peer), "{peer}");
        }
        assert_eq!(client_ip(Some("6.6.6.6"), 0, "10.0.0.2:4000"), "10.0.0.2");
    }

    proptest! {
        #[test]
        fn spoofed_left_entries_are_never_chosen(
            spoofed in prop::collection::vec("[0-9a-z.:, \\[\\]]{0,20}", 0..5),
            trusted in prop::collection::vec(any::<[u8; 4]>(), 1..5),
            hops_seed in any::<usize>(),
        ) {
            // The client wrote `spoofed` (commas, brackets, ports and all); the trusted
            // proxies appended `trusted`, nearest last. With as many hops as proxies, the
            // answer is the right proxy's entry whatever the client wrote.
            let trusted: Vec<String> = trusted
                .iter()
                .map(|o| IpAddr::from(*o).to_string())
                .collect();
            let hops = hops_seed % trusted.len() + 1;
            let mut entries = spoofed;
            entries.extend(trusted.iter().cloned());
            let got = client_ip(Some(&entries.join(",")), hops as u32, "192.0.2.1");
            prop_assert_eq!(&got, &trusted[trusted.len() - hops]);
        }
    }
}
