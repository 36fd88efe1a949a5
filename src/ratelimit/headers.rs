//! Response header values per draft-ietf-httpapi-ratelimit-headers (-09/-10):
//! `RateLimit-Policy: "name";q=100;w=60` and `RateLimit: "name";r=42;t=17` (structured
//! field lists of string items with integer parameters), plus `Retry-After` seconds.
//!
//! For a token bucket the policy quota `q` is the capacity (burst) and the window `w` is
//! the time to refill it from empty; `t` is the time until the bucket is full again.

use super::LimitSpec;

pub const POLICY_HEADER: &str = "ratelimit-policy";
pub const RATELIMIT_HEADER: &str = "ratelimit";
pub const RETRY_AFTER_HEADER: &str = "retry-after";

/// Largest structured-field integer (RFC 9651 §3.3.1: at most 15 digits).
pub const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

/// `"name";q=<quota>;w=<window_secs>`.
pub fn policy_header(name: &str, quota: u64, window_secs: u64) -> String {
    format!(
        "{};q={};w={}",
        sf_string(name),
        sf_int(quota),
        sf_int(window_secs)
    )
}

/// `"name";r=<remaining>;t=<reset_secs>`.
pub fn ratelimit_header(name: &str, remaining: u64, reset_secs: u64) -> String {
    format!(
        "{};r={};t={}",
        sf_string(name),
        sf_int(remaining),
        sf_int(reset_secs)
    )
}

/// The policy item of a limit: `q` its capacity, `w` its full-refill time in whole
/// seconds (rounded up), omitted for a bucket that never refills.
pub fn policy_for(limit: &LimitSpec) -> String {
    let name = sf_string(&limit.name);
    let quota = sf_int(limit.capacity);
    match limit.rate().full_refill_ms() {
        Some(ms) => format!("{name};q={quota};w={}", sf_int(ms_to_secs_ceil(ms))),
        None => format!("{name};q={quota}"),
    }
}

/// Milliseconds to whole seconds, rounded up (a client that waits this long is not early).
pub fn ms_to_secs_ceil(ms: u64) -> u64 {
    ms / 1000 + u64::from(!ms.is_multiple_of(1000))
}

/// `Retry-After` delay-seconds for a denial: rounded up and at least 1, so a client that
/// honours it never retries into the same denial immediately.
pub fn retry_after_secs(retry_after_ms: u64) -> u64 {
    ms_to_secs_ceil(retry_after_ms).max(1)
}

fn sf_int(n: u64) -> u64 {
    n.min(SF_INTEGER_MAX)
}

/// A structured-field string: printable ASCII only, `"` and `\` escaped; anything else
/// (which `LimitSpec::validate` already rejects in names) becomes `?`.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_syntax() {
        assert_eq!(policy_header("default", 100, 60), "\"default\";q=100;w=60");
        assert_eq!(ratelimit_header("default", 42, 17), "\"default\";r=42;t=17");
    }

    #[test]
    fn integers_clamped_and_strings_escaped() {
        assert_eq!(
            ratelimit_header("a\"b\\c\u{e9}", u64::MAX, u64::MAX),
            "\"a\\\"b\\\\c?\";r=999999999999999;t=999999999999999"
        );
    }

    #[test]
    fn retry_after_rounds_up_at_least_one() {
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1001), 2);
        assert_eq!(retry_after_secs(u64::MAX), u64::MAX / 1000 + 1);
        assert_eq!(ms_to_secs_ceil(0), 0);
        assert_eq!(ms_to_secs_ceil(999), 1);
    }

    #[test]
    fn policy_for_limit() {
        // 100 burst, 10 per second: empty to full in 10 s.
        let l = LimitSpec::new("orders", 100, 10, 1000);
        assert_eq!(policy_for(&l), "\"orders\";q=100;w=10");
        let l = LimitSpec::new("slow", 3, 1, 1500);
        assert_eq!(policy_for(&l), "\"slow\";q=3;w=5");
        let l = LimitSpec::new("quota", 5, 0, 1000);
        assert_eq!(policy_for(&l), "\"quota\";q=5");
    }
}
