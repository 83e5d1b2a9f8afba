//! The kernel-log oracle (opt-in, needs read access to /dev/kmsg, normally root): no new
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

pub struct KmsgWatch {
    kmsg: File,
    taint: String,
}

fn taint() -> String {
    std::fs::read_to_string("/proc/sys/kernel/tainted")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl KmsgWatch {
    /// Open /dev/kmsg positioned after the newest record.
    pub fn new() -> std::io::Result<KmsgWatch> {
        let mut kmsg = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        kmsg.seek(SeekFrom::End(0))?;
        Ok(KmsgWatch {
            kmsg,
            taint: taint(),
        })
    }

    /// Records logged since the last call that carry a marker, and a taint change.
    pub fn check(&mut self) -> Result<(), Violation> {
        let mut found = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            // Each read returns one record; EAGAIN means no more.
            match self.kmsg.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let text = rec.split_once(';').map(|(_, t)| t).unwrap_or(&rec);
                    if MARKERS.iter().any(|m| text.contains(m)) {
                        found.push(text.lines().next().unwrap_or("").to_string());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // EPIPE: records were overwritten; carry on from the next one.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        let now = taint();
        let changed = now != self.taint;
        let before = std::mem::replace(&mut self.taint, now.clone());
        if found.is_empty() && !changed {
            return Ok(());
        }
        Err(Violation {
            oracle: "kernel-log",
            msr: None,
            expected: format!("no WARNING/BUG/KASAN record and taint {before}"),
            actual: format!("taint {now}; records: {}", found.join(" | ")),
        })
    }
}
