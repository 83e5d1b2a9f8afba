//! VMs and vCPUs: a builder with guest memory, an optional in-kernel irqchip and a CPUID policy,
//! and vCPUs whose MSR access keeps KVM's per-entry semantics.

use super::cpuid::CpuidTable;
use super::memory::GuestMemory;
use super::raw::{self, MsrEntry, MsrIo, MsrOp};
use super::run::{decode_exit, kvm_run, Deadline, Exit};
use super::system::KvmSystem;
use crate::error::{Errno, Error, Result};
use kvm_bindings::{kvm_enable_cap, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{VcpuFd, VmFd};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// What a fresh VM looks like.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Bytes of guest memory at GPA 0.
    pub mem_size: usize,
    /// An in-kernel local APIC (as QEMU and the selftests use): the MSR semantics of APIC_BASE,
    /// TSC_DEADLINE, the x2APIC range and the PV EOI/async-PF MSRs depend on it.
    pub irqchip: Irqchip,
    /// KVM quirks to disable with KVM_CAP_DISABLE_QUIRKS2 before any vCPU (api.rst 7.31).
    pub quirks_disabled: u64,
}

/// Which interrupt controllers KVM emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Irqchip {
    /// None in the kernel: no LAPIC (lapic_in_kernel() is false).
    None,
    /// KVM_CREATE_IRQCHIP: LAPIC, IOAPIC and PIC in the kernel (api.rst 4.24).
    Full,
    /// KVM_CAP_SPLIT_IRQCHIP: only the LAPIC in the kernel (api.rst 7.8). The same LAPIC MSR
    /// semantics as `Full`, and much cheaper to create (the default).
    Split,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            mem_size: 4 << 20,
            irqchip: Irqchip::Split,
            quirks_disabled: 0,
        }
    }
}

/// How a vCPU's CPUID is set up.
#[derive(Clone, Debug)]
pub enum CpuidPolicy {
    /// No KVM_SET_CPUID2: every `guest_cpu_cap_has` is false (semantics §0, "bare vCPU").
    Bare,
    /// KVM_SET_CPUID2 with this table.
    Table(CpuidTable),
}

pub struct Vm {
    pub fd: VmFd,
    pub mem: GuestMemory,
    pub config: VmConfig,
}

impl Vm {
    pub fn new(sys: &KvmSystem, config: &VmConfig) -> Result<Vm> {
        let fd = sys
            .kvm()
            .create_vm()
            .map_err(|e| Error::ioctl("KVM_CREATE_VM", e))?;
        let mem = GuestMemory::new(config.mem_size)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem.len() as u64,
            userspace_addr: mem.host_addr(),
        };
        // SAFETY: the region describes `mem`, which lives as long as the VM (both are fields of
        // the returned Vm, and the fd is dropped first because it is declared first).
        unsafe { fd.set_user_memory_region(region) }
            .map_err(|e| Error::ioctl("KVM_SET_USER_MEMORY_REGION", e))?;
        match config.irqchip {
            Irqchip::None => {}
            Irqchip::Full => fd
                .create_irq_chip()
                .map_err(|e| Error::ioctl("KVM_CREATE_IRQCHIP", e))?,
            Irqchip::Split => {
                // args[0]: the number of IOAPIC routes userspace reserves (24, as QEMU).
                let cap = kvm_enable_cap {
                    cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
                    args: [24, 0, 0, 0],
                    ..Default::default()
                };
                fd.enable_cap(&cap)
                    .map_err(|e| Error::ioctl("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)", e))?;
            }
        }
        if config.quirks_disabled != 0 {
            let cap = kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_DISABLE_QUIRKS2,
                args: [config.quirks_disabled, 0, 0, 0],
                ..Default::default()
            };
            fd.enable_cap(&cap)
                .map_err(|e| Error::ioctl("KVM_ENABLE_CAP(KVM_CAP_DISABLE_QUIRKS2)", e))?;
        }
        Ok(Vm {
            fd,
            mem,
            config: config.clone(),
        })
    }

    /// KVM_SET_USER_MEMORY_REGION for an extra slot (api.rst 4.35): `mem` mapped at `gpa`, or
    /// with `None` the slot deleted (memory_size 0). The caller keeps `mem` alive while the
    /// slot exists (declare it after the `Vm`/`Machine` holding the slot so it drops later).
    pub fn set_extra_slot(
        &self,
        slot: u32,
        gpa: u64,
        mem: Option<&GuestMemory>,
    ) -> std::result::Result<(), Errno> {
        assert!(slot != 0, "slot 0 is the guest's main memory");
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: mem.map_or(0, |m| m.len() as u64),
            userspace_addr: mem.map_or(0, |m| m.host_addr()),
        };
        // SAFETY: the region describes `mem`, which the caller keeps mapped while the slot
        // exists (or deletes the slot: size 0 maps nothing).
        unsafe { self.fd.set_user_memory_region(region) }.map_err(Errno::from)
    }

    /// KVM_ENABLE_CAP on the VM fd (api.rst 4.37).
    pub fn enable_cap(&self, cap: u32, args: [u64; 4]) -> std::result::Result<(), Errno> {
        let c = kvm_enable_cap {
            cap,
            args,
            ..Default::default()
        };
        self.fd.enable_cap(&c).map_err(Errno::from)
    }

    /// KVM_CREATE_VCPU, then the CPUID policy, then KVM_GET_CPUID2 to learn what took effect.
    pub fn create_vcpu(&self, id: u64, cpuid: &CpuidPolicy) -> Result<Vcpu> {
        let fd = self
            .fd
            .create_vcpu(id)
            .map_err(|e| Error::ioctl("KVM_CREATE_VCPU", e))?;
        let mut vcpu = Vcpu {
            fd,
            id,
            effective_cpuid: None,
            set_cpuid_errno: None,
            pv_enforced: false,
            synic_active: false,
            kvm_runs: 0,
            deadline: Deadline::new(),
        };
        if let CpuidPolicy::Table(t) = cpuid {
            if let Err(e) = vcpu.fd.set_cpuid2(&t.to_kvm()) {
                vcpu.set_cpuid_errno = Some(e.into());
            }
            vcpu.effective_cpuid = vcpu.read_cpuid();
        }
        Ok(vcpu)
    }
}

