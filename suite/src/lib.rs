//! kvm-msr-suite: conformance checks, fuzzing oracles and benchmarks for Linux KVM's x86 MSR
//! handling. See ARCHITECTURE.md at the repository root for how the pieces fit.

pub mod bench_summary;
pub mod catalogue;
pub mod check_id;
pub mod checks;
pub mod deviations;
pub mod error;
pub mod features;
pub mod fixtures;
pub mod fuzzing;
pub mod guest;
pub mod inline_vec;
pub mod kvm;
pub mod machine;
pub mod model;
pub mod msr_index;
pub mod oracles;
pub mod report;
pub mod runner;
pub mod session;

pub use error::{Error, Result};
pub use fixtures::fixtures_dir;
