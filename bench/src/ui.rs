//! The web page, as a user meets it, through `trainctl ui` against a store of many jobs: the jobs
//! table's refresh (one page of 100, every second while the page is open), a job's page data, and, in
//! headless Chromium (when installed), a job's page loaded and its chart drawn from a history past
//! the fold (a run of any length stores at most 5,120 samples a metric: docs/trainer-protocol.md §2).

use crate::daemon::{bin, Daemon};
use crate::stats::{ms, summary, Sample};
use crate::Figure;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use trainerd_proto::v1 as pb;

/// One GET through the page's server; the time to the whole answer.
fn get(port: u16, token: &str, path: &str) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("trainctl ui");
    let sep = if path.contains('?') { '&' } else { '?' };
    write!(stream, "GET {path}{sep}token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("reply");
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{path}: {}", String::from_utf8_lossy(&reply[..reply.len().min(200)]));
    started.elapsed()
}

/// A job that reports a loss at each of `steps` steps, run to its end; its id and the loss samples
/// trainerd stored.
async fn history(daemon: &Daemon, steps: u64) -> (String, usize) {
    let mut client = daemon.client().await;
    let req = pb::SubmitJobRequest {
        name: "history".into(),
        command: vec![bin("fake-trainer").display().to_string()],
        env: [
            ("FAKE_STEPS", steps.to_string()),
            ("FAKE_STEP_MS", "2".into()),
            ("FAKE_LOSS", "1".into()),
            ("FAKE_CHECKPOINT_EVERY", "0".into()),
        ]
        .into_iter()
        .map(|(name, value)| pb::EnvVar { name: name.into(), value })
        .collect(),
        ..Default::default()
    };
    let job = client.submit_job(req).await.expect("submit").into_inner().job.expect("job");
    let mut updates = client.watch_job(pb::WatchJobRequest { id: job.id.clone() }).await.expect("watch").into_inner();
    let done = async {
        while let Some(u) = updates.next().await {
            if u.ok().and_then(|u| u.job).is_some_and(|j| trainerd_proto::state::is_terminal(j.state())) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(300), done).await.expect("the history job ends");
    let req = pb::GetMetricsRequest {
        id: job.id.clone(),
        names: vec!["loss".into()],
        max_points: 100_000,
        ..Default::default()
    };
    let stored = client.get_metrics(req).await.expect("metrics").into_inner();
    (job.id, stored.series.first().map_or(0, |s| s.samples.len()))
}

/// The figures, on a daemon whose store holds many jobs; `steps` for the history job.
pub async fn figures(daemon: &Daemon, steps: u64, runs: usize) -> Vec<Figure> {
    let (job, samples) = history(daemon, steps).await;
    let health = daemon.client().await.health(pb::HealthRequest {}).await.expect("health").into_inner();
    let jobs: u32 = health.jobs.iter().map(|c| c.count).sum();
    let page = trainerd_tests::webdriver::Page::start(&bin("trainctl"), &daemon.socket());
    let (port, token) = (page.port, page.token.clone());
    let table: Vec<Duration> = (0..runs).map(|_| get(port, &token, "/api/jobs?limit=100")).collect();
    let data: Vec<Duration> = (0..runs)
        .map(|_| {
            get(port, &token, &format!("/api/job?id={job}"))
                + get(port, &token, &format!("/api/events?id={job}"))
                + get(port, &token, &format!("/api/metrics?id={job}&max_points=2000"))
        })
        .collect();
    let (t, d) = (Sample::new(table), Sample::new(data));
    let mut figures = vec![
        Figure::new(
            &format!("web page: the jobs table's refresh (100 of {jobs} jobs)"),
            summary(&t),
            "p50 < 50 ms",
            t.p50() < Duration::from_millis(50),
        )
        .headline(ms(t.p50()), "ms"),
        Figure::new(
            &format!("web page: a job's data (job, events, {samples} stored loss samples)"),
            summary(&d),
            "p50 < 50 ms",
            d.p50() < Duration::from_millis(50),
        )
        .headline(ms(d.p50()), "ms"),
    ];
    let name = format!("web page in Chromium: a job's page loaded and its chart drawn ({samples} samples)");
    match trainerd_tests::webdriver::Browser::start(Duration::from_secs(60)) {
        None => {
            figures.push(Figure::new(&name, "skipped: chromium-driver is not installed".into(), "load < 1 s", true))
        }
        Some(browser) => {
            let (mut loaded, mut drawn) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                browser.go("about:blank");
                browser.go(&page.job(&job));
                browser.wait("document.getElementById('chart') && document.getElementById('chart').dataset.loadedMs");
                let read = |what: &str| {
                    let v = browser.run(&format!("return Number(document.getElementById('chart').dataset.{what})"));
                    Duration::from_secs_f64(v.as_f64().unwrap_or(0.0) / 1000.0)
                };
                loaded.push(read("loadedMs"));
                drawn.push(read("renderMs"));
            }
            let (l, r) = (Sample::new(loaded), Sample::new(drawn));
            figures.push(
                Figure::new(
                    &name,
                    format!("loaded: {}; chart drawn: {}", summary(&l), summary(&r)),
                    "load < 1 s, draw < 100 ms",
                    l.p50() < Duration::from_secs(1) && r.p50() < Duration::from_millis(100),
                )
                .headline(ms(l.p50()), "ms"),
            );
        }
    }
    figures
}
