//! The CI smoke of the chaos soak: two minutes of churn and faults against real processes
//! on real etcd, with a fixed seed, must end with the cache and the export etcd matching
//! the model.

use std::process::Command;

/// Fixed, so a failure in CI replays with `meshfilter bench chaos --seed 20261130`.
const SEED: &str = "20261130";

#[test]
fn two_minutes_of_chaos_lose_nothing_and_leave_nothing_stale() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshfilter"))
        .args(["bench", "chaos", "--minutes", "2", "--seed", SEED])
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
}
