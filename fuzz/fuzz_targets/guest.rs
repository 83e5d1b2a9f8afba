//! Guest RDMSR/WRMSR programs: the guest never dies, and the host reads what the guest last read.
//! Input, executor and oracles: kvm_msr_suite::fuzzing::target::GuestExecutor.
#![no_main]

#[macro_use]
mod common;

kvm_msr_fuzz_target!(kvm_msr_suite::fuzzing::target::GuestExecutor);
