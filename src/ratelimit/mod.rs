//! Rate limiting: token buckets shared by every worker VM through proxy-wasm shared data.
//!
//! * `bucket`: exact token-bucket arithmetic (integer units, lazy refill, one 24-byte value).
//! * `shared`: `acquire`, the CAS read-modify-write over a bounded slot table per limit.
//! * `lease`: batches of tokens a worker spends without shared data while a bucket is far
//!   from empty (exact near empty; bounds in its module doc).
//! * `key`: bucket-key composition and the client address from `x-forwarded-for`.
//! * `headers`: `RateLimit-Policy`, `RateLimit` and `Retry-After` values.
//!
//! # Exactness across workers
//! Every Envoy worker runs its own VM; the shared store is process-wide and offers only
//! get and set-with-CAS. A take is one read and one CAS write of a single slot value, so
//! every successful write was computed from the latest state: takes are linearizable and
//! a limit of N admits exactly N, however the workers interleave. A denial writes
//! nothing (lazy refill is a pure function of the stored state and the time), unless it
//! settles a lease.
//!
//! **Leases** (`lease`): while a refilling bucket has 128 tokens or more left, a take may
//! move a few more into a lease recorded in the slot, which the worker then spends without
//! host calls. Bucket plus recorded leases never exceed capacity, so leases never admit
//! more than the exact bucket; the under-admission bound is in `lease`'s module doc.
//!
//! **Creating a slot.** A write with no CAS overwrites, so two workers that both read an
//! absent slot and write with `None` would each take from a "fresh" bucket and one take
//! would be lost. Envoy (proxy-wasm-cpp-host `SharedData::set`) creates an absent key
//! whatever CAS the write carries, but checks the CAS of a key that exists. So the first
//! write of a slot carries `Some(CREATE_CAS)` (`u32::MAX`): if the slot is still absent it
//! is created with our take; if another worker created it meanwhile, its token differs
//! and we get `Mismatch`, re-read, and take from its state. Envoy's CAS counter starts at
//! 1 and is process-wide, so a key can hold token `u32::MAX` only after ~4.3 billion
//! writes, and only matters if that exact write lands in the microseconds between our
//! read and write of an absent slot; the worst case is one lost take, once.
//! Pre-writing slots with `None` instead would not be exact: a slow initializer's `None`
//! write can land after another worker's CAS take and erase it.
//!
//! # Bounded memory
//! Shared data is never evicted, so each limit owns at most `max_buckets` slots, keyed
//! `apiguard/rl/<name>/<config hash>/<slot>`. A key hashes (SipHash-2-4, fixed keys, so
//! all VMs agree) to a home slot and probes `PROBES` slots; each slot stores a 64-bit
//! fingerprint of its key beside the bucket. A slot whose bucket has refilled to capacity
//! (which covers "idle longer than one full refill") may be taken over by any key: a
//! full bucket carries no state, so the take-over is exact. A non-refilling limit
//! (`refill_tokens: 0`) is a quota: its slots free up only if never spent.
//!
//! **When every probed slot is live for other keys** `on_table_full` decides. The default
//! is `share`: the request is charged against the home slot's live bucket anyway. The
//! alternatives fail badly under a key-spraying attacker, who can keep the table full
//! with distinct keys: `allow` then lets every new key through (the attacker disables
//! limiting for itself), and `deny` rejects every new legitimate key (the attacker denies
//! service to everyone new). `share` keeps limiting in force for the sprayer (its new
//! keys drain live buckets, many of them its own), at the price of over-limiting the few
//! legitimate keys whose home slot it shares. `Acquire::*::shared_slot` reports it.
//!
//! Residual inexactness, documented rather than hidden: if a key's first take races
//! with an earlier probed slot turning full (free) between two workers' reads, the key
//! can end up in two slots; lookups use the first, so at most the racing takes in the
//! other slot are forgotten, once. A 64-bit fingerprint collision within one probe
//! window merges two keys. Neither can happen in a fresh or single-key table.
//!
//! # Config hash
//! `config_hash` covers what gives stored state its meaning (name, capacity, refill,
//! period, max_buckets, storage format). A changed definition starts from fresh buckets;
//! an unchanged one keeps its buckets across policy reloads. `max_cas_retries`,
//! `on_store_failure` and `on_table_full` are behaviour only and are not hashed. Old
//! tables stay in shared data (the ABI has no delete): memory grows by one table per
//! distinct definition ever loaded.

pub mod bucket;
pub mod enforce;
pub mod global;
mod hash;
pub mod headers;
pub mod key;
pub mod lease;
pub mod lockout;
pub mod shared;

#[cfg(test)]
mod tests;

use serde::Deserialize;

pub use bucket::{Bucket, Outcome, Rate};
pub use shared::{acquire, Acquire};

