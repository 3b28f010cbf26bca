//! `civic-bench`: parse the command line, run the benchmark, print and write the report.

use std::process::ExitCode;

use civic_bench::cli::Cli;
use clap::Parser as _;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-control")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("civic-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("civic-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let report = civic_bench::run(cli).await?;
    let out = cli.out.clone().unwrap_or_else(civic_bench::default_out);
    let md = civic_bench::write(&report, &out)?;
    println!("{}", report.markdown());
    eprintln!("wrote {} and {}", out.display(), md.display());
    Ok(())
}
