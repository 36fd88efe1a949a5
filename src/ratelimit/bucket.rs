//! Token-bucket arithmetic: lazy refill from `now_ms`, exact integer state, one fixed-size
//! encoding so a single CAS write updates a bucket.
//!
//! Tokens are kept in *units* of `1 / period_ms` token (a `u128`): every elapsed
//! millisecond adds exactly `refill_tokens` units, so refilling in many small steps gives
//! exactly what one big step gives, `floor(t * refill_tokens / period_ms)` whole tokens
//! after `t` ms. Milli-tokens would lose a remainder on every step (1 token per 3 ms
//! refilled 1 ms at a time would never reach a whole token). `u128` holds
//! `u64::MAX * u64::MAX`, so capacity × period never overflows; the refill product is
//! saturated and then clamped to capacity.

/// How many bytes `Bucket::encode` produces.
pub const BUCKET_BYTES: usize = 24;

/// A bucket's parameters: `capacity` (burst) tokens, `refill_tokens` per `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    capacity: u64,
    refill_tokens: u64,
    period_ms: u64,
}

impl Rate {
    /// `period_ms` 0 is read as 1 (no division by zero); `refill_tokens` 0 never refills.
    pub fn new(capacity: u64, refill_tokens: u64, period_ms: u64) -> Rate {
        Rate {
            capacity,
            refill_tokens,
            period_ms: period_ms.max(1),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn refill_tokens(&self) -> u64 {
        self.refill_tokens
    }

    pub fn period_ms(&self) -> u64 {
        self.period_ms
    }

    /// Units in one token.
    fn unit(&self) -> u128 {
        u128::from(self.period_ms)
    }

    /// Units in `tokens` tokens.
    pub(crate) fn units_of(&self, tokens: u64) -> u128 {
        u128::from(tokens).saturating_mul(self.unit())
    }

    /// Milliseconds until a bucket holding `tokens` whole tokens is full again (`u64::MAX`
    /// when it never refills): a `reset_ms` for a bucket known only to the token.
    pub fn reset_ms_from(&self, tokens: u64) -> u64 {
        Bucket {
            units: self.units_of(tokens),
            last_ms: 0,
        }
        .reset_ms(self, 0)
    }

    fn cap_units(&self) -> u128 {
        u128::from(self.capacity).saturating_mul(self.unit())
    }

    /// Milliseconds to refill an empty bucket; `None` when it never refills.
    pub fn full_refill_ms(&self) -> Option<u64> {
        if self.refill_tokens == 0 {
            return None;
        }
        Some(to_u64(ceil_div(
            self.cap_units(),
            u128::from(self.refill_tokens),
        )))
    }
}

/// The state of one bucket: units in hand and the last time they were refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    units: u128,
    last_ms: u64,
}

/// What `Bucket::take` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// Whole tokens left after this decision.
    pub remaining: u64,
    /// Until `cost` tokens are available: `Some(0)` when allowed, `None` when they never
    /// will be (cost above capacity, or a bucket that does not refill).
    pub retry_after_ms: Option<u64>,
    /// Until the bucket is full again; `u64::MAX` for a non-refilling bucket that is not full.
    pub reset_ms: u64,
}

impl Bucket {
    pub fn full(rate: &Rate, now_ms: u64) -> Bucket {
        Bucket {
            units: rate.cap_units(),
            last_ms: now_ms,
        }
    }

    /// Adds what time since the last refill earned, up to capacity. A clock that went
    /// backwards adds nothing and leaves `last_ms` alone, so it can never mint tokens
    /// (moving `last_ms` back would pay for the same milliseconds twice).
    pub fn refill(&mut self, rate: &Rate, now_ms: u64) {
        self.refill_within(rate, now_ms, 0);
    }

    /// `refill` up to capacity minus `held` tokens: tokens leased out to workers
    /// (`lease`) still count against the burst, so the bucket and the leases together
    /// never hold more than capacity.
    pub fn refill_within(&mut self, rate: &Rate, now_ms: u64, held: u64) {
        let cap = rate.cap_units().saturating_sub(rate.units_of(held));
        if now_ms > self.last_ms {
            let elapsed = u128::from(now_ms.saturating_sub(self.last_ms));
            let earned = elapsed.saturating_mul(u128::from(rate.refill_tokens));
            self.units = self.units.saturating_add(earned);
            self.last_ms = now_ms;
        }
        self.units = self.units.min(cap);
    }

