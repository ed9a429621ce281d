//! Test support (feature `test-support`): the Redis server that `scripts/services.sh start`
//! runs, and key prefixes of their own for tests that share it.

use std::sync::atomic::{AtomicU32, Ordering};

/// The variable naming the test server (`scripts/services.sh start` prints it).
pub const REDIS_VAR: &str = "REDIS_TEST_URL";

/// The `REDIS_TEST_URL` server. Panics when the variable is unset: a test that needs Redis
/// fails rather than passing without it.
pub fn redis_url() -> String {
    std::env::var(REDIS_VAR).unwrap_or_else(|_| {
        panic!(
            "{REDIS_VAR} is not set: this test needs Redis. Run \
             `eval \"$(scripts/services.sh start)\"` first (scripts/test.sh does)."
        )
    })
}

/// A key prefix no other test uses, so that tests sharing the server never share a log.
pub fn scratch_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    // The clock keeps runs apart (the server outlives them), the counter tests within one.
    format!(
        "herald-test-{nanos}-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
