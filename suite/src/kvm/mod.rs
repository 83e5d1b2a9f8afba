//! Thin, typed access to /dev/kvm. Nothing here knows what is expected; it reports what KVM did.

pub mod cpuid;
pub mod facts;
pub mod filter;
pub mod memory;
pub mod raw;
pub mod run;
pub mod stats;
pub mod system;
pub mod vm;

pub use crate::error::Errno;
pub use cpuid::{CpuidTable, Vendor};
pub use raw::{ListKind, MsrEntry, MsrIo, MsrOp};
pub use run::Exit;
pub use system::KvmSystem;
pub use vm::{CpuidPolicy, Irqchip, LapicState, Vcpu, Vm, VmConfig};
