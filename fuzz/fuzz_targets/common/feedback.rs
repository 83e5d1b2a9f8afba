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
        unsafe {
            let c = std::ptr::addr_of_mut!(COUNTERS).cast::<u8>().add(i);
            *c = (*c).wrapping_add(1);
        }
    }
}

/// The opt-in kernel-log oracle: with KVM_MSR_FUZZ_KMSG=1, any new WARNING/BUG/KASAN record or
/// taint change during an input aborts with the record.
pub fn check_kernel_log() {
    use kvm_msr_suite::oracles::kmsg::KmsgWatch;
    use std::sync::Mutex;
    static WATCH: OnceLock<Option<Mutex<KmsgWatch>>> = OnceLock::new();
    let w = WATCH.get_or_init(|| {
        std::env::var_os("KVM_MSR_FUZZ_KMSG").map(|_| {
            Mutex::new(
                KmsgWatch::new()
                    .unwrap_or_else(|e| panic!("KVM_MSR_FUZZ_KMSG=1 but /dev/kmsg: {e}")),
            )
        })
    });
    if let Some(w) = w {
        if let Err(v) = w.lock().expect("one fuzzing thread").check() {
            panic!("{v}");
        }
    }
}
