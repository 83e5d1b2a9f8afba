//! The fuzz targets as one list: each is a [`Target`] (its name, for the CLI, the corpus folders
//! and `cargo fuzz`) and an [`Executor`] (its input type and how to run one input with its
//! oracles). The fuzz crate's targets, `kvm-msr replay` and the seed replay under `cargo test`
//! are all written over these, so a new target is one more variant and one more impl.

use super::{
    harness_violation, pool::PoolMode, run_filter, run_guest, run_set_batch, Features, FilterInput,
    GuestInput, HostInput, HostRunner, SetBatchInput,
};
use crate::oracles::Violation;
use crate::session::Context;
use arbitrary::Arbitrary;
use std::fmt;

/// A fuzz target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// KVM_SET_MSRS batches against the same writes one by one.
    SetBatch,
    /// Guest RDMSR/WRMSR programs against the host's view.
    Guest,
    /// MSR filters and user-space exits against the filter model.
    Filter,
    /// Sequences of host operations on pooled vCPUs.
    Host,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::SetBatch,
        Target::Guest,
        Target::Filter,
        Target::Host,
    ];

    /// The name `cargo fuzz`, the corpus folder and `--target` use.
    pub const fn name(self) -> &'static str {
        match self {
            Target::SetBatch => "set_batch",
            Target::Guest => "guest",
            Target::Filter => "filter",
            Target::Host => "host",
        }
    }

    pub const fn names() -> [&'static str; 4] {
        [
            Target::ALL[0].name(),
            Target::ALL[1].name(),
            Target::ALL[2].name(),
            Target::ALL[3].name(),
        ]
    }

    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The seed corpus, sorted by file name.
    pub fn corpus_files(self) -> Vec<std::path::PathBuf> {
        super::corpus_files(self.name())
    }

    /// Decode `bytes` as this target's input (as libfuzzer-sys does for a typed target),
    /// describe it, and run it with its oracles the way a replay does.
    pub fn replay(
        self,
        ctx: &Context,
        bytes: &[u8],
    ) -> Result<(String, Result<(), Violation>), arbitrary::Error> {
        match self {
            Target::SetBatch => replay_as::<SetBatchExecutor>(ctx, bytes),
            Target::Guest => replay_as::<GuestExecutor>(ctx, bytes),
            Target::Filter => replay_as::<FilterExecutor>(ctx, bytes),
            Target::Host => replay_as::<HostExecutor>(ctx, bytes),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a target runs its inputs. One executor lives for a whole campaign (on the fuzzing thread)
/// or for one replay.
pub trait Executor: Sized {
    type Input: for<'a> Arbitrary<'a> + fmt::Debug;
    const TARGET: Target;
    /// The executor of a campaign (the fuzz crate's targets).
    fn for_fuzzing(ctx: &Context) -> Result<Self, Violation>;
    /// The executor of a replay; by default the campaign's.
    fn for_replay(ctx: &Context) -> Result<Self, Violation> {
        Self::for_fuzzing(ctx)
    }
    /// Run one input through the target's oracles, recording feedback in `feats`.
    fn run(
        &mut self,
        ctx: &Context,
        input: &Self::Input,
        feats: &mut Features,
    ) -> Result<(), Violation>;
    /// The input as a replay prints it.
    fn describe(_ctx: &Context, input: &Self::Input) -> String {
        format!("{input:#?}")
    }
}

/// Decode, describe and run one input of `E`.
pub fn replay_as<E: Executor>(
    ctx: &Context,
    bytes: &[u8],
) -> Result<(String, Result<(), Violation>), arbitrary::Error> {
    let input = E::Input::arbitrary_take_rest(arbitrary::Unstructured::new(bytes))?;
    let described = E::describe(ctx, &input);
    let result = E::for_replay(ctx).and_then(|mut e| e.run(ctx, &input, &mut Features::default()));
    Ok((described, result))
}

pub struct SetBatchExecutor;

impl Executor for SetBatchExecutor {
    type Input = SetBatchInput;
    const TARGET: Target = Target::SetBatch;
    fn for_fuzzing(_: &Context) -> Result<Self, Violation> {
        Ok(SetBatchExecutor)
    }
    fn run(&mut self, ctx: &Context, i: &SetBatchInput, f: &mut Features) -> Result<(), Violation> {
        run_set_batch(ctx, i, f)
    }
}

pub struct GuestExecutor;

impl Executor for GuestExecutor {
    type Input = GuestInput;
    const TARGET: Target = Target::Guest;
    fn for_fuzzing(_: &Context) -> Result<Self, Violation> {
        Ok(GuestExecutor)
    }
    fn run(&mut self, ctx: &Context, i: &GuestInput, f: &mut Features) -> Result<(), Violation> {
        run_guest(ctx, i, f)
    }
}

pub struct FilterExecutor;

impl Executor for FilterExecutor {
    type Input = FilterInput;
    const TARGET: Target = Target::Filter;
    fn for_fuzzing(_: &Context) -> Result<Self, Violation> {
        Ok(FilterExecutor)
    }
    fn run(&mut self, ctx: &Context, i: &FilterInput, f: &mut Features) -> Result<(), Violation> {
        run_filter(ctx, i, f)
    }
    fn describe(ctx: &Context, i: &FilterInput) -> String {
        format!("{i:#?}\nfilter: {:#x?}", i.filter(ctx))
    }
}

/// The `host` target: a [`HostRunner`] configured from the environment for a campaign.
///
/// - KVM_MSR_FUZZ_NO_POOL=1: a new VM for every input (the naive baseline, to compare exec/s).
/// - KVM_MSR_FUZZ_EQUIV_EVERY=N: also run every N-th input on a fresh VM and compare (default
///   64; 0 turns it off).
/// - KVM_MSR_FUZZ_POOL_THREAD=0: create fresh vCPUs on the fuzzing thread instead of a supplier
///   thread.
/// - KVM_MSR_FUZZ_PIN=N: pin the fuzzing thread to CPU N; the pool's helper threads get the
///   others (where there are others).
/// - KVM_MSR_FUZZ_STATS=N: print the pool's counters to stderr every N inputs.
pub struct HostExecutor {
    pub runner: HostRunner,
    stats_every: Option<u64>,
}

/// A campaign that cannot be set up as asked (the fuzz crate turns it into a crash with this
/// text, before any input ran).
fn setup_violation(expected: String, actual: String) -> Violation {
    Violation {
        oracle: "harness",
        msr: None,
        expected,
        actual,
    }
}

/// A number from the environment; a malformed one is a violation naming the variable.
fn env_number<T: std::str::FromStr>(name: &str, what: &str) -> Result<Option<T>, Violation> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(s) => s
            .parse()
            .map(Some)
            .map_err(|_| setup_violation(format!("{name}: {what}"), format!("{s:?}"))),
    }
}

