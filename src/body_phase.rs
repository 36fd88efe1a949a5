//! Where a pending body check stands between Envoy's body callbacks, so the glue only
//! reads the body and reports what the engine decided.
//!
//! Envoy reports a body size with every callback: while the filter keeps the body paused
//! (`Buffer`) that size is everything buffered so far; once a chunk was let through
//! (`Limit`) it is only the new chunk, so the bytes already let through are added here.

use crate::engine::BodyCheck;
use crate::validate::BodyPlan;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPhase {
    pub check: BodyCheck,
    /// Bytes already let through upstream (`Limit` plan).
    streamed: u64,
}

impl BodyPhase {
    pub fn new(check: BodyCheck) -> BodyPhase {
        BodyPhase { check, streamed: 0 }
    }

    /// `Buffer`: the body is held and checked whole at its end. Otherwise it streams and
    /// only its size is counted.
    pub fn buffering(&self) -> bool {
        matches!(self.check.plan, BodyPlan::Buffer { .. })
    }

    /// Bytes seen so far when a callback reports `body_size` (`0` from the trailers).
    pub fn seen(&self, body_size: usize) -> u64 {
        if self.buffering() {
            body_size as u64
        } else {
            self.streamed.saturating_add(body_size as u64)
        }
    }

    /// A chunk before the end passed the size check: `true` when the body stays held
    /// (buffering), otherwise the chunk goes upstream and is remembered as let through.
    pub fn hold_after_chunk(&mut self, seen: u64) -> bool {
        if self.buffering() {
            return true;
        }
        self.streamed = seen;
        false
    }

    /// With `hold_headers_for_body`, the headers wait for a buffered body to pass too.
    pub fn holds_headers(&self, hold_headers_for_body: bool) -> bool {
        hold_headers_for_body && self.buffering()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(plan: BodyPlan) -> BodyPhase {
        BodyPhase::new(BodyCheck { route: 0, plan })
    }

    #[test]
    fn a_buffered_body_is_seen_as_everything_envoy_buffered_and_stays_held() {
        let mut p = phase(BodyPlan::Buffer { max_bytes: 100 });
        assert_eq!(p.seen(10), 10);
        assert!(p.hold_after_chunk(10));
        // The next callback reports the whole buffer again, not the new chunk.
        assert_eq!(p.seen(25), 25);
        assert!(p.hold_after_chunk(25));
        assert_eq!(p.seen(0), 0);
    }

    #[test]
    fn a_counted_body_adds_each_chunk_to_what_was_let_through() {
        let mut p = phase(BodyPlan::Limit { max_bytes: 100 });
        let seen = p.seen(10);
        assert_eq!(seen, 10);
        assert!(!p.hold_after_chunk(seen));
        let seen = p.seen(15);
        assert_eq!(seen, 25);
        assert!(!p.hold_after_chunk(seen));
        // The trailers report no new bytes: everything was counted.
        assert_eq!(p.seen(0), 25);
        // A size near the top of the range saturates instead of wrapping.
        assert_eq!(p.seen(usize::MAX), 25u64.saturating_add(usize::MAX as u64));
    }

    #[test]
    fn only_a_buffered_body_holds_the_headers_and_only_when_the_policy_asks() {
        assert!(phase(BodyPlan::Buffer { max_bytes: 1 }).holds_headers(true));
        assert!(!phase(BodyPlan::Buffer { max_bytes: 1 }).holds_headers(false));
        assert!(!phase(BodyPlan::Limit { max_bytes: 1 }).holds_headers(true));
    }
}
