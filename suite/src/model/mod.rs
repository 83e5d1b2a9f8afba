//! Pure models of KVM interfaces: no /dev/kvm needed, tested on their own, used as oracles by the
//! conformance checks and the fuzzer.

pub mod filter;
pub mod rng;
