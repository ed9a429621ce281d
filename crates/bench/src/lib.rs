//! `herald bench`: a load generator for Herald and for servers of the seed-004 room protocol
//! (the benchmark peers). Fan-out, many rooms, durable publish ingest and idle connections;
//! open-loop rates and closed-loop windows; publish-to-receipt latency in HDR histograms;
//! server CPU and memory from `/proc`. See `herald bench --help`.

mod args;
mod clients;
mod net;
mod payload;
mod procstat;
mod report;
mod run;
mod stats;

pub use args::{BenchArgs, Protocol, PublishVia, Scenario, Transport};
pub use report::Report;
pub use run::execute;

/// Runs the benchmark the flags describe and prints its report on stdout.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    run::run(args).await
}