pub struct Vcpu {
    pub fd: VcpuFd,
    pub id: u64,
    /// KVM_GET_CPUID2 after KVM_SET_CPUID2: the CPUID expectations are derived from. None for a
    /// bare vCPU.
    pub effective_cpuid: Option<CpuidTable>,
    /// Errno of KVM_SET_CPUID2, if it failed.
    pub set_cpuid_errno: Option<Errno>,
    /// KVM_CAP_ENFORCE_PV_FEATURE_CPUID was enabled on this vCPU.
    pub pv_enforced: bool,
    /// KVM_CAP_HYPERV_SYNIC2 was enabled on this vCPU (Hyper-V SynIC active).
    pub synic_active: bool,
    /// KVM_RUN calls made through [`Vcpu::run`], each a return to userspace (EINTR included).
    pub kvm_runs: u64,
    deadline: Deadline,
}

impl AsRawFd for Vcpu {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Vcpu {
    /// KVM_GET_CPUID2 (api.rst), or None if it fails.
    pub fn read_cpuid(&self) -> Option<CpuidTable> {
        self.fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .ok()
            .map(|c| CpuidTable::from_kvm(&c))
    }

    /// KVM_GET_MSRS with one entry per index; the result keeps the count KVM returned.
    pub fn get_msrs(&self, indices: &[u32]) -> MsrIo {
        raw::get_msrs(self, indices)
    }

    /// KVM_SET_MSRS; the result keeps the count KVM returned (api.rst 4.19).
    pub fn set_msrs(&self, entries: &[MsrEntry]) -> MsrIo {
        raw::msr_io(self, MsrOp::Set, entries, entries.len() as u32)
    }

    /// Raw MSR ioctl with an explicit nmsrs.
    pub fn msr_io(&self, op: MsrOp, entries: &[MsrEntry], nmsrs: u32) -> MsrIo {
        raw::msr_io(self, op, entries, nmsrs)
    }

    /// One host read: Some(value) if KVM processed the entry.
    pub fn get_msr(&self, index: u32) -> Option<u64> {
        let io = self.get_msrs(&[index]);
        (io.result == Ok(1)).then(|| io.entries()[0].data)
    }

    /// One host write: true if KVM processed the entry.
    pub fn set_msr(&self, index: u32, data: u64) -> bool {
        self.set_msrs(&[MsrEntry { index, data }]).result == Ok(1)
    }

    /// A host write the harness itself needs (machine setup, the fuzzer's pool): [`Error::Msr`]
    /// naming `what`, the MSR and the errno if KVM does not take it.
    pub fn try_set_msr(&self, what: &'static str, index: u32, data: u64) -> Result<()> {
        self.set_msrs(&[MsrEntry { index, data }])
            .all_processed(what)
    }

