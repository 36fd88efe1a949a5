//! Percent-decoding (RFC 3986 §2.1) and hex digits: one set of rules for paths, query
//! strings, credentials, JSON Pointer fragments and key digests.
//!
//! An escape is `%` followed by exactly two hex digits (`0-9`, `a-f`, `A-F`). Nothing else
//! is one: not `%+1` (`u8::from_str_radix` would take the sign and give 0x01), not `%1`,
//! `%zz` or a lone `%`. The decoding itself is the `percent-encoding` crate (already linked
//! through boon's `url`); what this module adds is the choice each caller makes about a
//! malformed escape:
//! - strict callers (path parameters, query validation, path safety, `$ref` fragments)
//!   get `None` and refuse the input;
//! - lenient callers (finding and removing credentials) keep a malformed escape as the
//!   text it is, as browsers and `form_urlencoded` do, so a name like `t%zz` never
//!   matches `t`.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// The value of one hex digit.
pub fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte two hex digits spell (`hi` first).
pub fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(hex_digit(hi)? << 4 | hex_digit(lo)?)
}

/// Exactly `2 * N` hex digits as `N` bytes (a SHA-256 digest is `decode_hex::<32>`).
pub fn decode_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *byte = hex_byte(*hi, *lo)?;
    }
    Some(out)
}

/// Whether every `%` in `s` starts an escape (two hex digits follow).
pub fn is_well_formed(s: &str) -> bool {
    let mut rest = s.as_bytes();
    while let Some(at) = rest.iter().position(|b| *b == b'%') {
        match rest.get(at + 1..at + 3) {
            Some([hi, lo]) if hex_byte(*hi, *lo).is_some() => {
                rest = rest.get(at + 3..).unwrap_or_default()
            }
            _ => return false,
        }
    }
    true
}

/// The bytes `s` spells; `None` when a `%` does not start an escape.
pub fn decode_bytes(s: &str) -> Option<Cow<'_, [u8]>> {
    is_well_formed(s).then(|| percent_decode_str(s).into())
}

/// The UTF-8 text `s` spells; `None` for a malformed escape or bytes that are not UTF-8
/// (which also refuses overlong forms such as `%c0%ae`).
pub fn decode_utf8(s: &str) -> Option<Cow<'_, str>> {
    if !is_well_formed(s) {
        return None;
    }
    percent_decode_str(s).decode_utf8().ok()
}

/// `decode_utf8` for `application/x-www-form-urlencoded` text: `+` is a space (`%2B` a plus).
pub fn decode_form(s: &str) -> Option<String> {
    if s.contains('+') {
        decode_utf8(&s.replace('+', " ")).map(Cow::into_owned)
    } else {
        decode_utf8(s).map(Cow::into_owned)
    }
}

/// Decodes every escape, keeps a malformed one as written, and replaces bytes that are not
/// UTF-8 with U+FFFD. `+` stays a plus.
pub fn decode_lenient(s: &str) -> Cow<'_, str> {
    percent_decode_str(s).decode_utf8_lossy()
}

/// The byte of every well-formed escape in `s`, in order.
pub fn escaped_bytes(s: &str) -> impl Iterator<Item = u8> + '_ {
    s.as_bytes().windows(3).filter_map(|w| match w {
        [b'%', hi, lo] => hex_byte(*hi, *lo),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each strict decoder refuses what is not `%` + two hex digits.
    #[test]
    fn malformed_escapes_are_refused_where_strict() {
        for bad in [
            "%+1", "%-1", "%1", "a%1", "%zz", "%", "a%", "%%41", "%g0", "%0g", "% 1",
        ] {
            assert!(!is_well_formed(bad), "{bad}");
            assert_eq!(decode_bytes(bad), None, "{bad}");
            assert_eq!(decode_utf8(bad), None, "{bad}");
            assert_eq!(decode_form(bad), None, "{bad}");
        }
    }

    /// The lenient decoder keeps a malformed escape as text, never reading a sign as a digit.
    #[test]
    fn malformed_escapes_stay_literal_where_lenient() {
        assert_eq!(decode_lenient("%+1"), "%+1");
        assert_eq!(decode_lenient("%1"), "%1");
        assert_eq!(decode_lenient("%zz%"), "%zz%");
        assert_eq!(decode_lenient("%41%4"), "A%4");
        assert_eq!(decode_lenient("%"), "%");
        assert_eq!(decode_lenient("a+b"), "a+b");
    }

    #[test]
    fn well_formed_escapes_decode() {
        assert_eq!(decode_utf8("%e2%82%AC").as_deref(), Some("€"));
        assert_eq!(decode_utf8("€%20x").as_deref(), Some("€ x"));
        assert_eq!(decode_lenient("%e2%82%ac"), "€");
        assert_eq!(decode_form("a+b%2B").as_deref(), Some("a b+"));
        assert_eq!(decode_utf8("a+b").as_deref(), Some("a+b"));
        assert_eq!(decode_utf8("plain").as_deref(), Some("plain"));
        assert_eq!(decode_utf8("").as_deref(), Some(""));
    }

    /// `%00` is a well-formed escape: it decodes to NUL, and callers that must not see one
    /// (paths) refuse it themselves.
    #[test]
    fn nul_decodes_to_nul() {
        assert_eq!(decode_bytes("a%00b").as_deref(), Some(&b"a\0b"[..]));
        assert_eq!(decode_utf8("%00").as_deref(), Some("\0"));
    }

    /// Bytes that are not UTF-8 (a stray continuation byte, an overlong `.`, half a
    /// multibyte character): strict refuses, lenient replaces.
    #[test]
    fn bytes_that_are_not_utf8() {
        for bad in ["%80", "%c0%ae", "%e2%82"] {
            assert!(decode_bytes(bad).is_some(), "{bad}");
            assert_eq!(decode_utf8(bad), None, "{bad}");
        }
        assert_eq!(decode_lenient("%e2%82"), "\u{fffd}");
    }

    #[test]
    fn hex_digits_are_exactly_two_hex_characters() {
        assert_eq!(hex_byte(b'f', b'F'), Some(0xff));
        assert_eq!(hex_byte(b'+', b'1'), None);
        assert_eq!(hex_byte(b'0', b'x'), None);
        assert_eq!(decode_hex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(decode_hex::<2>("+1ff"), None);
        assert_eq!(decode_hex::<2>("0aF"), None);
        assert_eq!(decode_hex::<2>("0aFf0"), None);
        assert_eq!(decode_hex::<1>("é"), None);
        assert_eq!(decode_hex::<32>(&"ab".repeat(32)), Some([0xab; 32]));
    }

    #[test]
    fn escaped_bytes_lists_only_well_formed_escapes() {
        let found: Vec<u8> = escaped_bytes("%41%+1%zz%2f%").collect();
        assert_eq!(found, [0x41, 0x2f]);
    }
}
