use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = berth::cli::Cli::parse();
    berth::cli::run(cli).await
}
