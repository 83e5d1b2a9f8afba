//! The guest's machine code: 32 exception entry stubs, the common handler, and the MSR-op
//! interpreter. Every instruction is written byte by byte with its text beside it; the test in
//! `tests` (bottom of this file) disassembles each line with iced-x86 and compares.
//!
//! Register conventions while the interpreter runs:
//!   rsi  current operation record (see `program::RECORD_SIZE` for its layout)
//!   r10  address of the guarded RDMSR/WRMSR that may fault
//!   r11  where to resume after it faults (the instruction after it)
//!   r12  the forced-emulation prefix before it, in the `_fep` interpreter (0 otherwise)
//! An exception whose RIP is r10 (or r12) is expected: the handler records vector and error code in the
//! record and resumes at r11. Any other exception is reported through the mailbox and the
//! PORT_UNEXPECTED exit (like KVM selftests' KVM_ASM_SAFE, in general-purpose registers only).

use super::asm::{Asm, Code};
use super::layout::{LOOP_PARAMS, MAILBOX, OPS, PORT_DONE, PORT_UNEXPECTED};
use super::msr_loop as lp;

/// Exceptions that push an error code (SDM vol. 3A, table 6-1; APM vol. 2 table 8-1).
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// Label of exception stub `v`.
pub fn stub_label(v: u8) -> &'static str {
    const L: [&str; 32] = [
        "vec0", "vec1", "vec2", "vec3", "vec4", "vec5", "vec6", "vec7", "vec8", "vec9", "vec10",
        "vec11", "vec12", "vec13", "vec14", "vec15", "vec16", "vec17", "vec18", "vec19", "vec20",
        "vec21", "vec22", "vec23", "vec24", "vec25", "vec26", "vec27", "vec28", "vec29", "vec30",
        "vec31",
    ];
    L[v as usize]
}

/// Record field offsets the code uses (see `program` for the layout).
const _: () = assert!(super::program::RECORD_SIZE == 0x20);

/// Assemble the runtime at `base`. Entry points: labels `interpreter` (and `interpreter_fep`),
/// `msr_loop`, and the misbehaviours.
///
/// After signalling PORT_DONE both the interpreter and the MSR loop jump back to their entry, so
/// the next KVM_RUN runs the same program again without KVM_SET_REGS (see `Machine`).
pub fn runtime(base: u64) -> Code {
    let mut a = Asm::new(base);
    exception_stubs(&mut a);
    common_handler(&mut a);
    interpreter(&mut a, &PLAIN);
    interpreter(&mut a, &FEP);
    msr_loop(&mut a);
    misbehaviour(&mut a);
    a.finish()
}

/// rdtsc; rdx:rax -> rax.
fn read_tsc(a: &mut Asm) {
    a.i(&[0x0f, 0x31], "rdtsc");
    a.i(&[0x48, 0xc1, 0xe2, 0x20], "shl rdx,0x20");
    a.i(&[0x48, 0x09, 0xd0], "or rax,rdx");
}

