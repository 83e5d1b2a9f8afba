//! libFuzzer feedback without kernel coverage: the executors report observable-outcome features
//! (kvm_msr_suite::fuzzing::Features); each bumps one byte of libFuzzer's extra-counters section,
//! which libFuzzer treats like coverage. Set KVM_MSR_FUZZ_NO_FEEDBACK=1 to turn it off (to compare).

use kvm_msr_suite::fuzzing::Features;
use std::sync::OnceLock;

const N: usize = 4096;

#[used]
#[link_section = "__libfuzzer_extra_counters"]
static mut COUNTERS: [u8; N] = [0; N];

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("KVM_MSR_FUZZ_NO_FEEDBACK").is_none())
}

pub fn record(f: &Features) {
    if !enabled() {
        return;
    }
    for id in &f.ids {
        let i = *id as usize % N;
        // SAFETY: `i < N`; libFuzzer reads and clears this section only between inputs, on the
        // thread that runs them, so nothing else touches the byte while we increment it.
        // Saturating: a wrapping byte read 0 after 256 hits, and the outcome would vanish from
        // that input's feedback.
        unsafe {
            let c = std::ptr::addr_of_mut!(COUNTERS).cast::<u8>().add(i);
            *c = (*c).saturating_add(1);
        }
    }
}

/// The kernel-log oracle, on by default: any new WARNING/BUG/KASAN record or taint change during
/// an input aborts with the record. The taint mask, its backstop, is read when /dev/kmsg has a
/// new record and otherwise every TAINT_EVERY inputs (oracles::kmsg says why that loses nothing).
/// KVM_MSR_FUZZ_KMSG=0 turns it off; =1 makes an unreadable /dev/kmsg fatal; unset, an
/// unreadable /dev/kmsg turns it off with a note on stderr.
pub fn check_kernel_log() {
    use kvm_msr_suite::oracles::kmsg::KmsgWatch;
    /// A read of the taint is ~1 us, ~1 % of the `host` target's loop when done for every input.
    const TAINT_EVERY: u32 = 64;
    use std::sync::Mutex;
    static WATCH: OnceLock<Option<Mutex<KmsgWatch>>> = OnceLock::new();
    let w = WATCH.get_or_init(|| {
        let setting = std::env::var("KVM_MSR_FUZZ_KMSG").unwrap_or_default();
        if setting == "0" {
            return None;
        }
        match KmsgWatch::sampling_taint(TAINT_EVERY) {
            Ok(w) => Some(Mutex::new(w)),
            Err(e) if setting == "1" => panic!("KVM_MSR_FUZZ_KMSG=1 but /dev/kmsg: {e}"),
            Err(e) => {
                eprintln!("kernel-log oracle off: cannot read /dev/kmsg ({e}); run as root, or set KVM_MSR_FUZZ_KMSG=0 to silence this");
                None
            }
        }
    });
    if let Some(w) = w {
        if let Err(v) = w.lock().expect("one fuzzing thread").check() {
            panic!("{v}");
        }
    }
}
