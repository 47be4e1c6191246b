//! trainctl against the real daemon: every command's human and JSON output, the watch stream's
//! order, end and exit status, idempotent submission, and clear errors for bad requests.

use serde_json::Value;
use std::process::{Command, Output};
use trainerd_tests::{bin, Daemon, OutputWithin};

fn trainctl(daemon: &Daemon, args: &[&str]) -> Output {
    Command::new(bin("trainctl")).args(args).env("TRAINERD_SOCKET", daemon.socket()).output_within().expect("trainctl")
}

fn ok(daemon: &Daemon, args: &[&str]) -> String {
    let out = trainctl(daemon, args);
    assert!(out.status.success(), "trainctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn err(daemon: &Daemon, args: &[&str]) -> (i32, String) {
    let out = trainctl(daemon, args);
    assert!(!out.status.success(), "trainctl {args:?} should fail");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

const FIELDS: [&str; 17] = [
    "id",
    "name",
    "state",
    "step",
    "total_steps",
    "epoch",
    "loss",
    "val_loss",
    "restarts",
    "attempt",
    "exit_code",
    "reason",
    "queue_position",
    "latest_checkpoint",
    "weights_sha256",
    "created_at",
    "updated_at",
];

#[test]
fn submit_watch_get_ls_events_with_human_and_json_output() {
    let daemon = Daemon::start(&[]);
    let fake = bin("fake-trainer").display().to_string();
    let id = ok(&daemon, &["submit", "--name", "first", "--env", "FAKE_STEPS=10", "--", &fake]).trim().to_string();
    assert_eq!(id.len(), 12, "submit prints the id: {id}");

    let lines = ok(&daemon, &["--json", "watch", &id]);
    let updates: Vec<Value> = lines.lines().map(json).collect();
    assert_eq!(updates[0]["update"], "snapshot");
    let last = updates.last().unwrap();
    assert_eq!((last["state"].as_str(), last["step"].as_u64()), (Some("completed"), Some(10)));
    let steps: Vec<u64> = updates.iter().map(|u| u["step"].as_u64().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "steps go forward: {steps:?}");

    let got = json(&ok(&daemon, &["--json", "get", &id]));
    for field in FIELDS {
        assert!(got.get(field).is_some(), "--json get lacks {field}: {got}");
    }
    assert_eq!(
        (got["state"].as_str(), got["exit_code"].as_i64(), got["weights_sha256"].as_str()),
        (Some("completed"), Some(0), Some("fake-10-0"))
    );
    let human = ok(&daemon, &["get", "1"]);
    assert!(human.contains("state          completed") && human.contains("weights_sha256 fake-10-0"), "{human}");

    let table = ok(&daemon, &["ls"]);
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("ID") && header.contains("STATE") && header.contains("RESTARTS"), "{table}");
    assert!(table.lines().nth(1).unwrap().contains("first") && table.contains("completed"), "{table}");
    let list = json(&ok(&daemon, &["--json", "ls", "--state", "completed"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(json(&ok(&daemon, &["--json", "ls", "--state", "running"])).as_array().unwrap().len(), 0);

    let events = ok(&daemon, &["events", &id]);
    assert!(events.contains("submitted") && events.contains("running -> completed"), "{events}");
    // Local date and time with milliseconds for people; unix seconds for scripts.
    let line = events.lines().next().unwrap();
    let (date, rest) = line.split_at(23);
    let shape = date.chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect::<String>();
    assert_eq!(shape, "9999-99-99 99:99:99.999", "{line}");
    assert!(rest.trim_start().starts_with("submitted"), "{line}");
    let first = json(ok(&daemon, &["--json", "events", &id]).lines().next().unwrap());
    assert_eq!(first["kind"], "submitted");
    assert!(first["at"].as_f64().unwrap() > 1.7e9, "{first}");
    assert!(human.contains("protocol       auto"), "get shows the protocol: {human}");
    assert!(human.contains("resumed_from   from the beginning: no checkpoint known"), "{human}");
    assert_eq!((got["protocol"].as_str(), got["resume_ignored"].as_bool()), (Some("auto"), Some(false)));

    assert!(ok(&daemon, &["health"]).contains("completed 1"), "human health lists jobs by state");
    let health = json(&ok(&daemon, &["--json", "health"]));
    assert_eq!((health["status"].as_str(), health["jobs"]["completed"].as_u64()), (Some("ok"), Some(1)));
    let info = json(&ok(&daemon, &["--json", "info"]));
    assert_eq!(info["protocol_version"], 1);
    assert!(ok(&daemon, &["info"]).contains("state dir"));
}

#[test]
fn watch_exit_status_tells_the_outcome_and_cancel_records_who() {
    let daemon = Daemon::start(&[]);
    let fake = bin("fake-trainer").display().to_string();
    let failing = ok(&daemon, &["submit", "--env", "FAKE_FAULT=exit@2:78", "--", &fake]).trim().to_string();
    let out = trainctl(&daemon, &["watch", &failing]);
    assert_eq!(out.status.code(), Some(1), "a failed job's watch exits 1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("exited 78"));

    let hung =
        ok(&daemon, &["submit", "--stop-grace", "200ms", "--env", "FAKE_FAULT=hang@2", "--", &fake]).trim().to_string();
    let socket = daemon.socket();
    let hung_id = hung.clone();
    let watcher = std::thread::spawn(move || {
        Command::new(bin("trainctl")).args(["watch", &hung_id]).env("TRAINERD_SOCKET", socket).output_within().unwrap()
    });
    assert_eq!(ok(&daemon, &["cancel", &hung]).trim(), format!("{hung} cancelled"));
    let cancelled = json(&ok(&daemon, &["--json", "get", &hung]));
    assert_eq!(cancelled["state"], "cancelled");
    let out = watcher.join().unwrap();
    assert_eq!(out.status.code(), Some(3), "a cancelled job's watch exits 3");
    let (_, message) = err(&daemon, &["cancel", &hung]);
    assert!(message.contains("already cancelled"), "{message}");
}

#[test]
fn the_same_idempotency_key_never_runs_twice() {
    let daemon = Daemon::start(&[]);
    let fake = bin("fake-trainer").display().to_string();
    let first = json(&ok(&daemon, &["--json", "submit", "--idempotency-key", "run-42", "--", &fake]));
    let second = json(&ok(&daemon, &["--json", "submit", "--idempotency-key", "run-42", "--", &fake]));
    assert_eq!(first["id"], second["id"]);
    assert_eq!((first["created"].as_bool(), second["created"].as_bool()), (Some(true), Some(false)));
    assert_eq!(json(&ok(&daemon, &["--json", "ls"])).as_array().unwrap().len(), 1);
}

#[test]
fn bad_requests_get_clear_errors_and_the_daemon_keeps_serving() {
    let daemon = Daemon::start(&[]);
    let fake = bin("fake-trainer").display().to_string();
    for _ in 0..2 {
        ok(&daemon, &["submit", "--env", "FAKE_STEPS=1", "--", &fake]);
    }
    let cases: [(&[&str], &str); 7] = [
        (&["get", "ff"], "no job ff"),
        (&["get", "0000000000"], "is ambiguous"),
        (&["get", "not-an-id"], "is not a job id"),
        (&["submit", "--", "/no/such/program"], "is not an executable file"),
        (&["submit", "--heartbeat-timeout", "soon", "--", "true"], "is not a duration"),
        (&["submit", "--env", "NOEQUALS", "--", "true"], "NAME=VALUE"),
        (&["ls", "--state", "dancing"], "use one of queued"),
    ];
    for (args, expected) in cases {
        let (_, message) = err(&daemon, args);
        assert!(message.contains(expected), "trainctl {args:?}: {message}");
    }
    let (_, message) = err(&daemon, &["submit", "--name", "bad name!", "--", &fake]);
    assert!(message.contains("name:"), "{message}");
    assert_eq!(json(&ok(&daemon, &["--json", "ls"])).as_array().unwrap().len(), 2, "nothing was lost or added");
}

#[test]
fn an_unreachable_daemon_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let out = Command::new(bin("trainctl")).args(["--socket", socket.to_str().unwrap(), "ls"]).output_within().unwrap();
    assert_eq!(out.status.code(), Some(69));
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains(&socket.display().to_string()) && message.contains("start it with"), "{message}");
}

#[test]
fn completions_and_man_page_are_generated() {
    let out = Command::new(bin("trainctl")).args(["completions", "bash"]).output_within().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("trainctl"));
    let out = Command::new(bin("trainctl")).arg("man").output_within().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(".TH trainctl"));
}

#[test]
fn pause_resume_and_paging_through_trainctl() {
    let daemon = Daemon::start(&["--slots", "1"]);
    let fake = bin("fake-trainer").display().to_string();
    let blocker = ok(&daemon, &["submit", "--env", "FAKE_STEPS=30", "--", &fake]).trim().to_string();
    let held = ok(&daemon, &["submit", "--env", "FAKE_STEPS=3", "--", &fake]).trim().to_string();
    let waiting = json(&ok(&daemon, &["--json", "get", &held]));
    assert_eq!(waiting["queue_position"], 1);
    assert!(waiting["waiting_for"].as_str().unwrap().contains("a free slot"), "{waiting}");
    assert_eq!(ok(&daemon, &["pause", &held]).trim(), format!("{held} paused"));
    let (_, message) = err(&daemon, &["pause", &held]);
    assert!(message.contains("is already paused"), "{message}");
    assert_eq!(ok(&daemon, &["resume", &held]).trim(), format!("{held} queued"));
    let out = trainctl(&daemon, &["watch", &held]);
    assert!(out.status.success(), "the resumed job completes");
    assert!(trainctl(&daemon, &["watch", &blocker]).status.success());

    // Paging: newest first, a page at a time.
    let page = |token: &str| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let mut c = trainctl::connect_unix(&daemon.socket()).await.unwrap();
            let req =
                trainerd_proto::v1::ListJobsRequest { page_size: 1, page_token: token.into(), ..Default::default() };
            c.list_jobs(req).await.unwrap().into_inner()
        })
    };
    let first = page("");
    assert_eq!(first.jobs[0].id, held, "newest first");
    let second = page(&first.next_page_token);
    assert_eq!((second.jobs[0].id.as_str(), second.next_page_token.as_str()), (blocker.as_str(), ""));
}

