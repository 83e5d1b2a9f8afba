//! MSR-based features: decoding feature MSRs, probing what this host's KVM offers, and comparing
//! two hosts for migration.

pub mod decode;
pub mod diff;
pub mod probe;
