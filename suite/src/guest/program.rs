//! MSR programs: the table of operations the interpreter executes, and its results.

use super::layout::{OPS, OPS_MAX_BYTES};
use crate::kvm::memory::GuestMemory;
use std::fmt;

/// Names of the architectural exception vectors.
pub fn vector_name(vector: u8) -> &'static str {
    const N: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "vec15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "vec22", "vec23", "vec24",
        "vec25", "vec26", "vec27", "#HV", "#VC", "#SX", "vec31",
    ];
    N.get(vector as usize).copied().unwrap_or("vec?")
}

/// Bytes per operation record in guest memory:
/// +0 u32 op (0 end, 1 RDMSR, 2 WRMSR) · +4 u32 index · +8 u64 value to write · +0x10 u64 value
/// read · +0x18 u8 outcome (bit 0: the interpreter continued past the instruction, bit 1: it
/// faulted) · +0x19 u8 vector · +0x1c u32 error code.
pub const RECORD_SIZE: usize = 0x20;
/// The most operations one program holds (the last record is the terminator).
pub const MAX_OPS: usize = OPS_MAX_BYTES / RECORD_SIZE - 1;

const OP_END: u32 = 0;
const OP_RDMSR: u32 = 1;
const OP_WRMSR: u32 = 2;
const OP_CPUID: u32 = 3;

/// One guest MSR access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestOp {
    Rdmsr(u32),
    Wrmsr(u32, u64),
    /// CPUID with EAX = leaf, ECX = subleaf (what the guest itself sees).
    Cpuid(u32, u32),
}

impl GuestOp {
    pub fn index(self) -> u32 {
        match self {
            GuestOp::Rdmsr(i) | GuestOp::Wrmsr(i, _) => i,
            GuestOp::Cpuid(leaf, _) => leaf,
        }
    }
}

impl fmt::Display for GuestOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestOp::Rdmsr(i) => write!(f, "RDMSR {i:#x}"),
            GuestOp::Wrmsr(i, v) => write!(f, "WRMSR {i:#x} <- {v:#x}"),
            GuestOp::Cpuid(l, s) => write!(f, "CPUID {l:#x}.{s}"),
        }
    }
}

/// What one access did in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    /// RDMSR completed with EDX:EAX.
    Read(u64),
    /// WRMSR completed.
    Wrote,
    /// CPUID completed: EAX, EBX, ECX, EDX.
    Cpuid([u32; 4]),
    /// The instruction raised an exception.
    Fault { vector: u8, error_code: u32 },
    /// The guest stopped before reaching it.
    NotReached,
}

impl OpOutcome {
    pub fn is_gp(self) -> bool {
        matches!(self, OpOutcome::Fault { vector: 13, .. })
    }
}

impl fmt::Display for OpOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpOutcome::Read(v) => write!(f, "read {v:#x}"),
            OpOutcome::Wrote => write!(f, "written"),
            OpOutcome::Cpuid(r) => write!(f, "cpuid {r:#x?}"),
            OpOutcome::Fault { vector, error_code } => {
                write!(f, "{}({error_code:#x})", vector_name(*vector))
            }
            OpOutcome::NotReached => write!(f, "not reached"),
        }
    }
}

/// Lay the program out at `OPS`.
pub fn write_program(mem: &mut GuestMemory, ops: &[GuestOp]) {
    assert!(
        ops.len() <= MAX_OPS,
        "program of {} ops exceeds {MAX_OPS}",
        ops.len()
    );
    // One record at a time (the terminator last), so a short program costs no allocation.
    for i in 0..=ops.len() {
        let (code, index, value) = match ops.get(i) {
            None => (OP_END, 0, 0),
            Some(GuestOp::Rdmsr(i)) => (OP_RDMSR, *i, 0),
            Some(GuestOp::Wrmsr(i, v)) => (OP_WRMSR, *i, *v),
            Some(GuestOp::Cpuid(leaf, sub)) => (OP_CPUID, *leaf, u64::from(*sub)),
        };
        let mut r = [0u8; RECORD_SIZE];
        r[0..4].copy_from_slice(&code.to_le_bytes());
        r[4..8].copy_from_slice(&index.to_le_bytes());
        r[8..16].copy_from_slice(&value.to_le_bytes());
        mem.write(OPS + (i * RECORD_SIZE) as u64, &r);
    }
}

/// Read back what the interpreter recorded.
pub fn read_results(mem: &GuestMemory, ops: &[GuestOp]) -> Vec<OpOutcome> {
    let mut buf = vec![0u8; ops.len() * RECORD_SIZE];
    mem.read(OPS, &mut buf);
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            let r = &buf[i * RECORD_SIZE..(i + 1) * RECORD_SIZE];
            let outcome = r[0x18];
            let value = u64::from_le_bytes(r[0x10..0x18].try_into().unwrap());
            let error_code = u32::from_le_bytes(r[0x1c..0x20].try_into().unwrap());
            if outcome & 1 == 0 {
                OpOutcome::NotReached
            } else if outcome & 2 != 0 {
                OpOutcome::Fault {
                    vector: r[0x19],
                    error_code,
                }
            } else {
                let word = |o: usize| u32::from_le_bytes(r[o..o + 4].try_into().unwrap());
                match op {
                    GuestOp::Rdmsr(_) => OpOutcome::Read(value),
                    GuestOp::Wrmsr(..) => OpOutcome::Wrote,
                    GuestOp::Cpuid(..) => {
                        OpOutcome::Cpuid([word(8), word(0xc), word(0x10), word(0x14)])
                    }
                }
            }
        })
        .collect()
}
