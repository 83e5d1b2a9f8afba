//! The benchmark loop's parameter block (guest code: `code::msr_loop`, entry label `msr_loop`).
//! Layout at `layout::LOOP_PARAMS`:
//! +0 u32 index · +4 u32 kind (0 empty, 1 RDMSR, 2 WRMSR) · +8 u64 value WRMSR writes ·
//! +0x10 u64 iterations · +0x18 u64 TSC cycles the loop took (out) · +0x40 a 32-byte op record
//! the #GP fixup writes to (outcome +0x18, vector +0x19, error code +0x1c; `program`).

use super::layout::LOOP_PARAMS;
use crate::kvm::memory::GuestMemory;

pub const INDEX: u8 = 0;
pub const KIND: u8 = 4;
pub const VALUE: u8 = 8;
pub const COUNT: u8 = 0x10;
pub const TSC_CYCLES: u8 = 0x18;
pub const FIXUP_RECORD: u8 = 0x40;

/// What each iteration does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopKind {
    /// Nothing but the loop counter: the reference for loop overhead.
    Empty = 0,
    Rdmsr = 1,
    Wrmsr = 2,
}

/// One run of the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrLoop {
    pub kind: LoopKind,
    pub index: u32,
    /// What WRMSR writes (ignored otherwise).
    pub value: u64,
    /// Iterations, at least 1.
    pub count: u64,
}

/// What the guest reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopResult {
    /// Guest TSC cycles between the two RDTSCs around the loop.
    pub tsc_cycles: u64,
    /// Vector and error code of the last fault the fixup caught, if any.
    pub fault: Option<(u8, u32)>,
}

fn at(off: u8) -> u64 {
    LOOP_PARAMS + u64::from(off)
}

/// Write the parameters and clear the outputs.
pub fn write(mem: &mut GuestMemory, l: &MsrLoop) {
    assert!(l.count >= 1, "the MSR loop runs at least once");
    let mut block = [0u8; 0x60];
    block[0..4].copy_from_slice(&l.index.to_le_bytes());
    block[4..8].copy_from_slice(&(l.kind as u32).to_le_bytes());
    block[8..0x10].copy_from_slice(&l.value.to_le_bytes());
    block[0x10..0x18].copy_from_slice(&l.count.to_le_bytes());
    mem.write(LOOP_PARAMS, &block);
}

/// Clear the outputs only (the same parameters run again).
pub fn clear_outputs(mem: &mut GuestMemory) {
    mem.write_u64(at(TSC_CYCLES), 0);
    mem.fill(at(FIXUP_RECORD), 0x20, 0);
}

pub fn read(mem: &GuestMemory) -> LoopResult {
    let mut rec = [0u8; 0x20];
    mem.read(at(FIXUP_RECORD), &mut rec);
    LoopResult {
        tsc_cycles: mem.read_u64(at(TSC_CYCLES)),
        fault: (rec[0x18] & 2 != 0).then(|| {
            (
                rec[0x19],
                u32::from_le_bytes(rec[0x1c..0x20].try_into().expect("4 bytes")),
            )
        }),
    }
}