/// The benchmark loop (kvm-unit-tests' vmexit test does the same): read the parameter block at
/// LOOP_PARAMS (`msr_loop` module: kind, index, value, count >= 1), read the TSC, run `count`
/// iterations of RDMSR, WRMSR or nothing, read the TSC again, store the difference, OUT to
/// PORT_DONE. The three loops differ only in the MSR instruction, so the empty loop is the
/// reference for loop overhead. r10/r11 guard the loop's MSR instruction once, before the first
/// TSC read: a fault (an unknown MSR) is recorded in the fixup record and the loop goes on.
fn msr_loop(a: &mut Asm) {
    let p = (LOOP_PARAMS as u32).to_le_bytes();
    a.label("msr_loop");
    a.i(
        &[0xbb, p[0], p[1], p[2], p[3]],
        &format!("mov ebx,{LOOP_PARAMS:#x}"),
    );
    a.i(&[0x48, 0x8d, 0x73, lp::FIXUP_RECORD], "lea rsi,[rbx+0x40]");
    a.i(&[0x4c, 0x8b, 0x43, lp::COUNT], "mov r8,[rbx+0x10]");
    a.i(&[0x8b, 0x0b], "mov ecx,[rbx]"); // lp::INDEX == 0
    a.i(&[0x8b, 0x7b, lp::KIND], "mov edi,[rbx+4]");
    a.i(&[0x83, 0xff, 0x01], "cmp edi,1");
    a.br8(0x74, "loop_rdmsr_start", "je loop_rdmsr_start");
    a.i(&[0x83, 0xff, 0x02], "cmp edi,2");
    a.br8(0x74, "loop_wrmsr_start", "je loop_wrmsr_start");
    loop_variant(a, "loop_empty_start", "loop_empty", None);
    a.br8(0xeb, "loop_end", "jmp loop_end");
    loop_variant(
        a,
        "loop_rdmsr_start",
        "loop_rdmsr",
        Some(([0x0f, 0x32], "rdmsr")),
    );
    a.br8(0xeb, "loop_end", "jmp loop_end");
    loop_variant(
        a,
        "loop_wrmsr_start",
        "loop_wrmsr",
        Some(([0x0f, 0x30], "wrmsr")),
    );
    a.label("loop_end");
    read_tsc(a);
    a.i(&[0x4c, 0x29, 0xc8], "sub rax,r9");
    a.i(&[0x48, 0x89, 0x43, lp::TSC_CYCLES], "mov [rbx+0x18],rax");
    a.i(&[0xe6, PORT_DONE as u8], &format!("out {PORT_DONE:#x},al"));
    a.br32(&[0xe9], "msr_loop", "jmp msr_loop");
}

fn loop_variant(
    a: &mut Asm,
    start: &'static str,
    body: &'static str,
    insn: Option<([u8; 2], &str)>,
) {
    a.label(start);
    read_tsc(a);
    a.i(&[0x49, 0x89, 0xc1], "mov r9,rax");
    a.i(&[0x8b, 0x43, lp::VALUE], "mov eax,[rbx+8]");
    a.i(&[0x8b, 0x53, lp::VALUE + 4], "mov edx,[rbx+0xc]");
    // r10 -> the MSR instruction, r11 -> after it (the empty loop has none: both -> dec).
    let len = if insn.is_some() { 2 } else { 0 };
    a.i(&[0x4c, 0x8d, 0x15, 0x07, 0, 0, 0], "lea r10,[rip+7]");
    let text = if len == 0 {
        "lea r11,[rip]".to_string()
    } else {
        format!("lea r11,[rip+{len}]")
    };
    a.i(&[0x4c, 0x8d, 0x1d, len, 0, 0, 0], &text);
    a.label(body);
    if let Some((bytes, text)) = insn {
        a.i(&bytes, text);
    }
    a.i(&[0x49, 0xff, 0xc8], "dec r8");
    a.br8(0x75, body, &format!("jne {body}"));
}

/// Entry points that make the guest die on purpose, so the harness's handling of a dead guest is
/// itself checked (`checks::harness`).
fn misbehaviour(a: &mut Asm) {
    a.label("hang");
    a.br8(0xeb, "hang", "jmp hang");
    a.label("raise_ud");
    a.i(&[0x0f, 0x0b], "ud2");
}

fn exception_stubs(a: &mut Asm) {
    for v in 0u8..32 {
        a.label(stub_label(v));
        if !has_error_code(v) {
            a.i(&[0x6a, 0x00], "push 0"); // dummy error code keeps one frame layout
        }
        // iced-x86 (and this listing) print 0..=9 in decimal, larger numbers in hex.
        let imm = if v < 10 {
            v.to_string()
        } else {
            format!("{v:#x}")
        };
        a.i(&[0x6a, v], &format!("push {imm}"));
        a.br32(&[0xe9], "common", "jmp common");
    }
}

