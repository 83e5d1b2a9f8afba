//! Embeds the fixture data the binary needs (the catalogue, the deviation records, the decode
//! tables) so `kvm-msr` carries it wherever it is copied or installed; `--fixtures DIR` or
//! KVM_MSR_FIXTURES still point it at another tree (suite/src/fixtures.rs).

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest).join("../fixtures");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut out = String::from(
        "/// Fixture files embedded at build time: (path relative to fixtures/, text), sorted.\n\
         pub static EMBEDDED: &[(&str, &str)] = &[\n",
    );
    for sub in ["catalogue", "deviations", "decode"] {
        let dir = root.join(sub);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("fixtures: cannot read {}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for f in files {
            let name = f
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            let abs = f.canonicalize().expect("an existing file");
            writeln!(
                out,
                "    ({:?}, include_str!({:?})),",
                format!("{sub}/{name}"),
                abs
            )
            .expect("write to a String");
        }
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("embedded_fixtures.rs");
    std::fs::write(&dest, out).expect("write embedded_fixtures.rs");
}
