//! Test-only fault injection: `HANDOFF_TEST_ABORT_AT=STEP` makes handoff
//! abort (as abruptly as `kill -9`: no cleanup, no summary) when it reaches
//! STEP, so the end-to-end tests can check that the next run acts on what is
//! true rather than on what the dead run meant to do.
//!
//! Steps: `after-start` (new container started), `after-first-health` (its
//! first good check), `after-switch` (the proxy routes to it), `during-drain`
//! (switched, old release still draining), `during-stop` (about to stop the
//! old release). The variable is for tests; nothing else reads it, and an
//! unset or unknown value does nothing.

pub const ENV: &str = "HANDOFF_TEST_ABORT_AT";

/// Aborts the process when the test hook names `step`.
pub fn hit(step: &str) {
    if std::env::var(ENV).is_ok_and(|v| v == step) {
        eprintln!("handoff: {ENV}={step}: aborting here (test hook)");
        std::process::abort();
    }
}
