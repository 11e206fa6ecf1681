//! `tandem bench`: benchmarks (see docs/benchmarks.md).

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Seconds each write phase runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

pub async fn run(_args: BenchArgs, _json: bool) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
