//! A machine: one VM, one vCPU in long mode with the guest runtime installed, ready to run MSR
//! programs and to be inspected from the host between runs. Checks, the fuzzer and the
//! benchmarks all drive KVM through this.

use crate::error::Result;
use crate::guest::asm::Code;
use crate::guest::layout::{MAILBOX, OPS, PORT_DONE, PORT_UNEXPECTED};
use crate::guest::msr_loop::{self, LoopResult, MsrLoop};
use crate::guest::program::{read_results, write_program};
use crate::guest::{long_mode, program, GuestOp, OpOutcome};
use crate::kvm::{CpuidPolicy, CpuidTable, Errno, Exit, KvmSystem, Vcpu, Vm, VmConfig};
use std::fmt;
use std::time::Duration;

pub mod access;
pub use access::{Access, AccessPath};

thread_local! {
    static FORCE_EMULATION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with every guest MSR program this thread runs going through KVM's instruction
/// emulator (the forced-emulation prefix; needs kvm.force_emulation_prefix). Scoped to the
/// call, so the same check code serves both the direct and the emulated path.
pub fn with_forced_emulation<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            FORCE_EMULATION.set(self.0);
        }
    }
    let _reset = Reset(FORCE_EMULATION.replace(true));
    f()
}

/// Whether this thread's guest programs go through KVM's instruction emulator (inside
/// [`with_forced_emulation`]).
pub fn forced_emulation() -> bool {
    FORCE_EMULATION.get()
}

/// How to build a machine.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    pub vm: VmConfig,
    pub cpuid: CpuidPolicy,
    /// Deadline for one guest program.
    pub timeout: Duration,
}

impl MachineConfig {
    /// KVM's supported CPUID, in-kernel irqchip: what a VMM like QEMU with `-cpu host` gives.
    pub fn with_cpuid(cpuid: CpuidTable) -> Self {
        MachineConfig {
            vm: VmConfig::default(),
            cpuid: CpuidPolicy::Table(cpuid),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a guest program did not run to its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestDeath {
    pub exit: Exit,
    /// For an unexpected exception: vector, error code and RIP from the mailbox.
    pub detail: String,
}

impl fmt::Display for GuestDeath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "guest stopped: {}", self.exit)
        } else {
            write!(f, "guest stopped: {} ({})", self.exit, self.detail)
        }
    }
}

/// A userspace MSR exit (api.rst: kvm_run KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrExit {
    pub write: bool,
    pub index: u32,
    /// The value a WRMSR writes (0 for RDMSR).
    pub data: u64,
    /// KVM_MSR_EXIT_REASON_INVAL (1), _UNKNOWN (2) or _FILTER (4).
    pub reason: u32,
}

/// How userspace completes an MSR exit: `error` injects #GP, else `data` is what RDMSR returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrReply {
    pub error: bool,
    pub data: u64,
}

/// The results of one program: one outcome per op, the MSR exits userspace handled, and why it
/// stopped early if it did.
#[derive(Clone, Debug)]
pub struct GuestRun {
    pub outcomes: Vec<OpOutcome>,
    pub msr_exits: Vec<MsrExit>,
    pub death: Option<GuestDeath>,
}

impl GuestRun {
    pub fn completed(&self) -> bool {
        self.death.is_none()
    }
}

pub struct Machine {
    pub vm: Vm,
    pub vcpu: Vcpu,
    pub runtime: &'static Code,
    pub timeout: Duration,
    runs: u32,
    /// The entry point whose program the vCPU last completed: the guest then sits after its
    /// PORT_DONE OUT and jumps back to that entry on the next KVM_RUN, so a run from the same
    /// entry needs no KVM_SET_REGS. None after a death or before the first run.
    resume: Option<u64>,
    /// The last entry label looked up and its address.
    entry_cache: Option<(String, u64)>,
    /// Long mode was set up (false for a bare vCPU, which cannot run the runtime).
    entered: bool,
}

