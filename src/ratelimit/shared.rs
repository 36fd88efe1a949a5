//! `acquire`: one take from a key's bucket in the process-wide slot table of a limit.
//!
//! See the parent module doc for why this is exact across workers and how memory stays
//! bounded. Each attempt reads the key's probe window, decides, and writes at most one
//! slot with a CAS; a `Mismatch` means another worker got there first, so we re-read.
//! A worker holding a lease for the key (`lease`) pays from it without either.

use super::bucket::{Bucket, Outcome, Rate, BUCKET_BYTES};
use super::hash::siphash24;
use super::lease::{self, Held, Record, Records, Spend, LEASE_MS, RECORDS_BYTES};
use super::{FailureMode, LimitSpec, TableFullMode};
use crate::host::{CasError, SharedStore};

/// Slots a key may occupy: its home slot and the next `PROBES - 1`.
pub const PROBES: u32 = 4;
/// CAS sent with the first write of a slot (see the module doc, "Creating a slot").
pub const CREATE_CAS: u32 = u32::MAX;

const SLOT_VERSION: u8 = 2;
const SLOT_BYTES: usize = 1 + 8 + BUCKET_BYTES + RECORDS_BYTES;

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
    let leases = store.leases();
    let mut intent = LeaseIntent::default();
    if let Some(leases) = leases {
        match leases.spend(limit.config_hash, kh.fingerprint, cost, now_ms) {
            Spend::Spent { remaining } => {
                return Acquire::Allowed {
                    remaining,
                    reset_ms: limit.rate().reset_ms_from(remaining),
                    cas_retries: 0,
                    shared_slot: false,
                }
            }
            Spend::Settle(held) => intent.settle = Some(held),
            Spend::None => {}
        }
        intent.grant = leases.has_room(now_ms);
    }
    let mut retries = 0u32;
    loop {
        match plan_with(store, limit, &kh, cost, now_ms, &intent) {
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
                Ok(()) => {
                    if let (Some(leases), Some(granted)) = (leases, w.lease) {
                        leases.insert(granted);
                    }
                    return Acquire::from_outcome(w.outcome, retries, w.shared);
                }
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
    /// The lease this write grants, for the worker to keep once the CAS succeeds.
    pub lease: Option<Held>,
}

/// What a take does with leases.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LeaseIntent {
    /// The worker's lease of this key that can no longer pay: release it, give back the rest.
    pub settle: Option<Held>,
    /// The worker may hold one more lease.
    pub grant: bool,
}

/// A slot's contents besides its key's fingerprint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct State {
    pub bucket: Bucket,
    pub records: Records,
}

impl State {
    fn fresh(rate: &Rate, now_ms: u64) -> State {
        State {
            bucket: Bucket::full(rate, now_ms),
            records: Records::default(),
        }
    }

    /// Drops records whose holders stopped, then refills within what the others hold.
    fn refill(&mut self, rate: &Rate, now_ms: u64) {
        self.records.drop_stale(now_ms);
        self.bucket.refill_within(rate, now_ms, self.records.held());
    }

    /// A full bucket nobody holds a lease on carries no state: any key may take the slot.
    fn is_free(&self, rate: &Rate) -> bool {
        self.records.is_empty() && self.bucket.is_full(rate)
    }

    /// Releases the holder's record and gives back what it did not spend; false when the
    /// record is gone (dropped as stale: its tokens are lost, see `lease`).
    fn settle(&mut self, rate: &Rate, held: &Held) -> bool {
        if !self.records.release(held.index, held.record) {
            return false;
        }
        self.bucket
            .give_back(rate, held.unspent, self.records.held());
        true
    }
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
        state: State,
        cas: u32,
    },
}

fn read_slot<S: SharedStore + ?Sized>(store: &S, store_key: &str, rate: &Rate) -> Slot {
    let Some((value, cas)) = store.get(store_key) else {
        return Slot::Absent;
    };
    match decode_slot(&value, rate) {
        Some((fingerprint, state)) => Slot::Held {
            fingerprint,
            state,
            cas,
        },
        None => Slot::Unusable { cas },
    }
}

fn encode_slot(fingerprint: u64, state: &State) -> [u8; SLOT_BYTES] {
    let mut out = [0u8; SLOT_BYTES];
    let (version, rest) = out.split_at_mut(1);
    let (fp, rest) = rest.split_at_mut(8);
    let (b, records) = rest.split_at_mut(BUCKET_BYTES);
    version.copy_from_slice(&[SLOT_VERSION]);
    fp.copy_from_slice(&fingerprint.to_le_bytes());
    b.copy_from_slice(&state.bucket.encode());
    records.copy_from_slice(&state.records.encode());
    out
}

fn decode_slot(value: &[u8], rate: &Rate) -> Option<(u64, State)> {
    if value.len() != SLOT_BYTES || value.first() != Some(&SLOT_VERSION) {
        return None;
    }
    let fp: [u8; 8] = value.get(1..9)?.try_into().ok()?;
    let records_at = 9 + BUCKET_BYTES;
    let bucket = Bucket::decode(value.get(9..records_at)?, rate)?;
    let records = Records::decode(value.get(records_at..)?)?;
    Some((u64::from_le_bytes(fp), State { bucket, records }))
}

