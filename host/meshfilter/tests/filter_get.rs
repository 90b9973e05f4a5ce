//! `meshfilter filter get`: the shipped modules written out byte for byte, with their pins.

use meshfilter_tests::meshfilter_binary;

fn meshfilter(args: &[&str]) -> (bool, String, String) {
    meshfilter_binary!().run_split(args)
}

#[test]
fn writes_one_module_or_all_with_their_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("scope.wasm");
    let (ok, stdout, stderr) =
        meshfilter(&["filter", "get", "cfp-scope", "-o", one.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let (pin, name) = stdout.trim().split_once("  ").unwrap();
    assert_eq!(name, "cfp-scope.wasm");
    assert_eq!(pin.len(), 64);
    let bytes = std::fs::read(&one).unwrap();
    assert!(bytes.starts_with(b"\0asm"), "a Wasm module");

    let all = dir.path().join("modules");
    let (ok, stdout, stderr) = meshfilter(&["filter", "get", "--all", all.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    for module in [
        "cfp-scope.wasm",
        "namespace-allowlist.wasm",
        "region-pairs.wasm",
    ] {
        assert!(all.join(module).is_file(), "{module}");
        assert!(stdout.contains(&format!("  {module}")), "{stdout}");
    }
    assert_eq!(std::fs::read(all.join("cfp-scope.wasm")).unwrap(), bytes);
    assert!(stdout.contains(pin), "the same pin both ways: {stdout}");
    // What `filter check` loads is what `get` wrote.
    let (ok, stdout, _) = meshfilter(&["filter", "check", one.to_str().unwrap()]);
    assert!(ok && stdout.contains("cfp-scope"), "{stdout}");
}

#[test]
fn an_unknown_name_lists_the_shipped_ones() {
    let (ok, _, stderr) = meshfilter(&["filter", "get", "nope", "-o", "/dev/null"]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "no shipped filter \"nope\"; shipped: cfp-scope, namespace-allowlist, region-pairs"
        ),
        "{stderr}"
    );
}
