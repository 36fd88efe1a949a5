//! Envoy's serialized header map, read in place.
//!
//! `proxy_get_header_map_pairs` hands the filter one buffer: a little-endian `u32` count,
//! then `count` pairs of `u32` (name length, value length), then every name and value in
//! that order, each followed by a NUL byte. Reading it in place costs one allocation per
//! request instead of several per header (the SDK's `get_map_bytes` builds a `String` and a
//! `Vec` for each), which matters at Envoy's request rates.

use std::borrow::Cow;

/// The (name, value) byte slices of a serialized map; `None` if the buffer is malformed
/// (the caller then sees no headers at all and the request fails closed).
pub fn pairs(buf: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut sizes = buf;
    let count = take_u32(&mut sizes)? as usize;
    // Each pair needs 8 bytes of sizes and 2 NULs: bounds `count` before allocating.
    if count > buf.len() / 10 {
        return if count == 0 { Some(Vec::new()) } else { None };
    }
    let mut data = buf.get(4 + 8 * count..)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let name_len = take_u32(&mut sizes)? as usize;
        let value_len = take_u32(&mut sizes)? as usize;
        let name = take_terminated(&mut data, name_len)?;
        let value = take_terminated(&mut data, value_len)?;
        out.push((name, value));
    }
    Some(out)
}

/// Header pairs as text: names lowercased (Envoy already lowercases them; this is cheap
/// insurance), values decoded lossily (Envoy allows obs-text, so never assume UTF-8).
/// Borrowed from `buf` unless a name had uppercase letters or a value invalid UTF-8.
pub fn text_pairs(buf: &[u8]) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    pairs(buf)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| {
            let name = match String::from_utf8_lossy(name) {
                Cow::Borrowed(n) if !n.bytes().any(|b| b.is_ascii_uppercase()) => Cow::Borrowed(n),
                n => Cow::Owned(n.to_ascii_lowercase()),
            };
            (name, String::from_utf8_lossy(value))
        })
        .collect()
}

/// The same encoding, written: for local replies sent through the raw host call.
pub fn serialize_text(headers: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + 10)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (k, v) in headers {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    let (head, rest) = buf.split_first_chunk::<4>()?;
    *buf = rest;
    Some(u32::from_le_bytes(*head))
}

/// `len` bytes followed by a NUL.
fn take_terminated<'a>(buf: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    let field = buf.get(..len)?;
    if buf.get(len) != Some(&0) {
        return None;
    }
    *buf = buf.get(len + 1..)?;
    Some(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes like Envoy's `proxy_get_header_map_pairs`.
    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (n, v) in pairs {
            out.extend((n.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            out.extend(*n);
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn reads_every_pair_in_order() {
        let buf = serialize(&[
            (b":path", b"/items?x=1"),
            (b"authorization", b"Bearer abc"),
            (b"x-empty", b""),
        ]);
        let got = text_pairs(&buf);
        let got: Vec<(&str, &str)> = got.iter().map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
        assert_eq!(
            got,
            [
                (":path", "/items?x=1"),
                ("authorization", "Bearer abc"),
                ("x-empty", "")
            ]
        );
    }

    #[test]
    fn borrows_when_nothing_needs_fixing() {
        let buf = serialize(&[(b"accept", b"*/*")]);
        let got = text_pairs(&buf);
        assert!(matches!(
            got.first(),
            Some((Cow::Borrowed(_), Cow::Borrowed(_)))
        ));
    }

    #[test]
    fn lowercases_names_and_replaces_invalid_utf8_in_values() {
        let buf = serialize(&[(b"X-Tenant", b"a\xffb")]);
        let got = text_pairs(&buf);
        let (n, v) = got
            .first()
            .map(|(n, v)| (n.as_ref(), v.as_ref()))
            .unwrap_or_default();
        assert_eq!((n, v), ("x-tenant", "a\u{fffd}b"));
    }

    #[test]
    fn written_maps_read_back() {
        let h = [("grpc-status", "8"), ("retry-after", "1"), ("x", "")];
        let buf = serialize_text(&h);
        let back = text_pairs(&buf);
        let back: Vec<(&str, &str)> = back.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(back, h);
        assert!(text_pairs(&serialize_text(&[])).is_empty());
    }

    #[test]
    fn empty_map() {
        assert_eq!(pairs(&0u32.to_le_bytes()), Some(vec![]));
        assert!(text_pairs(&[]).is_empty());
    }

    #[test]
    fn malformed_buffers_yield_nothing() {
        let good = serialize(&[(b"a", b"b"), (b"cc", b"dd")]);
        // Every truncation, a missing NUL, lengths past the end, a huge count.
        for cut in 0..good.len() {
            assert_eq!(
                pairs(good.get(..cut).unwrap_or_default()),
                None,
                "cut at {cut}"
            );
        }
        let mut no_nul = good.clone();
        if let Some(last) = no_nul.last_mut() {
            *last = b'x';
        }
        assert_eq!(pairs(&no_nul), None);
        let mut long = good.clone();
        long.splice(4..8, 1000u32.to_le_bytes());
        assert_eq!(pairs(&long), None);
        let mut many = good;
        many.splice(0..4, u32::MAX.to_le_bytes());
        assert_eq!(pairs(&many), None);
    }
}
