//! The other doors into trainerd: the JSON-lines control socket (the same handlers as gRPC), log
//! streaming, gRPC over loopback TCP, and the rules about sockets and state dirs.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;
use trainerd_tests::{bin, first_line_within, Daemon, OutputWithin};

/// How long a control-socket reply may take.
const REPLY_WITHIN: Duration = Duration::from_secs(30);

/// A line-oriented client of the control socket.
struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    fn connect(daemon: &Daemon) -> Control {
        let stream = UnixStream::connect(daemon.dir.path().join("control.sock")).expect("control socket");
        // Every read has a deadline: a regression that stops trainerd answering fails here, naming
        // what it waited for, instead of hanging CI.
        stream.set_read_timeout(Some(REPLY_WITHIN)).unwrap();
        Control { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream }
    }
    fn send_raw(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }
    fn read(&mut self) -> Value {
        let mut line = String::new();
        if let Err(e) = self.reader.read_line(&mut line) {
            panic!("no reply line on the control socket within {REPLY_WITHIN:?}: {e}");
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }
    fn ask(&mut self, request: Value) -> Value {
        self.send_raw(&request.to_string());
        self.read()
    }
}

fn fake() -> String {
    bin("fake-trainer").display().to_string()
}

#[test]
fn the_json_socket_serves_every_operation() {
    let daemon = Daemon::start(&[]);
    let mut c = Control::connect(&daemon);
    let submitted = c.ask(json!({"op": "submit", "name": "js", "command": [fake()], "env": {"FAKE_STEPS": "8"}}));
    assert_eq!((submitted["ok"].as_bool(), submitted["created"].as_bool()), (Some(true), Some(true)), "{submitted}");
    let id = submitted["job"]["id"].as_str().unwrap().to_string();

    c.send_raw(&json!({"op": "watch", "id": id}).to_string());
    let mut updates = vec![c.read()];
    while !matches!(updates.last().unwrap()["job"]["state"].as_str(), Some("completed" | "failed")) {
        updates.push(c.read());
    }
    assert_eq!(updates[0]["update"], "snapshot");
    assert_eq!(updates.last().unwrap()["job"]["step"], 8);

    let got = c.ask(json!({"op": "get", "id": id}));
    assert_eq!(
        (got["job"]["state"].as_str(), got["job"]["weights_sha256"].as_str()),
        (Some("completed"), Some("fake-8-0"))
    );
    let list = c.ask(json!({"op": "list", "states": ["completed"]}));
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    let events = c.ask(json!({"op": "events", "id": id}));
    assert_eq!(events["events"][0]["kind"], "submitted");
    assert_eq!(c.ask(json!({"op": "health"}))["jobs"]["completed"], 1);
    assert_eq!(c.ask(json!({"op": "info"}))["protocol_version"], 1);
    let cancel = c.ask(json!({"op": "cancel", "id": id}));
    assert_eq!(cancel["error"]["code"], "failed_precondition", "{cancel}");

    // The same job through gRPC (trainctl) reads the same.
    let out = Command::new(bin("trainctl"))
        .args(["--json", "get", &id])
        .env("TRAINERD_SOCKET", daemon.socket())
        .output_within()
        .unwrap();
    let via_grpc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(via_grpc["weights_sha256"], got["job"]["weights_sha256"]);
}

