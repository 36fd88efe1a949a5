//! RSA signature verification (RFC 8017 RSASSA-PKCS1-v1_5 and RSASSA-PSS) with a small
//! fixed-width Montgomery exponentiation.
//!
//! Why not the `rsa` crate: its public-key operation (generic `num-bigint-dig` modpow)
//! costs about 2 ms per RS256 token in Envoy's V8, and it brings a big-integer library into
//! the module. Verification only touches public data, so it needs no constant-time care;
//! this module precomputes the Montgomery constants once per key (at JWKS parse time) and
//! runs `e = 65537` as 16 squarings and one multiplication on 32-bit limbs, which wasm
//! executes natively (`i64.mul`).

use sha2::{Digest, Sha256, Sha384, Sha512};

/// A compiled RSA public key.
#[derive(Clone)]
pub(crate) struct RsaPublic {
    /// Modulus, little-endian 32-bit limbs (no high zero limb).
    n: Vec<u32>,
    /// `-n^-1 mod 2^32`.
    n0inv: u32,
    /// `R^2 mod n`, `R = 2^(32 * n.len())`.
    rr: Vec<u32>,
    e: u32,
    /// Modulus length in bytes (the signature length).
    size: usize,
    bits: usize,
}

impl RsaPublic {
    /// `n` big-endian without leading zeros, odd, at least 512 bits; `e` odd, >= 3, fits
    /// 32 bits. The caller enforces its own size policy on top.
    pub(crate) fn new(n_be: &[u8], e_be: &[u8]) -> Result<Self, &'static str> {
        if n_be.first().is_none_or(|&b| b == 0) || n_be.len() < 64 {
            return Err("RSA modulus is too small");
        }
        if n_be.last().is_some_and(|b| b & 1 == 0) {
            return Err("RSA modulus is even");
        }
        if e_be.len() > 4 {
            return Err("RSA public exponent is larger than 32 bits");
        }
        let e = e_be.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        if e < 3 || e & 1 == 0 {
            return Err("RSA public exponent must be odd and at least 3");
        }
        let n = limbs_from_be(n_be, n_be.len().div_ceil(4));
        let n0 = n.first().copied().unwrap_or(1);
        // Newton iteration: each step doubles the correct low bits (1 -> 2 -> ... -> 32+).
        let mut inv: u32 = 1;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(n0.wrapping_mul(inv)));
        }
        let bits = bit_len_be(n_be);
        let rr = r_squared(&n);
        Ok(RsaPublic {
            n0inv: inv.wrapping_neg(),
            rr,
            e,
            size: n_be.len(),
            bits,
            n,
        })
    }

    /// Signature (and modulus) length in bytes.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// RSAVP1: `s^e mod n` as a `size`-byte big-endian string. `None` when `s` is not
    /// `size` bytes or not below `n`.
    fn public_op(&self, sig: &[u8]) -> Option<Vec<u8>> {
        if sig.len() != self.size {
            return None;
        }
        let len = self.n.len();
        let s = limbs_from_be(sig, len);
        if cmp(&s, &self.n) != std::cmp::Ordering::Less {
            return None;
        }
        let mut scratch = vec![0u32; len + 2];
        let mut base = vec![0u32; len];
        mont_mul(&s, &self.rr, &self.n, self.n0inv, &mut scratch, &mut base);
        let mut acc = base.clone();
        let mut tmp = vec![0u32; len];
        let top = 31 - self.e.leading_zeros();
        for bit in (0..top).rev() {
            mont_mul(&acc, &acc, &self.n, self.n0inv, &mut scratch, &mut tmp);
            std::mem::swap(&mut acc, &mut tmp);
            if (self.e >> bit) & 1 == 1 {
                mont_mul(&acc, &base, &self.n, self.n0inv, &mut scratch, &mut tmp);
                std::mem::swap(&mut acc, &mut tmp);
            }
        }
        // Out of the Montgomery domain: multiply by 1.
        let mut one = vec![0u32; len];
        if let Some(l) = one.first_mut() {
            *l = 1;
        }
        mont_mul(&acc, &one, &self.n, self.n0inv, &mut scratch, &mut tmp);
        Some(limbs_to_be(&tmp, self.size))
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256/384/512 (`hash_len` 32/48/64), by encoding the
    /// expected message and comparing (RFC 8017 §8.2.2).
    pub(crate) fn verify_pkcs1v15(&self, hash_len: usize, msg: &[u8], sig: &[u8]) -> bool {
        let Some(em) = self.public_op(sig) else {
            return false;
        };
        let (prefix, digest): (&[u8], Vec<u8>) = match hash_len {
            32 => (&SHA256_DIGEST_INFO, Sha256::digest(msg).to_vec()),
            48 => (&SHA384_DIGEST_INFO, Sha384::digest(msg).to_vec()),
            64 => (&SHA512_DIGEST_INFO, Sha512::digest(msg).to_vec()),
            _ => return false,
        };
        let t_len = prefix.len() + digest.len();
        let Some(ps_len) = self.size.checked_sub(t_len + 3) else {
            return false;
        };
        if ps_len < 8 {
            return false;
        }
        let mut expected = Vec::with_capacity(self.size);
        expected.extend_from_slice(&[0x00, 0x01]);
        expected.resize(2 + ps_len, 0xff);
        expected.push(0x00);
        expected.extend_from_slice(prefix);
        expected.extend_from_slice(&digest);
        em == expected
    }

    /// RSASSA-PSS with MGF1 and the same hash, salt length = hash length (RFC 7518 §3.5),
    /// per RFC 8017 §8.1.2 / §9.1.2.
    pub(crate) fn verify_pss(&self, hash_len: usize, msg: &[u8], sig: &[u8]) -> bool {
        let Some(em) = self.public_op(sig) else {
            return false;
        };
        match hash_len {
            32 => emsa_pss_verify::<Sha256>(&em, self.bits - 1, msg),
            48 => emsa_pss_verify::<Sha384>(&em, self.bits - 1, msg),
            64 => emsa_pss_verify::<Sha512>(&em, self.bits - 1, msg),
            _ => false,
        }
    }
}

