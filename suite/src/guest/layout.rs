//! Where the guest environment lives in guest physical memory (identity-mapped, so these are
//! also the guest's virtual addresses).

/// Global descriptor table: null, 64-bit code (0x08), data (0x10), 64-bit TSS (0x18, 16 bytes).
pub const GDT: u64 = 0x1000;
/// Interrupt descriptor table: 32 exception gates.
pub const IDT: u64 = 0x2000;
/// The 64-bit task-state segment (TR must be usable; nothing is switched through it).
pub const TSS: u64 = 0x3000;
/// Page tables: PML4 -> PDPT -> PD of 2 MiB pages identity-mapping the first 1 GiB.
pub const PML4: u64 = 0x4000;
pub const PDPT: u64 = 0x5000;
pub const PD: u64 = 0x6000;
/// The MSR loop's parameter block (`guest::msr_loop`): kind, index, value, count in; TSC cycles
/// and the #GP fixup's record out.
pub const LOOP_PARAMS: u64 = 0x7000;
/// Where the exception handler reports an exception it did not expect: vector, error code, RIP.
pub const MAILBOX: u64 = 0x8000;
/// Handlers and the MSR-op interpreter.
pub const CODE: u64 = 0x1_0000;
pub const CODE_MAX: usize = 0x1_0000;
/// The table of MSR operations the interpreter executes.
pub const OPS: u64 = 0x2_0000;
pub const OPS_MAX_BYTES: usize = 0x4_0000;
/// Top of the stack (grows down).
pub const STACK_TOP: u64 = 0x8_0000;
/// Memory the environment needs; VMs must have at least this much.
pub const MIN_MEMORY: usize = 0x10_0000;

/// Segment selectors in the GDT.
pub const SEL_CODE: u16 = 0x08;
pub const SEL_DATA: u16 = 0x10;
pub const SEL_TSS: u16 = 0x18;

/// I/O ports the guest signals on (OUT imm8, al).
pub const PORT_DONE: u16 = 0xe0;
pub const PORT_UNEXPECTED: u16 = 0xe1;
