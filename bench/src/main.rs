//! trainerd-bench: the benchmark suite. Starts the real trainerd (beside this binary) on temporary
//! directories, drives it over its unix socket with real trainer processes, and prints each figure
//! beside its target. Timings live here, never in the tests.
//!
//! ```text
//! scripts/bench.sh            # release build, full size (about two minutes)
//! scripts/bench.sh --strict   # the same, exiting 1 when any target is missed (a gate for a change)
//! trainerd-bench --smoke      # a few of each, to check the suite works (the test suite runs this)
//! scripts/bench.sh --peers    # the side-by-side run with pueue and supervisord (peers.rs)
//! ```

mod daemon;
mod measure;
mod peers;
mod slurm;
mod stats;
mod ui;

use daemon::Daemon;
use std::time::Duration;

/// One row of the table.
pub struct Figure {
    name: String,
    measured: String,
    target: String,
    met: bool,
    /// The number the target is about (a p50, a rate, a share), for the spread across runs.
    headline: Option<(f64, &'static str)>,
}

impl Figure {
    pub fn new(name: &str, measured: String, target: &str, met: bool) -> Figure {
        Figure { name: name.into(), measured, target: target.into(), met, headline: None }
    }

    /// The figure's headline number and its unit (`ms`, `/s`, `%`, `MiB`...).
    pub fn headline(mut self, value: f64, unit: &'static str) -> Figure {
        self.headline = Some((value, unit));
        self
    }
}

/// How much of everything.
struct Size {
    exits: usize,
    gets: usize,
    writes: usize,
    hangs: usize,
    restarts: usize,
    stored: usize,
    burst: usize,
    live: usize,
    window: Duration,
    epochs: u32,
    steps: u32,
    slurm: usize,
    history: u64,
    /// How long the daemon with idle queued jobs is watched.
    idle: Duration,
}

const FULL: Size = Size {
    exits: 100,
    gets: 30,
    writes: 500,
    hangs: 5,
    restarts: 30,
    stored: 10_000,
    burst: 500,
    live: 1_000,
    window: Duration::from_secs(30),
    epochs: 4,
    steps: 750,
    slurm: 10,
    history: 8_000,
    idle: Duration::from_secs(35),
};

const SMOKE: Size = Size {
    exits: 3,
    gets: 2,
    writes: 20,
    hangs: 1,
    restarts: 3,
    stored: 100,
    burst: 5,
    live: 10,
    window: Duration::from_secs(2),
    epochs: 1,
    steps: 100,
    slurm: 1,
    history: 200,
    idle: Duration::from_secs(1),
};

fn main() -> std::process::ExitCode {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let strict = std::env::args().any(|a| a == "--strict");
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("usage: trainerd-bench [--smoke] [--strict] [--runs N] [--only PARTS]   (see docs/benchmarks.md)");
        println!("  --runs N  the suite N times: each row from its median run, with the spread across runs");
        println!("  --smoke   a few of each: proves the suite runs; its figures mean nothing");
        println!("  --strict  exit 1 when any figure misses its target");
        println!("  --only    a comma-separated list of parts: {} and trainer-proc", PARTS.join(", "));
        println!("  --peers   trainerd, pueue and supervisord side by side (TRAINERD_PEERS: where they are installed)");
        return std::process::ExitCode::SUCCESS;
    }
    if std::env::args().any(|a| a == "--peers") {
        return side_by_side(smoke);
    }
    let size = if smoke { SMOKE } else { FULL };
    let only = match parts_asked() {
        Ok(only) => only,
        Err(why) => {
            eprintln!("trainerd-bench: {why}");
            return std::process::ExitCode::from(2);
        }
    };
    let runs = runs_asked().unwrap_or(1);
    let all: Vec<Vec<Figure>> = (1..=runs)
        .map(|run| {
            if runs > 1 {
                eprintln!("run {run} of {runs}");
            }
            suite(&size, only.as_deref())
        })
        .collect();
    let figures = print_table(all, smoke);
    let missed: Vec<&str> = figures.iter().filter(|f| !f.met).map(|f| f.name.as_str()).collect();
    if strict && !missed.is_empty() {
        eprintln!("trainerd-bench --strict: {} target(s) missed: {}", missed.len(), missed.join(", "));
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

/// `--runs N`: the whole suite N times, each row shown from its median run with the spread.
fn runs_asked() -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--runs")?;
    args.get(at + 1)?.parse().ok().filter(|n| *n >= 1)
}

/// The parts of the suite, by the name `--only` takes.
const PARTS: [&str; 12] = [
    "exit",
    "get",
    "propagation",
    "hang",
    "restart",
    "floors",
    "store",
    "concurrent",
    "web",
    "scale",
    "first-answer",
    "slurm",
];

/// `--only a,b`: the parts of the suite to run (all when absent; `trainer-proc` is a part too).
fn parts_asked() -> Result<Option<Vec<String>>, String> {
    let args: Vec<String> = std::env::args().collect();
    let Some(at) = args.iter().position(|a| a == "--only") else { return Ok(None) };
    let list = args.get(at + 1).ok_or("--only needs a list of parts, e.g. --only scale,exit")?;
    let parts: Vec<String> = list.split(',').map(str::to_string).collect();
    match parts.iter().find(|p| !PARTS.contains(&p.as_str()) && *p != "trainer-proc") {
        Some(bad) => Err(format!("--only: no part {bad:?}; the parts are {} and trainer-proc", PARTS.join(", "))),
        None => Ok(Some(parts)),
    }
}

/// One run of every figure (of the parts asked for).
fn suite(size: &Size, only: Option<&[String]>) -> Vec<Figure> {
    let want = |part: &str| only.is_none_or(|parts| parts.iter().any(|p| p == part));
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let mut figures = Vec::new();
    runtime.block_on(async {
        let slots = (size.live + 10).to_string();
        if ["exit", "get", "propagation", "hang", "restart"].iter().any(|p| want(p)) {
            // Metrics on a free local port: the exit path's breakdown reads them.
            let metrics = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "127.0.0.1:9184".into());
            let daemon = Daemon::start(&["--slots", &slots, "--heartbeat-interval", "5", "--metrics", &metrics]);
            if want("exit") {
                eprintln!("exit detection ...");
                figures.extend(measure::exit_detection(&daemon, size.exits, size.gets).await);
            }
            if want("get") {
                figures.extend(measure::trainctl_get(&daemon, size.exits).await);
            }
            if want("propagation") {
                eprintln!("progress propagation ...");
                figures.extend(measure::propagation(&daemon, size.writes).await);
            }
            if want("hang") {
                eprintln!("hang detection ...");
                figures.extend(measure::hang_detection(&daemon, size.hangs, Duration::from_secs(1)).await);
            }
            if want("restart") {
                eprintln!("restart ...");
                figures.extend(measure::restart(&daemon, size.restarts).await);
            }
        }
        if want("floors") {
            eprintln!("durability floors ...");
            figures.extend(measure::floors(size.exits));
        }
        if ["store", "concurrent", "web", "scale"].iter().any(|p| want(p)) {
            // One store for the rest: many records first, then the live jobs, then a restart.
            let mut daemon = Daemon::start(&["--slots", "1", "--heartbeat-interval", "5"]);
            if want("store") {
                eprintln!("submissions and trainctl ls over {} jobs ...", size.stored);
                figures.extend(measure::store(&daemon, size.stored).await);
            }
            if want("concurrent") {
                eprintln!("concurrent submissions, then idle queued jobs ...");
                figures.extend(measure::concurrent_submissions(size.stored, size.idle).await);
            }
            if want("web") {
                eprintln!("the web page over {} jobs ...", size.stored);
                figures.extend(ui::figures(&daemon, size.history, size.gets.max(5)).await);
            }
            if want("scale") {
                daemon.relaunch_with(&["--slots", &slots, "--heartbeat-interval", "5"]);
                eprintln!("{} jobs, scale and recovery ...", size.live);
                figures.extend(measure::scale_and_recovery(&mut daemon, size.burst, size.live, size.window).await);
                drop(daemon);
                eprintln!("{} jobs with the state dir in memory ...", size.burst);
                figures.extend(measure::burst_in_memory(size.burst).await);
            }
        }
        if want("first-answer") {
            eprintln!("restart with 20 running jobs ...");
            figures.extend(measure::first_answer(20.min(size.live), size.restarts.min(10)).await);
        }
        if want("slurm") {
            eprintln!("Slurm ...");
            figures.extend(slurm::figures(size.slurm).await);
        }
    });
    if want("trainer-proc") {
        eprintln!("trainer-proc ...");
        figures.extend(measure::trainer_proc(size.epochs, size.steps));
    }
    figures
}

