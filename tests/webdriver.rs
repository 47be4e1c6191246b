//! A WebDriver client (W3C, over HTTP/1.1 to a chromedriver this process starts) for headless
//! Chromium: what the browser test and the web page's benchmark drive the page with. Every wait runs
//! in the page, event-driven (a MutationObserver resolves WebDriver's async script), under a deadline.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A WebDriver session on a chromedriver this test started.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    limit: Duration,
}

/// One HTTP/1.1 request with a JSON body to 127.0.0.1:`port`; the JSON answer.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>, limit: Duration) -> Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("chromedriver");
    stream.set_read_timeout(Some(limit + Duration::from_secs(10))).unwrap();
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
    /// A session whose every wait and answer has `limit`; None when Chromium or its driver is not
    /// installed (said on stderr; scripts/setup.sh installs them).
    pub fn start(limit: Duration) -> Option<Browser> {
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
        rx.recv_timeout(limit).expect("chromedriver did not start");
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }}}});
        let created = http(port, "POST", "/session", Some(&caps), limit);
        let session =
            created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_string();
        let timeouts = json!({"script": limit.as_millis() as u64});
        http(port, "POST", &format!("/session/{session}/timeouts"), Some(&timeouts), limit);
        Some(Browser { driver, port, session, limit })
    }

    /// One WebDriver command of this session; its `value`.
    pub fn call(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let reply = http(self.port, method, &format!("/session/{}/{what}", self.session), body.as_ref(), self.limit);
        assert!(reply["value"].get("error").is_none(), "WebDriver {method} {what}: {reply}");
        reply["value"].clone()
    }

    /// Navigates to `url`.
    pub fn go(&self, url: &str) {
        self.call("POST", "url", Some(json!({"url": url})));
    }

    /// Runs `script` in the page; its return value.
    pub fn run(&self, script: &str) -> Value {
        self.call("POST", "execute/sync", Some(json!({"script": script, "args": []})))
    }

    /// Waits until the JavaScript expression `condition` holds in the page, re-checked at every change
    /// of the page (no polling), at most the session's limit.
    pub fn wait(&self, condition: &str) {
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
            self.limit,
        );
        assert_eq!(reply["value"], true, "never true in the page within {:?}: {condition}\n{reply}", self.limit);
    }

    /// Clicks the element `css` as a user would, and accepts the confirmation it asks for.
    pub fn click_and_confirm(&self, css: &str) {
        let found = self.call("POST", "element", Some(json!({"using": "css selector", "value": css})));
        let element = found.as_object().and_then(|o| o.values().next()).and_then(|v| v.as_str()).unwrap().to_string();
        self.call("POST", &format!("element/{element}/click"), Some(json!({})));
        let text = self.call("GET", "alert/text", None);
        assert!(text.as_str().is_some_and(|t| t.ends_with('?')), "a confirmation question: {text}");
        self.call("POST", "alert/accept", Some(json!({})));
    }

    /// The page as a PNG.
    pub fn screenshot(&self) -> Vec<u8> {
        base64(self.call("GET", "screenshot", None).as_str().unwrap_or_default())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = TcpStream::connect(("127.0.0.1", self.port))
            .map(|_| http(self.port, "DELETE", &format!("/session/{}", self.session), None, self.limit));
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

/// `trainctl ui` running in front of a trainerd: the address it printed (with its secret token), its
/// port and token; stopped when dropped.
pub struct Page {
    pub url: String,
    pub port: u16,
    pub token: String,
    child: Child,
}

impl Page {
    /// Starts `trainctl` (the binary at `trainctl`) `ui` for the trainerd on `socket`, and reads the
    /// address it prints.
    pub fn start(trainctl: &std::path::Path, socket: &std::path::Path) -> Page {
        let mut child = Command::new(trainctl)
            .arg("--socket")
            .arg(socket)
            .arg("ui")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("trainctl ui");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("its address");
        let url = line.trim().to_string();
        assert!(url.starts_with("http://127.0.0.1:") && url.contains("?token="), "{url}");
        let port = url["http://127.0.0.1:".len()..].split('/').next().and_then(|p| p.parse().ok()).expect("a port");
        let token = url.split("token=").nth(1).expect("a token").trim_end_matches("#/").to_string();
        Page { url, port, token, child }
    }

    /// The address of job `id`'s page.
    pub fn job(&self, id: &str) -> String {
        self.url.replace("#/", &format!("#/job/{id}"))
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