pub const DEFAULT_MAX_BUCKETS: u32 = 10_000;
pub const DEFAULT_MAX_CAS_RETRIES: u32 = 8;
/// Upper bound `validate` accepts for `max_buckets` (about 100 bytes of shared data each).
pub const MAX_MAX_BUCKETS: u32 = 1_000_000;
pub const MAX_CAS_RETRIES_LIMIT: u32 = 100;
/// Longest limit name `validate` accepts.
pub const MAX_NAME_LEN: usize = 64;

/// What to do when the shared store cannot complete a take (CAS retries exhausted, or
/// the host refused the write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    #[default]
    Deny,
    Allow,
}

/// What to do when every probed slot holds a live bucket of another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableFullMode {
    Deny,
    Allow,
    /// Charge the home slot's live bucket anyway (see the module doc for why default).
    #[default]
    Share,
}

impl FailureMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "deny" => Some(FailureMode::Deny),
            "allow" => Some(FailureMode::Allow),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Deny => "deny",
            FailureMode::Allow => "allow",
        }
    }
}

impl TableFullMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "deny" => Some(TableFullMode::Deny),
            "allow" => Some(TableFullMode::Allow),
            "share" => Some(TableFullMode::Share),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TableFullMode::Deny => "deny",
            TableFullMode::Allow => "allow",
            TableFullMode::Share => "share",
        }
    }
}

/// One compiled limit: a token bucket per key, `capacity` burst, `refill_tokens` per
/// `period_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSpec {
    pub name: String,
    pub capacity: u64,
    pub refill_tokens: u64,
    pub period_ms: u64,
    pub max_buckets: u32,
    pub max_cas_retries: u32,
    pub on_store_failure: FailureMode,
    pub on_table_full: TableFullMode,
    /// Namespaces the limit's shared keys; set by `compute_config_hash`.
    pub config_hash: u64,
}

/// Bumped whenever the slot layout, hashing or probing changes, so old tables are ignored.
const STORAGE_FORMAT: &[u8] = b"apiguard-rl-v2";

impl LimitSpec {
    /// A limit with the default table size, retries and failure modes, hash computed.
    pub fn new(name: &str, capacity: u64, refill_tokens: u64, period_ms: u64) -> Self {
        let mut spec = LimitSpec {
            name: name.to_string(),
            capacity,
            refill_tokens,
            period_ms,
            max_buckets: DEFAULT_MAX_BUCKETS,
            max_cas_retries: DEFAULT_MAX_CAS_RETRIES,
            on_store_failure: FailureMode::default(),
            on_table_full: TableFullMode::default(),
            config_hash: 0,
        };
        spec.compute_config_hash();
        spec
    }

    /// Hashes what gives stored buckets their meaning (see the module doc); call it after
    /// changing any field.
    pub fn compute_config_hash(&mut self) {
        let mut buf = Vec::with_capacity(64 + self.name.len());
        buf.extend_from_slice(STORAGE_FORMAT);
        buf.extend_from_slice(&(self.name.len() as u64).to_le_bytes());
        buf.extend_from_slice(self.name.as_bytes());
        buf.extend_from_slice(&self.capacity.to_le_bytes());
        buf.extend_from_slice(&self.refill_tokens.to_le_bytes());
        buf.extend_from_slice(&self.rate().period_ms().to_le_bytes());
        buf.extend_from_slice(&self.table_size().to_le_bytes());
        self.config_hash = hash::siphash24(CONFIG_K0, CONFIG_K1, &buf);
    }

    pub fn rate(&self) -> Rate {
        Rate::new(self.capacity, self.refill_tokens, self.period_ms)
    }

    /// `max_buckets`, with 0 read as 1.
    pub fn table_size(&self) -> u32 {
        self.max_buckets.max(1)
    }

    /// Problems as `(field, message)`, for the policy compiler to locate; empty when valid.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            errors.push(("name", format!("must be 1 to {MAX_NAME_LEN} characters")));
        }
        if !self
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            errors.push((
                "name",
                "may only contain ASCII letters, digits, '_', '-' and '.'".to_string(),
            ));
        }
        if self.capacity == 0 {
            errors.push(("capacity", "must be at least 1".to_string()));
        }
        if self.period_ms == 0 {
            errors.push(("period_ms", "must be at least 1".to_string()));
        }
        if self.max_buckets == 0 || self.max_buckets > MAX_MAX_BUCKETS {
            errors.push((
                "max_buckets",
                format!("must be between 1 and {MAX_MAX_BUCKETS}"),
            ));
        }
        if self.max_cas_retries > MAX_CAS_RETRIES_LIMIT {
            errors.push((
                "max_cas_retries",
                format!("must be at most {MAX_CAS_RETRIES_LIMIT}"),
            ));
        }
        errors
    }
}

const CONFIG_K0: u64 = 0x6170_6967_7561_7264; // "apiguard"
const CONFIG_K1: u64 = 0x726c_2d63_6f6e_6667; // "rl-confg"
