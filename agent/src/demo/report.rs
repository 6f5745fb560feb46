//! The demo's closing table.

use std::time::Duration;

/// One rollout's results.
pub(super) struct RunReport {
    pub ok: u64,
    pub failed: u64,
    pub steps: Vec<StepReport>,
    pub samples: Vec<String>,
    pub seconds: f64,
}

/// One replica's replacement.
pub(super) struct StepReport {
    /// How long its preStop /drain took (agents only).
    pub drain_time: Option<Duration>,
    /// Client connections its agent sent GOAWAY.
    pub goaways: u64,
    /// Client connections that received GOAWAY and moved.
    pub moved: u64,
    /// Calls that failed during this step.
    pub failed: u64,
}

fn rate(r: &RunReport) -> f64 {
    let total = r.ok + r.failed;
    if total == 0 {
        0.0
    } else {
        r.failed as f64 * 100.0 / total as f64
    }
}

/// Prints the comparison.
pub(super) fn print(with: &RunReport, without: Option<&RunReport>) {
    println!("== Results");
    println!(
        "{:<28} {:>16} {:>22}",
        "", "with goaway", "without (baseline)"
    );
    let base = |f: &dyn Fn(&RunReport) -> String| without.map_or("-".to_string(), f);
    println!(
        "{:<28} {:>16} {:>22}",
        "calls ok",
        with.ok,
        base(&|r| r.ok.to_string())
    );
    println!(
        "{:<28} {:>16} {:>22}",
        "calls failed",
        format!("{} ({:.2}%)", with.failed, rate(with)),
        base(&|r| format!("{} ({:.2}%)", r.failed, rate(r)))
    );
    println!(
        "{:<28} {:>16} {:>22}",
        "rollout duration",
        format!("{:.1}s", with.seconds),
        base(&|r| format!("{:.1}s", r.seconds))
    );
    println!();
    println!(
        "{:<10} {:>12} {:>14} {:>18} {:>14} {:>20}",
        "replica",
        "drain time",
        "GOAWAYs sent",
        "connections moved",
        "failed calls",
        "failed (baseline)"
    );
    for (i, s) in with.steps.iter().enumerate() {
        let drain = s
            .drain_time
            .map_or("-".into(), |d| format!("{:.2}s", d.as_secs_f64()));
        let baseline = without
            .and_then(|b| b.steps.get(i))
            .map_or("-".into(), |b| b.failed.to_string());
        println!(
            "{:<10} {:>12} {:>14} {:>18} {:>14} {:>20}",
            format!("app-{}", i + 1),
            drain,
            s.goaways,
            s.moved,
            s.failed,
            baseline
        );
    }
    for (label, r) in [("with goaway", Some(with)), ("baseline", without)] {
        if let Some(r) = r
            && !r.samples.is_empty()
        {
            println!("\nsample failures ({label}):");
            for s in &r.samples {
                println!("  {s}");
            }
        }
    }
}
