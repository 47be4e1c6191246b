//! trainerd: supervises ML training jobs. See ARCHITECTURE.md for the map.

use clap::Parser;

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let flags = trainerd::config::Flags::parse();
    let command = flags.command.clone();
    let merged = match flags.clone().with_file() {
        Ok(merged) => merged,
        Err(e) => {
            eprintln!("trainerd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    trainerd::logging::init(merged.log_format.unwrap_or_default());
    let config = match merged.resolve() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trainerd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if matches!(command, Some(trainerd::config::Subcommand::CheckConfig)) {
        let probe = config.state_dir.join(".trainerd-check-config");
        if let Err(e) = std::fs::create_dir_all(&config.state_dir).and_then(|()| std::fs::write(&probe, b"")) {
            eprintln!("trainerd: the state dir {} is not writable: {e}", config.state_dir.display());
            return std::process::ExitCode::from(2);
        }
        let _ = std::fs::remove_file(&probe);
        println!("configuration is valid:\n{config:#?}");
        return std::process::ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trainerd: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(trainerd::run::run(config, flags));
    // Dropping a runtime waits for every blocking-pool thread, and one may be stuck in a trainer's
    // file on a hung file system: the exit does not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trainerd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates its own malloc arena, up to eight per core, and memory
/// freed in one arena is reused only by the threads on it: the runtime's workers, the blocking pool
/// and sled's threads each kept an arena's worth of free memory, most of trainerd's RSS
/// (docs/benchmarks.md). Two arenas hold it, set before any thread starts: trainerd allocates little
/// (a few blocks a report) and its threads seldom at the same moment, so sharing an arena costs no
/// waiting that shows (the scale row's CPU was the same side by side).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
