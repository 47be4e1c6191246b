//! The web page in a real browser: headless Chromium driven through WebDriver (Debian's `chromium`
//! and `chromium-driver`), against `trainctl ui` in front of a real trainerd with real jobs. Every wait
//! is event-driven in the page (a MutationObserver resolves WebDriver's async script) under a
//! deadline. With TRAINERD_WRITE_SCREENSHOTS=1 it saves docs/ui-jobs.png and docs/ui-job.png.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use trainerd_proto::v1 as pb;
use trainerd_tests::webdriver::{Browser, Page};
use trainerd_tests::{bin, fake_job, submit, trainer_proc_job, watch_until, Daemon};

const LIMIT: Duration = Duration::from_secs(60);

/// With TRAINERD_WRITE_SCREENSHOTS=1, the page as it is now, into docs/`name`.
fn screenshot(browser: &Browser, name: &str) {
    if std::env::var_os("TRAINERD_WRITE_SCREENSHOTS").is_some() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs").join(name);
        std::fs::write(path, browser.screenshot()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_live_jobs_their_curves_and_its_buttons_work() {
    let Some(browser) = Browser::start(LIMIT) else { return };
    let daemon = Daemon::start(&["--gpus", "none", "--heartbeat-interval", "0.2"]);
    let mut client = daemon.client().await;
    // A run that crashed once: its page marks where attempt 2 took over.
    let mut done = trainer_proc_job("curve", 3, &[("TRAINER_FAULT", "crash@35")]);
    done.command.extend(["--progress-every", "0.002"].map(String::from));
    let done = submit(&mut client, done).await;
    watch_until(&mut client, &done.id, LIMIT, |j| j.state() == pb::JobState::Completed).await;
    let long = fake_job("live", &[("FAKE_STEPS", "100000"), ("FAKE_STEP_MS", "30"), ("FAKE_CHECKPOINT_EVERY", "5")]);
    let live = submit(&mut client, long).await;
    let page = Page::start(&bin("trainctl"), &daemon.socket());
    let url = page.url.clone();

    // The jobs table: both jobs, and the running one's step moving while it runs.
    browser.go(&url);
    browser.wait(&format!("document.querySelector('tr[data-id=\"{}\"][data-state=\"completed\"]')", done.id));
    browser.wait(&format!("Number(document.querySelector('tr[data-id=\"{}\"]').dataset.step) >= 3", live.id));
    let first =
        browser.run(&format!("return Number(document.querySelector('tr[data-id=\"{}\"]').dataset.step)", live.id));
    browser.wait(&format!("Number(document.querySelector('tr[data-id=\"{}\"]').dataset.step) > {first}", live.id));
    screenshot(&browser, "ui-jobs.png");

    // A job's page: its loss curve has every point trainerd holds.
    let stored = client
        .get_metrics(pb::GetMetricsRequest { id: done.id.clone(), max_points: 2000, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let loss_points = stored.series.iter().find(|s| s.name == "loss").unwrap().samples.len();
    assert!(loss_points >= 3, "{stored:?}");
    browser.go(&page.job(&done.id));
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
    screenshot(&browser, "ui-job.png");

    // Pause, resume and cancel from the buttons, each confirmed.
    browser.go(&page.job(&live.id));
    browser.wait("document.getElementById('job-state').dataset.state === 'running' && !document.getElementById('pause').disabled");
    browser.click_and_confirm("#pause");
    browser.wait("document.getElementById('job-state').dataset.state === 'paused'");
    browser.click_and_confirm("#resume");
    browser.wait("['queued', 'starting', 'running'].includes(document.getElementById('job-state').dataset.state)");
    watch_until(&mut client, &live.id, LIMIT, |j| j.state() == pb::JobState::Running).await;
    browser.go(&page.job(&live.id));
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
    let port = page.port;
    for host in [format!("127.0.0.1:{port}"), format!("rebound.example:{port}")] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        let query = if host.starts_with("127") { String::new() } else { format!("?token={}", page.token) };
        write!(stream, "GET /api/jobs{query} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 403"), "{host}: {reply}");
    }
}
