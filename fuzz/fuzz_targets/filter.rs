//! Random MSR filters, exit settings and guest accesses against the filter model. See kvm_msr_suite::fuzzing for the input and the oracles.
#![no_main]

use kvm_msr_suite::checks::Context;
use kvm_msr_suite::fuzzing::Features;
use kvm_msr_suite::fuzzing::{run_filter, FilterInput};
use libfuzzer_sys::fuzz_target;

#[path = "common/feedback.rs"]
mod feedback;
use std::sync::OnceLock;

static CTX: OnceLock<Context> = OnceLock::new();

fuzz_target!(|input: FilterInput| {
    let ctx = CTX.get_or_init(|| Context::load().unwrap_or_else(|e| panic!("kvm-msr fuzz: {e}")));
    let mut feats = Features::default();
    let result = run_filter(ctx, &input, &mut feats);
    feedback::record(&feats);
    feedback::check_kernel_log();
    if let Err(v) = result {
        panic!("{v}\ninput: {input:?}");
    }
});
