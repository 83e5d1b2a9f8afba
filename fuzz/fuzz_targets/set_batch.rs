//! KVM_SET_MSRS batches vs the same writes one by one (api.rst 4.19). See
//! kvm_msr_suite::fuzzing for the input and the oracle.
#![no_main]

use kvm_msr_suite::checks::Context;
use kvm_msr_suite::fuzzing::Features;
use kvm_msr_suite::fuzzing::{run_set_batch, SetBatchInput};
use libfuzzer_sys::fuzz_target;

#[path = "common/feedback.rs"]
mod feedback;
use std::sync::OnceLock;

static CTX: OnceLock<Context> = OnceLock::new();

fuzz_target!(|input: SetBatchInput| {
    let ctx = CTX.get_or_init(|| Context::load().unwrap_or_else(|e| panic!("kvm-msr fuzz: {e}")));
    let mut feats = Features::default();
    let result = run_set_batch(ctx, &input, &mut feats);
    feedback::record(&feats);
    feedback::check_kernel_log();
    if let Err(v) = result {
        panic!("{v}\ninput: {input:?}");
    }
});
