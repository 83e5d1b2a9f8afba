//! Where a fuzzing loop's time goes, split at the target's entry: with
//! KVM_MSR_FUZZ_CALLBACK_CLOCK=PATH every input's run in the target (from the decoded input to its
//! verdict: executor, oracles, feedback, kernel-log check) is timed, and "callback <inputs> <ns>"
//! is written to PATH at exit. `ci/soak.sh` sets it beside `ci/ioctl-clock.c`: the loop's time
//! minus the callbacks' is libFuzzer's own (mutation, feature collection, corpus upkeep, decoding
//! the input), the callbacks' minus their kernel calls' is the harness's. Unset, nothing is timed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static INPUTS: AtomicU64 = AtomicU64::new(0);
static NANOS: AtomicU64 = AtomicU64::new(0);

fn path() -> Option<&'static str> {
    static PATH: OnceLock<Option<String>> = OnceLock::new();
    PATH.get_or_init(|| {
        let p = std::env::var("KVM_MSR_FUZZ_CALLBACK_CLOCK").ok()?;
        // SAFETY: `dump` is an `extern "C" fn()` that lives for the whole program; atexit only
        // stores the pointer and calls it once at exit.
        if unsafe { libc::atexit(dump) } != 0 {
            eprintln!("KVM_MSR_FUZZ_CALLBACK_CLOCK: atexit failed; no callback times are written");
        }
        Some(p)
    })
    .as_deref()
}

/// Run `f`, timed if KVM_MSR_FUZZ_CALLBACK_CLOCK is set.
pub fn timed<T>(f: impl FnOnce() -> T) -> T {
    if path().is_none() {
        return f();
    }
    let t0 = Instant::now();
    let r = f();
    NANOS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    INPUTS.fetch_add(1, Ordering::Relaxed);
    r
}

extern "C" fn dump() {
    if let Some(p) = path() {
        let line = format!(
            "callback {} {}\n",
            INPUTS.load(Ordering::Relaxed),
            NANOS.load(Ordering::Relaxed)
        );
        if let Err(e) = std::fs::write(p, line) {
            eprintln!("KVM_MSR_FUZZ_CALLBACK_CLOCK={p}: {e}");
        }
    }
}
