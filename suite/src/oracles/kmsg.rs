//! The kernel-log oracle (needs read access to /dev/kmsg, normally root): no new
//! WARNING/BUG/KASAN/UBSAN/"general protection fault" record and no change of the taint mask
//! (/proc/sys/kernel/tainted) while an input ran. A kernel splat is a finding even when every
//! other oracle held.
//!
//! The records are the oracle; the taint mask is its backstop. Every path that taints the kernel
//! for a kernel bug logs its record first: `__warn` prints "WARNING:" before
//! `add_taint(TAINT_WARN)`, `oops_end`/`die` the Oops before TAINT_DIE, `bad_page` its "BUG: Bad
//! page state" before TAINT_BAD_PAGE, the soft-lockup detector its "BUG: soft lockup" before
//! TAINT_SOFTLOCKUP (kernel/panic.c, mm/page_alloc.c, kernel/watchdog.c); `add_taint` itself logs
//! nothing. A fuzz target checks after every input, and a read of the taint costs a trip through
//! the sysctl handler (~1 us, ~1 % of the `host` target's loop), so `KmsgWatch::sampling_taint`
//! reads it only when /dev/kmsg has a new record of any kind, and otherwise every n-th check: a
//! taint change without a record is still found, at most n checks late, and says so.

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
    /// Read the taint at every `taint_every`-th check, and at any check that read a record.
    taint_every: u32,
    /// Checks since the taint was last read.
    since_taint: u32,
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
    /// Open /dev/kmsg positioned after the newest record; every check reads the taint too.
    pub fn new() -> std::io::Result<KmsgWatch> {
        Self::open("/dev/kmsg", "/proc/sys/kernel/tainted", 1)
    }

    /// `new`, but a check reads the taint only when /dev/kmsg had a new record, or when it is
    /// the `every`-th check since the last read (the module's doc says why that loses nothing).
    pub fn sampling_taint(every: u32) -> std::io::Result<KmsgWatch> {
        Self::open("/dev/kmsg", "/proc/sys/kernel/tainted", every)
    }

    fn open(kmsg: &str, tainted: &str, taint_every: u32) -> std::io::Result<KmsgWatch> {
        let mut kmsg = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(kmsg)?;
        kmsg.seek(SeekFrom::End(0))?;
        let tainted = File::open(tainted).ok();
        Ok(KmsgWatch {
            taint: taint(tainted.as_ref(), &mut [0; 32]).to_string(),
            kmsg,
            taint_every: taint_every.max(1),
            since_taint: 0,
            tainted,
            record: vec![0; 8192],
        })
    }

    /// Records logged since the last call that carry a marker, and a taint change.
    pub fn check(&mut self) -> Result<(), Violation> {
        let mut found = Vec::new();
        let mut records = 0;
        loop {
            // Each read returns one record; EAGAIN means no more.
            match self.kmsg.read(&mut self.record) {
                Ok(0) => break,
                Ok(n) => {
                    records += 1;
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
        self.since_taint += 1;
        if records == 0 && self.since_taint < self.taint_every {
            return Ok(());
        }
        let late = self.since_taint;
        self.since_taint = 0;
        let mut buf = [0; 32];
        let now = taint(self.tainted.as_ref(), &mut buf);
        if found.is_empty() && now == self.taint {
            return Ok(());
        }
        let now = now.to_string();
        let before = std::mem::replace(&mut self.taint, now.clone());
        let when = if records == 0 && late > 1 {
            format!(" (no record came with it; the taint changed within the last {late} checks)")
        } else {
            String::new()
        };
        Err(Violation {
            oracle: "kernel-log",
            msr: None,
            expected: format!("no WARNING/BUG/KASAN record and taint {before}"),
            actual: format!("taint {now}{when}; records: {}", found.join(" | ")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp dir of its own per test, removed when dropped.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new() -> Dir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("kvm-msr-kmsg-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A watch over two temp files standing in for /dev/kmsg and the taint mask.
    fn files(every: u32) -> (Dir, KmsgWatch) {
        let dir = Dir::new();
        std::fs::write(dir.path("kmsg"), "6,1,0,-;old record\n").unwrap();
        std::fs::write(dir.path("tainted"), "0\n").unwrap();
        let w = KmsgWatch::open(
            dir.path("kmsg").to_str().unwrap(),
            dir.path("tainted").to_str().unwrap(),
            every,
        )
        .unwrap();
        (dir, w)
    }

    fn append(path: &std::path::Path, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn every_check_reads_the_taint_by_default() {
        let (dir, mut w) = files(1);
        assert!(w.check().is_ok());
        std::fs::write(dir.path("tainted"), "512\n").unwrap();
        let v = w.check().unwrap_err();
        assert!(v.actual.starts_with("taint 512;"), "{}", v.actual);
        assert!(w.check().is_ok(), "the new mask is the baseline");
    }

    #[test]
    fn a_sampled_taint_change_is_found_within_its_period_and_says_so() {
        let (dir, mut w) = files(4);
        std::fs::write(dir.path("tainted"), "512\n").unwrap();
        for _ in 0..3 {
            assert!(w.check().is_ok(), "not read before the 4th check");
        }
        let v = w.check().unwrap_err();
        assert!(
            v.actual.contains("within the last 4 checks"),
            "{}",
            v.actual
        );
    }

    #[test]
    fn any_new_record_makes_a_sampling_watch_read_the_taint_at_once() {
        let (dir, mut w) = files(1000);
        assert!(w.check().is_ok());
        std::fs::write(dir.path("tainted"), "512\n").unwrap();
        append(&dir.path("kmsg"), "6,2,0,-;an ordinary record\n");
        let v = w.check().unwrap_err();
        assert!(v.actual.starts_with("taint 512;"), "{}", v.actual);
        assert!(!v.actual.contains("within the last"), "{}", v.actual);
        // A marker record is a finding without a taint change, sampling or not.
        append(
            &dir.path("kmsg"),
            "4,3,0,-;WARNING: CPU: 0 PID: 1 at x86.c\n",
        );
        let v = w.check().unwrap_err();
        assert!(v.actual.contains("WARNING: CPU: 0"), "{}", v.actual);
    }

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
