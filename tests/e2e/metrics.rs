//! Metric history: every named scalar a trainer reports, kept by step across attempts and restarts
//! of trainerd, rewound when an attempt continues from a checkpoint, downsampled with its extremes,
//! carried by WatchJob, and read through gRPC, the JSON socket and trainctl.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;
use tokio_stream::StreamExt;
use trainerd_proto::state::is_terminal;
use trainerd_proto::v1::{self as pb, JobState};
use trainerd_tests::{bin, events, fake_job, submit, trainer_proc_job, watch_until, Daemon, OutputWithin};

const LIMIT: Duration = Duration::from_secs(120);

async fn history(client: &mut trainctl::Client, id: &str, max_points: u32) -> pb::GetMetricsResponse {
    let req = pb::GetMetricsRequest { id: id.into(), max_points, ..Default::default() };
    client.get_metrics(req).await.expect("GetMetrics").into_inner()
}

fn series<'a>(m: &'a pb::GetMetricsResponse, name: &str) -> &'a [pb::MetricSample] {
    &m.series.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} in {:?}", m.names)).samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_survives_a_crash_and_a_restart_and_shows_what_the_final_model_went_through() {
    let mut daemon = Daemon::start(&["--gpus", "none", "--heartbeat-interval", "0.2"]);
    let mut client = daemon.client().await;
    // A checkpoint every 20 steps, and a hang at step 45 (its last progress stays there to be read):
    // attempt 1 reports steps after 40 that attempt 2, from step 40, goes through again.
    let mut req = trainer_proc_job("curve", 3, &[("TRAINER_FAULT", "hang@45")]);
    req.heartbeat_timeout_ms = Some(1_500);
    req.stop_grace_ms = Some(500);
    let every = req.command.iter().position(|a| a == "--checkpoint-every").unwrap();
    req.command[every + 1] = "20".into();
    let hidden = req.command.iter().position(|a| a == "--hidden").unwrap();
    req.command[hidden + 1] = "384,384".into();
    req.command.extend(["--progress-every", "0.002"].map(String::from));
    let job = submit(&mut client, req).await;

    // WatchJob carries each point as it is recorded.
    let mut stream = client.watch_job(pb::WatchJobRequest { id: job.id.clone() }).await.unwrap().into_inner();
    let mut points = Vec::new();
    let end = tokio::time::timeout(LIMIT, async {
        while let Some(update) = stream.next().await {
            let update = update.unwrap();
            points.extend(update.point.clone());
            let job = update.job.unwrap();
            if is_terminal(job.state()) {
                return job;
            }
        }
        panic!("the watch ended early");
    })
    .await
    .expect("the job ends");
    assert_eq!((end.state(), end.restarts), (JobState::Completed, 1), "{}", end.message);
    assert_eq!(end.reason(), pb::Reason::Completed);
    assert!(points.len() >= 3, "points arrive with the updates: {points:?}");
    assert!(points.iter().all(|p| p.values.contains_key("loss") && p.values.contains_key("lr")), "{points:?}");

    let m = history(&mut client, &job.id, 0).await;
    for name in ["loss", "lr", "samples_per_sec", "val_loss"] {
        assert!(m.names.iter().any(|n| n == name), "{name} in {:?}", m.names);
    }
    // Attempt 2 continued from a checkpoint at step S: after S, every point is its own.
    let all = events(&mut client, &job.id).await;
    let steps: Vec<(u64, u32)> = series(&m, "loss").iter().map(|s| (s.step, s.attempt)).collect();
    let (_, rewound) = all
        .iter()
        .find(|(k, _)| k == "metrics_rewound")
        .unwrap_or_else(|| panic!("no metrics_rewound: {all:?} {steps:?}"));
    let from: u64 = rewound.split("continues from step ").nth(1).unwrap().split(':').next().unwrap().parse().unwrap();
    let loss = series(&m, "loss");
    assert!(loss.windows(2).all(|w| w[0].step < w[1].step), "one value per step, in order");
    assert!(loss.iter().filter(|s| s.step > from).all(|s| s.attempt == 2), "after step {from}: attempt 2 only");
    assert!(loss.iter().any(|s| s.step <= from && s.attempt == 1), "before it, attempt 1's points stand");
    assert_eq!(loss.last().unwrap().step, 60, "the last step is recorded");
    let final_loss = end.loss.unwrap();
    assert!((loss.last().unwrap().value - final_loss).abs() < 1e-9, "the newest value is the job's loss");

    // A restart of trainerd keeps it; downsampling bounds it and keeps the newest.
    daemon.restart();
    let mut client = daemon.client().await;
    let again = history(&mut client, &job.id, 0).await;
    assert_eq!(series(&again, "loss").len(), loss.len());
    let small = history(&mut client, &job.id, 6).await;
    let few = series(&small, "loss");
    assert!(few.len() <= 6 && few.last().unwrap().step == 60, "{few:?}");
    let highest = loss.iter().map(|s| s.value).fold(f64::MIN, f64::max);
    assert!(few.iter().any(|s| s.value == highest), "the highest loss is kept: {few:?}");

    // The same through the JSON socket and trainctl.
    let stream = UnixStream::connect(daemon.dir.path().join("control.sock")).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    writeln!(writer, "{}", json!({"op": "metrics", "id": job.id, "names": ["loss"], "max_points": 3})).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    let reply: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    let json_loss = reply["series"]["loss"].as_array().unwrap();
    assert!(json_loss.len() <= 3 && json_loss.last().unwrap()["step"] == 60, "{reply}");
    let out = Command::new(bin("trainctl"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["metrics", &job.id, "--name", "loss", "--name", "lr", "--csv"])
        .output_within()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{csv} {}", String::from_utf8_lossy(&out.stderr));
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("step,loss,lr"));
    let rows: BTreeMap<u64, String> =
        lines.map(|l| l.split_once(',').unwrap()).map(|(s, rest)| (s.parse().unwrap(), rest.to_string())).collect();
    assert_eq!(rows.len(), loss.len(), "{csv}");
}