fn common_handler(a: &mut Asm) {
    // Frame: [rsp] vector, [rsp+8] error code, [rsp+0x10] RIP, CS, RFLAGS, RSP, SS.
    a.label("common");
    a.i(&[0x50], "push rax");
    a.i(&[0x48, 0x8b, 0x44, 0x24, 0x18], "mov rax,[rsp+0x18]"); // faulting RIP
    a.i(&[0x4c, 0x39, 0xd0], "cmp rax,r10");
    a.br8(0x74, "expected", "je expected");
    a.i(&[0x4c, 0x39, 0xe0], "cmp rax,r12"); // the forced-emulation prefix of the guarded op
    a.br8(0x75, "unexpected", "jne unexpected");
    a.label("expected");
    a.i(&[0x8a, 0x44, 0x24, 0x08], "mov al,[rsp+8]"); // vector
    a.i(&[0x88, 0x46, 0x19], "mov [rsi+0x19],al");
    a.i(&[0x8b, 0x44, 0x24, 0x10], "mov eax,[rsp+0x10]"); // error code
    a.i(&[0x89, 0x46, 0x1c], "mov [rsi+0x1c],eax");
    a.i(&[0xc6, 0x46, 0x18, 0x02], "mov byte ptr [rsi+0x18],2"); // outcome |= FAULTED
    a.i(&[0x4c, 0x89, 0x5c, 0x24, 0x18], "mov [rsp+0x18],r11"); // resume after the instruction
    a.i(&[0x58], "pop rax");
    a.i(&[0x48, 0x83, 0xc4, 0x10], "add rsp,0x10"); // drop vector and error code
    a.i(&[0x48, 0xcf], "iretq");

    let mb = (MAILBOX as u32).to_le_bytes();
    let mb8 = ((MAILBOX + 8) as u32).to_le_bytes();
    let mb16 = ((MAILBOX + 16) as u32).to_le_bytes();
    a.label("unexpected");
    a.i(&[0x48, 0x8b, 0x44, 0x24, 0x08], "mov rax,[rsp+8]"); // vector
    a.i(
        &[0x48, 0x89, 0x04, 0x25, mb[0], mb[1], mb[2], mb[3]],
        &format!("mov [{MAILBOX:#x}],rax"),
    );
    a.i(&[0x48, 0x8b, 0x44, 0x24, 0x10], "mov rax,[rsp+0x10]"); // error code
    a.i(
        &[0x48, 0x89, 0x04, 0x25, mb8[0], mb8[1], mb8[2], mb8[3]],
        &format!("mov [{:#x}],rax", MAILBOX + 8),
    );
    a.i(&[0x48, 0x8b, 0x44, 0x24, 0x18], "mov rax,[rsp+0x18]"); // RIP
    a.i(
        &[0x48, 0x89, 0x04, 0x25, mb16[0], mb16[1], mb16[2], mb16[3]],
        &format!("mov [{:#x}],rax", MAILBOX + 16),
    );
    a.label("unexpected_stop");
    a.i(
        &[0xe6, PORT_UNEXPECTED as u8],
        &format!("out {PORT_UNEXPECTED:#x},al"),
    );
    a.i(&[0xf4], "hlt");
    a.br8(0xeb, "unexpected_stop", "jmp unexpected_stop");
}

/// KVM's forced-emulation prefix: `ud2; .ascii "kvm"` (x86.c kvm_emulate_prefix). With
/// kvm.force_emulation_prefix set, KVM emulates the instruction after it in its instruction
/// emulator (handle_ud).
pub const KVM_FEP: [u8; 5] = [0x0f, 0x0b, 0x6b, 0x76, 0x6d];

/// Label names of one interpreter variant.
struct Variant {
    fep: bool,
    entry: &'static str,
    write: &'static str,
    rdmsr: &'static str,
    wrmsr: &'static str,
    next: &'static str,
    done: &'static str,
    cpuid: &'static str,
    cpuid_insn: &'static str,
}

const PLAIN: Variant = Variant {
    fep: false,
    entry: "interpreter",
    write: "write",
    rdmsr: "guarded_rdmsr",
    wrmsr: "guarded_wrmsr",
    next: "next",
    done: "done",
    cpuid: "cpuid_op",
    cpuid_insn: "guarded_cpuid",
};