impl Executor for HostExecutor {
    type Input = HostInput;
    const TARGET: Target = Target::Host;
    fn for_fuzzing(ctx: &Context) -> Result<Self, Violation> {
        let mode = if std::env::var_os("KVM_MSR_FUZZ_NO_POOL").is_some() {
            PoolMode::Fresh
        } else {
            PoolMode::Reuse
        };
        let every = env_number("KVM_MSR_FUZZ_EQUIV_EVERY", "a number")?.unwrap_or(64);
        let background = std::env::var_os("KVM_MSR_FUZZ_POOL_THREAD").is_none_or(|v| v != "0");
        let stats_every = env_number::<u64>("KVM_MSR_FUZZ_STATS", "a positive number")?;
        if stats_every == Some(0) {
            return Err(setup_violation(
                "KVM_MSR_FUZZ_STATS: a positive number".into(),
                "\"0\"".into(),
            ));
        }
        let pin = env_number::<usize>("KVM_MSR_FUZZ_PIN", "a CPU number")?;
        let pinned = |cpu: usize, what: &str, r: std::io::Result<()>| {
            r.map_err(|e| setup_violation(format!("KVM_MSR_FUZZ_PIN={cpu}: {what}"), e.to_string()))
        };
        // The pool's helper threads inherit the affinity they are spawned with: off the CPU the
        // fuzzing thread is then pinned to.
        if let Some(cpu) = pin {
            let r = super::pool::keep_off_cpu(cpu);
            pinned(cpu, "the helper threads kept off that CPU", r)?;
        }
        let runner = HostRunner::new(ctx, mode, every, background).map_err(harness_violation)?;
        if let Some(cpu) = pin {
            let r = super::pool::pin_current_thread(cpu);
            pinned(cpu, "the fuzzing thread pinned", r)?;
        }
        Ok(HostExecutor {
            runner,
            stats_every,
        })
    }
    /// A replay also runs the input on a fresh VM, so it checks pool equivalence too.
    fn for_replay(ctx: &Context) -> Result<Self, Violation> {
        Ok(HostExecutor {
            runner: HostRunner::new(ctx, PoolMode::Reuse, 1, false).map_err(harness_violation)?,
            stats_every: None,
        })
    }
    fn run(&mut self, ctx: &Context, i: &HostInput, f: &mut Features) -> Result<(), Violation> {
        let result = self.runner.run(ctx, i, f);
        if let Some(every) = self.stats_every {
            if self.runner.inputs() % every == 0 {
                eprintln!(
                    "kvm-msr pool after {} inputs: {:?}",
                    self.runner.inputs(),
                    self.runner.pool.stats()
                );
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Target::ALL {
            assert_eq!(Target::from_name(t.name()), Some(t));
        }
        assert_eq!(Target::names(), ["set_batch", "guest", "filter", "host"]);
        assert_eq!(Target::from_name("nope"), None);
    }

    /// fuzz/options/<target> (campaign flags, ci/fuzz-options.sh): each file names a target and
    /// holds only libFuzzer flags of the form -name=value, one per line, or comments.
    #[test]
    fn campaign_options_name_targets_and_hold_flags() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/options");
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        assert!(!files.is_empty(), "{}: no options file", dir.display());
        for f in files {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            assert!(
                Target::from_name(name).is_some(),
                "{}: not a fuzz target's name",
                f.display()
            );
            let text = std::fs::read_to_string(&f).expect("readable options file");
            for (n, line) in text.lines().enumerate() {
                let flag = line.split('#').next().unwrap_or_default().trim();
                if flag.is_empty() {
                    continue;
                }
                let ok = flag
                    .strip_prefix('-')
                    .and_then(|f| f.split_once('='))
                    .is_some_and(|(k, v)| {
                        !k.is_empty()
                            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                            && !v.is_empty()
                            && !v.contains(char::is_whitespace)
                    });
                assert!(
                    ok,
                    "{}:{}: not a -name=value flag: {line}",
                    f.display(),
                    n + 1
                );
            }
        }
    }
}
