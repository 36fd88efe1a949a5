//! `acquire`: one take from a key's bucket in the process-wide slot table of a limit.
//!
//! See the parent module doc for why this is exact across workers and how memory stays
//! bounded. Each attempt reads the key's probe window, decides, and writes at most one
//! slot with a CAS; a `Mismatch` means another worker got there first, so we re-read.

use super::bucket::{Bucket, Outcome, Rate, BUCKET_BYTES};
use super::hash::siphash24;
use super::{FailureMode, LimitSpec, TableFullMode};
use crate::host::{CasError, SharedStore};

/// Slots a key may occupy: its home slot and the next `PROBES - 1`.
pub const PROBES: u32 = 4;
/// CAS sent with the first write of a slot (see the module doc, "Creating a slot").
pub const CREATE_CAS: u32 = u32::MAX;

const SLOT_VERSION: u8 = 1;
const SLOT_BYTES: usize = 1 + 8 + BUCKET_BYTES;

// Fixed SipHash keys (mixed with the config hash): every VM must map keys identically.
const SLOT_K1: u64 = 0x736c_6f74_2d69_6478; // "slot-idx"
const FP_K1: u64 = 0x6b65_792d_6670_7269; // "key-fpri"
const FP_K0_MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// The result of one `acquire`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// Taken. `shared_slot`: the table was full and another key's bucket was charged
    /// (`on_table_full: share`).
    Allowed {
        remaining: u64,
        reset_ms: u64,
        cas_retries: u32,
        shared_slot: bool,
    },
    /// Not enough tokens. `retry_after_ms` is `None` when the cost can never be met
    /// (above capacity, or a non-refilling bucket); `reset_ms` is `u64::MAX` for a
    /// non-refilling bucket that is not full.
    Limited {
        remaining: u64,
        retry_after_ms: Option<u64>,
        reset_ms: u64,
        cas_retries: u32,
        shared_slot: bool,
    },
    /// CAS retries ran out or the host refused the write; `on_store_failure` decided.
    StoreFailed { allowed: bool, cas_retries: u32 },
    /// Every probed slot was live for other keys; `on_table_full` (deny or allow) decided.
    TableFull { allowed: bool, cas_retries: u32 },
}

impl Acquire {
    pub fn allowed(&self) -> bool {
        match *self {
            Acquire::Allowed { .. } => true,
            Acquire::Limited { .. } => false,
            Acquire::StoreFailed { allowed, .. } | Acquire::TableFull { allowed, .. } => allowed,
        }
    }

    /// CAS mismatches retried, for the glue's counters.
    pub fn cas_retries(&self) -> u32 {
        match *self {
            Acquire::Allowed { cas_retries, .. }
            | Acquire::Limited { cas_retries, .. }
            | Acquire::StoreFailed { cas_retries, .. }
            | Acquire::TableFull { cas_retries, .. } => cas_retries,
        }
    }

    fn from_outcome(o: Outcome, cas_retries: u32, shared_slot: bool) -> Acquire {
        if o.allowed {
            Acquire::Allowed {
                remaining: o.remaining,
                reset_ms: o.reset_ms,
                cas_retries,
                shared_slot,
            }
        } else {
            Acquire::Limited {
                remaining: o.remaining,
                retry_after_ms: o.retry_after_ms,
                reset_ms: o.reset_ms,
                cas_retries,
                shared_slot,
            }
        }
    }
}

/// Takes `cost` tokens from `key`'s bucket of `limit` at `now_ms`.
pub fn acquire<S: SharedStore + ?Sized>(
    store: &S,
    limit: &LimitSpec,
    key: &str,
    cost: u64,
    now_ms: u64,
) -> Acquire {
    let kh = KeyHash::new(limit, key);
    let mut retries = 0u32;
    loop {
        match plan(store, limit, &kh, cost, now_ms) {
            Plan::Done { outcome, shared } => {
                return Acquire::from_outcome(outcome, retries, shared)
            }
            Plan::TableFull => {
                return Acquire::TableFull {
                    allowed: limit.on_table_full == TableFullMode::Allow,
                    cas_retries: retries,
                }
            }
            Plan::Write(w) => match commit(store, &w) {
                Ok(()) => return Acquire::from_outcome(w.outcome, retries, w.shared),
                Err(CasError::Mismatch) if retries < limit.max_cas_retries => {
                    retries = retries.saturating_add(1);
                }
                Err(_) => {
                    return Acquire::StoreFailed {
                        allowed: limit.on_store_failure == FailureMode::Allow,
                        cas_retries: retries,
                    }
                }
            },
        }
    }
}

/// The shared-data key of `slot` in `limit`'s table.
pub fn slot_key(limit: &LimitSpec, slot: u32) -> String {
    format!("{}{slot}", table_prefix(limit))
}

/// Every slot key of `limit` starts with this.
pub fn table_prefix(limit: &LimitSpec) -> String {
    format!("apiguard/rl/{}/{:016x}/", limit.name, limit.config_hash)
}

/// Where a key lives: its home slot and its fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyHash {
    pub home: u32,
    pub fingerprint: u64,
}

impl KeyHash {
    pub fn new(limit: &LimitSpec, key: &str) -> KeyHash {
        let size = u64::from(limit.table_size());
        let h = siphash24(limit.config_hash, SLOT_K1, key.as_bytes());
        let home = u32::try_from(h.checked_rem(size).unwrap_or(0)).unwrap_or(0);
        let fingerprint = siphash24(limit.config_hash ^ FP_K0_MIX, FP_K1, key.as_bytes());
        KeyHash { home, fingerprint }
    }
}

