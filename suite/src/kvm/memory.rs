//! Guest memory: one anonymous mapping registered as memory slot 0 at guest physical address 0.

use crate::error::{Errno, Error, Result};

pub struct GuestMemory {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value; access goes through &self/&mut self methods that
// bounds-check every offset. Moving it to another thread moves that ownership.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    pub fn new(len: usize) -> Result<Self> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Ioctl {
                what: "mmap of guest memory",
                errno: Errno::last(),
            });
        }
        Ok(GuestMemory {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn host_addr(&self) -> u64 {
        self.ptr as u64
    }

    fn check(&self, gpa: u64, n: usize) -> usize {
        let off = usize::try_from(gpa).expect("guest address fits usize");
        assert!(
            off.checked_add(n).is_some_and(|end| end <= self.len),
            "guest access {gpa:#x}+{n} out of bounds"
        );
        off
    }

    pub fn write(&mut self, gpa: u64, bytes: &[u8]) {
        let off = self.check(gpa, bytes.len());
        // SAFETY: `check` proved [off, off + len) lies inside the mapping we own.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off), bytes.len()) }
    }

    pub fn read(&self, gpa: u64, out: &mut [u8]) {
        let off = self.check(gpa, out.len());
        // SAFETY: `check` proved [off, off + len) lies inside the mapping we own.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr(), out.len()) }
    }

    pub fn write_u64(&mut self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes())
    }

    pub fn read_u64(&self, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b);
        u64::from_le_bytes(b)
    }

    /// Zero a range.
    pub fn fill(&mut self, gpa: u64, n: usize, byte: u8) {
        let off = self.check(gpa, n);
        // SAFETY: `check` proved [off, off + n) lies inside the mapping we own.
        unsafe { std::ptr::write_bytes(self.ptr.add(off), byte, n) }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the mapping created in `new`, unmapped once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}
