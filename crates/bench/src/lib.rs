//! `herald bench`: a load generator for Herald and for servers of the seed-004 room protocol
//! or its Socket.IO form (the benchmark peers). Fan-out, many rooms, durable publish ingest and idle connections;
//! open-loop rates and closed-loop windows; publish-to-receipt latency in HDR histograms;
//! server CPU and memory from `/proc`. See `herald bench --help`.

mod args;
mod clients;
mod net;
mod payload;
mod procstat;
mod report;
mod run;
mod sio;
mod stats;

pub use args::{BenchArgs, Protocol, PublishVia, Scenario, Transport};
pub use report::Report;
pub use run::execute;

/// Runs the benchmark the flags describe and prints its report on stdout. The load runs on a
/// runtime of its own with `--threads` worker threads (the caller's runtime only waits).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench".into())
        .spawn(move || {
            let runtime = if threads == 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name("bench-worker")
                    .enable_all()
                    .build()
            };
            let result = match runtime {
                Ok(rt) => rt.block_on(run::run(args)),
                Err(e) => Err(e.into()),
            };
            let _ = tx.send(result);
        })?;
    rx.await?
}
