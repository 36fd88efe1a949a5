//! A bounded per-worker cache of verified tokens.
//!
//! Entries are found by a fast 64-bit hash (foldhash, fixed seed) of the token, the
//! caller's slot id (which provider / rule set verified it) and the key generation (so a
//! JWKS refresh invalidates everything verified with the old keys), and a hit is confirmed
//! by comparing the whole token: the hash only picks the bucket, so a collision can never
//! return another token's identity. This keeps the token in memory (it already passes
//! through Envoy's header map) and costs about a hundred nanoseconds where a SHA-256 key
//! cost microseconds in Wasm, which has no SHA instructions. Only verified tokens are
//! inserted, so an attacker cannot fill a bucket with colliding entries.
//!
//! Eviction is oldest-inserted first; an entry past `exp` (+ skew) is never returned.

use super::{still_valid, Rules, Verified};
use foldhash::fast::FixedState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::rc::Rc;

#[derive(Debug)]
struct Entry {
    token: Box<str>,
    slot: usize,
    generation: u64,
    seq: u64,
    verified: Rc<Verified>,
}

impl Entry {
    fn is(&self, slot: usize, generation: u64, token: &str) -> bool {
        self.slot == slot && self.generation == generation && &*self.token == token
    }
}

/// Bounded per-worker cache of verified tokens.
#[derive(Debug, Default)]
pub struct TokenCache {
    capacity: usize,
    next_seq: u64,
    /// Hash → the entries with that hash (almost always one).
    buckets: HashMap<u64, Vec<Entry>, FixedState>,
    /// Insertion sequence → hash, to find the oldest entry; one row per entry.
    order: BTreeMap<u64, u64>,
}

fn hash_of(slot: usize, generation: u64, token: &str) -> u64 {
    FixedState::default().hash_one((slot, generation, token))
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
        let hash = hash_of(slot, generation, token);
        let entry = self
            .buckets
            .get(&hash)?
            .iter()
            .find(|e| e.is(slot, generation, token))?;
        if still_valid(&entry.verified, rules, now_secs) {
            return Some(Rc::clone(&entry.verified));
        }
        let seq = entry.seq;
        self.remove(hash, seq);
        None
    }

    /// Stores a verified token, evicting the oldest entries when full.
    pub fn insert(&mut self, slot: usize, generation: u64, token: &str, v: Rc<Verified>) {
        if self.capacity == 0 {
            return;
        }
        let hash = hash_of(slot, generation, token);
        let existing = self
            .buckets
            .get(&hash)
            .and_then(|b| b.iter().find(|e| e.is(slot, generation, token)))
            .map(|e| e.seq);
        if let Some(seq) = existing {
            self.remove(hash, seq);
        }
        while self.len() >= self.capacity {
            let Some((&seq, &oldest)) = self.order.first_key_value() else {
                break;
            };
            self.remove(oldest, seq);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.buckets.entry(hash).or_default().push(Entry {
            token: token.into(),
            slot,
            generation,
            seq,
            verified: v,
        });
        self.order.insert(seq, hash);
    }

    fn remove(&mut self, hash: u64, seq: u64) {
        self.order.remove(&seq);
        let Some(bucket) = self.buckets.get_mut(&hash) else {
            return;
        };
        bucket.retain(|e| e.seq != seq);
        if bucket.is_empty() {
            self.buckets.remove(&hash);
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Drops every entry (e.g. on configuration change).
    pub fn clear(&mut self) {
        self.buckets.clear();
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
        assert_eq!(c.order.len(), c.len());
        assert_eq!(c.buckets.values().map(Vec::len).sum::<usize>(), c.len());
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn a_hash_collision_never_returns_another_token() {
        let mut c = TokenCache::new(8);
        let r = rules(60);
        // Force two tokens into one bucket, as a colliding hash would.
        c.insert(0, 0, "alice", verified(Some(1000)));
        let hash = hash_of(0, 0, "alice");
        let alice = c.buckets.remove(&hash).unwrap_or_default();
        let mallory_hash = hash_of(0, 0, "mallory");
        c.buckets.insert(mallory_hash, alice);
        assert!(c.get(0, 0, "mallory", &r, 0).is_none());
    }

    #[test]
    fn capacity_zero_disables() {
        let mut c = TokenCache::new(0);
        c.insert(0, 0, "tok", verified(Some(1000)));
        assert_eq!(c.len(), 0);
        assert!(c.get(0, 0, "tok", &rules(60), 0).is_none());
    }
}
