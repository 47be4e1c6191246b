//! trainerd: supervises ML training jobs. See ARCHITECTURE.md for the map.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let flags = trainerd::config::Flags::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TRAINERD_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let config = match flags.with_file().and_then(trainerd::config::Flags::resolve) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trainerd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trainerd: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(trainerd::run::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trainerd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