/// The same interpreter with every guarded RDMSR/WRMSR behind KVM_FEP. KVM skips the prefix
/// before it emulates the instruction (x86.c handle_ud: kvm_rip_write(rip + sizeof(sig)), then
/// EMULTYPE_TRAP_UD_FORCED), so a fault the emulated instruction raises is reported at the
/// instruction, not at the prefix: r10 points after the prefix and r11 after the instruction, as
/// KVM selftests' `__KVM_ASM_SAFE(insn, KVM_FEP)` places its fault label (`fep "1: " insn`).
const FEP: Variant = Variant {
    fep: true,
    entry: "interpreter_fep",
    write: "write_fep",
    rdmsr: "guarded_rdmsr_fep",
    wrmsr: "guarded_wrmsr_fep",
    next: "next_fep",
    done: "done_fep",
    cpuid: "cpuid_op_fep",
    cpuid_insn: "guarded_cpuid_fep",
};

fn guarded(a: &mut Asm, v: &Variant, label: &'static str, insn: [u8; 2], text: &str) {
    // r10 -> the guarded instruction, r11 -> after it. Behind KVM_FEP, r12 -> the prefix too:
    // with the prefix not honoured, its ud2 raises #UD there (harness.fep-prefix-faults-...).
    if v.fep {
        let prefix = KVM_FEP.len() as u8;
        a.i(
            &[0x4c, 0x8d, 0x15, 14 + prefix, 0, 0, 0],
            &format!("lea r10,[rip+{:#x}]", 14 + prefix),
        );
        a.i(
            &[0x4c, 0x8d, 0x1d, 9 + prefix, 0, 0, 0],
            &format!("lea r11,[rip+{:#x}]", 9 + prefix),
        );
        a.i(&[0x4c, 0x8d, 0x25, 0, 0, 0, 0], "lea r12,[rip]");
        a.label(label);
        a.data(&KVM_FEP, "kvm forced-emulation prefix: ud2; .ascii \"kvm\"");
    } else {
        a.i(&[0x4c, 0x8d, 0x15, 0x07, 0, 0, 0], "lea r10,[rip+7]");
        a.i(&[0x4c, 0x8d, 0x1d, 0x02, 0, 0, 0], "lea r11,[rip+2]");
        a.label(label);
    }
    a.i(&insn, text);
}