    /// Refills to `now_ms`, then takes `cost` tokens if they are all there.
    pub fn take(&mut self, rate: &Rate, cost: u64, now_ms: u64) -> Outcome {
        self.take_within(rate, cost, now_ms, 0)
    }

    /// `take` with `held` tokens leased out (see `refill_within`).
    pub fn take_within(&mut self, rate: &Rate, cost: u64, now_ms: u64, held: u64) -> Outcome {
        self.refill_within(rate, now_ms, held);
        let need = rate.units_of(cost);
        let allowed = self.units >= need;
        let retry_after_ms = if allowed {
            self.units = self.units.saturating_sub(need);
            Some(0)
        } else if need > rate.cap_units() || rate.refill_tokens == 0 {
            None
        } else {
            let wait = ceil_div(
                need.saturating_sub(self.units),
                u128::from(rate.refill_tokens),
            );
            Some(to_u64(wait).saturating_add(self.lag(now_ms)))
        };
        Outcome {
            allowed,
            remaining: self.tokens(rate),
            retry_after_ms,
            reset_ms: self.reset_ms(rate, now_ms),
        }
    }

    /// Puts back `tokens` a lease did not spend, up to capacity minus `held`.
    pub fn give_back(&mut self, rate: &Rate, tokens: u64, held: u64) {
        let cap = rate.cap_units().saturating_sub(rate.units_of(held));
        self.units = self.units.saturating_add(rate.units_of(tokens)).min(cap);
    }

    /// Whole tokens in hand (as of the last refill).
    pub fn tokens(&self, rate: &Rate) -> u64 {
        to_u64(self.units.checked_div(rate.unit()).unwrap_or(0))
    }

    /// Full buckets carry no state: any key may take over such a slot.
    pub fn is_full(&self, rate: &Rate) -> bool {
        self.units >= rate.cap_units()
    }

    /// Milliseconds from `now_ms` until the bucket is full again.
    pub fn reset_ms(&self, rate: &Rate, now_ms: u64) -> u64 {
        let missing = rate.cap_units().saturating_sub(self.units);
        if missing == 0 {
            return 0;
        }
        if rate.refill_tokens == 0 {
            return u64::MAX;
        }
        to_u64(ceil_div(missing, u128::from(rate.refill_tokens))).saturating_add(self.lag(now_ms))
    }

    pub fn last_ms(&self) -> u64 {
        self.last_ms
    }

    /// How far `now_ms` is behind the last refill (a clock that went backwards): waits
    /// are counted from `last_ms`, so they are that much longer from `now_ms`.
    fn lag(&self, now_ms: u64) -> u64 {
        self.last_ms.saturating_sub(now_ms)
    }

    pub fn encode(&self) -> [u8; BUCKET_BYTES] {
        let mut out = [0u8; BUCKET_BYTES];
        let (units, last) = out.split_at_mut(16);
        units.copy_from_slice(&self.units.to_le_bytes());
        last.copy_from_slice(&self.last_ms.to_le_bytes());
        out
    }

    /// `None` unless exactly `BUCKET_BYTES`; units above capacity are clamped.
    pub fn decode(bytes: &[u8], rate: &Rate) -> Option<Bucket> {
        if bytes.len() != BUCKET_BYTES {
            return None;
        }
        let units: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
        let last: [u8; 8] = bytes.get(16..)?.try_into().ok()?;
        Some(Bucket {
            units: u128::from_le_bytes(units).min(rate.cap_units()),
            last_ms: u64::from_le_bytes(last),
        })
    }
}

fn ceil_div(a: u128, b: u128) -> u128 {
    match (a.checked_div(b), a.checked_rem(b)) {
        (Some(q), Some(r)) => q.saturating_add(u128::from(r != 0)),
        _ => u128::MAX,
    }
}