#[test]
fn reconcile_runs_at_start_periodically_and_on_demand_and_health_reports_it() {
    let daemon = Daemon::start(&["--gpus", "none", "--reconcile-interval", "0.2"]);
    let first = json(&ok(&daemon, &["--json", "health"]))["last_reconcile"].clone();
    assert!(first["count"].as_u64().unwrap() >= 1, "start-up reconciles before READY: {first}");
    assert_eq!(first["fixes"].as_array().unwrap().len(), 0);
    let on_demand = json(&ok(&daemon, &["--json", "reconcile"]));
    assert!(on_demand["count"].as_u64() > first["count"].as_u64(), "{on_demand}");
    assert_eq!((on_demand["fixes"].as_array().unwrap().len(), on_demand["checked"].as_u64()), (0, Some(0)));
    let human = ok(&daemon, &["reconcile"]);
    assert!(human.starts_with("reconciled") && human.contains("0 fix(es)"), "{human}");
    // The timer keeps reconciling without being asked.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = json(&ok(&daemon, &["--json", "health"]))["last_reconcile"]["count"].as_u64().unwrap();
        if now >= on_demand["count"].as_u64().unwrap() + 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no periodic reconciliation within 30 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ok(&daemon, &["health"]).contains("reconciled"), "human health shows the last reconciliation");
}