#[tokio::test]
async fn other_metrics_are_recorded_and_bad_names_and_requests_are_refused_with_a_reason() {
    let daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    // Progress lines: a step, a loss and an `acc` group (a metric); `bad name` never parses as a group.
    let mut req = fake_job("lines", &[]);
    req.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "for i in 1 2 3 4 5; do echo \"step $i/5 loss 0.$i acc 9$i\"; sleep 0.05; done".into(),
    ];
    req.protocol = Some("none".into());
    req.progress_regex = r"step (?P<step>\d+)/(?P<total>\d+) loss (?P<loss>[\d.]+) acc (?P<acc>\d+)".into();
    let job = submit(&mut client, req).await;
    trainerd_tests::watch_until(&mut client, &job.id, LIMIT, |j| is_terminal(j.state())).await;
    let m = history(&mut client, &job.id, 0).await;
    assert_eq!(m.names, ["acc", "loss"]);
    let acc = series(&m, "acc");
    assert_eq!(acc.last().map(|s| (s.step, s.value)), Some((5, 95.0)), "{acc:?}");

    for (req, field) in [
        (pb::GetMetricsRequest { id: job.id.clone(), max_points: 100_001, ..Default::default() }, "max_points"),
        (pb::GetMetricsRequest { id: job.id.clone(), names: vec!["a b".into()], ..Default::default() }, "names"),
        (pb::GetMetricsRequest { id: job.id.clone(), from_step: 9, to_step: Some(2), ..Default::default() }, "to_step"),
    ] {
        let status = client.get_metrics(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    let missing = client.get_metrics(pb::GetMetricsRequest { id: "ffffff".into(), ..Default::default() }).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
}

/// A running job's reports after its first ones need nothing of its actor (`job/report.rs`): each
/// still reaches a watcher as it is written, with its step and its metric point.
#[tokio::test]
async fn each_report_of_a_steadily_running_job_reaches_its_watchers_with_its_point() {
    let daemon = Daemon::start(&["--heartbeat-interval", "5"]);
    let mut client = daemon.client().await;
    let steps = 40;
    let env = [("FAKE_STEPS", "40"), ("FAKE_STEP_MS", "50"), ("FAKE_CHECKPOINT_EVERY", "0"), ("FAKE_LOSS", "1")];
    let job = submit(&mut client, fake_job("steady", &env)).await;
    let mut stream = client.watch_job(pb::WatchJobRequest { id: job.id.clone() }).await.unwrap().into_inner();
    let (mut running_steps, mut points) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    let end = tokio::time::timeout(LIMIT, async {
        while let Some(update) = stream.next().await {
            let update = update.unwrap();
            points.extend(update.point.map(|p| p.step));
            let job = update.job.unwrap();
            if job.state() == JobState::Running {
                running_steps.insert(job.step);
            }
            if is_terminal(job.state()) {
                return job;
            }
        }
        panic!("the watch ended early");
    })
    .await
    .expect("the job ends");
    assert_eq!((end.state(), end.step), (JobState::Completed, steps));
    // Reports written faster than trainerd reads them may be read as one (the newest), so not every
    // step need show; most must, while the job runs.
    assert!(running_steps.len() >= steps as usize / 2, "steps seen while running: {running_steps:?}");
    assert!(points.len() >= steps as usize / 2, "points seen: {points:?}");
    // Every point reached the history, one per step.
    let m = history(&mut client, &job.id, 0).await;
    assert_eq!(series(&m, "loss").len(), steps as usize, "{m:?}");
    assert_eq!(series(&m, "acc").len(), steps as usize, "{m:?}");
}

/// While the watcher applies a steady job's reports, the job's actor lends it its last report: what
/// the actor answers later (here a pause, after two messages with no report between them) still
/// shows the newest step.
#[tokio::test]
async fn what_a_steady_jobs_actor_answers_shows_its_newest_step() {
    let daemon = Daemon::start(&["--heartbeat-interval", "5"]);
    let mut client = daemon.client().await;
    let env = [("FAKE_STEPS", "1000"), ("FAKE_STEP_MS", "1000"), ("FAKE_CHECKPOINT_EVERY", "0")];
    let job = submit(&mut client, fake_job("answers", &env)).await;
    let running = |j: &pb::Job| j.state() == JobState::Running && j.step >= 3;
    let seen = watch_until(&mut client, &job.id, LIMIT, running).await.pop().unwrap();
    for _ in 0..2 {
        client.reconcile(pb::ReconcileRequest {}).await.expect("Reconcile");
    }
    let paused = client.pause_job(pb::PauseJobRequest { id: job.id.clone() }).await.expect("PauseJob").into_inner();
    assert!(paused.step >= seen.step, "the pause answered step {} after step {} was shown", paused.step, seen.step);
}
