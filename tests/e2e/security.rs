//! Safe by default: socket permissions and peer credentials, jobs run as their submitter, TCP only
//! with a bearer token (and TLS beyond loopback). The tests run as root and play other users.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use trainerd_proto::v1 as pb;
use trainerd_tests::*;

/// A uid and gid no account uses.
const STRANGER: u32 = 12345;
const NOGROUP: u32 = 65534;

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// One JSON-lines request on the control socket, as `uid`:`gid`; returns the first response line.
fn control_as(socket: &Path, uid: u32, gid: u32, request: &str) -> String {
    control_in(socket, uid, gid, &[], request)
}

/// [`control_as`] with supplementary `groups`.
fn control_in(socket: &Path, uid: u32, gid: u32, groups: &[u32], request: &str) -> String {
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n\
                  try: s.sendall(sys.argv[2].encode()+b'\\n')\nexcept BrokenPipeError: pass\nprint(s.makefile().readline().strip())";
    let out = as_user_in(Command::new("python3").args(["-c", script]).arg(socket).arg(request), uid, gid, groups)
        .output_within()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn sockets_are_0660_in_their_group_and_the_peer_check_denies_and_audits_an_unlisted_user() {
    let daemon = Daemon::start(&["--socket-group", "nogroup"]);
    let control = daemon.dir.path().join("control.sock");
    for socket in [daemon.socket(), control.clone()] {
        let meta = std::fs::metadata(&socket).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, NOGROUP), "{}", socket.display());
    }
    // The file permissions keep a stranger out; open them, as a careless chmod would, to see that
    // the peer check holds on its own.
    open_dir(daemon.dir.path());
    for socket in [daemon.socket(), control.clone()] {
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let bins = tempfile::tempdir().unwrap();
    let trainctl = public_bin(bins.path(), "trainctl");
    let out = as_user(Command::new(&trainctl).arg("--socket").arg(daemon.socket()).arg("ls"), STRANGER, STRANGER)
        .output_within()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("uid 12345 may not use this trainerd"), "{}", text(&out));
    let reply = control_as(&control, STRANGER, STRANGER, r#"{"op":"info"}"#);
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["error"]["code"], "permission_denied", "{reply}");
    let log = daemon.log();
    assert!(log.contains("denied uid 12345: not an allowed user or group"), "no audit line in:\n{log}");

    // A member of the socket's group (here by its primary group) is let in on both sockets.
    let out = as_user(Command::new(&trainctl).arg("--socket").arg(daemon.socket()).arg("ls"), STRANGER, NOGROUP)
        .output_within()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let reply = control_as(&control, STRANGER, NOGROUP, r#"{"op":"info"}"#);
    assert!(reply.contains(r#""ok":true"#), "{reply}");
}

#[test]
fn a_user_whose_supplementary_group_is_the_sockets_is_let_in_and_one_without_it_is_not() {
    let daemon = Daemon::start(&["--socket-group", "nogroup"]);
    let control = daemon.dir.path().join("control.sock");
    open_dir(daemon.dir.path());
    let bins = tempfile::tempdir().unwrap();
    let trainctl = public_bin(bins.path(), "trainctl");
    let ls = |groups: &[u32]| {
        as_user_in(Command::new(&trainctl).arg("--socket").arg(daemon.socket()).arg("ls"), STRANGER, STRANGER, groups)
            .output_within()
            .unwrap()
    };
    // The usual production case: the user's own primary group, and the socket's among the others.
    let member = ls(&[STRANGER + 1, NOGROUP]);
    assert!(member.status.success(), "{}", text(&member));
    let stranger = ls(&[STRANGER + 1]);
    assert!(!stranger.status.success());
    // The socket file itself (0660, group nogroup) keeps the non-member out before the peer check.
    assert!(
        text(&stranger).contains("Permission denied") || text(&stranger).contains("may not use"),
        "{}",
        text(&stranger)
    );
    // With the file opened to all, the peer check alone decides, by the same supplementary groups.
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let stranger = ls(&[STRANGER + 1]);
    assert!(text(&stranger).contains("uid 12345 may not use this trainerd"), "{}", text(&stranger));
    assert!(ls(&[NOGROUP]).status.success());
    let control_in = |groups: &[u32]| control_in(&control, STRANGER, STRANGER, groups, r#"{"op":"info"}"#);
    assert!(control_in(&[NOGROUP]).contains(r#""ok":true"#));
    assert!(control_in(&[STRANGER + 1]).contains("permission_denied"));
}

#[test]
fn a_job_runs_as_the_user_who_submitted_it_and_cannot_touch_trainerds_files() {
    let daemon = Daemon::start(&["--allow-users", &STRANGER.to_string()]);
    open_dir(daemon.dir.path());
    // allow-users admits the user at the peer check; the file must let them connect too (in
    // production: socket-group).
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let workdir = tempfile::tempdir().unwrap();
    let bins = tempfile::tempdir().unwrap();
    std::fs::set_permissions(workdir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = as_user(
        Command::new(public_bin(bins.path(), "trainctl"))
            .arg("--socket")
            .arg(daemon.socket())
            .args(["--json", "submit", "--name", "theirs", "--env", "FAKE_STEPS=400", "--env", "FAKE_STEP_MS=10"])
            .arg("--workdir")
            .arg(workdir.path())
            .arg("--")
            .arg(public_bin(bins.path(), "fake-trainer")),
        STRANGER,
        STRANGER,
    )
    .output_within()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = submitted["id"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = daemon.client().await;
        let running = watch_until(&mut client, &id, Duration::from_secs(30), |j| j.step > 0).await.pop().unwrap();
        let pid = running.pid.expect("a running job has a pid");
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid)).unwrap();
        let ids = |key: &str| status.lines().find(|l| l.starts_with(key)).unwrap().to_string();
        assert_eq!(ids("Uid:"), "Uid:\t12345\t12345\t12345\t12345", "{status}");
        assert_eq!(ids("Gid:"), "Gid:\t12345\t12345\t12345\t12345", "{status}");
        let environ = std::fs::read(format!("/proc/{}/environ", pid)).unwrap();
        assert!(!environ.split(|b| *b == 0).any(|v| v == b"HOME=/root"), "the trainer got root's HOME");

        let dir = daemon.job_dir(&id);
        let trainer = std::fs::metadata(dir.join("trainer")).unwrap();
        assert_eq!((trainer.uid(), trainer.gid()), (STRANGER, STRANGER), "the trainer's dir is the user's");
        for name in ["", "stdout.log", "shim.json"] {
            let meta = std::fs::metadata(dir.join(name)).unwrap();
            assert_eq!(meta.uid(), 0, "{name:?} stays trainerd's");
        }
        // The user cannot write where trainerd keeps logs and exit records.
        let forge =
            as_user(Command::new("sh").arg("-c").arg("echo forged > \"$0\"/exit.json").arg(&dir), STRANGER, STRANGER)
                .output_within()
                .unwrap();
        assert!(!forge.status.success(), "a job's user could write into its job dir");

        let done =
            watch_until(&mut client, &id, Duration::from_secs(60), |j| j.state() == pb::JobState::Completed).await;
        assert_eq!(done.last().unwrap().state(), pb::JobState::Completed);
    });
}

#[test]
fn a_job_has_its_users_supplementary_groups_from_the_user_database() {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: playing another user needs root");
        return;
    }
    // trainerd looks the groups up (getgrouplist) and the shim sets them before exec.
    let extra = ensure_group("trainerd-test-extra");
    let uid = ensure_user("trainerd-test-member", &["trainerd-test-extra"]);
    let passwd = Command::new("getent").args(["passwd", &uid.to_string()]).output_within().unwrap();
    let gid: u32 = String::from_utf8_lossy(&passwd.stdout).split(':').nth(3).unwrap().trim().parse().unwrap();
    assert_ne!(gid, extra, "the extra group is a supplementary one");
    let daemon = Daemon::start(&["--allow-users", &uid.to_string()]);
    open_dir(daemon.dir.path());
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let bins = tempfile::tempdir().unwrap();
    let workdir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(workdir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = as_user(
        Command::new(public_bin(bins.path(), "trainctl"))
            .arg("--socket")
            .arg(daemon.socket())
            .args(["--json", "submit", "--name", "member", "--env", "FAKE_FAULT=hang@1", "--workdir"])
            .arg(workdir.path())
            .arg("--")
            .arg(public_bin(bins.path(), "fake-trainer")),
        uid,
        gid,
    )
    .output_within()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = submitted["id"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = daemon.client().await;
        let running = watch_until(&mut client, &id, Duration::from_secs(30), |j| j.step > 0).await.pop().unwrap();
        let pid = running.pid.expect("a running job has a pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let groups: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .unwrap()
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        assert!(groups.contains(&extra), "the trainer lacks its user's group {extra}: {status}");
        assert!(groups.contains(&gid), "the trainer lacks its user's primary group {gid}: {status}");
        let _ = client.cancel_job(pb::CancelJobRequest { id }).await;
    });
}

/// A self-signed CA and a server certificate for 127.0.0.1 and localhost, made with openssl.
fn certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output_within().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    };
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
}

/// A token file with `mode`.
fn secret(dir: &Path, name: &str, token: &str, mode: u32) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn tcp_needs_a_bearer_token_and_beyond_loopback_tls_and_never_runs_a_job_as_root() {
    let dir = tempfile::tempdir().unwrap();
    let token = secret(dir.path(), "token", "0123456789abcdef0123456789abcdef", 0o600);
    let wrong = secret(dir.path(), "wrong", "fedcba9876543210fedcba9876543210", 0o600);

    let port = free_port();
    let daemon = Daemon::start(&["--listen", &format!("127.0.0.1:{port}"), "--token-file", token.to_str().unwrap()]);
    let trainctl = |args: &[&str]| Command::new(bin("trainctl")).args(args).output_within().unwrap();
    let addr = format!("http://127.0.0.1:{port}");
    let out = trainctl(&["--addr", &addr, "--token-file", token.to_str().unwrap(), "--json", "info"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = trainctl(&["--addr", &addr, "info"]);
    assert!(text(&out).contains("send `authorization: Bearer TOKEN`"), "{}", text(&out));
    let out = trainctl(&["--addr", &addr, "--token-file", wrong.to_str().unwrap(), "info"]);
    assert!(text(&out).contains("the bearer token is wrong"), "{}", text(&out));
    // trainerd runs as root and a TCP client has no local user: its job is refused, not run as root.
    // A copy the job's user (nobody) can run: the checkout may sit in a directory only root enters.
    let bins = tempfile::tempdir().unwrap();
    let fake = public_bin(bins.path(), "fake-trainer");
    let out =
        trainctl(&["--addr", &addr, "--token-file", token.to_str().unwrap(), "submit", "--", fake.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("a job submitted over TCP has no local user to run as"), "{}", text(&out));
    assert!(daemon.log().contains("denied a TCP client: wrong bearer token"), "{}", daemon.log());
    drop(daemon);

    certificates(dir.path());
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let port = free_port();
    let daemon = Daemon::start(&[
        "--listen",
        &format!("0.0.0.0:{port}"),
        "--token-file",
        token.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--job-user",
        "nobody",
    ]);
    let https = format!("https://127.0.0.1:{port}");
    let ca = dir.path().join("ca.pem");
    let base = ["--addr", &https, "--ca", ca.to_str().unwrap(), "--token-file", token.to_str().unwrap()];
    let out = trainctl(&[&base[..], &["--json", "info"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    // With job-user, a TCP submission runs as that user: its trainer's uid says so.
    let submit = ["--json", "submit", "--workdir", "/", "--env", "FAKE_STEPS=100000", "--", fake.to_str().unwrap()];
    let out = trainctl(&[&base[..], &submit].concat());
    assert!(out.status.success(), "{}", text(&out));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let id_out = Command::new("id").args(["-u", "nobody"]).output_within().unwrap();
    let nobody: u32 = String::from_utf8_lossy(&id_out.stdout).trim().parse().expect("the nobody user");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let pid = loop {
        let out = trainctl(&[&base[..], &["--json", "get", &id]].concat());
        let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(pid) = job["pid"].as_u64() {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "the job never ran: {job}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uids: Vec<u32> = uid_line.split_whitespace().skip(1).map(|u| u.parse().unwrap()).collect();
    assert_eq!(uids, vec![nobody; 4], "the trainer runs as nobody, never as root: {uid_line}");
    let out = trainctl(&[&base[..], &["cancel", &id]].concat());
    assert!(out.status.success(), "{}", text(&out));
    // Plain text to a TLS listener does not get through.
    let out =
        trainctl(&["--addr", &format!("http://127.0.0.1:{port}"), "--token-file", token.to_str().unwrap(), "info"]);
    assert!(!out.status.success(), "{}", text(&out));
    drop(daemon);
}

#[test]
fn tcp_settings_that_would_be_unsafe_are_refused_at_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let token = secret(dir.path(), "token", "0123456789abcdef0123456789abcdef", 0o600);
    let loose = secret(dir.path(), "loose", "0123456789abcdef0123456789abcdef", 0o644);
    let short = secret(dir.path(), "short", "abc", 0o600);
    let refuse = |args: &[&str], expected: &str| {
        let out = Command::new(bin("trainerd"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .args(args)
            .output_within()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        assert!(text(&out).contains(expected), "{args:?}: expected {expected:?} in {}", text(&out));
    };
    let t = token.to_str().unwrap();
    refuse(&["--listen", "127.0.0.1:7071"], "each must present a bearer token");
    refuse(&["--listen", "0.0.0.0:7071", "--token-file", t], "TCP beyond loopback needs TLS and a bearer token");
    refuse(&["--listen", "127.0.0.1:7071", "--token-file", loose.to_str().unwrap()], "chmod 600 it");
    refuse(&["--listen", "127.0.0.1:7071", "--token-file", short.to_str().unwrap()], "at least 16 printable");
    refuse(&["--listen", "0.0.0.0:7071", "--token-file", t, "--tls-cert", t], "--tls-cert and --tls-key go together");
    refuse(
        &["--listen", "0.0.0.0:7071", "--token-file", t, "--tls-cert", t, "--tls-key", t],
        "not a PEM file (no -----BEGIN line)",
    );
    refuse(&["--job-user", "no-such-user-here"], "--job-user: no user \"no-such-user-here\" on this host");
}
