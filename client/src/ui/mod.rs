//! `trainctl ui`: the web page, served by trainctl itself on loopback and talking to trainerd over its
//! unix socket as the user who ran it. So the peer-credential rules apply unchanged and trainerd has
//! no new door: the page can do exactly what that user's `trainctl` can. A secret token (in the URL
//! printed at start, then an HttpOnly, SameSite=Strict cookie) keeps other local users and other
//! sites out; the Host header is checked against the loopback address (DNS rebinding).
//!
//! Routes (every one behind the token): `/` (the page), `/assets/*` (built in), and a small JSON API
//! over trainerd's own: `GET /api/jobs`, `/api/job`, `/api/events`, `/api/metrics`, `/api/logs`,
//! `/api/health`, `/api/watch` (server-sent events), and `POST /api/{pause,resume,cancel,retry}`.
//! Every JSON shape is `trainerd_proto::json`'s, as `trainctl --json` prints it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_stream::StreamExt;
use trainerd_proto::json::{event_json, health_json, job_json, metrics_json, point_json};
use trainerd_proto::v1 as pb;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
const UPLOT_JS: &str = include_str!("vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("vendor/uPlot.min.css");

/// The cookie that carries the token after the first page load.
const COOKIE: &str = "trainctl_ui";

/// What the server needs.
pub struct Ui {
    /// trainerd's unix socket.
    pub socket: PathBuf,
    /// The secret every request must carry.
    pub token: String,
    /// `127.0.0.1:PORT`: the only Host accepted.
    pub host: String,
}

/// A random token: 32 bytes from the kernel, hex.
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Serves until the process is stopped. Each connection is its own task.
pub async fn serve(listener: tokio::net::TcpListener, ui: Arc<Ui>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let ui = ui.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ui = ui.clone();
                async move { Ok::<_, Infallible>(handle(&ui, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

fn full(status: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", kind)
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .header(
            "content-security-policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        )
        .body(Full::new(body.into()).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn reply_json(status: StatusCode, value: &Value) -> Response<Body> {
    full(status, "application/json", value.to_string())
}

fn refusal(status: tonic::Status) -> Response<Body> {
    let code = match status.code() {
        tonic::Code::NotFound => "not_found",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::Unavailable => "unavailable",
        _ => "internal",
    };
    let http = match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_GATEWAY,
    };
    reply_json(http, &json!({"ok": false, "error": {"code": code, "message": status.message()}}))
}

/// The query's parameters (`a=1&b=2`, percent-decoded); a repeated name keeps every value.
fn query(req: &Request<hyper::body::Incoming>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for pair in req.uri().query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(decode(k)).or_default().push(decode(v));
    }
    out
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the request carries the token (cookie, or `token` in the query), from the right Host.
fn allowed(ui: &Ui, req: &Request<hyper::body::Incoming>, q: &HashMap<String, Vec<String>>) -> bool {
    let host_ok = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h == ui.host || h.strip_prefix("localhost:") == ui.host.strip_prefix("127.0.0.1:"));
    let cookie = req
        .headers()
        .get_all("cookie")
        .iter()
        .filter_map(|c| c.to_str().ok())
        .flat_map(|c| c.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(name, value)| name == COOKIE && same(value, &ui.token));
    let in_query = q.get("token").and_then(|t| t.first()).is_some_and(|t| same(t, &ui.token));
    host_ok && (cookie || in_query)
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(ui: &Ui, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let q = query(&req);
    if !allowed(ui, &req, &q) {
        return full(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            "trainctl ui: open the address `trainctl ui` printed (it carries the page's secret token)\n",
        );
    }
    let path = req.uri().path().to_string();
    let first = |name: &str| q.get(name).and_then(|v| v.first()).cloned().unwrap_or_default();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/") => {
            let mut page = full(StatusCode::OK, "text/html; charset=utf-8", INDEX);
            let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", ui.token);
            if let Ok(value) = hyper::header::HeaderValue::from_str(&cookie) {
                page.headers_mut().insert("set-cookie", value);
            }
            page
        }
        (&Method::GET, "/assets/app.js") => full(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        (&Method::GET, "/assets/app.css") => full(StatusCode::OK, "text/css; charset=utf-8", APP_CSS),
        (&Method::GET, "/assets/uplot.js") => full(StatusCode::OK, "text/javascript; charset=utf-8", UPLOT_JS),
        (&Method::GET, "/assets/uplot.css") => full(StatusCode::OK, "text/css; charset=utf-8", UPLOT_CSS),
        (&Method::GET, "/api/watch") => watch(ui, first("id")).await,
        (method, path) if path.starts_with("/api/") => {
            // A state-changing request only as POST, from our own page (SameSite=Strict keeps other
            // sites' cookies out; the Origin, when sent, must be ours).
            let posting = method == Method::POST;
            if posting {
                let origin = req.headers().get("origin").and_then(|o| o.to_str().ok());
                if origin.is_some_and(|o| o != format!("http://{}", ui.host)) {
                    return full(StatusCode::FORBIDDEN, "text/plain", "cross-origin request refused\n");
                }
            }
            match api(ui, posting, &path[5..], &q).await {
                Ok(value) => reply_json(StatusCode::OK, &value),
                Err(Failure::Status(status)) => refusal(status),
                Err(Failure::Http(code, message)) => {
                    reply_json(code, &json!({"ok": false, "error": {"code": "invalid_argument", "message": message}}))
                }
            }
        }
        _ => full(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

enum Failure {
    Status(tonic::Status),
    Http(StatusCode, String),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Failure {
        Failure::Status(status)
    }
}

async fn client(ui: &Ui) -> Result<crate::Client, Failure> {
    crate::connect_unix_within(&ui.socket, Some(std::time::Duration::from_secs(30)))
        .await
        .map_err(|e| Failure::Http(StatusCode::BAD_GATEWAY, e.to_string()))
}

fn number<T: std::str::FromStr>(q: &HashMap<String, Vec<String>>, name: &str) -> Result<Option<T>, Failure> {
    match q.get(name).and_then(|v| v.first()).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Failure::Http(StatusCode::BAD_REQUEST, format!("{name}: {v:?} is not a number"))),
    }
}

/// One API call: trainerd's answer in `trainctl --json`'s shapes.
async fn api(ui: &Ui, posting: bool, route: &str, q: &HashMap<String, Vec<String>>) -> Result<Value, Failure> {
    let id = q.get("id").and_then(|v| v.first()).cloned().unwrap_or_default();
    let mut c = client(ui).await?;
    Ok(match (posting, route) {
        (false, "jobs") => {
            let states = q
                .get("state")
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
                .map(|s| {
                    trainerd_proto::state::parse_state_word(s).map(|st| st as i32).ok_or_else(|| {
                        Failure::Http(StatusCode::BAD_REQUEST, format!("state: {s:?} is not a job state"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let name = q.get("name").and_then(|v| v.first()).cloned().unwrap_or_default();
            let req = pb::ListJobsRequest {
                states,
                name,
                page_size: number(q, "limit")?.unwrap_or(100),
                page_token: q.get("page").and_then(|v| v.first()).cloned().unwrap_or_default(),
            };
            let list = c.list_jobs(req).await?.into_inner();
            json!({"ok": true, "jobs": list.jobs.iter().map(job_json).collect::<Vec<_>>(), "next_page": list.next_page_token})
        }
        (false, "job") => {
            json!({"ok": true, "job": job_json(&c.get_job(pb::GetJobRequest { id }).await?.into_inner())})
        }
        (false, "events") => {
            let events = c.list_events(pb::ListEventsRequest { id }).await?.into_inner();
            json!({"ok": true, "events": events.events.iter().map(event_json).collect::<Vec<_>>()})
        }
        (false, "metrics") => {
            let req = pb::GetMetricsRequest {
                id,
                names: q.get("name").cloned().unwrap_or_default(),
                from_step: number(q, "from_step")?.unwrap_or(0),
                to_step: number(q, "to_step")?,
                max_points: number(q, "max_points")?.unwrap_or(0),
            };
            let mut value = metrics_json(&c.get_metrics(req).await?.into_inner());
            value["ok"] = true.into();
            value
        }
        (false, "logs") => {
            let tail = number(q, "tail")?.unwrap_or(16 * 1024);
            let mut stream =
                c.stream_logs(pb::StreamLogsRequest { id, follow: false, tail_bytes: tail }).await?.into_inner();
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                match chunk.stream.as_str() {
                    "stderr" => stderr.extend_from_slice(&chunk.data),
                    _ => stdout.extend_from_slice(&chunk.data),
                }
            }
            json!({"ok": true, "stdout": String::from_utf8_lossy(&stdout), "stderr": String::from_utf8_lossy(&stderr)})
        }
        (false, "health") => {
            let mut value = health_json(&c.health(pb::HealthRequest {}).await?.into_inner());
            value["ok"] = true.into();
            value
        }
        (true, "pause") => {
            json!({"ok": true, "job": job_json(&c.pause_job(pb::PauseJobRequest { id }).await?.into_inner())})
        }
        (true, "resume") => {
            json!({"ok": true, "job": job_json(&c.resume_job(pb::ResumeJobRequest { id }).await?.into_inner())})
        }
        (true, "cancel") => {
            json!({"ok": true, "job": job_json(&c.cancel_job(pb::CancelJobRequest { id }).await?.into_inner())})
        }
        (true, "retry") => {
            let req = pb::RetryJobRequest { id, ..Default::default() };
            json!({"ok": true, "job": job_json(&c.retry_job(req).await?.into_inner())})
        }
        (posting, route) => {
            let method = if posting { "POST" } else { "GET" };
            return Err(Failure::Http(StatusCode::NOT_FOUND, format!("{method} /api/{route}: no such call")));
        }
    })
}

/// A job's updates as server-sent events (`data: {"update", "job", "point"}`), until the job ends.
async fn watch(ui: &Ui, id: String) -> Response<Body> {
    let mut c = match client(ui).await {
        Ok(c) => c,
        Err(Failure::Status(s)) => return refusal(s),
        Err(Failure::Http(code, m)) => return reply_json(code, &json!({"ok": false, "error": {"message": m}})),
    };
    let updates = match c.watch_job(pb::WatchJobRequest { id }).await {
        Ok(r) => r.into_inner(),
        Err(status) => return refusal(status),
    };
    let events = updates.map_while(|u| u.ok()).map(|u| {
        let mut value = json!({"update": u.kind, "job": u.job.as_ref().map(job_json)});
        if let Some(point) = &u.point {
            value["point"] = point_json(point);
        }
        Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: {value}\n\n"))))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-store")
        .body(BodyExt::boxed(StreamBody::new(events)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded_and_the_token_compare_is_exact() {
        assert_eq!(decode("a%20b+c%2Fd"), "a b c/d");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
