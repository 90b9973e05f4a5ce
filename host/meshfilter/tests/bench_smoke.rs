//! A short run of every benchmark and of the demo, as CI's smoke of what `meshfilter
//! bench ...` measures at scale: each runs to the end on real etcd (and, for `bench node`,
//! the real classifier in this kernel), and its figures add up. Expected counts come from
//! the flags and the sample file, not from the code under test.

use std::process::Output;

use meshfilter_tests::meshfilter_binary;
use meshfilter_tests::process::output_text;

fn run_ok(args: &[&str]) -> String {
    let out: Output = meshfilter_binary!().run(args);
    let text = output_text(&out);
    assert!(out.status.success(), "meshfilter {args:?}:\n{text}");
    text
}

/// The number in `text` right after `before` (e.g. `mirrors 49`).
fn number_after(text: &str, before: &str) -> usize {
    let at = text
        .find(before)
        .unwrap_or_else(|| panic!("no {before:?} in:\n{text}"));
    text[at + before.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {before:?} in:\n{text}"))
}

#[test]
fn demo_on_etcd_caches_what_the_filters_alone_decide() {
    let sample = std::fs::read_to_string(
        meshfilter_tests::cargo::workspace().join("host/bench/samples/mesh.yaml"),
    )
    .unwrap();
    let pods = sample.matches("ip:").count();
    let clusters = sample.matches("\n- name:").count();
    let full_mesh = pods * (clusters - 1);

    let decided = run_ok(&["demo", "--filters-only"]);
    assert!(
        decided.contains(&format!("{pods} endpoints in {clusters} clusters")),
        "{decided}"
    );
    assert_eq!(
        number_after(&decided, "a full mesh mirrors"),
        full_mesh,
        "{decided}"
    );
    let kept = number_after(&decided, "cfp-scope mirrors");
    assert!(kept > 0 && kept < full_mesh, "{decided}");

    let on_etcd = run_ok(&["demo"]);
    assert_eq!(
        number_after(&on_etcd, "a full mesh caches"),
        full_mesh,
        "{on_etcd}"
    );
    // What landed in the etcd caches through the sync engine is what the decisions said.
    assert_eq!(
        number_after(&on_etcd, "with cfp-scope on both sides,"),
        kept,
        "{on_etcd}"
    );
}

#[test]
fn bench_mesh_caches_what_every_remote_exports() {
    let text = run_ok(&[
        "bench",
        "mesh",
        "--remotes",
        "3",
        "--endpoints",
        "200",
        "--opted-in",
        "0.1",
        "--identities",
        "10",
        "--nodes",
        "2",
        "--timeout-secs",
        "60",
    ]);
    assert!(text.contains("mesh bootstrap: 3 remotes synced"), "{text}");
    // 10% of 200 endpoints from each of 3 remotes.
    assert_eq!(number_after(&text, "s;"), 60, "{text}");
}

#[test]
fn bench_node_installs_every_miss() {
    let text = run_ok(&[
        "bench",
        "node",
        "--addresses",
        "40",
        "--remote-addresses",
        "15",
        "--flood",
        "500",
    ]);
    assert!(text.contains("per packet (BPF_PROG_TEST_RUN"), "{text}");
    assert!(text.contains("(40 samples)"), "{text}");
    assert!(text.contains("(15 samples,"), "{text}");
    assert!(
        text.contains("flood: kernel emitted 500 events"),
        "every distinct flood address is signalled once: {text}"
    );
}

#[test]
fn bench_diff_compares_every_decision_of_the_snapshot() {
    let text = run_ok(&["bench", "diff", "--clusters", "4", "--endpoints", "100"]);
    // 4 x 100 endpoints exported; each seen by the 3 other clusters. 5% opted in stay.
    assert_eq!(number_after(&text, "export"), 400, "{text}");
    assert_eq!(number_after(&text, "import"), 1_200, "{text}");
    let export_row = text.lines().find(|l| l.starts_with("export")).unwrap();
    let columns: Vec<&str> = export_row.split_whitespace().collect();
    assert_eq!(columns[4], "380", "stopped: {export_row}");
}

#[test]
fn filter_bench_measures_wasm_and_native() {
    let text = run_ok(&[
        "filter",
        "bench",
        "builtin:cfp-scope",
        "--iterations",
        "2000",
        "--endpoints",
        "2000",
        "--identities",
        "100",
    ]);
    for line in ["wasm, uncached", "wasm, memoised", "native, cfp-scope"] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
}
