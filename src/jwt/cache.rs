//! A bounded per-worker cache of verified tokens.
//!
//! Entries are keyed by SHA-256 of the token (the token itself is never stored as a key),
//! the caller's slot id (which provider / rule set verified it) and the key generation (so
//! a JWKS refresh invalidates everything verified with the old keys). Eviction is
//! oldest-inserted first; an entry past `exp` (+ skew) is never returned.
//!
//! Ordered maps rather than hash maps: no per-process random seed is needed in the VM, and
//! the keys are already uniformly distributed hashes.

use super::{still_valid, Rules, Verified};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::rc::Rc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct CacheKey {
    digest: [u8; 32],
    slot: usize,
    generation: u64,
}

impl CacheKey {
    fn new(slot: usize, generation: u64, token: &str) -> Self {
        CacheKey {
            digest: Sha256::digest(token.as_bytes()).into(),
            slot,
            generation,
        }
    }
}

/// Bounded per-worker cache of verified tokens.
#[derive(Debug, Default)]
pub struct TokenCache {
    capacity: usize,
    next_seq: u64,
    entries: BTreeMap<CacheKey, (u64, Rc<Verified>)>,
    /// Insertion sequence -> key, to find the oldest entry.
    order: BTreeMap<u64, CacheKey>,
}

impl TokenCache {
    /// `capacity` 0 disables the cache.
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            capacity,
            ..TokenCache::default()
        }
    }

    /// The entry for this token, slot and key generation, unless it expired (`exp` plus
    /// the rules' skew): an expired entry is evicted instead.
    pub fn get(
        &mut self,
        slot: usize,
        generation: u64,
        token: &str,
        rules: &Rules,
        now_secs: u64,
    ) -> Option<Rc<Verified>> {
        if self.capacity == 0 {
            return None;
        }
        let key = CacheKey::new(slot, generation, token);
        let (seq, v) = self.entries.get(&key)?;
        if still_valid(v, rules, now_secs) {
            return Some(Rc::clone(v));
        }
        let seq = *seq;
        self.entries.remove(&key);
        self.order.remove(&seq);
        None
    }

    /// Stores a verified token, evicting the oldest entries when full.
    pub fn insert(&mut self, slot: usize, generation: u64, token: &str, v: Rc<Verified>) {
        if self.capacity == 0 {
            return;
        }
        let key = CacheKey::new(slot, generation, token);
        if let Some((old_seq, _)) = self.entries.remove(&key) {
            self.order.remove(&old_seq);
        }
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.entries.insert(key, (seq, v));
        self.order.insert(seq, key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every entry (e.g. on configuration change).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::Alg;

    fn verified(exp: Option<u64>) -> Rc<Verified> {
        Rc::new(Verified {
            claims: serde_json::Map::new(),
            payload_b64: "e30".to_string(),
            exp,
            alg: Alg::HS256,
            kid: None,
        })
    }

    fn rules(skew: u64) -> Rules {
        Rules {
            clock_skew_secs: skew,
            ..Rules::default()
        }
    }

    #[test]
    fn hit_and_keying() {
        let mut c = TokenCache::new(8);
        let r = rules(60);
        c.insert(1, 7, "tok", verified(Some(1000)));
        assert_eq!(c.len(), 1);
        assert!(c.get(1, 7, "tok", &r, 500).is_some());
        assert!(c.get(2, 7, "tok", &r, 500).is_none(), "other slot");
        assert!(
            c.get(1, 8, "tok", &r, 500).is_none(),
            "other key generation"
        );
        assert!(c.get(1, 7, "tok2", &r, 500).is_none(), "other token");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn evicts_past_exp_plus_skew() {
        let mut c = TokenCache::new(8);
        let r = rules(60);
        c.insert(0, 0, "tok", verified(Some(1000)));
        assert!(c.get(0, 0, "tok", &r, 1060).is_some(), "inside skew");
        assert!(c.get(0, 0, "tok", &r, 1061).is_none(), "past exp + skew");
        assert_eq!(c.len(), 0, "expired entry evicted");
        assert!(c.order.is_empty());
        // Without skew.
        c.insert(0, 0, "tok", verified(Some(1000)));
        assert!(c.get(0, 0, "tok", &rules(0), 1001).is_none());
        assert!(c.is_empty());
        // No exp: never expires by time.
        c.insert(0, 0, "forever", verified(None));
        assert!(c.get(0, 0, "forever", &r, u64::MAX).is_some());
    }

    #[test]
    fn capacity_bound_evicts_oldest() {
        let mut c = TokenCache::new(3);
        let r = rules(60);
        for t in ["a", "b", "c"] {
            c.insert(0, 0, t, verified(Some(1000)));
        }
        // Re-inserting "a" makes it the newest.
        c.insert(0, 0, "a", verified(Some(1000)));
        assert_eq!(c.len(), 3);
        c.insert(0, 0, "d", verified(Some(1000)));
        assert_eq!(c.len(), 3);
        assert!(c.get(0, 0, "b", &r, 0).is_none(), "oldest evicted");
        for t in ["a", "c", "d"] {
            assert!(c.get(0, 0, t, &r, 0).is_some(), "{t}");
        }
        for i in 0..100 {
            c.insert(0, 0, &format!("t{i}"), verified(Some(1000)));
            assert!(c.len() <= 3);
        }
        assert_eq!(c.order.len(), c.entries.len());
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn capacity_zero_disables() {
        let mut c = TokenCache::new(0);
        c.insert(0, 0, "tok", verified(Some(1000)));
        assert_eq!(c.len(), 0);
        assert!(c.get(0, 0, "tok", &rules(60), 0).is_none());
    }
}
