//! The raw guest: a long-mode environment built by the harness and an interpreter of MSR
//! programs, all in hand-written machine code (general-purpose registers only, no SSE/x87, no
//! int3: KVM's instruction emulator must be able to run every instruction).

pub mod asm;
pub mod code;
pub mod layout;
pub mod long_mode;
pub mod msr_loop;
pub mod program;

pub use program::{GuestOp, OpOutcome};
