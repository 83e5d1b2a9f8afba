//! What every fuzz target shares: one [`Context`] per process, one executor per fuzzing thread,
//! observable-outcome feedback and the kernel-log oracle. A target is one line:
//! `kvm_msr_fuzz_target!(SomeExecutor);` over an executor of `kvm_msr_suite::fuzzing::target`.

pub mod callback_clock;
pub mod feedback;

/// Define the libFuzzer entry point of executor `$exec`: each input is decoded as its `Input`,
/// run with its oracles, its features recorded, the kernel log checked; any violation is a
/// crash carrying the violation and the input.
macro_rules! kvm_msr_fuzz_target {
    ($exec:ty) => {
        use kvm_msr_suite::fuzzing::Executor as _;

        static CTX: std::sync::OnceLock<kvm_msr_suite::checks::Context> =
            std::sync::OnceLock::new();

        thread_local! {
            static EXECUTOR: std::cell::RefCell<Option<$exec>> = const { std::cell::RefCell::new(None) };
            /// One input's features; kept, cleared, so an input does not allocate them anew.
            static FEATS: std::cell::RefCell<kvm_msr_suite::fuzzing::Features> =
                std::cell::RefCell::new(kvm_msr_suite::fuzzing::Features::default());
        }

        libfuzzer_sys::fuzz_target!(|input: <$exec as kvm_msr_suite::fuzzing::Executor>::Input| {
            $crate::common::callback_clock::timed(|| run(&input));
        });

        fn run(input: &<$exec as kvm_msr_suite::fuzzing::Executor>::Input) {
            let ctx = CTX.get_or_init(|| {
                kvm_msr_suite::checks::Context::load()
                    .unwrap_or_else(|e| panic!("kvm-msr fuzz: {e}"))
            });
            FEATS.with_borrow_mut(|feats| {
                feats.ids.clear();
                let result = EXECUTOR.with_borrow_mut(|e| {
                    let exec = e.get_or_insert_with(|| {
                        <$exec>::for_fuzzing(ctx).unwrap_or_else(|v| panic!("kvm-msr fuzz: {v}"))
                    });
                    exec.run(ctx, input, feats)
                });
                $crate::common::feedback::record(feats);
                $crate::common::feedback::check_kernel_log();
                if let Err(v) = result {
                    panic!("{v}\ninput: {input:?}");
                }
            });
        }
    };
}
