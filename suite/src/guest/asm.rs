//! Machine code written byte by byte, with the instruction beside each line.
//!
//! `Asm` does no encoding: every opcode, ModRM and immediate byte is written by hand at the call
//! site. The only thing it computes is the displacement of a branch to a named label, so code can
//! change without hand-recounting offsets. The listing it keeps (instruction text per line, labels
//! named as such) is what a unit test disassembles the bytes against.

use std::collections::BTreeMap;

/// One instruction: where it starts, its bytes and the intended instruction.
#[derive(Clone, Debug)]
pub struct Line {
    pub addr: u64,
    pub bytes: Vec<u8>,
    /// Intel syntax as iced-x86 prints it (see the disassembly test), with branch targets written
    /// as label names.
    pub text: String,
    /// Bytes that are not one instruction (the forced-emulation prefix); the disassembly test
    /// checks them separately.
    pub data: bool,
}

enum Fixup {
    Rel8 {
        at: usize,
        end: usize,
        label: &'static str,
    },
    Rel32 {
        at: usize,
        end: usize,
        label: &'static str,
    },
}

/// Assembled code: bytes, listing and label addresses.
#[derive(Clone, Debug)]
pub struct Code {
    pub base: u64,
    pub bytes: Vec<u8>,
    pub lines: Vec<Line>,
    pub labels: BTreeMap<&'static str, u64>,
}

impl Code {
    pub fn label(&self, name: &str) -> u64 {
        *self
            .labels
            .get(name)
            .unwrap_or_else(|| panic!("no label {name}"))
    }

    /// The listing, one instruction per line, for humans.
    pub fn listing(&self) -> String {
        let mut by_addr: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        for (n, a) in &self.labels {
            by_addr.entry(*a).or_default().push(n);
        }
        let mut out = String::new();
        for l in &self.lines {
            for n in by_addr.get(&l.addr).into_iter().flatten() {
                out.push_str(&format!("{n}:\n"));
            }
            let hex: Vec<String> = l.bytes.iter().map(|b| format!("{b:02x}")).collect();
            out.push_str(&format!(
                "  {:#07x}  {:<24} {}\n",
                l.addr,
                hex.join(" "),
                l.text
            ));
        }
        out
    }
}

pub struct Asm {
    base: u64,
    bytes: Vec<u8>,
    lines: Vec<Line>,
    labels: BTreeMap<&'static str, u64>,
    fixups: Vec<Fixup>,
}

impl Asm {
    pub fn new(base: u64) -> Self {
        Asm {
            base,
            bytes: Vec::new(),
            lines: Vec::new(),
            labels: BTreeMap::new(),
            fixups: Vec::new(),
        }
    }

    pub fn here(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    pub fn label(&mut self, name: &'static str) -> &mut Self {
        let here = self.here();
        assert!(
            self.labels.insert(name, here).is_none(),
            "label {name} defined twice"
        );
        self
    }

    /// One instruction, all bytes given.
    pub fn i(&mut self, bytes: &[u8], text: &str) -> &mut Self {
        self.lines.push(Line {
            addr: self.here(),
            bytes: bytes.to_vec(),
            text: text.to_string(),
            data: false,
        });
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// Raw bytes that are not an instruction of their own, with what they are.
    pub fn data(&mut self, bytes: &[u8], text: &str) -> &mut Self {
        self.lines.push(Line {
            addr: self.here(),
            bytes: bytes.to_vec(),
            text: text.to_string(),
            data: true,
        });
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// A short branch: `opcode` then a rel8 to `label` (e.g. 0xeb jmp, 0x74 je, 0x75 jne).
    pub fn br8(&mut self, opcode: u8, label: &'static str, text: &str) -> &mut Self {
        let at = self.bytes.len() + 1;
        self.i(&[opcode, 0], text);
        self.fixups.push(Fixup::Rel8 {
            at,
            end: at + 1,
            label,
        });
        self
    }

    /// A near branch: `opcode` bytes then a rel32 to `label` (e.g. `[0xe9]` jmp).
    pub fn br32(&mut self, opcode: &[u8], label: &'static str, text: &str) -> &mut Self {
        let at = self.bytes.len() + opcode.len();
        let mut b = opcode.to_vec();
        b.extend_from_slice(&[0; 4]);
        self.i(&b, text);
        self.fixups.push(Fixup::Rel32 {
            at,
            end: at + 4,
            label,
        });
        self
    }

    pub fn finish(mut self) -> Code {
        for f in std::mem::take(&mut self.fixups) {
            match f {
                Fixup::Rel8 { at, end, label } => {
                    let t = self.labels[label] as i64 - (self.base + end as u64) as i64;
                    let d = i8::try_from(t)
                        .unwrap_or_else(|_| panic!("branch to {label} out of rel8 range"));
                    self.bytes[at] = d as u8;
                }
                Fixup::Rel32 { at, end, label } => {
                    let t = self.labels[label] as i64 - (self.base + end as u64) as i64;
                    let d = i32::try_from(t).expect("rel32 in range");
                    self.bytes[at..end].copy_from_slice(&d.to_le_bytes());
                }
            }
        }
        // Re-slice the line bytes now that branch displacements are final.
        for l in &mut self.lines {
            let off = (l.addr - self.base) as usize;
            l.bytes = self.bytes[off..off + l.bytes.len()].to_vec();
        }
        Code {
            base: self.base,
            bytes: self.bytes,
            lines: self.lines,
            labels: self.labels,
        }
    }
}