/// `plan_with` for a take that neither holds nor wants a lease (tests drive it step by step).
#[cfg(test)]
pub(crate) fn plan<S: SharedStore + ?Sized>(
    store: &S,
    limit: &LimitSpec,
    kh: &KeyHash,
    cost: u64,
    now_ms: u64,
) -> Plan {
    plan_with(store, limit, kh, cost, now_ms, &LeaseIntent::default())
}

/// The slot a take charges, as read.
struct Target {
    store_key: String,
    fingerprint: u64,
    state: State,
    cas: u32,
    /// Another key's bucket (`on_table_full: share`): never settles or grants a lease.
    shared: bool,
}

/// Reads the probe window and decides which slot to charge.
///
/// Own slot first (wherever it is in the window), else the first free slot (absent,
/// unusable, or full with no lease on it), else the table is full. The scan stops at an
/// absent slot: slots are never deleted and a key is placed at the first free slot, so
/// it cannot live beyond one that was never written.
pub(crate) fn plan_with<S: SharedStore + ?Sized>(
    store: &S,
    limit: &LimitSpec,
    kh: &KeyHash,
    cost: u64,
    now_ms: u64,
    intent: &LeaseIntent,
) -> Plan {
    let rate = limit.rate();
    let size = limit.table_size();
    let mut free: Option<(String, u32)> = None;
    let mut live_other: Option<Target> = None;
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
                mut state,
                cas,
            } => {
                state.refill(&rate, now_ms);
                let target = Target {
                    store_key,
                    fingerprint,
                    state,
                    cas,
                    shared: false,
                };
                if fingerprint == kh.fingerprint {
                    return charge(target, limit, cost, now_ms, intent);
                }
                if target.state.is_free(&rate) {
                    free.get_or_insert((target.store_key, cas));
                } else if live_other.is_none() {
                    live_other = Some(target);
                }
            }
        }
    }
    if let Some((store_key, cas)) = free {
        let target = Target {
            store_key,
            fingerprint: kh.fingerprint,
            state: State::fresh(&rate, now_ms),
            cas,
            shared: false,
        };
        // A key's first take leases nothing: a record keeps its slot from being taken
        // over for `LEASE_MS + GRACE_MS`, which a key seen once (a key spray) must not.
        let first = LeaseIntent {
            settle: None,
            grant: false,
        };
        return charge(target, limit, cost, now_ms, &first);
    }
    match (limit.on_table_full, live_other) {
        // Keep the owner's fingerprint: we borrow its bucket, we don't take the slot.
        (TableFullMode::Share, Some(target)) => charge(
            Target {
                shared: true,
                ..target
            },
            limit,
            cost,
            now_ms,
            intent,
        ),
        _ => Plan::TableFull,
    }
}

/// Settles the worker's old lease, takes `cost`, and grants a new lease when the bucket
/// is far from empty (`lease::size`). Writes when something changed.
fn charge(t: Target, limit: &LimitSpec, cost: u64, now_ms: u64, intent: &LeaseIntent) -> Plan {
    let rate = limit.rate();
    let mut state = t.state;
    let settled = match &intent.settle {
        Some(held) if !t.shared && held.fingerprint == t.fingerprint => state.settle(&rate, held),
        _ => false,
    };
    let outcome = state
        .bucket
        .take_within(&rate, cost, now_ms, state.records.held());
    let lease = if outcome.allowed && intent.grant && !t.shared {
        grant(
            &mut state,
            limit,
            cost,
            outcome.remaining,
            now_ms,
            t.fingerprint,
        )
    } else {
        None
    };
    let took = outcome.allowed && cost > 0;
    if !(took || settled || lease.is_some()) {
        return Plan::Done {
            outcome,
            shared: t.shared,
        };
    }
    Plan::Write(Write {
        store_key: t.store_key,
        value: encode_slot(t.fingerprint, &state),
        cas: t.cas,
        outcome,
        shared: t.shared,
        lease,
    })
}

/// Moves a lease's tokens from the bucket into a record, if the bucket is far enough from
/// empty and a record is free; the lease as the worker will hold it.
fn grant(
    state: &mut State,
    limit: &LimitSpec,
    cost: u64,
    remaining: u64,
    now_ms: u64,
    fingerprint: u64,
) -> Option<Held> {
    let tokens = lease::size(limit, cost, remaining);
    if tokens == 0 {
        return None;
    }
    let record = Record {
        tokens,
        until_ms: now_ms.saturating_add(LEASE_MS),
    };
    let mut next = *state;
    let taken = next
        .bucket
        .take_within(&limit.rate(), tokens, now_ms, next.records.held());
    if !taken.allowed {
        return None;
    }
    let index = next.records.grant(record)?;
    *state = next;
    Some(Held {
        config_hash: limit.config_hash,
        fingerprint,
        index,
        record,
        granted_ms: now_ms,
        unspent: tokens,
        bucket_left: taken.remaining,
    })
}
