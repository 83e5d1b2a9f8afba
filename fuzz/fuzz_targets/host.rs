//! Sequences of host operations on a vCPU (KVM_SET/GET_MSRS batches, KVM_SET_CPUID2, KVM_RUN,
//! save/restore into a fresh vCPU) on pooled vCPUs; its environment settings (KVM_MSR_FUZZ_NO_POOL,
//! _EQUIV_EVERY, _POOL_THREAD, _PIN, _STATS) are documented at the executor.
//! Input, executor and oracles: kvm_msr_suite::fuzzing::target::HostExecutor.
#![no_main]

#[macro_use]
mod common;

kvm_msr_fuzz_target!(kvm_msr_suite::fuzzing::target::HostExecutor);
