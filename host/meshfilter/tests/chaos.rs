//! The CI smoke of the chaos soak: about two minutes of churn and faults against real
//! processes on real etcd (set-up, healing and the check included), with a fixed seed,
//! must end with the cache and the export etcd matching the model.

use std::process::Command;

/// Fixed, so a failure in CI replays with `meshfilter bench chaos --seed 20261130`.
const SEED: &str = "20261130";

/// Minutes of churn: with set-up, the wait for old leases and the check the test takes
/// about two minutes, and one of every fault kind is dealt before any repeats.
const MINUTES: &str = "1.75";

#[test]
fn two_minutes_of_chaos_lose_nothing_and_leave_nothing_stale() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshfilter"))
        .args(["bench", "chaos", "--minutes", MINUTES, "--seed", SEED])
        .output()
        .expect("run meshfilter bench chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the soak failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("result: PASS"), "{stdout}");
    // Every kind of fault was dealt at least once.
    let faults = stdout
        .lines()
        .skip_while(|l| !l.starts_with("faults injected"))
        .skip(1)
        .take_while(|l| l.starts_with("  "));
    for line in faults {
        assert!(
            !line.trim_end().ends_with(" 0"),
            "a fault kind never ran: {line}"
        );
    }
}
