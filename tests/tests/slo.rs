//! The rules `exactly slo rules` prints: valid for `promtool check rules`, and, in
//! `promtool test rules` unit tests on synthetic series, the fast-burn alert fires on a 2%
//! failure rate within its window while neither fires at the objective.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

const CONFIG: &str = r#"
[store]
path = "unused"
[amqp.payments]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
queue = "payments"
[amqp.payments.slo]
settled_within = "5s"
target = 0.999
dead_letter_ratio_max = 0.001
"#;

/// `promtool` with these arguments in `dir`; `None` when it is not installed and the run
/// does not require it.
fn promtool(dir: &Path, args: &[&str]) -> Option<std::process::Output> {
    match Command::new("promtool").args(args).current_dir(dir).output() {
        Ok(out) => Some(out),
        Err(e) if std::env::var_os("EXACTLY_REQUIRE_PROMETHEUS").is_none() => {
            eprintln!("SKIPPED: promtool cannot run ({e}); scripts/test.sh installs Debian's prometheus");
            None
        }
        Err(e) => panic!("promtool cannot run: {e}"),
    }
}

fn succeeded(out: &std::process::Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool failed:\n{text}");
    text
}

/// A unit test: `series` for 6 hours, one sample a minute, then the alerts expected at each time.
fn case(series: &[(&str, &str)], expected: &[(&str, &str, &[&str])]) -> String {
    let mut t = String::from("  - interval: 1m\n    input_series:\n");
    for (name, values) in series {
        t += &format!("      - series: '{name}{{consumer=\"payments\",instance=\"a\"}}'\n        values: '{values}'\n");
    }
    t += "    alert_rule_test:\n";
    for (at, alert, firing) in expected {
        t += &format!("      - eval_time: {at}\n        alertname: {alert}\n        exp_alerts:\n");
        for severity in *firing {
            t += &format!(
                "          - exp_labels:\n              consumer: payments\n              severity: {severity}\n"
            );
            // promtool compares annotations too: the summary, as generated.
            let summary = match (*alert, *severity) {
                ("ExactlySettlementLateFastBurn", _) => {
                    "payments: messages settled later than 5s burn the error budget at 14.4x or more (over 1h and 5m)"
                }
                ("ExactlySettlementLateSlowBurn", _) => {
                    "payments: messages settled later than 5s burn the error budget at 6x or more (over 6h and 30m)"
                }
                ("ExactlyDeadLettersFastBurn", _) => {
                    "payments: dead-letters burn their budget at 14.4x or more (over 1h and 5m)"
                }
                _ => "payments: dead-letters burn their budget at 6x or more (over 6h and 30m)",
            };
            t += &format!("            exp_annotations:\n              summary: '{summary}'\n");
        }
        if firing.is_empty() {
            t.truncate(t.len() - "\n        exp_alerts:\n".len());
            t += "\n        exp_alerts: []\n";
        }
    }
    t
}

#[test]
fn the_generated_rules_pass_promtool_and_burn_as_the_workbook_says() {
    let config = exactly::app::Config::from_toml(CONFIG).unwrap();
    let rules = exactly::app::prometheus_rules(&config);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yml"), &rules).unwrap();
    let Some(out) = promtool(dir.path(), &["check", "rules", "rules.yml"]) else { return };
    assert!(succeeded(&out).contains("SUCCESS: 12 rules found"), "{rules}");

    // 1,000 settled a minute; the objectives as the app exports them.
    let target = ("exactly_slo_target", "0.999+0x400");
    let dl_max = ("exactly_slo_dead_letter_ratio_max", "0.001+0x400");
    let settled = ("exactly_settlement_age_seconds_count", "0+1000x400");
    let mut tests = String::from("rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n");
    // 2% late: 20x the budget. The fast burn pages at the first evaluation with a rate
    // (one minute in); the slow one (6x) fires as well.
    tests += &case(
        &[target, dl_max, settled, ("exactly_settlement_late_total", "0+20x400")],
        &[
            ("0m", "ExactlySettlementLateFastBurn", &[]),
            ("1m", "ExactlySettlementLateFastBurn", &["page"]),
            ("10m", "ExactlySettlementLateSlowBurn", &["ticket"]),
        ],
    );
    // At the objective (0.1% late) for 6 hours: no alert.
    tests += &case(
        &[target, dl_max, settled, ("exactly_settlement_late_total", "0+1x400")],
        &[("6h", "ExactlySettlementLateFastBurn", &[]), ("6h", "ExactlySettlementLateSlowBurn", &[])],
    );
    // A 10-minute spike of 50% late after 5 quiet hours: the fast burn pages during it and
    // stops 5 minutes after it (its short window), though the hour still holds it.
    tests += &case(
        &[target, dl_max, settled, ("exactly_settlement_late_total", "0+1x300 300+500x10 5300+1x89")],
        &[("305m", "ExactlySettlementLateFastBurn", &["page"]), ("325m", "ExactlySettlementLateFastBurn", &[])],
    );
    // Dead-letters: 2% of settled (20 a minute) against a 0.1% maximum pages; 0.1% does not.
    let dead = "exactly_messages_total";
    tests += &format!(
        "  - interval: 1m\n    input_series:\n\
         \x20     - series: '{dead}{{consumer=\"payments\",instance=\"a\",outcome=\"handled\"}}'\n        values: '0+980x400'\n\
         \x20     - series: '{dead}{{consumer=\"payments\",instance=\"a\",outcome=\"dead_lettered\"}}'\n        values: '0+20x400'\n\
         \x20     - series: 'exactly_slo_dead_letter_ratio_max{{consumer=\"payments\",instance=\"a\"}}'\n        values: '0.001+0x400'\n\
         \x20   alert_rule_test:\n\
         \x20     - eval_time: 10m\n        alertname: ExactlyDeadLettersFastBurn\n        exp_alerts:\n\
         \x20         - exp_labels:\n              consumer: payments\n              severity: page\n\
         \x20           exp_annotations:\n              summary: 'payments: dead-letters burn their budget at 14.4x or more (over 1h and 5m)'\n"
    );
    std::fs::write(dir.path().join("tests.yml"), &tests).unwrap();
    let out = promtool(dir.path(), &["test", "rules", "tests.yml"]).unwrap();
    assert!(succeeded(&out).contains("SUCCESS"), "{tests}");
}
