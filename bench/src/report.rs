//! Small helpers to measure and print.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latency histogram in nanoseconds, 1 ns to 60 s.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
}

/// `p50 / p99 / p999` in microseconds.
pub(crate) fn percentiles(h: &Histogram<u64>) -> String {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!("{:.1} / {:.1} / {:.1}", us(0.5), us(0.99), us(0.999))
}

/// One measured run of a consumer over `n` messages.
pub(crate) struct Run {
    /// Until the last message was finished.
    pub(crate) took: Duration,
    /// This process's CPU time meanwhile.
    pub(crate) cpu: Duration,
    /// Each message's latency, from the consumer having it to its acknowledgement being
    /// allowed (`None`: not measured for this consumer).
    pub(crate) latency: Option<Histogram<u64>>,
}

/// The runs of each consumer in a table.
pub(crate) struct Runs {
    rates: Vec<Vec<f64>>,
    cpus: Vec<Vec<f64>>,
    latency: Vec<Option<Histogram<u64>>>,
}

impl Runs {
    pub(crate) fn new(consumers: usize) -> Self {
        Self { rates: vec![Vec::new(); consumers], cpus: vec![Vec::new(); consumers], latency: vec![None; consumers] }
    }

    /// Adds a run of consumer `i` over `n` messages.
    pub(crate) fn add(&mut self, i: usize, n: u64, run: Run) {
        self.rates[i].push(rate(n, run.took));
        self.cpus[i].push(run.cpu.as_secs_f64() * 1e6 / n as f64);
        if let Some(h) = run.latency {
            match &mut self.latency[i] {
                Some(all) => {
                    let _ = all.add(&h);
                }
                none => *none = Some(h),
            }
        }
    }

    /// Prints the table: one row per consumer (named by `labels`), its median rate (range),
    /// the ratio to the first row's (when `reference`), CPU per message, and the latency
    /// percentiles over all its runs.
    pub(crate) fn print(&mut self, unit: &str, cpu: &str, labels: &[&str], reference: bool) {
        println!(
            "| consumer | {unit} | / first row | {cpu} | latency p50 / p99 / p999 (µs) |\n|---|---:|---:|---:|---:|"
        );
        let first = if reference { median(&mut self.rates[0].clone()) } else { f64::NAN };
        for (i, label) in labels.iter().enumerate() {
            let m = median(&mut self.rates[i].clone());
            let latency = self.latency[i].as_ref().map_or_else(|| "not measured".to_owned(), percentiles);
            println!(
                "| {label} | {} | {:.2} | {:.1} µs | {latency} |",
                spread(&mut self.rates[i]),
                m / first,
                median(&mut self.cpus[i])
            );
        }
        println!();
    }
}

/// One plot line: a consumer's name and its (x, records/s) points.
pub(crate) type Series = (String, Vec<(u64, f64)>);

/// Prints the header of a sweep's table (one column per consumer, labelled by `label`)
/// and returns one empty plot series per consumer, named by its command-line name.
pub(crate) fn sweep_start<V: clap::ValueEnum + std::fmt::Debug>(
    axis: &str,
    variants: &[V],
    label: impl Fn(&V) -> &'static str,
) -> Vec<Series> {
    let mut header = format!("| {axis} |");
    for v in variants {
        header.push_str(&format!(" {} |", label(v)));
    }
    println!("{header}\n|---:|{}", "---:|".repeat(variants.len()));
    variants
        .iter()
        .map(|v| (v.to_possible_value().map_or_else(|| format!("{v:?}"), |p| p.get_name().to_owned()), Vec::new()))
        .collect()
}

pub(crate) fn rate(n: u64, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

pub(crate) fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k/s", r / 1e3)
    } else {
        format!("{r:.0}/s")
    }
}

/// The machine, for the report header.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} cores ({model}), Rust's allocations through {}, {}", crate::ALLOCATOR, huge_pages())
}

/// Turns transparent huge pages off for this process (every thread, and memory mapped
/// before the call too: the kernel checks the flag at each fault).
pub(crate) fn huge_pages_off() -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_thp_disable(true)
        .map_err(|e| anyhow::anyhow!("cannot turn transparent huge pages off (--keep-huge-pages skips it): {e}"))?;
    Ok(())
}

/// Whether this process may get transparent huge pages, for the reports' heading.
fn huge_pages() -> String {
    #[cfg(target_os = "linux")]
    if nix::sys::prctl::get_thp_disable().unwrap_or(false) {
        return "transparent huge pages off for the process".into();
    }
    let setting = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    match setting.split_whitespace().find(|w| w.starts_with('[')) {
        Some(mode) => format!("transparent huge pages as the machine sets them ({})", mode.trim_matches(['[', ']'])),
        None => "transparent huge pages unknown".into(),
    }
}

/// CPU time (user + system) this process has used so far, from /proc/self/stat.
pub(crate) fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may contain spaces) start after ')'.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: u64 = rest.get(11)?.parse().ok()?;
            let stime: u64 = rest.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// This process's resident memory in MiB (VmRSS of /proc/self/status; NaN where there is none).
pub(crate) fn resident_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Median of a slice of rates.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `median (min-max)` of rates.
pub(crate) fn spread(v: &mut [f64]) -> String {
    let m = median(v);
    if v.len() < 2 {
        return fmt_rate(m);
    }
    format!("{} ({}-{})", fmt_rate(m), fmt_rate(v[0]), fmt_rate(v[v.len() - 1]))
}

/// Polls the handler's counter until `done`; fails if the consumer task `ended` first
/// or the counter stops moving for `stall`.
pub(crate) async fn wait_for(
    handled: &std::sync::atomic::AtomicU64,
    done: impl Fn(u64) -> bool,
    ended: impl Fn() -> bool,
    stall: Duration,
) -> anyhow::Result<()> {
    let (mut last, mut progress) = (0, std::time::Instant::now());
    loop {
        let now = handled.load(std::sync::atomic::Ordering::Relaxed);
        if done(now) {
            return Ok(());
        }
        anyhow::ensure!(!ended(), "the consumer stopped early, after {now} records");
        if now != last {
            (last, progress) = (now, std::time::Instant::now());
        }
        anyhow::ensure!(progress.elapsed() < stall, "only {now} records were handled; no progress for {stall:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
