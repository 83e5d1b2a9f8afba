//! KVM_RUN with a deadline, and exits turned into owned values a check can report.
//!
//! A hung guest must become a verdict, not a hung test run. Each vCPU has a [`Deadline`] slot
//! that the vCPU thread fills before KVM_RUN (its thread id and the time by which the run must
//! end) and clears after: two atomic stores and a vDSO clock read, no system call. One watchdog
//! thread per process sleeps until the earliest deadline it knows of; when a vCPU is still in a
//! run past its deadline, it signals that thread (tgkill) and repeats every few milliseconds, so
//! a signal that lands just before the thread enters KVM_RUN is followed by another. The signal
//! handler does nothing; the signal makes KVM_RUN return EINTR (api.rst 4.10).

use crate::error::Errno;
use std::sync::atomic::{
    AtomicI32, AtomicU64, Ordering::Relaxed, Ordering::Release, Ordering::SeqCst,
};
use std::sync::{Arc, Mutex, Once, OnceLock, Weak};
use std::time::{Duration, Instant};
use vmm_sys_util::ioctl::ioctl;
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);

/// KVM_RUN on a vCPU fd (api.rst 4.10), nothing else: Ok once it returned 0 (the exit is in
/// the vCPU's kvm_run area), else the errno. The harness and the benchmarks' raw loop both use
/// exactly this.
pub fn kvm_run(vcpu: &kvm_ioctls::VcpuFd) -> Result<(), Errno> {
    // SAFETY: KVM_RUN takes no argument; `vcpu` is an open vCPU fd whose kvm_run area stays
    // mapped by `VcpuFd` while it lives.
    let ret = unsafe { ioctl(vcpu, KVM_RUN()) };
    super::raw::ioctl_result(ret).map(|_| ())
}

/// The signal used to kick vCPU threads out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

extern "C" fn on_kick(_: libc::c_int) {}

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that does nothing (async-signal-safe) for a real-time
        // signal the suite owns; SA_RESTART is deliberately absent so KVM_RUN returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Nanoseconds on a process-wide monotonic clock (never 0, which means "not in a run").
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

thread_local! {
    static TID: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

fn current_tid() -> i32 {
    TID.with(|t| {
        if t.get() == 0 {
            // SAFETY: gettid has no preconditions.
            t.set(unsafe { libc::gettid() });
        }
        t.get()
    })
}

/// How often the watchdog re-signals a vCPU that is past its deadline.
const RESIGNAL: Duration = Duration::from_millis(5);
/// The longest the watchdog sleeps without looking.
const IDLE: Duration = Duration::from_secs(1);

struct Slot {
    tid: AtomicI32,
    /// `now_ns()` by which the current run must end; 0 while not in a run.
    deadline: AtomicU64,
}

struct Watchdog {
    slots: Mutex<Vec<Weak<Slot>>>,
    /// When the watchdog thread next looks (0 while it is looking).
    wakes_at: AtomicU64,
    thread: OnceLock<std::thread::Thread>,
}

static WATCHDOG: Watchdog = Watchdog {
    slots: Mutex::new(Vec::new()),
    wakes_at: AtomicU64::new(0),
    thread: OnceLock::new(),
};

/// The watchdog, its thread started on first use.
fn watchdog() -> &'static Watchdog {
    WATCHDOG.thread.get_or_init(|| {
        install_handler();
        std::thread::Builder::new()
            .name("kvm-msr-watchdog".into())
            .spawn(watch)
            .expect("spawning the KVM_RUN watchdog thread")
            .thread()
            .clone()
    });
    &WATCHDOG
}

fn watch() {
    let w = &WATCHDOG;
    loop {
        w.wakes_at.store(0, SeqCst);
        let now = now_ns();
        let mut next = now + IDLE.as_nanos() as u64;
        {
            let mut slots = w.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.retain(|s| s.strong_count() > 0);
            for s in slots.iter().filter_map(Weak::upgrade) {
                let d = s.deadline.load(SeqCst);
                if d == 0 {
                    continue;
                }
                if now >= d {
                    // SAFETY: tgkill with our own pid and a thread id read from a live slot;
                    // at worst the thread has just left KVM_RUN and runs the empty handler.
                    unsafe {
                        libc::syscall(
                            libc::SYS_tgkill,
                            libc::getpid(),
                            s.tid.load(SeqCst),
                            kick_signal(),
                        );
                    }
                    next = next.min(now + RESIGNAL.as_nanos() as u64);
                } else {
                    next = next.min(d);
                }
            }
        }
        w.wakes_at.store(next, SeqCst);
        let now = now_ns();
        if next > now {
            std::thread::park_timeout(Duration::from_nanos(next - now));
        }
    }
}