/// One attempt's decision, before its (optional) write.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Decided from what was read; nothing to write (a denial, or cost 0).
    Done {
        outcome: Outcome,
        shared: bool,
    },
    /// Every probed slot is live for another key, and the mode is not `share`.
    TableFull,
    Write(Write),
}

#[derive(Debug)]
pub(crate) struct Write {
    pub store_key: String,
    pub value: [u8; SLOT_BYTES],
    pub cas: u32,
    pub outcome: Outcome,
    pub shared: bool,
}

pub(crate) fn commit<S: SharedStore + ?Sized>(store: &S, w: &Write) -> Result<(), CasError> {
    store.set(&w.store_key, &w.value, Some(w.cas))
}

enum Slot {
    Absent,
    /// Present but not a slot of this format: reusable, under its CAS.
    Unusable {
        cas: u32,
    },
    Held {
        fingerprint: u64,
        bucket: Bucket,
        cas: u32,
    },
}

fn read_slot<S: SharedStore + ?Sized>(store: &S, store_key: &str, rate: &Rate) -> Slot {
    let Some((value, cas)) = store.get(store_key) else {
        return Slot::Absent;
    };
    match decode_slot(&value, rate) {
        Some((fingerprint, bucket)) => Slot::Held {
            fingerprint,
            bucket,
            cas,
        },
        None => Slot::Unusable { cas },
    }
}

fn encode_slot(fingerprint: u64, bucket: &Bucket) -> [u8; SLOT_BYTES] {
    let mut out = [0u8; SLOT_BYTES];
    let (version, rest) = out.split_at_mut(1);
    let (fp, b) = rest.split_at_mut(8);
    version.copy_from_slice(&[SLOT_VERSION]);
    fp.copy_from_slice(&fingerprint.to_le_bytes());
    b.copy_from_slice(&bucket.encode());
    out
}

fn decode_slot(value: &[u8], rate: &Rate) -> Option<(u64, Bucket)> {
    if value.len() != SLOT_BYTES || value.first() != Some(&SLOT_VERSION) {
        return None;
    }
    let fp: [u8; 8] = value.get(1..9)?.try_into().ok()?;
    let bucket = Bucket::decode(value.get(9..)?, rate)?;
    Some((u64::from_le_bytes(fp), bucket))
}

/// Reads the probe window and decides which slot to charge.
///
/// Own slot first (wherever it is in the window), else the first free slot (absent,
/// unusable, or full), else the table is full. The scan stops at an absent slot: slots
/// are never deleted and a key is placed at the first free slot, so it cannot live
/// beyond one that was never written.
pub(crate) fn plan<S: SharedStore + ?Sized>(
    store: &S,
    limit: &LimitSpec,
    kh: &KeyHash,
    cost: u64,
    now_ms: u64,
) -> Plan {
    let rate = limit.rate();
    let size = limit.table_size();
    let mut free: Option<(String, u32)> = None;
    let mut live_other: Option<(String, u64, Bucket, u32)> = None;
    for i in 0..PROBES.min(size) {
        let slot = u32::try_from(
            (u64::from(kh.home) + u64::from(i))
                .checked_rem(u64::from(size))
                .unwrap_or(0),
        )
        .unwrap_or(0);
        let store_key = slot_key(limit, slot);
        match read_slot(store, &store_key, &rate) {
            Slot::Absent => {
                free.get_or_insert((store_key, CREATE_CAS));
                break;
            }
            Slot::Unusable { cas } => {
                free.get_or_insert((store_key, cas));
            }
            Slot::Held {
                fingerprint,
                mut bucket,
                cas,
            } => {
                bucket.refill(&rate, now_ms);
                if fingerprint == kh.fingerprint {
                    return charge(
                        store_key,
                        fingerprint,
                        bucket,
                        cas,
                        &rate,
                        cost,
                        now_ms,
                        false,
                    );
                }
                if bucket.is_full(&rate) {
                    free.get_or_insert((store_key, cas));
                } else if live_other.is_none() {
                    live_other = Some((store_key, fingerprint, bucket, cas));
                }
            }
        }
    }
    if let Some((store_key, cas)) = free {
        let fresh = Bucket::full(&rate, now_ms);
        return charge(
            store_key,
            kh.fingerprint,
            fresh,
            cas,
            &rate,
            cost,
            now_ms,
            false,
        );
    }
    match (limit.on_table_full, live_other) {
        (TableFullMode::Share, Some((store_key, fingerprint, bucket, cas))) => {
            // Keep the owner's fingerprint: we borrow its bucket, we don't take the slot.
            charge(
                store_key,
                fingerprint,
                bucket,
                cas,
                &rate,
                cost,
                now_ms,
                true,
            )
        }
        _ => Plan::TableFull,
    }
}

#[allow(clippy::too_many_arguments)]
fn charge(
    store_key: String,
    fingerprint: u64,
    mut bucket: Bucket,
    cas: u32,
    rate: &Rate,
    cost: u64,
    now_ms: u64,
    shared: bool,
) -> Plan {
    let outcome = bucket.take(rate, cost, now_ms);
    if !outcome.allowed || cost == 0 {
        return Plan::Done { outcome, shared };
    }
    Plan::Write(Write {
        store_key,
        value: encode_slot(fingerprint, &bucket),
        cas,
        outcome,
        shared,
    })
}
