//! The kernel-log oracle (needs read access to /dev/kmsg, normally root): no new
//! WARNING/BUG/KASAN/UBSAN/"general protection fault" record and no change of the taint mask
//! (/proc/sys/kernel/tainted) while an input ran. A kernel splat is a finding even when every
//! other oracle held.

use super::Violation;
use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

/// Markers of a kernel problem in a printk record.
pub const MARKERS: &[&str] = &[
    "WARNING:",
    "BUG:",
    "KASAN:",
    "UBSAN:",
    "general protection fault",
    "kernel BUG",
    "Oops:",
];

/// The tag of records the suite's own tests plant in /dev/kmsg: "<tag><pid>: ...". Such a record
/// counts only for the process it names, so a test that plants one for a `kvm-msr report` it
/// watches does not fail a fuzz campaign or another report running beside it. No kernel code
/// logs this text.
pub const PLANTED_TAG: &str = "kvm-msr-suite test record for pid ";

/// Whether `text` is a record a test planted for another process than this one.
fn planted_for_another(text: &str) -> bool {
    text.split_once(PLANTED_TAG)
        .and_then(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u32>()
                .ok()
        })
        .is_some_and(|pid| pid != std::process::id())
}

pub struct KmsgWatch {
    kmsg: File,
    /// /proc/sys/kernel/tainted, kept open: a read at offset 0 renders the current mask, so each
    /// check costs one pread instead of an open, a read and a close (a few percent of a fuzz
    /// target's time).
    tainted: Option<File>,
    taint: String,
    /// Room for one record (a /dev/kmsg read returns one, of at most CONSOLE_EXT_LOG_MAX, 8192
    /// bytes), kept so that a check that finds nothing new allocates nothing: the fuzz targets
    /// check after every input.
    record: Vec<u8>,
}

/// The taint mask as /proc/sys/kernel/tainted renders it ("" where it cannot be read), in `buf`.
fn taint<'b>(file: Option<&File>, buf: &'b mut [u8; 32]) -> &'b str {
    use std::os::unix::fs::FileExt;
    match file.map(|f| f.read_at(buf, 0)) {
        Some(Ok(n)) => std::str::from_utf8(&buf[..n]).map_or("(not text)", str::trim),
        _ => "",
    }
}

impl KmsgWatch {
    /// Open /dev/kmsg positioned after the newest record.
    pub fn new() -> std::io::Result<KmsgWatch> {
        let mut kmsg = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        kmsg.seek(SeekFrom::End(0))?;
        let tainted = File::open("/proc/sys/kernel/tainted").ok();
        Ok(KmsgWatch {
            taint: taint(tainted.as_ref(), &mut [0; 32]).to_string(),
            kmsg,
            tainted,
            record: vec![0; 8192],
        })
    }

    /// Records logged since the last call that carry a marker, and a taint change.
    pub fn check(&mut self) -> Result<(), Violation> {
        let mut found = Vec::new();
        loop {
            // Each read returns one record; EAGAIN means no more.
            match self.kmsg.read(&mut self.record) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&self.record[..n]);
                    let text = rec.split_once(';').map(|(_, t)| t).unwrap_or(&rec);
                    if MARKERS.iter().any(|m| text.contains(m)) && !planted_for_another(text) {
                        found.push(text.lines().next().unwrap_or("").to_string());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // EPIPE: records were overwritten; carry on from the next one.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        let mut buf = [0; 32];
        let now = taint(self.tainted.as_ref(), &mut buf);
        if found.is_empty() && now == self.taint {
            return Ok(());
        }
        let now = now.to_string();
        let before = std::mem::replace(&mut self.taint, now.clone());
        Err(Violation {
            oracle: "kernel-log",
            msr: None,
            expected: format!("no WARNING/BUG/KASAN record and taint {before}"),
            actual: format!("taint {now}; records: {}", found.join(" | ")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_records_count_only_for_their_process() {
        let me = std::process::id();
        assert!(!planted_for_another(&format!(
            "WARNING: {PLANTED_TAG}{me}: x"
        )));
        assert!(planted_for_another(&format!(
            "WARNING: {PLANTED_TAG}{}: x",
            me + 1
        )));
        assert!(!planted_for_another(
            "WARNING: CPU: 1 PID: 77 at arch/x86/kvm/x86.c"
        ));
        assert!(!planted_for_another(&format!(
            "WARNING: {PLANTED_TAG}: no pid"
        )));
    }
}