/// A vCPU's deadline slot, watched by the process's watchdog thread.
pub struct Deadline {
    slot: Arc<Slot>,
}

impl Deadline {
    pub fn new() -> Deadline {
        let w = watchdog();
        let slot = Arc::new(Slot {
            tid: AtomicI32::new(0),
            deadline: AtomicU64::new(0),
        });
        let mut slots = w.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= 64 {
            slots.retain(|s| s.strong_count() > 0);
        }
        slots.push(Arc::downgrade(&slot));
        drop(slots);
        Deadline { slot }
    }

    /// The calling thread enters a run that must end within `timeout`. Returns the start, for
    /// [`Deadline::since`].
    pub fn arm(&self, timeout: Duration) -> u64 {
        let start = now_ns();
        let d = start + timeout.as_nanos().min(u128::from(u64::MAX / 2)) as u64;
        let tid = current_tid();
        if self.slot.tid.load(Relaxed) != tid {
            self.slot.tid.store(tid, Relaxed);
        }
        // SeqCst: the deadline is visible before `wakes_at` is read (see `watch`), and the
        // thread id before the deadline.
        self.slot.deadline.store(d, SeqCst);
        let w = &WATCHDOG;
        let wakes = w.wakes_at.load(SeqCst);
        // 0: the watchdog is scanning and may have missed this slot; an earlier deadline than
        // its next look: wake it so it sleeps until ours instead.
        if wakes == 0 || d < wakes {
            if let Some(t) = w.thread.get() {
                t.unpark();
            }
        }
        start
    }

    /// Time since `start` (a value [`Deadline::arm`] returned).
    pub fn since(start: u64) -> Duration {
        Duration::from_nanos(now_ns().saturating_sub(start))
    }

    /// The run ended.
    pub fn disarm(&self) {
        self.slot.deadline.store(0, Release);
    }
}

impl Default for Deadline {
    fn default() -> Self {
        Self::new()
    }
}

/// How one KVM_RUN ended, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// KVM_EXIT_IO, an OUT (the guest's signalling channel).
    IoOut {
        port: u16,
        data: Vec<u8>,
    },
    /// KVM_EXIT_IO, an IN.
    IoIn {
        port: u16,
        size: usize,
    },
    Hlt,
    /// KVM_EXIT_SHUTDOWN: triple fault.
    Shutdown,
    /// KVM_EXIT_INTERNAL_ERROR with its suberror and data words (api.rst 5, kvm_run).
    InternalError {
        suberror: u32,
        data: Vec<u64>,
    },
    /// KVM_EXIT_FAIL_ENTRY with the hardware reason.
    FailEntry {
        reason: u64,
        cpu: u32,
    },
    MmioRead {
        addr: u64,
        len: usize,
    },
    MmioWrite {
        addr: u64,
        data: Vec<u8>,
    },
    /// KVM_EXIT_X86_RDMSR (api.rst: kvm_run msr exit).
    RdMsr {
        index: u32,
        reason: u32,
    },
    /// KVM_EXIT_X86_WRMSR.
    WrMsr {
        index: u32,
        data: u64,
        reason: u32,
    },
    /// KVM_RUN did not return before the deadline.
    Timeout {
        after: Duration,
    },
    /// KVM_RUN itself failed.
    RunError {
        errno: Errno,
    },
    /// KVM_EXIT_SYSTEM_EVENT with its type (api.rst: KVM_SYSTEM_EVENT_SHUTDOWN 1, _RESET 2,
    /// _CRASH 3, ...), e.g. after a write of 1 to HV_X64_MSR_RESET.
    SystemEvent {
        kind: u32,
    },
    /// Any other exit reason, by number.
    Other {
        reason: u32,
    },
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::IoOut { port, data } => {
                write!(f, "KVM_EXIT_IO out port {port:#x} data {data:x?}")
            }
            Exit::IoIn { port, size } => write!(f, "KVM_EXIT_IO in port {port:#x} size {size}"),
            Exit::Hlt => write!(f, "KVM_EXIT_HLT"),
            Exit::Shutdown => write!(f, "KVM_EXIT_SHUTDOWN (triple fault)"),
            Exit::InternalError { suberror, data } => {
                write!(f, "KVM_EXIT_INTERNAL_ERROR suberror {suberror}")?;
                let name = match suberror {
                    1 => " (emulation failure)",
                    2 => " (simultaneous #PF)",
                    3 => " (delivery event)",
                    4 => " (unexpected exit reason)",
                    _ => "",
                };
                write!(f, "{name} data {data:#x?}")
            }
            Exit::FailEntry { reason, cpu } => {
                write!(
                    f,
                    "KVM_EXIT_FAIL_ENTRY hardware reason {reason:#x} on cpu {cpu}"
                )
            }
            Exit::MmioRead { addr, len } => write!(f, "KVM_EXIT_MMIO read {addr:#x} len {len}"),
            Exit::MmioWrite { addr, data } => write!(f, "KVM_EXIT_MMIO write {addr:#x} {data:x?}"),
            Exit::RdMsr { index, reason } => {
                write!(f, "KVM_EXIT_X86_RDMSR {index:#x} reason {reason:#x}")
            }
            Exit::WrMsr {
                index,
                data,
                reason,
            } => {
                write!(
                    f,
                    "KVM_EXIT_X86_WRMSR {index:#x} data {data:#x} reason {reason:#x}"
                )
            }
            Exit::Timeout { after } => write!(f, "guest still running after {after:?} (hang)"),
            Exit::RunError { errno } => write!(f, "KVM_RUN failed: {}", errno.text()),
            Exit::SystemEvent { kind } => {
                let name = match *kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => " (shutdown)",
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => " (reset)",
                    kvm_bindings::KVM_SYSTEM_EVENT_CRASH => " (crash)",
                    _ => "",
                };
                write!(f, "KVM_EXIT_SYSTEM_EVENT type {kind}{name}")
            }
            Exit::Other { reason } => write!(f, "exit reason {reason}"),
        }
    }
}

