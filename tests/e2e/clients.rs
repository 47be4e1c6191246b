//! Standard gRPC clients with their default options, against the real trainerd: Python's grpcio
//! (sync and asyncio, unix socket and TCP), the standard health service and reflection, and the
//! SDK's Python client built from sdk/python as `pip install` builds it, and grpc-go (tests/clients/go). The Python side of each test
//! is a script in tests/clients/ that asserts every answer and exits non-zero on the first wrong one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use trainerd_tests::{bin, wait_gone, Daemon, OutputWithin, COMMAND_WITHIN};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The project venv's python, with the gRPC packages scripts/setup.sh installs.
fn python() -> PathBuf {
    let python = repo().join(".venv/bin/python");
    let check = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, grpc_health.v1, grpc_reflection"])
        .output_within()
        .expect("run the venv's python");
    assert!(
        check.status.success(),
        "{} lacks grpcio, grpcio-tools, grpcio-health-checking or grpcio-reflection: run scripts/setup.sh ({})",
        python.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    python
}

/// Runs a Python script to its end and asserts that it succeeded and printed `done`.
fn run_python(cmd: &mut Command, done: &str) {
    let out = cmd.output_within().expect("run python");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains(done), "{cmd:?}: {}\n{stdout}\n{stderr}", out.status);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn token_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let token = dir.join("token");
    std::fs::write(&token, "a-token-for-the-clients-test\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    token
}

/// A trainerd on the unix socket and on loopback TCP with a bearer token (in a file under `dir`):
/// the daemon, its TCP address, and the token file.
fn tcp_daemon(dir: &Path) -> (Daemon, String, PathBuf) {
    let token = token_file(dir);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut flags = vec!["--listen", &listen, "--token-file", token.to_str().unwrap()];
    // SAFETY: geteuid(2) cannot fail. A root trainerd runs TCP submissions as job-user only.
    if unsafe { libc::geteuid() } == 0 {
        flags.extend(["--job-user", "nobody"]);
    }
    let daemon = Daemon::start(&flags);
    (daemon, listen, token)
}

#[test]
fn grpcio_with_default_options_works_over_the_unix_socket_and_tcp_with_health_and_reflection() {
    let python = python();
    let scratch = tempfile::tempdir().unwrap();
    // Stubs made as a user would make them, from the committed proto.
    let stubs = scratch.path().join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    let proto = repo().join("proto");
    let out = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .arg(proto.join("trainerd.proto"))
        .output_within()
        .unwrap();
    assert!(out.status.success(), "protoc: {}", String::from_utf8_lossy(&out.stderr));
    let (daemon, listen, token) = tcp_daemon(scratch.path());
    run_python(
        Command::new(&python)
            .arg(repo().join("tests/clients/grpcio_defaults.py"))
            .arg(&stubs)
            .arg(daemon.socket())
            .arg(&listen)
            .arg(&token),
        "grpcio: all calls as expected",
    );
}

#[test]
fn the_sdks_python_client_runs_jobs_end_to_end_and_the_notebook_example_works() {
    let python = python();
    let scratch = tempfile::tempdir().unwrap();
    // Built the way `pip install sdk/python` builds it: setup.py generates the stubs from the proto.
    let site = scratch.path().join("site");
    let out = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target"])
        .arg(&site)
        .arg(repo().join("sdk/python"))
        .output_within()
        .unwrap();
    assert!(out.status.success(), "pip install sdk/python: {}", String::from_utf8_lossy(&out.stderr));
    assert!(site.join("trainerd/_grpc/trainerd_pb2_grpc.py").exists(), "the build generated no stubs");
    let daemon = Daemon::start(&["--gpus", "none", "--slots", "3", "--heartbeat-interval", "0.2"]);
    run_python(
        Command::new(&python)
            .arg(repo().join("tests/clients/python_client.py"))
            .arg(bin("fake-trainer"))
            .env("PYTHONPATH", &site)
            .env("TRAINERD_SOCKET", daemon.socket()),
        "python client: all calls as expected",
    );
    let example = Command::new(&python)
        .arg(repo().join("examples/notebook_client.py"))
        .arg("--trainer")
        .arg(bin("trainer-proc"))
        .args(["--cancel-at-step", "25"])
        .current_dir(scratch.path())
        .env("PYTHONPATH", &site)
        .env("TRAINERD_SOCKET", daemon.socket())
        .output_within()
        .unwrap();
    let stdout = String::from_utf8_lossy(&example.stdout);
    assert!(example.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&example.stderr));
    assert!(stdout.lines().any(|l| l.starts_with("step ") && l.contains("loss")), "no loss followed: {stdout}");
    assert!(stdout.lines().last().unwrap_or("").starts_with("ended cancelled at step"), "{stdout}");
}

