//! `kvm-msr`: run the conformance checks against this host's KVM and report.

use clap::{Parser, Subcommand};
use kvm_msr_suite::catalogue::{render, Catalogue};
use kvm_msr_suite::checks::{self, Context};
use kvm_msr_suite::features::decode::DecodeTables;
use kvm_msr_suite::features::probe::Probe;
use kvm_msr_suite::report::{Format, Report};
use kvm_msr_suite::runner::select;
use kvm_msr_suite::Error;
use std::path::Path;
use std::process::ExitCode;

/// Write to stdout; a reader that went away (`kvm-msr report | head -1`) is not an error: the
/// rest of the output is dropped and the command ends with its own status, with no panic
/// (`print!` panics on EPIPE). Any other write error is reported once on stderr.
fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    static CLOSED: AtomicBool = AtomicBool::new(false);
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("kvm-msr: cannot write the output: {e}");
        }
    }
}

macro_rules! out {
    ($($t:tt)*) => { write_stdout(format_args!($($t)*)) };
}

macro_rules! outln {
    () => { write_stdout(format_args!("\n")) };
    ($($t:tt)*) => { write_stdout(format_args!("{}\n", format_args!($($t)*))) };
}

#[derive(Parser)]
#[command(
    name = "kvm-msr",
    version,
    about = "Conformance checks for Linux KVM's x86 MSR handling"
)]
struct Cli {
    /// Read the catalogue, deviation records and decode tables from this fixtures tree instead
    /// of the copies built into the binary (also KVM_MSR_FIXTURES); for editing fixtures.
    #[arg(long, global = true, value_name = "DIR")]
    fixtures: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the checks against this host and print the results.
    ///
    /// Exit status: 0 every check passed or is a recorded deviation, 1 a check failed,
    /// 2 bad input (arguments, fixtures), 4 nothing ran (e.g. no /dev/kvm).
    Report {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Run only checks whose id contains this text (repeatable; any match selects).
        #[arg(long)]
        filter: Vec<String>,
        /// List the selected check ids and what they check, without running them.
        #[arg(long)]
        list: bool,
        /// Worker threads (default: available CPUs).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Print this host's MSR surface: lists, capabilities, parameters, and every feature MSR
    /// decoded into named fields.
    Probe {
        /// text (default) or json (the input of `kvm-msr diff`).
        #[arg(long, value_enum, default_value_t = ProbeFormat::Text)]
        format: ProbeFormat,
    },
    /// Compare two `probe --format json` files. Exit status: 0 a guest started on A can move to B
    /// without losing an MSR feature it could see, 1 it cannot, 2 bad input.
    Diff {
        /// Probe of the migration source.
        a: std::path::PathBuf,
        /// Probe of the migration target.
        b: std::path::PathBuf,
    },
    /// Decode a fuzzer input (corpus or crash file), print it readably and run it with its
    /// oracles. Exit status: 0 no oracle violated, 1 violated, 2 bad input, 4 no /dev/kvm.
    Replay {
        file: std::path::PathBuf,
        /// The fuzz target; default: the directory the file is in.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(kvm_msr_suite::fuzzing::Target::names()))]
        target: Option<String>,
    },
    /// Compare two `report --format json` files check by check (e.g. two kernels, or two sets of
    /// module parameters): every check whose verdict changed, with each side's reason, and the
    /// checks that ran on one side only. Exit status: 0 no difference, 1 some, 2 bad input.
    Compare {
        /// Report of side A.
        a: std::path::PathBuf,
        /// Report of side B.
        b: std::path::PathBuf,
    },
    /// Compare benchmark summaries (target/kvm-msr-bench/summary.json from `cargo bench`) of
    /// two kernels on one machine: the runs of A, `--`, the runs of B. Interleave the runs
    /// (A B A B ...) and give each side 3 to 5. Exit status: 0 no benchmark differs beyond the
    /// run-to-run noise, 1 some does, 2 bad input.
    BenchCompare {
        /// Summaries of side A.
        #[arg(required = true)]
        a: Vec<std::path::PathBuf>,
        /// Summaries of side B (after `--`).
        #[arg(last = true, required = true)]
        b: Vec<std::path::PathBuf>,
    },
    /// Print the MSR catalogue: what each MSR does under KVM, with sources. Needs no /dev/kvm.
    List {
        /// Only MSRs whose index, name or id contains this text (repeatable).
        filter: Vec<String>,
        /// Omit the source of each rule.
        #[arg(long)]
        brief: bool,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProbeFormat {
    Text,
    Json,
}

fn probe(format: ProbeFormat) -> ExitCode {
    let json = format == ProbeFormat::Json;
    let (ctx, tables) = match (Context::load(), DecodeTables::load_default()) {
        (Ok(c), Ok(t)) => (c, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("kvm-msr: {e}");
            return ExitCode::from(if e.is_kvm_unavailable() { 4 } else { 2 });
        }
    };
    match Probe::gather(&ctx, &tables) {
        Ok(p) => {
            out!("{}", if json { p.to_json() } else { p.to_text() });
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kvm-msr: {e}");
            ExitCode::from(1)
        }
    }
}

/// The text of a file given on the command line.
fn read_input(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::input(path, None, e.to_string()))
}

fn read_probe(path: &Path) -> Result<Probe, Error> {
    let p: Probe = serde_json::from_str(&read_input(path)?).map_err(|e| {
        let message = format!("not a `kvm-msr probe --format json` file: {e}");
        Error::input(path, Some(e.line()), message)
    })?;
    if p.schema != kvm_msr_suite::features::probe::SCHEMA {
        let message = format!(
            "schema {:?}, expected {:?}",
            p.schema,
            kvm_msr_suite::features::probe::SCHEMA
        );
        return Err(Error::input(path, None, message));
    }
    Ok(p)
}

fn diff(a: &Path, b: &Path) -> ExitCode {
    let probes = read_probe(a).and_then(|pa| read_probe(b).map(|pb| (pa, pb)));
    let tables = DecodeTables::load_default();
    match (probes, tables) {
        (Ok((pa, pb)), Ok(t)) => {
            let d = kvm_msr_suite::features::diff::diff(&pa, &pb, &t);
            out!(
                "{}",
                d.to_text(&a.display().to_string(), &b.display().to_string())
            );
            ExitCode::from(if d.compatible() { 0 } else { 1 })
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("kvm-msr: {e}");
            ExitCode::from(2)
        }
    }
}

fn replay(file: &std::path::Path, target: Option<String>) -> ExitCode {
    use kvm_msr_suite::fuzzing::Target;
    // clap has checked a given name against Target::names().
    let target = target.as_deref().and_then(Target::from_name).or_else(|| {
        file.ancestors()
            .filter_map(|p| Target::from_name(p.file_name()?.to_str()?))
            .next()
    });
    let Some(target) = target else {
        eprintln!(
            "kvm-msr: cannot tell the fuzz target of {} from its path; pass --target (one of {:?})",
            file.display(),
            Target::names()
        );
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("kvm-msr: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let ctx = match Context::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvm-msr: {e}");
            return ExitCode::from(if e.is_kvm_unavailable() { 4 } else { 2 });
        }
    };
    match target.replay(&ctx, &bytes) {
        Err(e) => {
            let e = Error::input(file, None, format!("not a {target} input: {e}"));
            eprintln!("kvm-msr: {e}");
            ExitCode::from(2)
        }
        Ok((described, result)) => {
            outln!("target {target}, {} bytes:\n{described}", bytes.len());
            match result {
                Ok(()) => {
                    outln!("no oracle violated");
                    ExitCode::SUCCESS
                }
                Err(v) => {
                    outln!("{v}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn compare(a: &std::path::Path, b: &std::path::Path) -> ExitCode {
    use kvm_msr_suite::report::compare::{compare, ReportFile};
    let read = |p: &Path| read_input(p).and_then(|t| ReportFile::parse(&t, p));
    match read(a).and_then(|ra| read(b).map(|rb| (ra, rb))) {
        Ok((ra, rb)) => {
            let c = compare(&ra, &rb);
            out!(
                "{}",
                c.to_text(&ra, &rb, &a.display().to_string(), &b.display().to_string())
            );
            ExitCode::from(if c.differs() { 1 } else { 0 })
        }
        Err(e) => {
            eprintln!("kvm-msr: {e}");
            ExitCode::from(2)
        }
    }
}

fn bench_compare(a: &[std::path::PathBuf], b: &[std::path::PathBuf]) -> ExitCode {
    use kvm_msr_suite::bench_summary::{compare, Summary};
    let read = |paths: &[std::path::PathBuf]| -> Result<Vec<Summary>, Error> {
        paths
            .iter()
            .map(|p| read_input(p).and_then(|t| Summary::parse(&t, p)))
            .collect()
    };
    match read(a).and_then(|sa| read(b).map(|sb| (sa, sb))) {
        Ok((sa, sb)) => {
            let c = compare(&sa, &sb);
            out!("{}", c.to_text(sa.len(), sb.len()));
            ExitCode::from(if c.differs() { 1 } else { 0 })
        }
        Err(e) => {
            eprintln!("kvm-msr: {e}");
            ExitCode::from(2)
        }
    }
}

fn list(filter: Vec<String>, brief: bool, json: bool) -> ExitCode {
    let cat = match Catalogue::load_default() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvm-msr: {e}");
            return ExitCode::from(2);
        }
    };
    let entries = render::select(&cat, &filter);
    if entries.is_empty() {
        eprintln!("kvm-msr: no catalogued MSR matches {filter:?}");
        return ExitCode::from(2);
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&entries).expect("catalogue serializes")
        );
    } else {
        out!("{}", render::text(&entries, !brief));
    }
    ExitCode::SUCCESS
}

fn require_kvm() -> bool {
    std::env::var("KVM_MSR_REQUIRE_KVM").is_ok_and(|v| v == "1")
}

fn report(format: Format, filter: Vec<String>, list: bool, jobs: Option<usize>) -> ExitCode {
    let ctx = match Context::load() {
        Ok(c) => c,
        Err(e) if e.is_kvm_unavailable() && list => {
            // Listing needs no KVM: the checks every host has, from the fixtures.
            eprintln!("kvm-msr: {e}");
            eprintln!("kvm-msr: listing the checks that exist on every host; those generated from a host's MSR lists (host.<msr>.readable-*, guest.<msr>.matches-host, save-restore.<msr>.roundtrip, ...) are listed where KVM can be opened");
            match Context::without_kvm() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kvm-msr: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Err(e) if e.is_kvm_unavailable() => {
            eprintln!("kvm-msr: {e}");
            let r = Report {
                host: None,
                unavailable: Some(e.to_string()),
                results: Vec::new(),
            };
            if !list {
                out!("{}", r.render(format));
            }
            return ExitCode::from(if require_kvm() { 1 } else { 4 });
        }
        Err(e) => {
            eprintln!("kvm-msr: {e}");
            return ExitCode::from(2);
        }
    };
    let all = checks::all(&ctx);
    let selected = select(&all, &filter);
    if selected.is_empty() {
        eprintln!("kvm-msr: no check id contains any of {filter:?}; `kvm-msr report --list` shows the ids");
        return ExitCode::from(2);
    }
    if list {
        for c in &selected {
            outln!("{}  —  {}", c.id, c.summary);
        }
        return ExitCode::SUCCESS;
    }
    let jobs = jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let results = kvm_msr_suite::runner::run_watched(&ctx, &selected, jobs);
    let r = Report {
        host: Some(ctx.facts.clone()),
        unavailable: None,
        results,
    };
    out!("{}", r.render(format));
    ExitCode::from(r.exit_code() as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(dir) = cli.fixtures {
        if !dir.join("catalogue").is_dir() {
            eprintln!(
                "kvm-msr: --fixtures {}: not a fixtures tree (no catalogue/ in it); give the folder that holds catalogue/, deviations/ and decode/",
                dir.display()
            );
            return ExitCode::from(2);
        }
        kvm_msr_suite::fixtures::set_override(dir);
    }
    match cli.command {
        Command::Report {
            format,
            filter,
            list,
            jobs,
        } => report(format, filter, list, jobs),
        Command::List {
            filter,
            brief,
            json,
        } => list(filter, brief, json),
        Command::Probe { format } => probe(format),
        Command::Replay { file, target } => replay(&file, target),
        Command::Diff { a, b } => diff(&a, &b),
        Command::Compare { a, b } => compare(&a, &b),
        Command::BenchCompare { a, b } => bench_compare(&a, &b),
    }
}
