//! `tandem` binary: parse the command line and hand over to [`tandem::demo`],
//! [`tandem::bench`] or [`tandem::cli`].

use clap::Parser;

// sled allocates and frees on every insert; with glibc's allocator that was ~20 % of the
// state machine's apply time (`cargo bench -p tandem-replication --bench store`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = tandem::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn")
            }),
        )
        .with_writer(std::io::stderr)
        // journald and log files get plain text; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let job = async {
        match cli.command {
            tandem::cli::Command::Demo { common, cdrs } => {
                tandem::demo::run(common.json, cdrs).await
            }
            tandem::cli::Command::Bench { common, args } => {
                tandem::bench::run(args, common.json).await
            }
            command => tandem::cli::dispatch(tandem::cli::Cli { command }).await,
        }
    };
    match rt.block_on(job) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
