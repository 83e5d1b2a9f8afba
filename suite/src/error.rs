//! Errors that reach a user: each names the problem and what to do about it. Also the errno
//! every ioctl result carries ([`Errno`]).

use std::fmt;
use std::path::PathBuf;

/// An errno as a failed system call left it. It prints as its number (`22`), with `{}` and
/// `{:?}` alike, as check details have always shown errnos ("errno 22", `Err(22)`); `text()` is
/// the C library's description.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EINTR: Errno = Errno(libc::EINTR);
    pub const ENXIO: Errno = Errno(libc::ENXIO);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EFAULT: Errno = Errno(libc::EFAULT);
    pub const ENODEV: Errno = Errno(libc::ENODEV);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENOTTY: Errno = Errno(libc::ENOTTY);

    /// The errno the calling thread's last failed system call left (-1 if there is none).
    pub fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    }

    /// The number C code finds in `errno` after a call that may have failed: 0 for none.
    pub fn number(e: Option<Errno>) -> i32 {
        e.map_or(0, |e| e.0)
    }

    /// The C library's description, e.g. "Invalid argument (os error 22)".
    pub fn text(self) -> String {
        std::io::Error::from_raw_os_error(self.0).to_string()
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<vmm_sys_util::errno::Error> for Errno {
    fn from(e: vmm_sys_util::errno::Error) -> Errno {
        Errno(e.errno())
    }
}

/// Everything that can stop the suite before a check gets to give a verdict.
#[derive(Clone, Debug)]
pub enum Error {
    /// `/dev/kvm` (or the device named by `KVM_MSR_DEVICE`) does not exist.
    KvmMissing { path: PathBuf },
    /// The device exists but this user may not open it read/write.
    KvmPermission { path: PathBuf, detail: String },
    /// `KVM_GET_API_VERSION` is not the stable 12 (api.rst 4.1).
    KvmApiVersion { found: i32 },
    /// Opening the device failed for another reason.
    KvmOpen { path: PathBuf, errno: Errno },
    /// An ioctl that the harness needs (not the one under test) failed.
    Ioctl { what: &'static str, errno: Errno },
    /// The harness's own access to an MSR (setting up a machine, resetting a pooled vCPU)
    /// failed at MSR `index`: with the errno when the ioctl failed, without when it returned a
    /// count that ends before this entry (KVM refused it: api.rst 4.18, 4.19).
    Msr {
        what: &'static str,
        index: u32,
        errno: Option<Errno>,
    },
    /// An MSR the harness wrote reads back another value (the pool's proof of a reset).
    MsrReadBack {
        what: &'static str,
        index: u32,
        read: u64,
        want: u64,
    },
    /// A fixture file could not be read or does not follow its schema.
    Fixture {
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// A file given on the command line (a probe, a report, a benchmark summary, a fuzzer
    /// input) could not be read or is not what the command takes.
    Input {
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// A part of the harness itself stopped working (e.g. a helper thread ended).
    Internal(&'static str),
}

pub type Result<T> = std::result::Result<T, Error>;

/// An MSR in a message: its name where the harness has one (`msr_index`), and its index.
fn msr_name(index: u32) -> String {
    match crate::msr_index::name(index) {
        Some(n) => format!("{n} ({index:#x})"),
        None => format!("{index:#x}"),
    }
}

/// `file:line: message`, or `file: message` without a line.
fn at_line(
    f: &mut fmt::Formatter<'_>,
    file: &std::path::Path,
    line: Option<usize>,
    message: &str,
) -> fmt::Result {
    match line {
        Some(l) => write!(f, "{}:{l}: {message}", file.display()),
        None => write!(f, "{}: {message}", file.display()),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::KvmMissing { path } => write!(
                f,
                "KVM is not available on this host: {} does not exist. Load the kvm module and its \
                 backend (kvm_intel, kvm_amd or kvm_pvm), or run on a machine with hardware \
                 virtualization enabled.",
                path.display()
            ),
            Error::KvmPermission { path, detail } => write!(
                f,
                "permission denied opening {} read/write: {detail}.",
                path.display()
            ),
            Error::KvmApiVersion { found } => write!(
                f,
                "KVM_GET_API_VERSION returned {found}, expected 12 (api.rst 4.1: the stable API). \
                 This kernel's KVM is not supported."
            ),
            Error::KvmOpen { path, errno } => {
                write!(f, "cannot open {}: {}", path.display(), errno.text())
            }
            Error::Ioctl { what, errno } => {
                write!(f, "{what} failed: {} (errno {errno})", errno.text())
            }
            Error::Msr {
                what,
                index,
                errno: Some(errno),
            } => write!(
                f,
                "{what} failed at MSR {}: {} (errno {errno})",
                msr_name(*index),
                errno.text()
            ),
            Error::Msr {
                what,
                index,
                errno: None,
            } => write!(
                f,
                "{what} stopped at MSR {}: KVM refused that entry",
                msr_name(*index)
            ),
            Error::MsrReadBack {
                what,
                index,
                read,
                want,
            } => write!(
                f,
                "{what}: MSR {} reads {read:#x}, not the {want:#x} written",
                msr_name(*index)
            ),
            Error::Fixture {
                file,
                line,
                message,
            }
            | Error::Input {
                file,
                line,
                message,
            } => at_line(f, file, *line, message),
            Error::Internal(what) => write!(f, "harness: {what}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// Wrap an errno from kvm-ioctls.
    pub fn ioctl(what: &'static str, e: vmm_sys_util::errno::Error) -> Self {
        Error::Ioctl {
            what,
            errno: e.into(),
        }
    }

    /// A file given on the command line, with the line where it goes wrong if known.
    pub fn input(
        file: impl Into<PathBuf>,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        Error::Input {
            file: file.into(),
            line,
            message: message.into(),
        }
    }

    /// True when the error means "no usable KVM here" (a skip, not a failure, unless KVM is
    /// required).
    pub fn is_kvm_unavailable(&self) -> bool {
        matches!(
            self,
            Error::KvmMissing { .. } | Error::KvmPermission { .. } | Error::KvmOpen { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_errno_prints_as_its_number() {
        // Check details have always shown errnos as numbers ("errno 22", `Err(22)`).
        assert_eq!(format!("errno {}", Errno::EINVAL), "errno 22");
        assert_eq!(format!("{:?}", Err::<(), _>(Errno::E2BIG)), "Err(7)");
        assert_eq!(format!("{:?}", Some(Errno::EINTR)), "Some(4)");
        assert_eq!(Errno::EINVAL.text(), "Invalid argument (os error 22)");
        assert_eq!(Errno::number(None), 0);
        assert_eq!(Errno::number(Some(Errno::EFAULT)), 14);
    }

    #[test]
    fn an_msr_error_names_the_msr_and_the_errno() {
        let refused = Error::Msr {
            what: "setup x2apic-mode: KVM_SET_MSRS",
            index: crate::msr_index::IA32_APIC_BASE,
            errno: None,
        };
        assert_eq!(
            refused.to_string(),
            "setup x2apic-mode: KVM_SET_MSRS stopped at MSR IA32_APIC_BASE (0x1b): KVM refused that entry"
        );
        let failed = Error::Msr {
            what: "KVM_GET_MSRS",
            index: 0x1234,
            errno: Some(Errno::E2BIG),
        };
        assert_eq!(
            failed.to_string(),
            "KVM_GET_MSRS failed at MSR 0x1234: Argument list too long (os error 7) (errno 7)"
        );
        let read_back = Error::MsrReadBack {
            what: "pool reset",
            index: crate::msr_index::IA32_PAT,
            read: 0,
            want: 0x0007_0406_0007_0406,
        };
        assert_eq!(
            read_back.to_string(),
            "pool reset: MSR IA32_PAT (0x277) reads 0x0, not the 0x7040600070406 written"
        );
    }

    #[test]
    fn an_input_error_names_the_file_and_line() {
        assert_eq!(
            Error::input("a.json", Some(3), "bad").to_string(),
            "a.json:3: bad"
        );
        assert_eq!(
            Error::input("a.json", None, "bad").to_string(),
            "a.json: bad"
        );
    }
}
