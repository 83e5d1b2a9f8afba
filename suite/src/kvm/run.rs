//! KVM_RUN with a deadline, and exits turned into owned values a check can report.
//!
//! A hung guest must become a verdict, not a hung test run: before KVM_RUN a per-vCPU POSIX timer
//! is armed to signal the calling thread (SIGEV_THREAD_ID). The signal handler does nothing; the
//! signal makes KVM_RUN return EINTR (api.rst 4.10). The timer repeats every few milliseconds so a
//! signal that lands just before the thread enters KVM_RUN is followed by another.

use std::sync::Once;
use std::time::{Duration, Instant};

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

/// A timer that signals one thread.
pub struct Watchdog {
    timer: libc::timer_t,
}

// SAFETY: a timer_t is a kernel handle; it may be armed from any thread. The timer targets the
// thread id captured at creation, which `Vcpu::run` refreshes before each use.
unsafe impl Send for Watchdog {}

impl Watchdog {
    /// A timer aimed at the calling thread.
    pub fn for_current_thread() -> std::io::Result<Self> {
        install_handler();
        // SAFETY: zeroed sigevent is a valid starting point; we fill the fields Linux reads for
        // SIGEV_THREAD_ID. gettid has no preconditions.
        unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = kick_signal();
            sev.sigev_notify_thread_id = libc::gettid();
            let mut timer: libc::timer_t = std::mem::zeroed();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Watchdog { timer })
        }
    }

    fn set(&self, first: Duration, every: Duration) {
        let ts = |d: Duration| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts(every),
            it_value: ts(first),
        };
        // SAFETY: `self.timer` is a live timer created in `for_current_thread`.
        unsafe {
            libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut());
        }
    }

    pub fn arm(&self, timeout: Duration) {
        self.set(timeout, Duration::from_millis(5));
    }

    pub fn disarm(&self) {
        self.set(Duration::ZERO, Duration::ZERO);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // SAFETY: deletes the timer created in `for_current_thread`, once.
        unsafe {
            libc::timer_delete(self.timer);
        }
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
        errno: i32,
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
            Exit::RunError { errno } => {
                write!(
                    f,
                    "KVM_RUN failed: {}",
                    std::io::Error::from_raw_os_error(*errno)
                )
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
            other => Exit::Other { reason: other },
        }
    }
}

/// Time spent, for the Timeout report.
pub fn elapsed_since(t: Instant) -> Duration {
    t.elapsed()
}