    /// Touch the pages of the kvm_run mapping the harness reads after KVM_RUN (the kvm_run page
    /// and the PIO data page at offset 4096, KVM_PIO_PAGE_OFFSET), so their page faults
    /// (kvm_vcpu_fault) are taken now, by the thread that calls this, rather than by the first
    /// KVM_RUN's caller. `mmap_size` is KVM_GET_VCPU_MMAP_SIZE; pages past it are left alone.
    pub fn prefault_run_area(&mut self, mmap_size: usize) {
        const PAGE: usize = 4096;
        let base = (self.fd.get_kvm_run() as *mut kvm_bindings::kvm_run).cast::<u8>();
        for offset in (0..mmap_size.min(2 * PAGE)).step_by(PAGE) {
            // SAFETY: kvm-ioctls maps `mmap_size` bytes (KVM_GET_VCPU_MMAP_SIZE) of the vCPU fd
            // at `base` for the vCPU's lifetime and `offset` is inside them; the read is of one
            // byte, volatile so it is not optimised away, and has no effect but the page fault
            // (the same pointer arithmetic as `decode_exit`'s for the PIO data).
            unsafe { std::ptr::read_volatile(base.add(offset)) };
        }
    }

    /// KVM_RUN once, with a deadline. Never blocks past `timeout` (plus a few milliseconds).
    pub fn run(&mut self, timeout: Duration) -> Exit {
        let start = self.deadline.arm(timeout);
        let exit = loop {
            self.kvm_runs += 1;
            match kvm_run(&self.fd) {
                Ok(()) => break decode_exit(self.fd.get_kvm_run()),
                Err(Errno::EINTR) => {
                    let after = Deadline::since(start);
                    if after >= timeout {
                        break Exit::Timeout { after };
                    }
                }
                Err(errno) => break Exit::RunError { errno },
            }
        };
        self.deadline.disarm();
        exit
    }

    /// KVM_GET_LAPIC (api.rst 4.57): the in-kernel local APIC's register page, as the
    /// architecture manual lays it out. Needs an in-kernel LAPIC (`Irqchip::Full` or `Split`);
    /// without one KVM answers ENXIO. Without KVM_CAP_X2APIC_API's 32-bit IDs (this harness never
    /// enables it) APIC_ID (offset 0x20) comes back in xAPIC format, the ID in bits 31:24, also in
    /// x2APIC mode (lapic.c kvm_apic_state_fixup).
    pub fn get_lapic(&self) -> std::result::Result<LapicState, Errno> {
        let s = self.fd.get_lapic().map_err(Errno::from)?;
        Ok(LapicState {
            regs: s.regs.map(|b| b as u8),
        })
    }

    /// KVM_SET_LAPIC (api.rst 4.58): load a register page into the in-kernel local APIC (what
    /// kvm_apic_set_state derives from it, e.g. the LVT timer mode, follows).
    pub fn set_lapic(&self, l: &LapicState) -> std::result::Result<(), Errno> {
        let s = kvm_bindings::kvm_lapic_state {
            regs: l.regs.map(|b| b as _),
        };
        self.fd.set_lapic(&s).map_err(Errno::from)
    }

    /// KVM_CAP_ENFORCE_PV_FEATURE_CPUID (api.rst 7.x): from now on the KVM PV MSRs follow the
    /// vCPU's KVM_CPUID_FEATURES bits.
    pub fn enforce_pv_cpuid(&mut self) -> std::result::Result<(), Errno> {
        self.enable_cap(kvm_bindings::KVM_CAP_ENFORCE_PV_FEATURE_CPUID, [1, 0, 0, 0])?;
        self.pv_enforced = true;
        Ok(())
    }

    /// KVM_CAP_HYPERV_SYNIC2 (api.rst 7.x): activate the vCPU's Hyper-V SynIC (needs an
    /// in-kernel LAPIC; hyperv.c kvm_hv_activate_synic).
    pub fn activate_synic(&mut self) -> std::result::Result<(), Errno> {
        self.enable_cap(kvm_bindings::KVM_CAP_HYPERV_SYNIC2, [0; 4])?;
        self.synic_active = true;
        Ok(())
    }

    /// KVM_ENABLE_CAP on the vCPU fd.
    pub fn enable_cap(&self, cap: u32, args: [u64; 4]) -> std::result::Result<(), Errno> {
        let c = kvm_enable_cap {
            cap,
            args,
            ..Default::default()
        };
        self.fd.enable_cap(&c).map_err(Errno::from)
    }
}

/// A local APIC's register page (struct kvm_lapic_state, api.rst 4.57).
#[derive(Clone)]
pub struct LapicState {
    pub regs: [u8; 1024],
}

impl LapicState {
    /// The 32-bit register at `offset` (SDM vol. 3A table 12-1: APIC_ID is 0x20), little-endian.
    pub fn reg(&self, offset: usize) -> u32 {
        let b = &self.regs[offset..offset + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Set the 32-bit register at `offset`, little-endian.
    pub fn set_reg(&mut self, offset: usize, value: u32) {
        self.regs[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
}