/// One run of the benchmark loop (`guest::msr_loop`).
#[derive(Clone, Debug)]
pub struct LoopRun {
    pub result: LoopResult,
    /// Userspace MSR exits completed during the run.
    pub msr_exits: u64,
}

impl Machine {
    pub fn new(sys: &KvmSystem, config: &MachineConfig) -> Result<Machine> {
        let mut vm = Vm::new(sys, &config.vm)?;
        let runtime = long_mode::install(&mut vm.mem);
        let vcpu = vm.create_vcpu(0, &config.cpuid)?;
        // A bare vCPU (no KVM_SET_CPUID2) stays in its reset state: KVM_SET_SREGS validates
        // EFER.LME against the guest's CPUID (x86.c kvm_is_valid_sregs -> kvm_valid_efer,
        // 184bd464bdb6 "KVM: x86: Check EFER validity on KVM_SET_SREGS*", Cc: stable, in 6.12.113
        // and 7.x), so long mode needs CPUID.80000001:EDX.LM set first. Such a machine is for
        // host-side checks only; running it is refused (see `drive`).
        let entered = !matches!(config.cpuid, CpuidPolicy::Bare);
        if entered {
            long_mode::enter(&vcpu)?;
        }
        Ok(Machine {
            entered,
            vm,
            vcpu,
            runtime,
            timeout: config.timeout,
            runs: 0,
            resume: None,
            entry_cache: None,
        })
    }

    /// True once KVM_RUN has been called on the vCPU (feature MSRs freeze, semantics §1.11).
    pub fn has_run(&self) -> bool {
        self.runs > 0
    }

    /// Run `ops` in the guest, in order, and collect one outcome per op. Inside
    /// [`with_forced_emulation`] every RDMSR/WRMSR carries KVM's forced-emulation prefix.
    pub fn run_ops(&mut self, ops: &[GuestOp]) -> GuestRun {
        let entry = if FORCE_EMULATION.get() {
            "interpreter_fep"
        } else {
            "interpreter"
        };
        self.run_from(entry, ops)
    }

    /// Run the runtime from `label` (the interpreter, or one of the deliberate-misbehaviour
    /// entry points) with `ops` as the program. A userspace MSR exit stops the guest.
    pub fn run_from(&mut self, label: &str, ops: &[GuestOp]) -> GuestRun {
        self.run_from_with(label, ops, None)
    }

    /// Run `ops`, completing every userspace MSR exit with `handler` and re-entering.
    pub fn run_ops_with(
        &mut self,
        ops: &[GuestOp],
        handler: &mut dyn FnMut(&MsrExit) -> MsrReply,
    ) -> GuestRun {
        let entry = if FORCE_EMULATION.get() {
            "interpreter_fep"
        } else {
            "interpreter"
        };
        self.run_from_with(entry, ops, Some(handler))
    }

    /// Forget where the guest stopped: the next run starts with KVM_SET_REGS at its entry.
    /// Call it after changing the vCPU's registers (KVM_SET_REGS) behind the machine's back.
    pub fn restart_at_entry(&mut self) {
        self.resume = None;
    }

    fn run_from_with(
        &mut self,
        label: &str,
        ops: &[GuestOp],
        handler: Option<&mut dyn FnMut(&MsrExit) -> MsrReply>,
    ) -> GuestRun {
        write_program(&mut self.vm.mem, ops);
        let mut msr_exits = Vec::new();
        // Every op can exit at most once; anything beyond that is a loop, reported as a death.
        let budget = 2 * ops.len() + 8;
        let death = self.drive(label, handler, budget, &mut |m| msr_exits.push(*m));
        GuestRun {
            outcomes: read_results(&self.vm.mem, ops),
            msr_exits,
            death,
        }
    }