fn interpreter(a: &mut Asm, v: &Variant) {
    // rsi = first record. Record: +0 op (0 end, 1 rdmsr, 2 wrmsr), +4 index, +8 value to write,
    // +0x10 value read, +0x18 outcome (bit 0 continued, bit 1 faulted), +0x19 vector, +0x1c error.
    a.label(v.entry);
    a.i(&[0x45, 0x31, 0xe4], "xor r12d,r12d"); // no prefix guarded (a RIP is never 0)
    a.i(&[0x8b, 0x06], "mov eax,[rsi]");
    a.i(&[0x85, 0xc0], "test eax,eax");
    a.br32(&[0x0f, 0x84], v.done, &format!("je {}", v.done));
    a.i(&[0x8b, 0x4e, 0x04], "mov ecx,[rsi+4]");
    a.i(&[0x83, 0xf8, 0x03], "cmp eax,3");
    a.br8(0x74, v.cpuid, &format!("je {}", v.cpuid));
    a.i(&[0x83, 0xf8, 0x01], "cmp eax,1");
    a.br8(0x75, v.write, &format!("jne {}", v.write));
    a.i(&[0x31, 0xc0], "xor eax,eax"); // a faulting read leaves 0
    a.i(&[0x31, 0xd2], "xor edx,edx");
    guarded(a, v, v.rdmsr, [0x0f, 0x32], "rdmsr");
    a.i(&[0x48, 0xc1, 0xe2, 0x20], "shl rdx,0x20");
    a.i(&[0x48, 0x09, 0xd0], "or rax,rdx");
    a.i(&[0x48, 0x89, 0x46, 0x10], "mov [rsi+0x10],rax");
    a.br8(0xeb, v.next, &format!("jmp {}", v.next));
    a.label(v.write);
    a.i(&[0x8b, 0x46, 0x08], "mov eax,[rsi+8]");
    a.i(&[0x8b, 0x56, 0x0c], "mov edx,[rsi+0xc]");
    guarded(a, v, v.wrmsr, [0x0f, 0x30], "wrmsr");
    a.br8(0xeb, v.next, &format!("jmp {}", v.next));
    // CPUID: leaf in the index field, subleaf in the low half of the value; EAX, EBX, ECX, EDX
    // land in bytes 8..0x18 of the record. Guarded too: CPUID faulting may make it #GP.
    a.label(v.cpuid);
    a.i(&[0x8b, 0x46, 0x04], "mov eax,[rsi+4]");
    a.i(&[0x8b, 0x4e, 0x08], "mov ecx,[rsi+8]");
    a.i(&[0x4c, 0x8d, 0x15, 0x07, 0, 0, 0], "lea r10,[rip+7]");
    a.i(&[0x4c, 0x8d, 0x1d, 0x02, 0, 0, 0], "lea r11,[rip+2]");
    a.label(v.cpuid_insn);
    a.i(&[0x0f, 0xa2], "cpuid");
    a.i(&[0x89, 0x46, 0x08], "mov [rsi+8],eax");
    a.i(&[0x89, 0x5e, 0x0c], "mov [rsi+0xc],ebx");
    a.i(&[0x89, 0x4e, 0x10], "mov [rsi+0x10],ecx");
    a.i(&[0x89, 0x56, 0x14], "mov [rsi+0x14],edx");
    a.label(v.next);
    a.i(&[0x80, 0x4e, 0x18, 0x01], "or byte ptr [rsi+0x18],1");
    a.i(&[0x48, 0x83, 0xc6, 0x20], "add rsi,0x20");
    a.br32(&[0xe9], v.entry, &format!("jmp {}", v.entry));
    a.label(v.done);
    a.i(&[0xe6, PORT_DONE as u8], &format!("out {PORT_DONE:#x},al"));
    // The next KVM_RUN runs the program at OPS again from its first record.
    let ops = (OPS as u32).to_le_bytes();
    a.i(
        &[0xbe, ops[0], ops[1], ops[2], ops[3]],
        &format!("mov esi,{OPS:#x}"),
    );
    a.br32(&[0xe9], v.entry, &format!("jmp {}", v.entry));
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

    fn formatter() -> IntelFormatter {
        let mut f = IntelFormatter::new();
        let o = f.options_mut();
        o.set_hex_prefix("0x");
        o.set_hex_suffix("");
        o.set_uppercase_hex(false);
        o.set_space_after_operand_separator(false);
        o.set_rip_relative_addresses(true);
        o.set_branch_leading_zeros(false);
        o.set_show_branch_size(false);
        o.set_leading_zeros(false);
        f
    }

    /// Disassemble every line of the runtime and compare it with the listing written beside the
    /// bytes; branch targets are compared through the label table.
    #[test]
    fn runtime_bytes_disassemble_to_their_listing() {
        let code = runtime(0x1_0000);
        let mut fmt = formatter();
        let mut mismatches = Vec::new();
        for line in code.lines.iter().filter(|l| !l.data) {
            let mut dec = Decoder::with_ip(64, &line.bytes, line.addr, DecoderOptions::NONE);
            let ins = dec.decode();
            let mut text = String::new();
            fmt.format(&ins, &mut text);
            let mut expected = line.text.clone();
            // A label operand stands for its address.
            if ins.is_jmp_short_or_near() || ins.is_jcc_short_or_near() {
                let (mn, label) = expected.split_once(' ').expect("branch has a target");
                expected = format!("{mn} {:#x}", code.label(label));
            }
            if ins.is_invalid() || ins.len() != line.bytes.len() || text != expected {
                mismatches.push(format!(
                    "{:#x}: bytes {:02x?} decode to '{text}' ({} bytes), listing says '{}'",
                    line.addr,
                    line.bytes,
                    ins.len(),
                    line.text
                ));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn rip_relative_leas_point_at_the_guarded_instructions() {
        let code = runtime(0x1_0000);
        for (guard, prefix, len) in [
            ("guarded_rdmsr", 0, 2),
            ("guarded_wrmsr", 0, 2),
            ("guarded_rdmsr_fep", 5, 7),
            ("guarded_wrmsr_fep", 5, 7),
            ("guarded_cpuid_fep", 0, 2),
            ("loop_rdmsr", 0, 2),
            ("loop_wrmsr", 0, 2),
            ("loop_empty", 0, 0),
        ] {
            let g = code.label(guard);
            // The LEAs right before the guarded bytes: r10 -> the instruction (after a
            // forced-emulation prefix), r11 -> after it, r12 -> the prefix.
            let idx = code.lines.iter().position(|l| l.addr == g).unwrap();
            let target = |l: &crate::guest::asm::Line| {
                let d = i32::from_le_bytes(l.bytes[3..7].try_into().unwrap());
                (l.addr + l.bytes.len() as u64).wrapping_add_signed(d.into())
            };
            let lea = |reg: &str| {
                code.lines[idx.saturating_sub(3)..idx]
                    .iter()
                    .find(|l| l.text.starts_with(&format!("lea {reg},")))
                    .map(target)
            };
            assert_eq!(lea("r10"), Some(g + prefix), "{guard}: r10");
            assert_eq!(lea("r11"), Some(g + len), "{guard}: r11");
            if prefix > 0 {
                assert_eq!(lea("r12"), Some(g), "{guard}: r12");
            }
        }
    }

    /// Only general-purpose instructions: no SSE/x87/int3 that the emulator cannot run.
    #[test]
    fn runtime_uses_general_purpose_instructions_only() {
        use iced_x86::{InstructionInfoFactory, OpKind, Register};
        let code = runtime(0x1_0000);
        let mut info = InstructionInfoFactory::new();
        for line in code.lines.iter().filter(|l| !l.data) {
            let ins = Decoder::with_ip(64, &line.bytes, line.addr, DecoderOptions::NONE).decode();
            assert_ne!(ins.mnemonic(), iced_x86::Mnemonic::Int3, "{}", line.text);
            for r in info.info(&ins).used_registers() {
                let reg: Register = r.register();
                assert!(
                    reg.is_gpr() || reg.is_segment_register() || reg == Register::RIP,
                    "{:#x} '{}' uses {reg:?}",
                    line.addr,
                    line.text
                );
            }
            let _ = OpKind::Register;
        }
    }

    /// Bytes that are not an instruction of their own are only ever the forced-emulation prefix,
    /// directly before the RDMSR/WRMSR it applies to.
    #[test]
    fn data_lines_are_fep_prefixes_before_msr_instructions() {
        let code = runtime(0x1_0000);
        let data: Vec<usize> = (0..code.lines.len())
            .filter(|&i| code.lines[i].data)
            .collect();
        assert_eq!(data.len(), 2);
        for i in data {
            assert_eq!(code.lines[i].bytes, KVM_FEP);
            assert!(
                matches!(code.lines[i + 1].bytes[..], [0x0f, 0x32] | [0x0f, 0x30]),
                "{}",
                code.lines[i + 1].text
            );
        }
    }

    #[test]
    fn every_vector_has_a_stub_with_the_right_frame() {
        let code = runtime(0x1_0000);
        for v in 0u8..32 {
            let a = code.label(stub_label(v));
            let first = code.lines.iter().find(|l| l.addr == a).unwrap();
            if has_error_code(v) {
                assert_eq!(first.bytes, [0x6a, v]);
            } else {
                assert_eq!(first.bytes, [0x6a, 0x00]);
            }
        }
    }
}