/// Translate the kvm_run area after KVM_RUN returned 0.
pub fn decode_exit(run: &kvm_bindings::kvm_run) -> Exit {
    use kvm_bindings::*;
    // SAFETY (all union reads below): KVM fills the union member named by `exit_reason`, and we
    // read only that member.
    unsafe {
        match run.exit_reason {
            KVM_EXIT_IO => {
                let io = run.__bindgen_anon_1.io;
                let size = io.size as usize * io.count as usize;
                if u32::from(io.direction) == KVM_EXIT_IO_OUT {
                    let base = (run as *const kvm_run)
                        .cast::<u8>()
                        .add(io.data_offset as usize);
                    let data = std::slice::from_raw_parts(base, size).to_vec();
                    Exit::IoOut {
                        port: io.port,
                        data,
                    }
                } else {
                    Exit::IoIn {
                        port: io.port,
                        size,
                    }
                }
            }
            KVM_EXIT_HLT => Exit::Hlt,
            KVM_EXIT_SHUTDOWN => Exit::Shutdown,
            KVM_EXIT_INTERNAL_ERROR => {
                let ie = run.__bindgen_anon_1.internal;
                let n = (ie.ndata as usize).min(ie.data.len());
                Exit::InternalError {
                    suberror: ie.suberror,
                    data: ie.data[..n].to_vec(),
                }
            }
            KVM_EXIT_FAIL_ENTRY => {
                let fe = run.__bindgen_anon_1.fail_entry;
                Exit::FailEntry {
                    reason: fe.hardware_entry_failure_reason,
                    cpu: fe.cpu,
                }
            }
            KVM_EXIT_MMIO => {
                let m = run.__bindgen_anon_1.mmio;
                if m.is_write != 0 {
                    Exit::MmioWrite {
                        addr: m.phys_addr,
                        data: m.data[..m.len as usize].to_vec(),
                    }
                } else {
                    Exit::MmioRead {
                        addr: m.phys_addr,
                        len: m.len as usize,
                    }
                }
            }
            KVM_EXIT_X86_RDMSR => {
                let m = run.__bindgen_anon_1.msr;
                Exit::RdMsr {
                    index: m.index,
                    reason: m.reason,
                }
            }
            KVM_EXIT_X86_WRMSR => {
                let m = run.__bindgen_anon_1.msr;
                Exit::WrMsr {
                    index: m.index,
                    data: m.data,
                    reason: m.reason,
                }
            }
            KVM_EXIT_SYSTEM_EVENT => Exit::SystemEvent {
                kind: run.__bindgen_anon_1.system_event.type_,
            },
            other => Exit::Other { reason: other },
        }
    }
}
