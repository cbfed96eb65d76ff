//! `benches/compare/compare.py`, which runs ringmq-bench against every
//! broker and writes BENCHMARKS.md: its rendering, checked on the committed
//! results without measuring anything (`--render-only`).

use std::path::Path;
use std::process::Command;

/// The committed BENCHMARKS.md is what the script renders from the
/// committed BENCHMARKS.json and `benches/compare/analysis.md`: after a
/// change to either, or to the rendering, `benches/compare/run.sh
/// --render-only` must be run (BENCHMARKS.md is the script's output, never
/// edited by hand). The rendering names what stopped each ladder.
#[test]
fn benchmarks_md_is_the_rendering_of_the_committed_results() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let dir = std::env::temp_dir().join(format!("ringmq-compare-render-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root.join("BENCHMARKS.json"), dir.join("BENCHMARKS.json")).unwrap();
    let out = Command::new("python3")
        .arg(root.join("benches/compare/compare.py"))
        .arg("--render-only")
        .arg("--out")
        .arg(&dir)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rendered = std::fs::read_to_string(dir.join("BENCHMARKS.md")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    for section in
        ["## Results", "What stopped each climb", "## Analysis", "## Broker configurations"]
    {
        assert!(rendered.contains(section), "no {section:?} in:\n{rendered}");
    }
    let committed = std::fs::read_to_string(root.join("BENCHMARKS.md")).unwrap();
    assert!(
        rendered == committed,
        "BENCHMARKS.md is not the rendering of BENCHMARKS.json and benches/compare/analysis.md: \
         run `benches/compare/run.sh --render-only`"
    );
}
