//! Sequences of host operations on a vCPU (KVM_SET/GET_MSRS batches, KVM_SET_CPUID2, KVM_RUN,
//! save/restore into a fresh vCPU) on pooled vCPUs. See kvm_msr_suite::fuzzing::HostInput for
//! the input and oracles::msr_io for the oracles.
//!
//! KVM_MSR_FUZZ_NO_POOL=1: a new VM for every input (the naive baseline, to compare exec/s).
//! KVM_MSR_FUZZ_EQUIV_EVERY=N: also run every N-th input on a fresh VM and compare (default 64;
//! 0 turns it off).
//! KVM_MSR_FUZZ_POOL_THREAD=0: create fresh vCPUs on the fuzzing thread instead of a supplier
//! thread.
//! KVM_MSR_FUZZ_PIN=N: pin the fuzzing thread to CPU N (the supplier keeps the others).
//! KVM_MSR_FUZZ_STATS=N: print the pool's counters to stderr every N inputs.
#![no_main]

use kvm_msr_suite::checks::Context;
use kvm_msr_suite::fuzzing::pool::{pin_current_thread, PoolMode};
use kvm_msr_suite::fuzzing::{Features, HostInput, HostRunner};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

#[path = "common/feedback.rs"]
mod feedback;
use std::sync::OnceLock;

static CTX: OnceLock<Context> = OnceLock::new();
static STATS_EVERY: OnceLock<Option<u64>> = OnceLock::new();

fn stats_every() -> Option<u64> {
    let s = std::env::var("KVM_MSR_FUZZ_STATS").ok()?;
    match s.parse() {
        Ok(0) | Err(_) => panic!("KVM_MSR_FUZZ_STATS={s:?}: expected a positive number"),
        Ok(n) => Some(n),
    }
}

thread_local! {
    static RUNNER: RefCell<Option<HostRunner>> = const { RefCell::new(None) };
}

fn new_runner(ctx: &Context) -> HostRunner {
    let mode = if std::env::var_os("KVM_MSR_FUZZ_NO_POOL").is_some() {
        PoolMode::Fresh
    } else {
        PoolMode::Reuse
    };
    let every = match std::env::var("KVM_MSR_FUZZ_EQUIV_EVERY") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("KVM_MSR_FUZZ_EQUIV_EVERY={s:?}: expected a number")),
        Err(_) => 64,
    };
    let background = std::env::var_os("KVM_MSR_FUZZ_POOL_THREAD").is_none_or(|v| v != "0");
    let runner = HostRunner::new(ctx, mode, every, background)
        .unwrap_or_else(|e| panic!("kvm-msr fuzz: {e}"));
    // After the pool exists, so its supplier thread is not pinned too.
    if let Ok(s) = std::env::var("KVM_MSR_FUZZ_PIN") {
        let cpu: usize = s
            .parse()
            .unwrap_or_else(|_| panic!("KVM_MSR_FUZZ_PIN={s:?}: expected a CPU number"));
        pin_current_thread(cpu).unwrap_or_else(|e| panic!("KVM_MSR_FUZZ_PIN={cpu}: {e}"));
    }
    runner
}

fuzz_target!(|input: HostInput| {
    let ctx = CTX.get_or_init(|| Context::load().unwrap_or_else(|e| panic!("kvm-msr fuzz: {e}")));
    let mut feats = Features::default();
    let result = RUNNER.with_borrow_mut(|r| {
        let runner = r.get_or_insert_with(|| new_runner(ctx));
        let result = runner.run(ctx, &input, &mut feats);
        if let Some(every) = *STATS_EVERY.get_or_init(stats_every) {
            if runner.inputs() % every == 0 {
                eprintln!(
                    "kvm-msr pool after {} inputs: {:?}",
                    runner.inputs(),
                    runner.pool.stats()
                );
            }
        }
        result
    });
    feedback::record(&feats);
    feedback::check_kernel_log();
    if let Err(v) = result {
        panic!("{v}\ninput: {input:?}");
    }
});