    /// Run the benchmark loop (`guest::msr_loop`) once with `params`, completing userspace MSR
    /// exits with `handler` if given (without one, an MSR exit ends the run as a death).
    pub fn run_msr_loop(
        &mut self,
        params: &MsrLoop,
        handler: Option<&mut dyn FnMut(&MsrExit) -> MsrReply>,
    ) -> std::result::Result<LoopRun, GuestDeath> {
        msr_loop::write(&mut self.vm.mem, params);
        let mut exits = 0u64;
        let budget = usize::try_from(params.count)
            .unwrap_or(usize::MAX)
            .saturating_add(8);
        match self.drive("msr_loop", handler, budget, &mut |_| exits += 1) {
            None => Ok(LoopRun {
                result: msr_loop::read(&self.vm.mem),
                msr_exits: exits,
            }),
            Some(d) => Err(d),
        }
    }

    /// Enter the runtime at `label` (KVM_SET_REGS unless the guest already loops back to it)
    /// and KVM_RUN until PORT_DONE, completing at most `budget` userspace MSR exits with
    /// `handler`. Returns why the guest stopped early, if it did.
    fn drive(
        &mut self,
        label: &str,
        mut handler: Option<&mut dyn FnMut(&MsrExit) -> MsrReply>,
        budget: usize,
        on_msr_exit: &mut dyn FnMut(&MsrExit),
    ) -> Option<GuestDeath> {
        if !self.entered {
            return Some(GuestDeath {
                exit: Exit::RunError {
                    errno: Errno::EINVAL,
                },
                detail: "harness: a bare vCPU (no KVM_SET_CPUID2) is not in long mode and cannot run the runtime".into(),
            });
        }
        let entry = match &self.entry_cache {
            Some((l, a)) if l == label => *a,
            _ => {
                let a = self.runtime.label(label);
                self.entry_cache = Some((label.to_string(), a));
                a
            }
        };
        if self.resume.take() != Some(entry) {
            if let Err(e) = self.vcpu.fd.set_regs(&long_mode::entry_regs(entry, OPS)) {
                return Some(GuestDeath {
                    exit: Exit::RunError { errno: e.into() },
                    detail: "KVM_SET_REGS failed".into(),
                });
            }
        }
        self.runs += 1;
        let mut handled = 0usize;
        let death = loop {
            let exit = self.vcpu.run(self.timeout);
            let msr = match exit {
                Exit::RdMsr { index, reason } => Some(MsrExit {
                    write: false,
                    index,
                    data: 0,
                    reason,
                }),
                Exit::WrMsr {
                    index,
                    data,
                    reason,
                } => Some(MsrExit {
                    write: true,
                    index,
                    data,
                    reason,
                }),
                _ => None,
            };
            match (msr, handler.as_deref_mut()) {
                (Some(m), Some(h)) if handled < budget => {
                    handled += 1;
                    on_msr_exit(&m);
                    let reply = h(&m);
                    let run = self.vcpu.fd.get_kvm_run();
                    // The exit reason is KVM_EXIT_X86_RDMSR/WRMSR, so `msr` is the live union member;
                    // userspace fills error and data before re-entering (api.rst).
                    run.__bindgen_anon_1.msr.error = u8::from(reply.error);
                    run.__bindgen_anon_1.msr.data = reply.data;
                    continue;
                }
                _ => {}
            }
            break match &exit {
                Exit::IoOut { port, .. } if *port == PORT_DONE => None,
                Exit::IoOut { port, .. } if *port == PORT_UNEXPECTED => {
                    let vector = self.vm.mem.read_u64(MAILBOX) as u8;
                    let detail = format!(
                        "unexpected {} error code {:#x} at RIP {:#x}",
                        program::vector_name(vector),
                        self.vm.mem.read_u64(MAILBOX + 8),
                        self.vm.mem.read_u64(MAILBOX + 16)
                    );
                    Some(GuestDeath { exit, detail })
                }
                _ => {
                    let rip = self.vcpu.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                    Some(GuestDeath {
                        exit,
                        detail: format!("RIP {rip:#x}"),
                    })
                }
            };
        };
        if death.is_none() {
            self.resume = Some(entry);
        }
        death
    }
}
