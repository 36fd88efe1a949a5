#![no_main]
//! See `apiguard_fuzz::bucket` (fuzz/src/lib.rs), which tests/fuzz_regressions.rs also replays.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    apiguard_fuzz::bucket(data);
});