/// The side-by-side run: trainerd, pueue and supervisord through the same scenarios.
fn side_by_side(smoke: bool) -> std::process::ExitCode {
    if let Err(why) = peers::installed() {
        eprintln!("trainerd-bench --peers: {why}");
        return std::process::ExitCode::FAILURE;
    }
    let size = if smoke {
        peers::PeerSize { exits: 2, restarts: 2, bursts: &[5], survivors: 3, idle_window: Duration::from_secs(1) }
    } else {
        peers::PeerSize {
            exits: 20,
            restarts: 10,
            bursts: &[200, 500],
            survivors: 20,
            idle_window: Duration::from_secs(10),
        }
    };
    let mut all: Vec<Box<dyn peers::Peer>> =
        vec![Box::new(peers::Trainerd::new()), Box::new(peers::Pueue::new()), Box::new(peers::Supervisord::new())];
    let rows = peers::compare(&size, &mut all);
    // A hung trainer (alive, silent): only trainerd knows what progress is.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let hang = runtime.block_on(async {
        let daemon = Daemon::start(&["--heartbeat-interval", "5"]);
        measure::hang_detection(&daemon, size.exits.min(5), Duration::from_secs(1)).await
    });
    print_header(smoke);
    peers::print(&rows, &hang[0].measured);
    std::process::ExitCode::SUCCESS
}

