//! Prints the simulated `make stress` curve: timer lateness p50/p99 per role against N
//! (`bvt::stress_sim`). First with the cost model of before issue 18 item 2 (workers that
//! never end), with the linear run queue of before issue 18 and with the indexed one; then
//! with the costs measured in real runs ([`Costs::measured`]), each worker running 10 s from
//! its own start and then printing its report, as the image was before item 2 (console
//! writers spinning on a full buffer, latency domains at weight 1, each report at its run's
//! end) and as it is now.
//!
//! `cargo run --release -p bvt --features sim --example stress_sim [N...]`. Knobs (for
//! calibrating; each applies to every model printed): `STEP_NS=` (one search step, default
//! 25), `WARP_MS=`, `RUN_MS=` (the simulation's bound), `ENTRY_US=`, `SWITCH_US=`,
//! `FIRE_US=`, `WORK_US=`, `STARTUP_MS=`, `WORKER_S=` (each worker's run), `DRAIN_KBPS=`,
//! `REPORT_BYTES=`, `REPORT_US=` (the report's CPU), `TOLD=0|1` (reports when domain 0 says),
//! `ALIGNED=0|1` (runs start together), `CONSOLE=spin|block`, `LATENCY_WEIGHT=`;
//! `ONLY=measured` prints only the measured models.

use bvt::stress_sim::{run, ConsoleWait, Model, Outcome};
use bvt::Queue;

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn knobs(mut model: Model) -> Model {
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    if let Some(step) = env("STEP_NS") {
        model.costs.step_ns = step;
    }
    if let Some(ms) = env("WARP_MS") {
        model.warp.warp_ns = ms * MS;
    }
    if let Some(ms) = env("RUN_MS") {
        model.run_ns = ms * MS;
    }
    if let Some(v) = env("ENTRY_US") {
        model.costs.entry_ns = v * US;
    }
    if let Some(v) = env("SWITCH_US") {
        model.costs.switch_ns = v * US;
    }
    if let Some(v) = env("FIRE_US") {
        model.costs.fire_ns = v * US;
    }
    if let Some(v) = env("WORK_US") {
        model.costs.wake_work_ns = v * US;
    }
    if let Some(v) = env("STARTUP_MS") {
        model.costs.startup_ns = v * MS;
    }
    if let (Some(v), Some(_)) = (env("WORKER_S"), model.worker_run_ns) {
        model.worker_run_ns = Some(v * 1000 * MS);
    }
    if let Some(v) = env("DRAIN_KBPS") {
        model.console.drain_bytes_per_s = v * 1000;
    }
    if let Some(v) = env("REPORT_BYTES") {
        model.console.report_bytes = v;
    }
    match std::env::var("CONSOLE").as_deref() {
        Ok("spin") => model.console.wait = ConsoleWait::Spin,
        Ok("block") => model.console.wait = ConsoleWait::Block,
        _ => {}
    }
    if let Some(v) = env("REPORT_US") {
        model.console.report_work_ns = v * US;
    }
    if let Some(v) = env("TOLD") {
        model.console.report_when_told = v != 0;
    }
    if let Some(v) = env("ALIGNED") {
        model.aligned_start = v != 0;
    }
    if let Some(v) = env("LATENCY_WEIGHT") {
        model.warp.weight = v as u32;
    }
    model
}

fn line<Q: Queue<u32>>(name: &str, model: Model) {
    let model = knobs(model);
    let out: Outcome = run::<Q>(&model);
    let length = out.end_ns.max(1);
    let hv: Vec<String> = out.hypervisor_ns.iter().map(|&ns| format!("{:.0}%", ns as f64 * 100.0 / length as f64)).collect();
    println!(
        "{name:<16} {:>5}  {:>9.1} {:>9.1}  {:>9.1} {:>9.1}  {:>9.1} {:>9.1}  {:>9.1} {:>9.1}  {:>6.2}%  {:>9}  {:>7}  {:>5.1} {:>5} {:>5.1} {:>5.2}  {}",
        model.n,
        us(out.warped.percentile(50)),
        us(out.warped.percentile(99)),
        us(out.unwarped.percentile(50)),
        us(out.unwarped.percentile(99)),
        us(out.idle.percentile(50)),
        us(out.idle.percentile(99)),
        us(out.ping_pong.percentile(50)),
        us(out.ping_pong.percentile(99)),
        out.hog_error * 100.0,
        out.switches,
        out.console_waits,
        out.end_ns as f64 / 1e9,
        out.reports,
        out.last_report_ns as f64 / 1e9,
        out.last_start_ns as f64 / 1e9,
        hv.join("/"),
    );
}

fn main() {
    let ns: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let ns = if ns.is_empty() { vec![100, 300, 600, 1000] } else { ns };
    let only_measured = std::env::var("ONLY").as_deref() == Ok("measured");
    println!("simulated make stress, 2 CPUs; latencies in us");
    println!("model                N   warped p50/p99        unwarped p50/p99      idle p50/p99          ping-pong p50/p99     hog err   switches  con.wait  run s  hypervisor per CPU");
    if !only_measured {
        for &n in &ns {
            // With the plan of then: latency domains at weight 1.
            let mut model = Model::stress(n);
            model.warp.weight = 1;
            line::<bvt::stress_sim::LinearQueue>("linear", model);
        }
        for &n in &ns {
            line::<bvt::RunQueue<u32>>("indexed", Model::stress(n));
        }
    }
    for &n in &ns {
        line::<bvt::RunQueue<u32>>("measured, before", Model::measured_before(n));
    }
    for &n in &ns {
        line::<bvt::RunQueue<u32>>("measured, now", Model::measured(n));
    }
}
