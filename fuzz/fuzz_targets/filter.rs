//! Random MSR filters, exit settings and guest accesses against the filter model.
//! Input, executor and oracles: kvm_msr_suite::fuzzing::target::FilterExecutor.
#![no_main]

#[macro_use]
mod common;

kvm_msr_fuzz_target!(kvm_msr_suite::fuzzing::target::FilterExecutor);