#[test]
fn the_standard_health_watch_reports_serving_then_not_serving_once_shutdown_begins() {
    let python = python();
    let mut daemon = Daemon::start(&[]);
    let mut watcher = Command::new(&python)
        .arg(repo().join("tests/clients/health_watch.py"))
        .arg(daemon.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert_eq!(rx.recv_timeout(COMMAND_WITHIN).ok().as_deref(), Some("SERVING"));
    let pid = daemon.child.as_ref().unwrap().id();
    // SAFETY: kill(2) on the trainerd this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert_eq!(rx.recv_timeout(COMMAND_WITHIN).ok().as_deref(), Some("NOT_SERVING"), "{}", daemon.log());
    wait_gone(pid, COMMAND_WITHIN);
    let status = daemon.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status}");
    let _ = watcher.kill();
    let _ = watcher.wait();
}

/// grpc-go, from Debian's packages (Go 1.19, grpc-go 1.33, protobuf-go 1.28, protoc-gen-go and
/// protoc-gen-go-grpc), built in GOPATH mode from the distribution's sources: nothing is fetched. The
/// stubs come from the committed proto through the vendored protoc, as a Go user would make them.
/// Skipped, loudly, where Go is not installed (scripts/setup.sh installs it).
#[test]
fn grpc_go_with_default_options_works_over_the_unix_socket_and_tcp() {
    if Command::new("go").arg("version").output().is_err() {
        eprintln!("SKIPPED: Go is not installed (apt-get install golang-go golang-google-grpc-dev golang-google-protobuf-dev protoc-gen-go protoc-gen-go-grpc)");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let gopath = scratch.path().join("gopath");
    let stubs = gopath.join("src/trainerd/pb");
    let client = gopath.join("src/goclient");
    std::fs::create_dir_all(&stubs).unwrap();
    std::fs::create_dir_all(&client).unwrap();
    std::fs::copy(repo().join("tests/clients/go/main.go"), client.join("main.go")).unwrap();
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("the vendored protoc");
    let out = Command::new(protoc)
        .arg("-I")
        .arg(repo().join("proto"))
        .arg(format!("--go_out={}", stubs.display()))
        .arg("--go_opt=paths=source_relative,Mtrainerd.proto=trainerd/pb")
        .arg(format!("--go-grpc_out={}", stubs.display()))
        .arg("--go-grpc_opt=paths=source_relative,Mtrainerd.proto=trainerd/pb")
        .arg(repo().join("proto/trainerd.proto"))
        .output_within()
        .unwrap();
    assert!(out.status.success(), "protoc: {}", String::from_utf8_lossy(&out.stderr));
    // The build cache lives in target/, so only the first run compiles grpc-go.
    let binary = scratch.path().join("goclient");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg("goclient")
        .env("GO111MODULE", "off")
        .env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()))
        .env("GOCACHE", repo().join("target/go-cache"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .output_within()
        .unwrap();
    assert!(out.status.success(), "go build: {}", String::from_utf8_lossy(&out.stderr));

    let (daemon, listen, token) = tcp_daemon(scratch.path());
    let out = Command::new(&binary)
        .arg(format!("unix://{}", daemon.socket().display()))
        .arg(&listen)
        .arg(&token)
        .output_within()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("grpc-go: all calls as expected"), "{stdout}\n{stderr}");
}
