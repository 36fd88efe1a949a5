//! Token leases: a worker takes a batch of tokens from a shared bucket that is far from
//! empty and spends them without touching shared data; near empty every take is one CAS.
//!
//! # Why
//! An exact take costs a shared-data read and a CAS write per request (two host calls,
//! ~7.5 µs in Envoy). A limit of a billion requests an hour does not need that precision
//! while it has millions left: a lease of `k` tokens turns `k` takes into one.
//!
//! # Protocol
//! A slot carries, beside its bucket, up to `RECORDS` lease records `(tokens, until_ms)`.
//! * **Grant.** A take that leaves `R` tokens may also take `k = min(LEASE_MAX, R /
//!   LEASE_DIVISOR)` more (only if `k >= 2` and `k >= cost`, a record is free, the
//!   limit refills and the key's slot already existed: a key seen once leases nothing),
//!   in the same CAS, and record `(k, now + LEASE_MS)`.
//! * **Spend.** The holder spends `cost` from its lease, no host call, while
//!   `granted <= now < until` and enough is left.
//! * **Settle.** When its lease runs out, ends, or cannot pay, the holder's next take
//!   removes its record and puts what it did not spend back into the bucket, in the CAS
//!   of that take (a denial writes too when it settles).
//! * **Refill** fills the bucket up to capacity *minus every recorded lease* (spent or
//!   not): bucket plus leases never hold more than capacity.
//! * **Stale records.** A record ended more than `GRACE_MS` ago is dropped by whoever
//!   reads the slot; its unspent tokens are lost (see the bound).
//!
//! # Bounds
//! **Never more than the bucket allows.** Let `V` = bucket + unspent recorded tokens and
//! `E` an exact bucket that admits the same requests at the same times. At a grant `V`
//! does not change; a spend takes `cost` from both; refill gives `V` at most
//! `min(V + earned, capacity)`, which is what `E` gets from `E >= V`; settling and dropping
//! records only lower `V` or move tokens from a lease back into the bucket. So `V <= E`
//! always, and every admission (which needs `V >= cost`) is one `E` admits too. This
//! holds if worker clocks agree within `GRACE_MS` (the holder stops at `until`, others
//! drop the record only after `until + GRACE_MS`); Envoy's workers read one system clock.
//!
//! **Under-admission.** `E - V` is made of (a) unspent tokens of live records, at most
//! `RECORDS * LEASE_MAX` tokens and at most `RECORDS * R / LEASE_DIVISOR` of the `R` left
//! when they were granted, and (b) tokens of leases whose holder served no request of
//! that key for `LEASE_MS + GRACE_MS` (2 s), which are dropped and earned back by refill.
//! Leases are granted only on limits that refill, so no token is lost for good, and only
//! while `R >= 2 * LEASE_DIVISOR` (128): a bucket with fewer than 128 tokens left is
//! exact, take by take, across workers. `cost > LEASE_MAX` never leases.
//!
//! # Where the leases live
//! In the worker's VM, reached through `SharedStore::leases` (Envoy's store gives each
//! VM its own table; test stores simulate workers). A store without one never leases.
//! At most `LOCAL_MAX` leases per worker; a lease is keyed by the limit's config hash and
//! the key's fingerprint, so a policy reload that changes a limit's definition leaves
//! the old leases unused (they end within `LEASE_MS`), and an unchanged one keeps them.

use std::cell::RefCell;

use super::bucket::Rate;
use super::LimitSpec;

/// Lease records per slot: more concurrent holders of one key take one CAS per request.
pub const RECORDS: usize = 4;
/// Bytes of the records in a slot.
pub const RECORDS_BYTES: usize = RECORDS * 16;
/// How long a lease may be spent.
pub const LEASE_MS: u64 = 1_000;
/// How long after its end another worker waits before dropping a record.
pub const GRACE_MS: u64 = 1_000;
/// A lease is at most this fraction of what is left.
pub const LEASE_DIVISOR: u64 = 64;
/// Largest lease, in tokens.
pub const LEASE_MAX: u64 = 64;
/// Leases one worker holds at most.
pub const LOCAL_MAX: usize = 64;

/// One lease as the slot records it; `tokens == 0` is a free record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    pub tokens: u64,
    pub until_ms: u64,
}

/// A slot's lease records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Records([Record; RECORDS]);

