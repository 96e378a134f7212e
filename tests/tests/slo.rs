//! The rules `exactly slo rules` prints: valid for `promtool check rules`, and, in
//! `promtool test rules` unit tests on synthetic series, the fast-burn alert fires on a 2%
//! failure rate within its window while neither fires at the objective. Then a real
//! Prometheus scraping the app through a dependency outage: the settlement-age series
//! exist and the fast-burn alert fires.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{AMQP_URL, App, free_port, get, ready, until};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scraping_the_app_fires_the_fast_burn_alert_through_an_outage() {
    use exactly::amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use exactly::amqp::lapin::types::{AMQPValue, FieldTable};
    use exactly::amqp::lapin::{BasicProperties, Connection};

    let dir = tempfile::tempdir().unwrap();
    let (queue, app_port, prometheus_port) = (format!("exactly-slo-{}", std::process::id()), free_port(), free_port());
    let toml = format!(
        "[store]\npath = \"{store}\"\n[http]\nlisten = \"127.0.0.1:{app_port}\"\n\
         [amqp.ledger]\nurl = \"{AMQP_URL}\"\nqueue = \"{queue}\"\n\
         [amqp.ledger.slo]\nsettled_within = \"1s\"\ntarget = 0.999\n",
        store = dir.path().join("store").display()
    );
    let rules = exactly::app::prometheus_rules(&exactly::app::Config::from_toml(&toml).unwrap());
    std::fs::write(dir.path().join("rules.yml"), rules).unwrap();
    std::fs::write(dir.path().join("app.toml"), &toml).unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: exactly\n    static_configs: [{{targets: ['127.0.0.1:{app_port}']}}]\n"
        ),
    )
    .unwrap();
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let _prometheus = match prometheus {
        Ok(p) => App(p), // killed when dropped, as the app is
        Err(e) if std::env::var_os("EXACTLY_REQUIRE_PROMETHEUS").is_none() => {
            return eprintln!("SKIPPED: prometheus cannot run ({e}); scripts/test.sh installs it");
        }
        Err(e) => panic!("prometheus cannot run: {e}"),
    };
    let outage = dir.path().join("outage");
    let _app = App(Command::new(env!("CARGO_BIN_EXE_app_child"))
        .env("EXACTLY_CONFIG", dir.path().join("app.toml"))
        .env("EFFECTS", dir.path().join("effects"))
        .env("OUTAGE", &outage)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap());
    ready(app_port, Duration::from_secs(60)).await;

    let conn = Connection::connect(AMQP_URL, Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let publish = async |keys: std::ops::Range<u64>| {
        for k in keys {
            let now = i64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap().as_millis()).unwrap();
            let mut headers = FieldTable::default();
            headers.insert("timestamp_in_ms".into(), AMQPValue::LongLongInt(now));
            let props =
                BasicProperties::default().with_message_id(format!("k{k}").as_str().into()).with_headers(headers);
            let body = exactly_tests::payload(k, false);
            let confirm =
                ch.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, props);
            assert!(confirm.await.unwrap().await.unwrap().is_ack());
        }
    };
    // Prometheus has the counters at 0 before anything is settled: a rate needs to see them rise.
    let query = async |path: &str| get(prometheus_port, path).await.map(|(_, body)| body).unwrap_or_default();
    until("Prometheus scraped the app", Duration::from_secs(60), async || {
        query("/api/v1/query?query=exactly_settlement_late_total").await.contains("\"consumer\":\"ledger\"")
    })
    .await;
    // Settled at once, then published while the handler's dependency is down for 3 s:
    // settled seconds after they were published, against a 1 s objective.
    publish(0..20).await;
    std::fs::write(&outage, b"down").unwrap();
    publish(20..50).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::remove_file(&outage).unwrap();

    until("Prometheus has the settlement-age series", Duration::from_secs(60), async || {
        query("/api/v1/query?query=exactly_settlement_age_seconds_count").await.contains("\"consumer\":\"ledger\"")
    })
    .await;
    until("the fast-burn alert fires", Duration::from_secs(90), async || {
        let alerts = query("/api/v1/alerts").await;
        alerts.contains("ExactlySettlementLateFastBurn") && alerts.contains("\"state\":\"firing\"")
    })
    .await;
    let late = query("/api/v1/query?query=exactly_settlement_late_total").await;
    assert!(late.contains("\"consumer\":\"ledger\""), "{late}");
    exactly::amqp::Topology::declare().delete(&ch, &queue).await.unwrap();
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The playground's Prometheus: its configuration is valid, its rules are what
/// `exactly slo rules` prints for examples/payments.toml, and every PromQL expression of
/// the Grafana dashboard parses (Grafana's variables given values).
#[test]
fn the_playground_rules_and_dashboard_parse() {
    let config = exactly::app::Config::from_toml(&std::fs::read_to_string(repo("examples/payments.toml")).unwrap());
    let generated = exactly::app::prometheus_rules(&config.unwrap());
    let shipped = std::fs::read_to_string(repo("docker/prometheus/payments-rules.yml")).unwrap();
    assert_eq!(
        shipped, generated,
        "docker/prometheus/payments-rules.yml is stale: exactly slo rules --config examples/payments.toml > docker/prometheus/payments-rules.yml"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("payments-rules.yml"), &shipped).unwrap();
    let prometheus = std::fs::read_to_string(repo("docker/prometheus/prometheus.yml")).unwrap();
    let local = prometheus.replace("/etc/prometheus/payments-rules.yml", "payments-rules.yml");
    std::fs::write(dir.path().join("prometheus.yml"), local).unwrap();
    let Some(out) = promtool(dir.path(), &["check", "config", "prometheus.yml"]) else { return };
    succeeded(&out);

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("docker/grafana/dashboards/exactly.json")).unwrap())
            .unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "1m").replace("$consumer", ".*");
            rules += &format!("      - record: dashboard:panel_{n}\n        expr: '{}'\n", expr.replace('\'', "''"));
            n += 1;
        }
    }
    assert!(n >= 12, "the dashboard has its panels' queries: {n}");
    std::fs::write(dir.path().join("dashboard.yml"), &rules).unwrap();
    let out = promtool(dir.path(), &["check", "rules", "dashboard.yml"]).unwrap();
    assert!(succeeded(&out).contains(&format!("SUCCESS: {n} rules found")), "{rules}");
}
