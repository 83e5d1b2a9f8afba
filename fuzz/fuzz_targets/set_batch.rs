//! KVM_SET_MSRS batches vs the same writes one by one (api.rst 4.19).
//! Input, executor and oracles: kvm_msr_suite::fuzzing::target::SetBatchExecutor.
#![no_main]

#[macro_use]
mod common;

kvm_msr_fuzz_target!(kvm_msr_suite::fuzzing::target::SetBatchExecutor);
