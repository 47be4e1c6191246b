//! The Slurm executor's figures, on a real one-node cluster (`scripts/slurm-cluster.sh`): Slurm
//! starting a job → trainerd shows it RUNNING, and the trainer's end → trainerd shows it ended.
//! Both are bounded by the poll interval (`--slurm-poll-interval`, 1 s here) where inotify does not
//! see the trainer's files (other nodes); on this one node inotify sees the first heartbeat at once.

use crate::daemon::{bin, Daemon};
use crate::stats::{ms, summary, Sample};
use crate::Figure;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio_stream::StreamExt;
use trainerd_proto::trainer::{unix_now, Progress};
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::JobState;

const STARTED: &str = "Slurm: job started → trainerd shows RUNNING";
const ENDED: &str = "Slurm: trainer's end → trainerd shows it ended";

fn script() -> PathBuf {
    // bench/ lives beside scripts/ in the repository the binary was built from.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-cluster.sh")
}

/// Both figures, from `runs` jobs in a row; skipped (said in the row) where no Slurm can run here.
pub async fn figures(runs: usize) -> Vec<Figure> {
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || Command::new("slurmctld").arg("-V").output().is_err() {
        let why = "skipped: needs root and Slurm (scripts/setup.sh installs it)".to_string();
        return vec![
            Figure::new(STARTED, why.clone(), "p50 < 1.1 s", true),
            Figure::new(ENDED, why, "p50 < 1.5 s", true),
        ];
    }
    let cluster = tempfile::tempdir().expect("tempdir");
    let out = Command::new(script()).arg("start").arg(cluster.path()).arg("18817").output().expect("slurm-cluster.sh");
    assert!(out.status.success(), "the cluster did not start: {}", String::from_utf8_lossy(&out.stderr));
    let conf = cluster.path().join("slurm.conf").display().to_string();
    let result = measure(&conf, runs).await;
    let _ = Command::new("scancel").env("SLURM_CONF", &conf).args(["--full", "--signal=KILL", "--user=root"]).output();
    let _ = Command::new(script()).arg("stop").arg(cluster.path()).output();
    result
}

async fn measure(conf: &str, runs: usize) -> Vec<Figure> {
    let daemon = Daemon::start_with_env(&["--slurm-poll-interval", "1"], &[("SLURM_CONF", conf)]);
    let mut client = daemon.client().await;
    let stamps = tempfile::tempdir().expect("tempdir");
    let (mut started, mut ended) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let stamp = stamps.path().join(format!("start-{i}"));
        let req = pb::SubmitJobRequest {
            name: format!("slurm-{i}"),
            command: vec![bin("fake-trainer").display().to_string()],
            env: [("FAKE_STEPS", "10"), ("FAKE_STEP_MS", "50"), ("FAKE_STAMP_FILE", stamp.to_str().unwrap())]
                .into_iter()
                .map(|(name, value)| pb::EnvVar { name: name.into(), value: value.into() })
                .collect(),
            protocol: Some("v1".into()),
            executor: Some("slurm".into()),
            ..Default::default()
        };
        let job = client.submit_job(req).await.expect("submit").into_inner().job.expect("job");
        let mut updates =
            client.watch_job(pb::WatchJobRequest { id: job.id.clone() }).await.expect("watch").into_inner();
        let mut running_at = None;
        let wait = async {
            while let Some(update) = updates.next().await {
                let j = update.expect("update").job.expect("job");
                if j.state() == JobState::Running && running_at.is_none() {
                    running_at = Some(unix_now());
                }
                if trainerd_proto::state::is_terminal(j.state()) {
                    return (j, unix_now());
                }
            }
            panic!("the watch ended");
        };
        let (j, ended_at) =
            tokio::time::timeout(Duration::from_secs(120), wait).await.expect("a Slurm job within 120 s");
        assert_eq!(j.state(), JobState::Completed, "{}", j.message);
        let start = last_start(&stamp);
        started.push(Duration::from_secs_f64((running_at.unwrap_or(ended_at) - start).max(0.0)));
        let last = final_progress(&daemon.trainer_dir(&j.id));
        ended.push(Duration::from_secs_f64((ended_at - last).max(0.0)));
    }
    let (s, e) = (Sample::new(started), Sample::new(ended));
    vec![
        Figure::new(
            STARTED,
            format!("{}, from the trainer's main", summary(&s)),
            "p50 < 1.1 s (a poll interval)",
            s.p50() < Duration::from_millis(1_100),
        )
        .headline(ms(s.p50()), "ms"),
        Figure::new(
            ENDED,
            format!("{}, from its last progress write", summary(&e)),
            "p50 < 1.5 s (a poll interval, and Slurm's own completion)",
            e.p50() < Duration::from_millis(1_500),
        )
        .headline(ms(e.p50()), "ms"),
    ]
}

fn last_start(stamp: &Path) -> f64 {
    let text = std::fs::read_to_string(stamp).expect("stamp file");
    text.lines().rev().filter_map(|l| l.strip_prefix("start ")).find_map(|t| t.parse().ok()).expect("a start")
}

/// When the trainer wrote its final progress (completed), just before it exited.
fn final_progress(trainer: &Path) -> f64 {
    let bytes = std::fs::read(trainer.join("progress.json")).expect("the progress file");
    Progress::parse(&bytes).expect("a valid progress file").updated_at
}
