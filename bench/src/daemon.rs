//! A trainerd for a benchmark: the real binary (beside this one) on a temporary state dir and socket.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A binary built beside trainerd-bench.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let path = exe.with_file_name(name);
    assert!(path.is_file(), "{} is not built; build the workspace's binaries first", path.display());
    path
}

/// A running trainerd.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts trainerd with `args` and waits for its readiness line.
    pub fn start(args: &[&str]) -> Daemon {
        Daemon::start_with_env(args, &[])
    }

    /// Starts trainerd with `args` and extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::Builder::new().prefix("trainerd-bench").tempdir().expect("tempdir");
        Daemon::start_at(dir, args, env)
    }

    /// Starts trainerd with `args`, its state dir (and so every job's files) under `root`.
    pub fn start_under(root: &std::path::Path, args: &[&str]) -> Daemon {
        let dir = tempfile::Builder::new().prefix("trainerd-bench").tempdir_in(root).expect("tempdir");
        Daemon::start_at(dir, args, &[])
    }

    fn start_at(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut daemon = Daemon {
            dir,
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        daemon.launch();
        daemon
    }

    /// Starts trainerd again on the same state dir; returns how long it took to be ready.
    pub fn launch(&mut self) -> Duration {
        let started = Instant::now();
        let mut child = Command::new(bin("trainerd"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(self.socket())
            .args(["--gpus", "none", "--log-cap-mib", "1"])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("TRAINERD_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn trainerd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("readiness");
        assert!(line.starts_with("trainerd ready"), "trainerd did not start: {line:?}");
        let ready = started.elapsed();
        self.child = Some(child);
        ready
    }

    /// Kills trainerd and starts it again on the same state dir with other settings.
    pub fn relaunch_with(&mut self, args: &[&str]) -> Duration {
        self.kill();
        self.args = args.iter().map(|a| a.to_string()).collect();
        self.launch()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("trainerd.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// trainerd's metrics (`--metrics`), each sample by its name with labels; empty when the daemon
    /// was started without them or cannot be reached.
    pub fn metrics(&self) -> HashMap<String, f64> {
        use std::io::{Read, Write};
        let Some(addr) = self.args.iter().position(|a| a == "--metrics").and_then(|i| self.args.get(i + 1)) else {
            return HashMap::new();
        };
        let mut text = String::new();
        let fetched = std::net::TcpStream::connect(addr.as_str()).and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            c.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            c.read_to_string(&mut text)
        });
        if fetched.is_err() {
            return HashMap::new();
        }
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
            .collect()
    }

    /// trainerd's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: trainers live on under their shims.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn client(&self) -> trainctl::Client {
        trainctl::connect_unix(&self.socket()).await.expect("connect")
    }

    /// A job's trainer directory.
    pub fn trainer_dir(&self, id: &str) -> PathBuf {
        self.state_dir().join("jobs").join(id).join("trainer")
    }
}

impl Drop for Daemon {
    /// Kills trainerd and every process it started (found by the state dir in their environment).
    fn drop(&mut self) {
        self.kill();
        let marker = self.state_dir().display().to_string();
        for pid in processes_with(&marker) {
            // SAFETY: kill(2) on a process of this benchmark's daemon.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Pids whose environment mentions `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if environ.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// A `/proc/PID/status` field in kB (VmRSS, Threads...).
pub fn status_field(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Proportional set size in kB, from smaps_rollup.
pub fn pss_kb(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User plus system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // After the command: state is field 3, utime 14 and stime 15 (1-based over the whole line).
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(14) + field(15)
}

/// The command name of a process.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}
