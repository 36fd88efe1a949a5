//! Wire format of Envoy's `verify_signature` foreign function.
//!
//! The arguments are the protobuf `VerifySignatureArguments` of Envoy's
//! `source/extensions/common/wasm/ext/verify_signature.proto`:
//! `hash_function = 1 (string)`, `public_key = 2 (bytes, DER SubjectPublicKeyInfo)`,
//! `signature = 3 (bytes)`, `text = 4 (bytes)`; the answer is `VerifySignatureResult`:
//! `result = 1 (bool)`, `error = 2 (string)`. Four length-delimited fields do not justify
//! a protobuf runtime in every worker, so they are encoded here by hand.

/// Encodes `VerifySignatureArguments`.
pub fn encode_verify_args(hash: &str, spki_der: &[u8], signature: &[u8], text: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(hash.len() + spki_der.len() + signature.len() + text.len() + 24);
    for (field, bytes) in [
        (1u8, hash.as_bytes()),
        (2, spki_der),
        (3, signature),
        (4, text),
    ] {
        out.push(field << 3 | 2); // wire type 2: length-delimited
        push_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    out
}

/// Decodes `VerifySignatureResult` to its `result` field; malformed input reads as false.
pub fn decode_verify_result(bytes: &[u8]) -> bool {
    let mut i = 0;
    let mut result = false;
    while i < bytes.len() {
        let Some((key, n)) = read_varint(bytes.get(i..).unwrap_or(&[])) else {
            return false;
        };
        i += n;
        match (key >> 3, key & 7) {
            (1, 0) => {
                let Some((v, n)) = read_varint(bytes.get(i..).unwrap_or(&[])) else {
                    return false;
                };
                i += n;
                result = v != 0;
            }
            (_, 0) => {
                let Some((_, n)) = read_varint(bytes.get(i..).unwrap_or(&[])) else {
                    return false;
                };
                i += n;
            }
            (_, 2) => {
                let Some((len, n)) = read_varint(bytes.get(i..).unwrap_or(&[])) else {
                    return false;
                };
                i = match usize::try_from(len)
                    .ok()
                    .and_then(|l| (i + n).checked_add(l))
                {
                    Some(end) if end <= bytes.len() => end,
                    _ => return false,
                };
            }
            _ => return false,
        }
    }
    result
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, b) in bytes.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fields_in_order_with_varint_lengths() {
        let key = vec![7u8; 300];
        let out = encode_verify_args("sha256", &key, b"sig", b"msg");
        assert_eq!(&out[..8], b"\x0a\x06sha256");
        assert_eq!(&out[8..11], &[0x12, 0xac, 0x02]); // 300 = 0b1_0010_1100
        assert_eq!(&out[311..], b"\x1a\x03sig\x22\x03msg");
    }

    #[test]
    fn decodes_result() {
        assert!(decode_verify_result(&[0x08, 0x01]));
        assert!(!decode_verify_result(&[
            0x08, 0x00, 0x12, 0x03, b'b', b'a', b'd'
        ]));
        assert!(!decode_verify_result(&[]));
        assert!(!decode_verify_result(&[0x12, 0x05, b'x']));
        assert!(!decode_verify_result(&[0xff]));
        assert!(decode_verify_result(&[0x12, 0x00, 0x08, 0x01]));
    }
}
