//! The web page in a real browser: headless Chromium driven through WebDriver (Debian's `chromium`
//! and `chromium-driver`), against `trainctl ui` in front of a real trainerd with real jobs. Every wait
//! is event-driven in the page (a MutationObserver resolves WebDriver's async script) under a
//! deadline. With TRAINERD_WRITE_SCREENSHOTS=1 it saves docs/ui-jobs.png and docs/ui-job.png.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use trainerd_proto::v1 as pb;
use trainerd_tests::{bin, fake_job, submit, trainer_proc_job, watch_until, Daemon};

const LIMIT: Duration = Duration::from_secs(60);

/// A WebDriver session on a chromedriver this test started.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

/// One HTTP/1.1 request with a JSON body to 127.0.0.1:`port`; the JSON answer.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("chromedriver");
    stream.set_read_timeout(Some(LIMIT + Duration::from_secs(10))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // The reply's length is in its header (chromedriver may keep the connection open).
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("a WebDriver reply");
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("the WebDriver reply's body");
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("WebDriver sent no JSON ({e}): {head}{}", String::from_utf8_lossy(&body)))
}

impl Browser {
    /// None when Chromium or its driver is not installed (said on stderr; scripts/setup.sh installs them).
    fn start() -> Option<Browser> {
        if Command::new("chromedriver").arg("--version").output().is_err() {
            eprintln!("SKIPPED: chromium-driver is not installed (apt-get install chromium chromium-driver)");
            return None;
        }
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        // Its output is read to the end (a closed pipe would kill it); the line that says it listens is
        // the readiness signal.
        let (tx, rx) = std::sync::mpsc::channel();
        let out = BufReader::new(driver.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(LIMIT).expect("chromedriver did not start");
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }}}});
        let created = http(port, "POST", "/session", Some(&caps));
        let session =
            created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_string();
        let timeouts = json!({"script": LIMIT.as_millis() as u64});
        http(port, "POST", &format!("/session/{session}/timeouts"), Some(&timeouts));
        Some(Browser { driver, port, session })
    }

    fn call(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let reply = http(self.port, method, &format!("/session/{}/{what}", self.session), body.as_ref());
        assert!(reply["value"].get("error").is_none(), "WebDriver {method} {what}: {reply}");
        reply["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "url", Some(json!({"url": url})));
    }

    fn run(&self, script: &str) -> Value {
        self.call("POST", "execute/sync", Some(json!({"script": script, "args": []})))
    }

    /// Waits until the JavaScript expression `condition` holds in the page, re-checked at every change
    /// of the page (no polling), at most [`LIMIT`].
    fn wait(&self, condition: &str) {
        let script = format!(
            "const done = arguments[arguments.length - 1];
             const check = () => {{ try {{ return !!({condition}); }} catch (e) {{ return false; }} }};
             if (check()) return done(true);
             new MutationObserver((_, o) => {{ if (check()) {{ o.disconnect(); done(true); }} }})
               .observe(document, {{subtree: true, childList: true, attributes: true, characterData: true}});"
        );
        let reply = http(
            self.port,
            "POST",
            &format!("/session/{}/execute/async", self.session),
            Some(&json!({"script": script, "args": []})),
        );
        assert_eq!(reply["value"], true, "never true in the page within {LIMIT:?}: {condition}\n{reply}");
    }

    /// Clicks the element `css` as a user would, and accepts the confirmation it asks for.
    fn click_and_confirm(&self, css: &str) {
        let found = self.call("POST", "element", Some(json!({"using": "css selector", "value": css})));
        let element = found.as_object().and_then(|o| o.values().next()).and_then(|v| v.as_str()).unwrap().to_string();
        self.call("POST", &format!("element/{element}/click"), Some(json!({})));
        let text = self.call("GET", "alert/text", None);
        assert!(text.as_str().is_some_and(|t| t.ends_with('?')), "a confirmation question: {text}");
        self.call("POST", "alert/accept", Some(json!({})));
    }

    fn screenshot(&self, name: &str) {
        if std::env::var_os("TRAINERD_WRITE_SCREENSHOTS").is_none() {
            return;
        }
        let png = self.call("GET", "screenshot", None);
        let bytes = base64(png.as_str().unwrap());
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs").join(name);
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = TcpStream::connect(("127.0.0.1", self.port))
            .map(|_| http(self.port, "DELETE", &format!("/session/{}", self.session), None));
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text.bytes().filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/').collect();
    clean
        .chunks(4)
        .flat_map(|q| {
            let n = q.iter().enumerate().fold(0u32, |n, (i, c)| n | (value(*c) as u32) << (18 - 6 * i));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes.into_iter().take(q.len() - 1)
        })
        .collect()
}

/// `trainctl ui` in front of `daemon`; its address (with the token) and the process.
fn ui(daemon: &Daemon) -> (String, Child) {
    let mut child = Command::new(bin("trainctl"))
        .arg("--socket")
        .arg(daemon.socket())
        .arg("ui")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("http://127.0.0.1:") && line.contains("?token="), "{line}");
    (line.trim().to_string(), child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_live_jobs_their_curves_and_its_buttons_work() {
    let Some(browser) = Browser::start() else { return };
    let daemon = Daemon::start(&["--gpus", "none", "--heartbeat-interval", "0.2"]);
    let mut client = daemon.client().await;
    // A run that crashed once: its page marks where attempt 2 took over.
    let mut done = trainer_proc_job("curve", 3, &[("TRAINER_FAULT", "crash@35")]);
    done.command.extend(["--progress-every", "0.002"].map(String::from));
    let done = submit(&mut client, done).await;
    watch_until(&mut client, &done.id, LIMIT, |j| j.state() == pb::JobState::Completed).await;
    let long = fake_job("live", &[("FAKE_STEPS", "100000"), ("FAKE_STEP_MS", "30"), ("FAKE_CHECKPOINT_EVERY", "5")]);
    let live = submit(&mut client, long).await;
    let (url, mut server) = ui(&daemon);

    // The jobs table: both jobs, and the running one's step moving while it runs.
    browser.go(&url);
    browser.wait(&format!("document.querySelector('tr[data-id=\"{}\"][data-state=\"completed\"]')", done.id));
    browser.wait(&format!("Number(document.querySelector('tr[data-id=\"{}\"]').dataset.step) >= 3", live.id));
    let first =
        browser.run(&format!("return Number(document.querySelector('tr[data-id=\"{}\"]').dataset.step)", live.id));
    browser.wait(&format!("Number(document.querySelector('tr[data-id=\"{}\"]').dataset.step) > {first}", live.id));
    browser.screenshot("ui-jobs.png");

    // A job's page: its loss curve has every point trainerd holds.
    let stored = client
        .get_metrics(pb::GetMetricsRequest { id: done.id.clone(), max_points: 2000, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let loss_points = stored.series.iter().find(|s| s.name == "loss").unwrap().samples.len();
    assert!(loss_points >= 3, "{stored:?}");
    browser.go(&url.replace("#/", &format!("#/job/{}", done.id)));
    browser.wait(&format!("document.getElementById('chart').dataset.points === '{loss_points}'"));
    browser.wait("document.querySelectorAll('#chart canvas').length > 0");
    browser.wait("document.getElementById('chart').dataset.attemptMarks === '1'");
    browser.wait("document.querySelectorAll('#events li').length > 3 && document.getElementById('logs').textContent.includes('completed 3 epochs')");
    // A refused call shows the API's exact words.
    // Once the page has heard the job's last word (its state no longer changes the buttons), an
    // action the API refuses: its error is shown as trainerd words it.
    browser.wait("document.body.dataset.watch === 'ended'");
    browser.run("document.getElementById('resume').disabled = false;");
    browser.click_and_confirm("#resume");
    browser.wait(&format!(
        "document.getElementById('error').textContent === 'resume: job {} is completed; only a paused job can be resumed'",
        done.id
    ));
    browser.screenshot("ui-job.png");

    // Pause, resume and cancel from the buttons, each confirmed.
    browser.go(&url.replace("#/", &format!("#/job/{}", live.id)));
    browser.wait("document.getElementById('job-state').dataset.state === 'running' && !document.getElementById('pause').disabled");
    browser.click_and_confirm("#pause");
    browser.wait("document.getElementById('job-state').dataset.state === 'paused'");
    browser.click_and_confirm("#resume");
    browser.wait("['queued', 'starting', 'running'].includes(document.getElementById('job-state').dataset.state)");
    watch_until(&mut client, &live.id, LIMIT, |j| j.state() == pb::JobState::Running).await;
    browser.go(&url.replace("#/", &format!("#/job/{}", live.id)));
    browser.wait("document.getElementById('job-state').dataset.state === 'running' && !document.getElementById('cancel').disabled");
    browser.click_and_confirm("#cancel");
    browser.wait("document.getElementById('job-state').dataset.state === 'cancelled'");
    let job = client.get_job(pb::GetJobRequest { id: live.id.clone() }).await.unwrap().into_inner();
    assert_eq!(job.state(), pb::JobState::Cancelled);
    assert!(!job.cancelled_by.is_empty(), "cancelled as the user who runs trainctl ui");

    // Health.
    browser.go(&url.replace("#/", "#/health"));
    browser.wait(
        "document.getElementById('health') && document.getElementById('health').textContent.includes('Health: ok')",
    );

    // Without the token (no cookie, no query), or from another Host name: refused.
    let port: u16 = url["http://127.0.0.1:".len()..].split('/').next().unwrap().parse().unwrap();
    for host in [format!("127.0.0.1:{port}"), format!("rebound.example:{port}")] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        let token = url.split("token=").nth(1).unwrap().trim_end_matches("#/");
        let query = if host.starts_with("127") { String::new() } else { format!("?token={token}") };
        write!(stream, "GET /api/jobs{query} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 403"), "{host}: {reply}");
    }
    let _ = server.kill();
    let _ = server.wait();
}