fn to_u64(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drained(rate: &Rate, now: u64) -> Bucket {
        let mut b = Bucket::full(rate, now);
        let out = b.take(rate, rate.capacity(), now);
        assert!(out.allowed);
        assert_eq!(out.remaining, 0);
        b
    }

    #[test]
    fn burst_then_limited_with_retry_and_reset() {
        // 10 burst, 1 token per 100 ms.
        let rate = Rate::new(10, 1, 100);
        let mut b = Bucket::full(&rate, 1_000);
        for i in 0..10 {
            let out = b.take(&rate, 1, 1_000);
            assert!(out.allowed);
            assert_eq!(out.remaining, 9 - i);
        }
        let out = b.take(&rate, 1, 1_000);
        assert!(!out.allowed);
        assert_eq!(out.remaining, 0);
        assert_eq!(out.retry_after_ms, Some(100));
        assert_eq!(out.reset_ms, 1_000);
        // 30 ms later: 70 ms to wait for one, 3 tokens need 270 ms.
        let out = b.take(&rate, 3, 1_030);
        assert_eq!(out.retry_after_ms, Some(270));
        assert_eq!(out.reset_ms, 970);
        let out = b.take(&rate, 1, 1_100);
        assert!(out.allowed);
        assert_eq!(out.remaining, 0);
    }

    #[test]
    fn cost_above_capacity_is_never() {
        let rate = Rate::new(5, 1, 1_000);
        let mut b = Bucket::full(&rate, 0);
        let out = b.take(&rate, 6, 0);
        assert!(!out.allowed);
        assert_eq!(out.retry_after_ms, None);
        assert_eq!(out.remaining, 5);
        assert_eq!(out.reset_ms, 0);
    }

    #[test]
    fn no_refill_is_a_quota() {
        let rate = Rate::new(3, 0, 1_000);
        let mut b = drained(&rate, 0);
        let out = b.take(&rate, 1, u64::MAX);
        assert!(!out.allowed);
        assert_eq!(out.retry_after_ms, None);
        assert_eq!(out.reset_ms, u64::MAX);
        assert_eq!(rate.full_refill_ms(), None);
    }

    #[test]
    fn zero_cost_always_allowed_and_free() {
        let rate = Rate::new(1, 1, 1_000);
        let mut b = drained(&rate, 0);
        let out = b.take(&rate, 0, 0);
        assert!(out.allowed);
        assert_eq!(out.remaining, 0);
    }

    #[test]
    fn fractional_rate_accumulates_exactly() {
        // One token per 3 ms, refilled one millisecond at a time.
        let rate = Rate::new(100, 1, 3);
        let mut b = drained(&rate, 0);
        for t in 1..=300u64 {
            b.refill(&rate, t);
            assert_eq!(b.tokens(&rate), t / 3);
        }
    }

    #[test]
    fn period_zero_is_one_ms() {
        let rate = Rate::new(10, 2, 0);
        let mut b = drained(&rate, 0);
        b.refill(&rate, 3);
        assert_eq!(b.tokens(&rate), 6);
    }

    #[test]
    fn encode_roundtrip_and_rejects_bad_length() {
        let rate = Rate::new(1_000_000_000, 7, 60_000);
        let mut b = Bucket::full(&rate, 123_456_789);
        b.take(&rate, 12_345, 123_456_790);
        assert_eq!(Bucket::decode(&b.encode(), &rate), Some(b));
        assert_eq!(Bucket::decode(&b.encode()[..23], &rate), None);
        assert_eq!(Bucket::decode(&[0u8; 25], &rate), None);
        // A stored value above capacity (e.g. written under another rate) is clamped.
        let big = Bucket::full(&Rate::new(u64::MAX, 1, u64::MAX), 0);
        let small = Rate::new(2, 1, 10);
        assert_eq!(
            Bucket::decode(&big.encode(), &small).map(|b| b.tokens(&small)),
            Some(2)
        );
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let rate = Rate::new(u64::MAX, u64::MAX, u64::MAX);
        let mut b = Bucket::full(&rate, 0);
        let out = b.take(&rate, u64::MAX, u64::MAX);
        assert!(out.allowed);
        assert_eq!(out.remaining, 0);
        let out = b.take(&rate, u64::MAX, u64::MAX);
        assert!(!out.allowed);
        assert_eq!(out.retry_after_ms, Some(u64::MAX));
        assert_eq!(out.reset_ms, u64::MAX);
        b.refill(&rate, 0);
        assert_eq!(b.tokens(&rate), 0);
    }

    #[test]
    fn backwards_clock_lengthens_waits() {
        let rate = Rate::new(1, 1, 1_000);
        let mut b = drained(&rate, 10_000);
        let out = b.take(&rate, 1, 9_000);
        assert!(!out.allowed);
        assert_eq!(out.retry_after_ms, Some(2_000));
        assert_eq!(out.reset_ms, 2_000);
        assert_eq!(b.last_ms(), 10_000);
    }

    fn rate_strategy() -> impl Strategy<Value = Rate> {
        (
            prop_oneof![1u64..=100, 1u64..=1_000_000_000, Just(u64::MAX)],
            prop_oneof![Just(0u64), 1u64..=100, 1u64..=1_000_000_000, Just(u64::MAX)],
            prop_oneof![1u64..=100, 1u64..=86_400_000, Just(u64::MAX)],
        )
            .prop_map(|(c, r, p)| Rate::new(c, r, p))
    }

    proptest! {
        #[test]
        fn never_exceeds_capacity(
            rate in rate_strategy(),
            start in any::<u64>(),
            steps in prop::collection::vec((any::<i32>(), 0u64..=3), 1..60),
        ) {
            let mut b = Bucket::full(&rate, start);
            let mut now = start;
            for (dt, cost) in steps {
                now = now.saturating_add_signed(i64::from(dt));
                let before = b.tokens(&rate);
                let stood_still = now <= b.last_ms();
                let out = b.take(&rate, cost, now);
                prop_assert!(out.remaining <= rate.capacity());
                prop_assert!(b.tokens(&rate) <= rate.capacity());
                if out.allowed {
                    prop_assert_eq!(out.retry_after_ms, Some(0));
                } else {
                    prop_assert!(out.retry_after_ms != Some(0));
                }
                if stood_still {
                    // No time passed for the bucket: nothing was minted.
                    prop_assert!(out.remaining <= before);
                }
            }
        }

        #[test]
        fn refill_is_exact_over_any_step_partition(
            capacity in 1u64..=1_000_000_000,
            refill in 1u64..=1_000_000_000,
            period in 1u64..=3_600_000,
            start in 0u64..=u64::MAX / 2,
            steps in prop::collection::vec(0u64..=10_000, 1..40),
        ) {
            let rate = Rate::new(capacity, refill, period);
            let mut b = drained(&rate, start);
            let mut t = 0u64;
            for dt in steps {
                t += dt;
                b.refill(&rate, start + t);
                let expected = (u128::from(t) * u128::from(refill) / u128::from(period))
                    .min(u128::from(capacity));
                prop_assert_eq!(u128::from(b.tokens(&rate)), expected);
            }
        }

        #[test]
        fn retry_after_is_exactly_enough(
            capacity in 1u64..=1_000,
            refill in 1u64..=1_000,
            period in 1u64..=10_000,
            spent in 0u64..=1_000,
            cost in 1u64..=1_000,
        ) {
            let rate = Rate::new(capacity, refill, period);
            let mut b = Bucket::full(&rate, 0);
            b.take(&rate, spent.min(capacity), 0);
            let mut probe = b;
            let out = probe.take(&rate, cost, 0);
            match out.retry_after_ms {
                None => prop_assert!(cost > capacity),
                Some(0) => prop_assert!(out.allowed),
                Some(wait) => {
                    let mut early = b;
                    prop_assert!(!early.take(&rate, cost, wait - 1).allowed);
                    let mut on_time = b;
                    prop_assert!(on_time.take(&rate, cost, wait).allowed);
                }
            }
            // reset_ms: full exactly then, not a millisecond before.
            let reset = b.reset_ms(&rate, 0);
            let mut at = b;
            at.refill(&rate, reset);
            prop_assert!(at.is_full(&rate));
            if reset > 0 {
                let mut before = b;
                before.refill(&rate, reset - 1);
                prop_assert!(!before.is_full(&rate));
            }
        }

        #[test]
        fn backwards_clock_never_mints(
            rate in rate_strategy(),
            start in 1u64..=u64::MAX,
            back in prop::collection::vec(any::<u64>(), 1..20),
        ) {
            let mut b = drained(&rate, start);
            for x in back {
                let now = x % start;
                let out = b.take(&rate, 1, now);
                prop_assert!(!out.allowed);
                prop_assert_eq!(b.tokens(&rate), 0);
            }
        }
    }
}
