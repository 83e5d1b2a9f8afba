//! Errors that reach a user: each names the problem and what to do about it.

use std::fmt;
use std::path::PathBuf;

/// Everything that can stop the suite before a check gets to give a verdict.
#[derive(Debug)]
pub enum Error {
    /// `/dev/kvm` (or the device named by `KVM_MSR_DEVICE`) does not exist.
    KvmMissing { path: PathBuf },
    /// The device exists but this user may not open it read/write.
    KvmPermission { path: PathBuf, detail: String },
    /// `KVM_GET_API_VERSION` is not the stable 12 (api.rst 4.1).
    KvmApiVersion { found: i32 },
    /// Opening the device failed for another reason.
    KvmOpen { path: PathBuf, errno: i32 },
    /// An ioctl that the harness needs (not the one under test) failed.
    Ioctl { what: &'static str, errno: i32 },
    /// A fixture file could not be read or does not follow its schema.
    Fixture {
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// Bad command-line input that clap cannot see (e.g. an unknown format).
    Usage(String),
}

pub type Result<T> = std::result::Result<T, Error>;

fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
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
                write!(f, "cannot open {}: {}", path.display(), errno_text(*errno))
            }
            Error::Ioctl { what, errno } => {
                write!(f, "{what} failed: {} (errno {errno})", errno_text(*errno))
            }
            Error::Fixture {
                file,
                line,
                message,
            } => match line {
                Some(l) => write!(f, "{}:{l}: {message}", file.display()),
                None => write!(f, "{}: {message}", file.display()),
            },
            Error::Usage(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// Wrap an errno from kvm-ioctls.
    pub fn ioctl(what: &'static str, e: vmm_sys_util::errno::Error) -> Self {
        Error::Ioctl {
            what,
            errno: e.errno(),
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
