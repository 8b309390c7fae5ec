//! Prints the simulated `make stress` curve: timer lateness p50/p99 per role against N, with
//! the linear run queue of before issue 18 and with the indexed one, under the default cost
//! model (`bvt::stress_sim`). `cargo run --release -p bvt --features sim --example stress_sim
//! [N...]`;
//! `STEP_NS=` sets the cost of one search step (default 25 ns).

use bvt::stress_sim::{run, Model, Outcome};
use bvt::Queue;

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn line<Q: Queue<u32>>(name: &str, n: u32) {
    let mut model = Model::stress(n);
    if let Some(step) = std::env::var("STEP_NS").ok().and_then(|s| s.parse().ok()) {
        model.costs.step_ns = step;
    }
    if let Some(ms) = std::env::var("WARP_MS").ok().and_then(|s| s.parse::<u64>().ok()) {
        model.warp.warp_ns = ms * 1_000_000;
    }
    if let Some(ms) = std::env::var("RUN_MS").ok().and_then(|s| s.parse::<u64>().ok()) {
        model.run_ns = ms * 1_000_000;
    }
    let out: Outcome = run::<Q>(&model);
    let hv: Vec<String> = out.hypervisor_ns.iter().map(|&ns| format!("{:.0}%", ns as f64 * 100.0 / model.run_ns as f64)).collect();
    println!(
        "{name:<8} {n:>5}  {:>9.1} {:>9.1}  {:>9.1} {:>9.1}  {:>9.1} {:>9.1}  {:>9.1} {:>9.1}  {:>6.2}%  {:>9}  {}",
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
        hv.join("/"),
    );
}

fn main() {
    let ns: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let ns = if ns.is_empty() { vec![100, 300, 600, 1000] } else { ns };
    println!("simulated make stress, 2 CPUs, 10 s, default costs; latencies in us");
    println!("queue        N   warped p50/p99        unwarped p50/p99      idle p50/p99          ping-pong p50/p99     hog err   switches  hypervisor per CPU");
    for &n in &ns {
        line::<bvt::stress_sim::LinearQueue>("linear", n);
    }
    for &n in &ns {
        line::<bvt::RunQueue<u32>>("indexed", n);
    }
}
