//! kvm-msr-suite: conformance checks, fuzzing oracles and benchmarks for Linux KVM's x86 MSR
//! handling. See ARCHITECTURE.md at the repository root for how the pieces fit.

pub mod error;
pub mod guest;
pub mod kvm;
pub mod machine;

pub use error::{Error, Result};