fn print_header(smoke: bool) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "trainerd-bench ({}, {} build) on {cores} cores, {cpu}, Linux {}",
        if smoke { "smoke size" } else { "full size" },
        if cfg!(debug_assertions) { "debug" } else { "release" },
        kernel.trim()
    );
    println!();
}

/// Prints each row from its median run (by headline) beside the spread of the headline across runs;
/// returns the rows printed.
fn print_table(runs: Vec<Vec<Figure>>, smoke: bool) -> Vec<Figure> {
    print_header(smoke);
    let count = runs.len();
    println!("| figure | measured (the median run) | spread over {count} run(s) | target | met |");
    println!("|---|---|---|---|---|");
    let rows = runs.first().map(Vec::len).unwrap_or(0);
    let mut columns: Vec<std::vec::IntoIter<Figure>> = runs.into_iter().map(Vec::into_iter).collect();
    let mut shown = Vec::new();
    for _ in 0..rows {
        let mut row: Vec<Figure> = columns.iter_mut().filter_map(Iterator::next).collect();
        row.sort_by(|a, b| {
            let (a, b) = (a.headline.map_or(0.0, |h| h.0), b.headline.map_or(0.0, |h| h.0));
            a.total_cmp(&b)
        });
        let spread = match (row.first().and_then(|f| f.headline), row.last().and_then(|f| f.headline)) {
            _ if row.len() < 2 => "one run".to_string(),
            (Some((low, unit)), Some((high, _))) => format!("{} – {} {unit}", number(low), number(high)),
            _ => "—".to_string(),
        };
        let median = row.swap_remove(row.len() / 2);
        println!(
            "| {} | {} | {spread} | {} | {} |",
            median.name,
            median.measured,
            median.target,
            if median.met { "yes" } else { "**no**" }
        );
        shown.push(median);
    }
    shown
}

/// A headline number with the digits that matter.
fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}
