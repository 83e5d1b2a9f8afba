//! The 64-bit environment the harness builds in guest memory: GDT, TSS, IDT, identity-mapped
//! page tables, and the segment/control registers that enter long mode directly (SDM vol. 3A
//! 10.8.5 describes the same state reached from real mode).

use super::asm::Code;
use super::code;
use super::layout::*;
use crate::kvm::memory::GuestMemory;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT entries: null; code: present, DPL0, S, execute/read accessed, L=1, G=1; data: present,
/// S, read/write accessed, D/B=1, G=1; then a 16-byte 64-bit TSS descriptor.
fn gdt() -> [u64; 5] {
    let tss_limit = 0x67u64;
    let t = TSS;
    let tss_lo = tss_limit
        | ((t & 0xff_ffff) << 16)
        | (0x8b << 40) // present, DPL0, type 0xb (busy 64-bit TSS)
        | (((t >> 24) & 0xff) << 56);
    let tss_hi = t >> 32;
    [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        tss_lo,
        tss_hi,
    ]
}

/// An interrupt gate (type 0xe, present, DPL0) to `handler` in the code segment.
fn idt_gate(handler: u64) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&SEL_CODE.to_le_bytes());
    g[4] = 0; // IST
    g[5] = 0x8e;
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

/// Write the environment and the runtime code into guest memory. Returns the runtime.
pub fn install(mem: &mut GuestMemory) -> &'static Code {
    assert!(
        mem.len() >= MIN_MEMORY,
        "guest memory below {MIN_MEMORY:#x}"
    );
    // Assembled once per process: the code is the same for every machine (it only depends on
    // CODE), and assembling it for each of the fuzzers' thousands of VMs a second cost them a
    // few percent of their time.
    static RUNTIME: std::sync::OnceLock<Code> = std::sync::OnceLock::new();
    let rt = RUNTIME.get_or_init(|| code::runtime(CODE));
    assert!(rt.bytes.len() <= CODE_MAX);
    // The IDT too: its gates name the stubs by label, a search by name for each of 32 vectors.
    static IDT_GATES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let idt = IDT_GATES.get_or_init(|| {
        (0u8..32)
            .flat_map(|v| idt_gate(rt.label(code::stub_label(v))))
            .collect()
    });
    for (i, d) in gdt().iter().enumerate() {
        mem.write_u64(GDT + 8 * i as u64, *d);
    }
    mem.fill(TSS, 0x68, 0);
    mem.write(IDT, idt);
    // Page tables: present | writable; PD entries map 2 MiB pages (PS).
    mem.fill(PML4, 0x3000, 0);
    mem.write_u64(PML4, PDPT | 0x3);
    mem.write_u64(PDPT, PD | 0x3);
    for i in 0..512u64 {
        mem.write_u64(PD + 8 * i, (i << 21) | 0x83);
    }
    mem.fill(MAILBOX, 0x100, 0);
    mem.write(CODE, &rt.bytes);
    rt
}

fn segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Put `vcpu` in long mode on the installed environment: KVM_GET_SREGS, `long_mode_sregs`,
/// KVM_SET_SREGS.
pub fn enter(vcpu: &crate::kvm::Vcpu) -> crate::Result<()> {
    use crate::error::Error;
    let sregs = vcpu
        .fd
        .get_sregs()
        .map_err(|e| Error::ioctl("KVM_GET_SREGS", e))?;
    vcpu.fd
        .set_sregs(&long_mode_sregs(sregs))
        .map_err(|e| Error::ioctl("KVM_SET_SREGS", e))
}

/// Long-mode control and segment state, applied on top of the vCPU's current sregs.
pub fn long_mode_sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.cr3 = PML4;
    s.cr4 = CR4_PAE;
    s.efer = EFER_LME | EFER_LMA;
    s.cs = segment(SEL_CODE, 0xb, true);
    let data = segment(SEL_DATA, 0x3, false);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = kvm_segment {
        base: TSS,
        limit: 0x67,
        selector: SEL_TSS,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    s.ldt = kvm_segment {
        selector: 0,
        type_: 0x2,
        present: 1,
        unusable: 1,
        ..Default::default()
    };
    s.gdt.base = GDT;
    s.gdt.limit = (5 * 8 - 1) as u16;
    s.idt.base = IDT;
    s.idt.limit = (32 * 16 - 1) as u16;
    s
}

/// General-purpose registers to start at `entry` with rsi = `rsi`, interrupts off.
pub fn entry_regs(entry: u64, rsi: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsi,
        rsp: STACK_TOP,
        rflags: 0x2,
        ..Default::default()
    }
}