impl Records {
    pub fn encode(&self) -> [u8; RECORDS_BYTES] {
        let mut out = [0u8; RECORDS_BYTES];
        for (chunk, r) in out.chunks_exact_mut(16).zip(self.0.iter()) {
            let (tokens, until) = chunk.split_at_mut(8);
            tokens.copy_from_slice(&r.tokens.to_le_bytes());
            until.copy_from_slice(&r.until_ms.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Records> {
        if bytes.len() != RECORDS_BYTES {
            return None;
        }
        let mut records = Records::default();
        for (chunk, r) in bytes.chunks_exact(16).zip(records.0.iter_mut()) {
            r.tokens = u64::from_le_bytes(chunk.get(..8)?.try_into().ok()?);
            r.until_ms = u64::from_le_bytes(chunk.get(8..)?.try_into().ok()?);
        }
        Some(records)
    }

    /// Drops records ended more than `GRACE_MS` before `now_ms`: their holders stopped.
    pub fn drop_stale(&mut self, now_ms: u64) {
        for r in self.0.iter_mut() {
            if r.until_ms.saturating_add(GRACE_MS) <= now_ms {
                *r = Record::default();
            }
        }
    }

    /// Tokens recorded as leased (spent or not): the bucket refills to capacity minus this.
    pub fn held(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.tokens))
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|r| r.tokens == 0)
    }

    /// Removes the holder's record if it is still there.
    pub fn release(&mut self, index: usize, record: Record) -> bool {
        match self.0.get_mut(index) {
            Some(r) if *r == record && record.tokens != 0 => {
                *r = Record::default();
                true
            }
            _ => false,
        }
    }

    /// Records a lease in a free record; its index, or `None` when all are in use.
    pub fn grant(&mut self, record: Record) -> Option<usize> {
        let index = self.0.iter().position(|r| r.tokens == 0)?;
        *self.0.get_mut(index)? = record;
        Some(index)
    }
}

/// The size of a lease to grant beside a take of `cost` that left `remaining` tokens;
/// 0 for none.
pub fn size(limit: &LimitSpec, cost: u64, remaining: u64) -> u64 {
    if limit.refill_tokens == 0 || cost > LEASE_MAX {
        return 0;
    }
    let k = (remaining / LEASE_DIVISOR).min(LEASE_MAX);
    if k >= 2 && k >= cost {
        k
    } else {
        0
    }
}

/// A lease this worker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub config_hash: u64,
    pub fingerprint: u64,
    /// Where the slot recorded it.
    pub index: usize,
    pub record: Record,
    pub granted_ms: u64,
    pub unspent: u64,
    /// Whole tokens the bucket had right after the grant (for the `RateLimit` header).
    pub bucket_left: u64,
}

/// What `Leases::spend` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Paid from the lease; `remaining` is the bucket at the grant plus the lease.
    Spent { remaining: u64 },
    /// The key had a lease that cannot pay: settle it with this take.
    Settle(Held),
    /// No lease for the key.
    None,
}

/// One worker's leases.
#[derive(Debug, Default)]
pub struct Leases {
    held: RefCell<Vec<Held>>,
}

impl Leases {
    /// Pays `cost` from the key's lease if it can; otherwise hands the lease back for
    /// settling (and forgets it here).
    pub fn spend(&self, config_hash: u64, fingerprint: u64, cost: u64, now_ms: u64) -> Spend {
        let mut held = self.held.borrow_mut();
        let Some(pos) = held
            .iter()
            .position(|h| h.config_hash == config_hash && h.fingerprint == fingerprint)
        else {
            return Spend::None;
        };
        let Some(h) = held.get_mut(pos) else {
            return Spend::None;
        };
        let live = h.granted_ms <= now_ms && now_ms < h.record.until_ms;
        if live && h.unspent >= cost {
            h.unspent -= cost;
            return Spend::Spent {
                remaining: h.bucket_left.saturating_add(h.unspent),
            };
        }
        Spend::Settle(held.swap_remove(pos))
    }

    /// Whether one more lease may be kept (drops ended ones first).
    pub fn has_room(&self, now_ms: u64) -> bool {
        let mut held = self.held.borrow_mut();
        if held.len() >= LOCAL_MAX {
            held.retain(|h| h.granted_ms <= now_ms && now_ms < h.record.until_ms);
        }
        held.len() < LOCAL_MAX
    }

    pub fn insert(&self, lease: Held) {
        let mut held = self.held.borrow_mut();
        if held.len() < LOCAL_MAX {
            held.push(lease);
        }
    }

    /// Leases held (tests, diagnostics).
    pub fn len(&self) -> usize {
        self.held.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Unspent tokens of every lease held (tests).
    pub fn unspent(&self) -> u64 {
        self.held.borrow().iter().map(|h| h.unspent).sum()
    }
}

/// `reset_ms` for a request paid from a lease: from the estimate of what is left.
pub fn reset_estimate(rate: &Rate, remaining: u64) -> u64 {
    rate.reset_ms_from(remaining)
}

#[cfg(test)]
mod tests;