const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
const SHA384_DIGEST_INFO: [u8; 19] = [
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];
const SHA512_DIGEST_INFO: [u8; 19] = [
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

/// EMSA-PSS-VERIFY with `sLen = hLen`. `em_full` is the `k`-byte RSAVP1 output.
fn emsa_pss_verify<D: Digest>(em_full: &[u8], em_bits: usize, msg: &[u8]) -> bool {
    let h_len = <D as Digest>::output_size();
    let s_len = h_len;
    let em_len = em_bits.div_ceil(8);
    // The k-byte integer has k*8 - em_bits >= 1 leading zero bits; when that is 8 or
    // more the first byte is all zero and not part of EM.
    let Some(extra) = em_full.len().checked_sub(em_len) else {
        return false;
    };
    let (lead, em) = em_full.split_at(extra);
    if lead.iter().any(|&b| b != 0) {
        return false;
    }
    if em_len < h_len + s_len + 2 {
        return false;
    }
    let Some((&last, rest)) = em.split_last() else {
        return false;
    };
    if last != 0xbc {
        return false;
    }
    let (masked_db, h) = rest.split_at(em_len - h_len - 1);
    let unused_bits = 8 * em_len - em_bits; // 0..=7
    let top_mask: u8 = 0xff >> unused_bits;
    if masked_db.first().is_some_and(|&b| b & !top_mask != 0) {
        return false;
    }
    let mask = mgf1::<D>(h, masked_db.len());
    let mut db: Vec<u8> = masked_db.iter().zip(&mask).map(|(a, b)| a ^ b).collect();
    if let Some(first) = db.first_mut() {
        *first &= top_mask;
    }
    let ps_len = em_len - h_len - s_len - 2;
    let (ps, rest) = db.split_at(ps_len);
    let Some((&one, salt)) = rest.split_first() else {
        return false;
    };
    if ps.iter().any(|&b| b != 0) || one != 0x01 || salt.len() != s_len {
        return false;
    }
    let m_hash = D::digest(msg);
    let mut hasher = D::new();
    hasher.update([0u8; 8]);
    hasher.update(&m_hash);
    hasher.update(salt);
    hasher.finalize().iter().eq(h.iter())
}

fn mgf1<D: Digest>(seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + <D as Digest>::output_size());
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut hasher = D::new();
        hasher.update(seed);
        hasher.update(counter.to_be_bytes());
        out.extend_from_slice(&hasher.finalize());
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

// ---- multi-precision arithmetic on little-endian u32 limbs ----

fn limbs_from_be(be: &[u8], len: usize) -> Vec<u32> {
    let mut limbs: Vec<u32> = be
        .rchunks(4)
        .map(|chunk| chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
        .collect();
    limbs.resize(len.max(limbs.len()), 0);
    limbs
}

fn limbs_to_be(limbs: &[u32], size: usize) -> Vec<u8> {
    let mut be: Vec<u8> = limbs.iter().rev().flat_map(|l| l.to_be_bytes()).collect();
    let excess = be.len().saturating_sub(size);
    be.drain(..excess);
    be
}

fn bit_len_be(be: &[u8]) -> usize {
    match be.first() {
        Some(&top) => (be.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    }
}

/// Compares equal-length numbers.
fn cmp(a: &[u32], b: &[u32]) -> std::cmp::Ordering {
    a.iter().rev().cmp(b.iter().rev())
}

/// `a -= b` for equal lengths; returns the borrow.
fn sub_in_place(a: &mut [u32], b: &[u32]) -> bool {
    let mut borrow = false;
    for (x, &y) in a.iter_mut().zip(b) {
        let (d1, b1) = x.overflowing_sub(y);
        let (d2, b2) = d1.overflowing_sub(u32::from(borrow));
        *x = d2;
        borrow = b1 || b2;
    }
    borrow
}

/// Adds `carry` into `limbs` from the first limb on.
fn propagate(limbs: &mut [u32], mut carry: u64) {
    for l in limbs {
        if carry == 0 {
            break;
        }
        let s = u64::from(*l) + carry;
        *l = s as u32;
        carry = s >> 32;
    }
}

/// `out = a * b / R mod n` (CIOS Montgomery multiplication; `a, b < n`).
/// `t` is scratch of `n.len() + 2` limbs.
fn mont_mul(a: &[u32], b: &[u32], n: &[u32], n0inv: u32, t: &mut [u32], out: &mut [u32]) {
    let len = n.len();
    t.fill(0);
    for &ai in a {
        // t += ai * b
        let mut carry = 0u64;
        for (tj, &bj) in t.iter_mut().zip(b) {
            let s = u64::from(*tj) + u64::from(ai) * u64::from(bj) + carry;
            *tj = s as u32;
            carry = s >> 32;
        }
        propagate(t.get_mut(len..).unwrap_or_default(), carry);
        // t += m * n, making the low limb zero; then t /= 2^32.
        let m = t.first().copied().unwrap_or(0).wrapping_mul(n0inv);
        let mut carry = 0u64;
        for (tj, &nj) in t.iter_mut().zip(n) {
            let s = u64::from(*tj) + u64::from(m) * u64::from(nj) + carry;
            *tj = s as u32;
            carry = s >> 32;
        }
        propagate(t.get_mut(len..).unwrap_or_default(), carry);
        t.copy_within(1.., 0);
        if let Some(top) = t.last_mut() {
            *top = 0;
        }
    }
    // t < 2n: one conditional subtraction.
    let (low, high) = t.split_at_mut(len);
    let overflow = high.first().is_some_and(|&h| h != 0);
    if overflow || cmp(low, n) != std::cmp::Ordering::Less {
        sub_in_place(low, n);
    }
    out.copy_from_slice(low);
}

/// `R^2 mod n` by doubling 1 modulo `n`, `2 * 32 * len` times (once per key).
fn r_squared(n: &[u32]) -> Vec<u32> {
    let len = n.len();
    let mut r = vec![0u32; len];
    if let Some(l) = r.first_mut() {
        *l = 1;
    }
    for _ in 0..(64 * len) {
        // r = 2r mod n, with r < n: 2r < 2n, so at most one subtraction.
        let mut carry = 0u32;
        for l in r.iter_mut() {
            let next = *l >> 31;
            *l = (*l << 1) | carry;
            carry = next;
        }
        if carry != 0 || cmp(&r, n) != std::cmp::Ordering::Less {
            sub_in_place(&mut r, n);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `public_op` against a plain square-and-multiply with `rsa`'s big integers
    /// (native builds depend on `rsa` for minting).
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn public_op_matches_reference_modpow() {
        use rsa::BigUint;
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (bytes, e) in [
            (64usize, 65537u32),
            (256, 65537),
            (257, 3),
            (384, 65537),
            (512, 17),
        ] {
            for _ in 0..4 {
                let mut n: Vec<u8> = (0..bytes).map(|_| next() as u8).collect();
                n[0] |= 0x80;
                if bytes == 257 {
                    n[0] = 1; // a modulus whose top limb is short
                }
                *n.last_mut().unwrap() |= 1;
                let key = RsaPublic::new(&n, &e.to_be_bytes()).unwrap();
                let mut s: Vec<u8> = (0..bytes).map(|_| next() as u8).collect();
                s[0] = 0;
                let got = key.public_op(&s).unwrap();
                let nn = BigUint::from_bytes_be(&n);
                let want = BigUint::from_bytes_be(&s).modpow(&BigUint::from(e), &nn);
                let mut want = want.to_bytes_be();
                while want.len() < bytes {
                    want.insert(0, 0);
                }
                assert_eq!(got, want, "{bytes} bytes, e={e}");
            }
        }
    }

    #[test]
    fn public_op_rejects_out_of_range_signatures() {
        let mut n = vec![0xffu8; 256];
        n[255] = 0xfd;
        let key = RsaPublic::new(&n, &[1, 0, 1]).unwrap();
        assert!(key.public_op(&n).is_none(), "s == n");
        assert!(key.public_op(&[0xff; 256]).is_none(), "s > n");
        assert!(key.public_op(&[1; 255]).is_none(), "short");
        assert!(key.public_op(&[1; 257]).is_none(), "long");
        assert_eq!(key.public_op(&[0; 256]).unwrap(), vec![0; 256]);
        let mut one = vec![0u8; 256];
        one[255] = 1;
        assert_eq!(key.public_op(&one).unwrap(), one);
    }

    #[test]
    fn new_rejects_bad_parameters() {
        let n = [0xc5u8; 256];
        assert!(RsaPublic::new(&n, &[1, 0, 1]).is_ok());
        assert!(RsaPublic::new(&[0xc4; 256], &[1, 0, 1]).is_err(), "even");
        assert!(RsaPublic::new(&n[..63], &[1, 0, 1]).is_err(), "tiny");
        assert!(RsaPublic::new(&n, &[1]).is_err(), "e = 1");
        assert!(RsaPublic::new(&n, &[4]).is_err(), "even e");
        assert!(RsaPublic::new(&n, &[1, 0, 0, 0, 1]).is_err(), "e > 32 bits");
        assert_eq!(RsaPublic::new(&n, &[3]).unwrap().bits, 2048);
    }
}