#[test]
fn bad_json_lines_get_errors_and_the_connection_and_daemon_keep_serving() {
    let daemon = Daemon::start(&[]);
    let mut c = Control::connect(&daemon);
    let cases = [
        ("{\"op\": \"list\"", "invalid_argument", "EOF while parsing"),
        ("[1, 2]", "invalid_argument", "one JSON object per line"),
        ("{\"op\": \"dance\"}", "invalid_argument", "unknown variant `dance`"),
        ("{\"op\": \"get\", \"id\": \"1\", \"colour\": \"red\"}", "invalid_argument", "unknown field `colour`"),
        ("{\"op\": \"get\"}", "invalid_argument", "missing field `id`"),
        ("{\"op\": \"get\", \"id\": \"7\"}", "not_found", "no job 7"),
        ("{\"op\": \"submit\", \"command\": []}", "invalid_argument", "command: is empty"),
        ("{\"op\": \"list\", \"states\": [\"dancing\"]}", "invalid_argument", "is not a job state"),
    ];
    for (line, code, text) in cases {
        c.send_raw(line);
        let reply = c.read();
        assert_eq!(reply["ok"], false, "{line}");
        assert_eq!(reply["error"]["code"], code, "{line}: {reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains(text), "{line}: {reply}");
    }
    // A client that disconnects in the middle of a watch stream harms nobody.
    let mut watcher = Control::connect(&daemon);
    let job = watcher.ask(json!({"op": "submit", "command": [fake()], "env": {"FAKE_STEPS": "50"}}));
    let id = job["job"]["id"].as_str().unwrap().to_string();
    watcher.send_raw(&json!({"op": "watch", "id": id}).to_string());
    watcher.read();
    drop(watcher);
    let reply = c.ask(json!({"op": "get", "id": id}));
    assert_eq!(reply["ok"], true);
    let mut grpc_watch = Command::new(bin("trainctl"))
        .args(["--json", "watch", &id])
        .env("TRAINERD_SOCKET", daemon.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Connected and streaming (its first update printed) before it is cut off mid-stream.
    let first = first_line_within(grpc_watch.stdout.take().unwrap(), REPLY_WITHIN);
    assert!(first.contains(&id), "trainctl watch printed no update: {first:?}");
    grpc_watch.kill().unwrap();
    grpc_watch.wait().unwrap();
    let out = Command::new(bin("trainctl"))
        .args(["watch", &id])
        .env("TRAINERD_SOCKET", daemon.socket())
        .output_within()
        .unwrap();
    assert!(out.status.success(), "the job still completes and others are still served");
}

#[test]
fn logs_print_the_tail_and_follow_to_the_end() {
    let daemon = Daemon::start(&[]);
    let mut c = Control::connect(&daemon);
    let job =
        c.ask(json!({"op": "submit", "command": [fake()], "env": {"FAKE_STEPS": "10", "FAKE_PRINT_BYTES": "100"}}));
    let id = job["job"]["id"].as_str().unwrap().to_string();
    let out = Command::new(bin("trainctl"))
        .args(["logs", "-f", &id])
        .env("TRAINERD_SOCKET", daemon.socket())
        .output_within()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), 1000, "-f follows every byte until the job ends");
    let out = Command::new(bin("trainctl"))
        .args(["logs", "--tail", "150", &id])
        .env("TRAINERD_SOCKET", daemon.socket())
        .output_within()
        .unwrap();
    assert_eq!(out.stdout.len(), 150);
}

#[test]
fn a_second_daemon_on_the_same_state_dir_refuses_and_a_stale_socket_is_replaced() {
    let mut daemon = Daemon::start(&[]);
    let out = Command::new(bin("trainerd"))
        .arg("--state-dir")
        .arg(daemon.state_dir())
        .arg("--socket")
        .arg(daemon.dir.path().join("other.sock"))
        .output_within()
        .unwrap();
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("another trainerd"), "{message}");
    assert!(daemon.socket().exists(), "the live daemon's socket was left alone");
    // SIGKILL leaves the socket file behind; the next daemon replaces it.
    daemon.kill();
    assert!(daemon.socket().exists());
    daemon.restart();
    let out =
        Command::new(bin("trainctl")).arg("info").env("TRAINERD_SOCKET", daemon.socket()).output_within().unwrap();
    assert!(out.status.success());
}

#[test]
fn the_json_socket_pauses_resumes_and_streams_logs() {
    let daemon = Daemon::start(&["--slots", "1"]);
    let mut c = Control::connect(&daemon);
    let blocker = c.ask(json!({"op": "submit", "command": [fake()], "env": {"FAKE_STEPS": "20"}}));
    let job = c.ask(json!({"op": "submit", "command": [fake()], "env": {"FAKE_STEPS": "4", "FAKE_PRINT_BYTES": "10"}}));
    let id = job["job"]["id"].as_str().unwrap().to_string();
    assert_eq!(c.ask(json!({"op": "pause", "id": id}))["job"]["state"], "paused");
    assert_eq!(c.ask(json!({"op": "resume", "id": id}))["job"]["state"], "queued");
    c.send_raw(&json!({"op": "logs", "id": id, "follow": true}).to_string());
    let mut bytes = 0;
    loop {
        let line = c.read();
        assert_eq!(line["ok"], true, "{line}");
        if line["end"] == true {
            break;
        }
        bytes += line["data"].as_str().unwrap().len();
    }
    assert_eq!(bytes, 40, "4 steps of 10 bytes, followed to the end");
    let blocker = c.ask(json!({"op": "get", "id": blocker["job"]["id"]}));
    assert_eq!(blocker["job"]["state"], "completed");
}

#[test]
fn the_daemon_reads_its_configuration_file_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "slots = 3\nstop-grace = 7\ngpus = \"none\"\n").unwrap();
    let daemon = Daemon::start(&["--config", config.to_str().unwrap(), "--slots", "2"]);
    let mut c = Control::connect(&daemon);
    assert_eq!(c.ask(json!({"op": "info"}))["slots"], 2);
    std::fs::write(&config, "slot = 3\n").unwrap();
    let out = Command::new(bin("trainerd"))
        .args(["--config", config.to_str().unwrap(), "--state-dir", dir.path().join("s").to_str().unwrap()])
        .args(["--socket", dir.path().join("x.sock").to_str().unwrap()])
        .output_within()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `slot`"));
    let check = |args: &[&str]| Command::new(bin("trainerd")).args(args).arg("check-config").output_within().unwrap();
    let out = check(&["--state-dir", dir.path().join("ok").to_str().unwrap(), "--gpus", "none"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
    let out = check(&["--state-dir", "/proc/no-such-dir", "--gpus", "none"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not writable"), "{out:?}");
}
