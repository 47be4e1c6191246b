//! The JSON-lines control socket for shell tools: one request object per line, one response object
//! per line (a `watch` streams lines until the job ends). It maps onto the same [`Api`] handlers as
//! gRPC; nothing is implemented twice.
//!
//! ```text
//! $ echo '{"op":"list"}' | socat - UNIX-CONNECT:/run/trainerd/control.sock
//! {"ok":true,"jobs":[...]}
//! ```
//!
//! Responses are `{"ok":true, ...}` or `{"ok":false,"error":{"code":"not_found","message":"..."}}`. A
//! malformed line gets an error and the connection stays usable; a line over 1 MiB closes it.

use super::{Api, ApiError};
use crate::access::Caller;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use trainerd_proto::json::job_json;
use trainerd_proto::state::parse_state_word;
use trainerd_proto::v1 as pb;

/// The longest request line.
const MAX_LINE: usize = 1 << 20;

/// One request line.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request {
    /// Every field of the proto's SubmitJobRequest, by its name (the type is generated, not copied).
    Submit(Box<pb::SubmitJobRequest>),
    Get(Id),
    List(List),
    Watch(Id),
    Events(Id),
    Logs(Logs),
    Cancel(Id),
    Pause(Id),
    Resume(Id),
    /// RetryJobRequest's fields by their names.
    Retry(pb::RetryJobRequest),
    /// RemoveJobsRequest's fields by their names (`ids`).
    Rm(pb::RemoveJobsRequest),
    Df(Empty),
    /// GetMetricsRequest's fields by their names.
    Metrics(pb::GetMetricsRequest),
    Health(Empty),
    Reconcile(Empty),
    Info(Empty),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Id {
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Logs {
    id: String,
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    tail_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct List {
    #[serde(default)]
    states: Vec<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    limit: u32,
}

fn error(e: &ApiError) -> Value {
    let code = match e {
        ApiError::NotFound(_) => "not_found",
        ApiError::InvalidArgument { .. } => "invalid_argument",
        ApiError::FailedPrecondition(_) => "failed_precondition",
        ApiError::Unavailable(_) => "unavailable",
        ApiError::PermissionDenied(_) => "permission_denied",
        ApiError::ResourceExhausted(_) => "resource_exhausted",
        ApiError::Internal(_) => "internal",
    };
    json!({"ok": false, "error": {"code": code, "message": e.to_string()}})
}

/// Serves connections until the listener is dropped.
pub async fn serve(listener: UnixListener, api: Arc<Api>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, api.clone()));
            }
            Err(e) => {
                tracing::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(mut stream: UnixStream, api: Arc<Api>) {
    let config = api.shared.config();
    let socket = config.control_socket.display().to_string();
    let admitted = match stream.peer_cred() {
        Ok(cred) => config.access.check_local(cred.uid(), cred.gid(), cred.pid(), &socket).map(|()| Caller::Local {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        }),
        Err(e) => Err(format!("the peer's credentials are unknown: {e}")),
    };
    let caller = match admitted {
        Ok(caller) => caller,
        Err(message) => {
            let _ = send(&mut stream, &error(&ApiError::PermissionDenied(message))).await;
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut lines).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if n > MAX_LINE {
            let e = ApiError::InvalidArgument { field: "request", message: format!("a line is over {MAX_LINE} bytes") };
            let _ = send(&mut write, &error(&e)).await;
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let request = match parse_line(&line) {
            Ok(Parsed(r)) => r,
            Err(e) => {
                if send(&mut write, &error(&e)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if handle(request, &api, &caller, &mut write).await.is_err() {
            return;
        }
    }
}

/// A request line that parsed (what it asks is private to this module).
pub struct Parsed(Request);

/// Parses one request line; the error is what the client is sent. Public for the fuzz targets.
pub fn parse_line(line: &[u8]) -> Result<Parsed, ApiError> {
    serde_json::from_slice(line).map(Parsed).map_err(|e| ApiError::InvalidArgument {
        field: "request",
        message: format!("{e}; send one JSON object per line, like {{\"op\":\"list\"}}"),
    })
}

async fn send(write: &mut (impl AsyncWriteExt + Unpin), value: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

/// Answers one request; Err only when the client went away.
async fn handle(
    request: Request,
    api: &Arc<Api>,
    caller: &Caller,
    write: &mut (impl AsyncWriteExt + Unpin),
) -> std::io::Result<()> {
    let reply = match request {
        Request::Submit(req) => api
            .submit(*req, caller)
            .await
            .map(|r| json!({"ok": true, "created": r.created, "job": r.job.as_ref().map(job_json)})),
        Request::Get(Id { id }) => api.get(&id).map(|job| json!({"ok": true, "job": job_json(&job)})),
        Request::List(list) => {
            let mut states = Vec::new();
            for word in &list.states {
                match parse_state_word(word) {
                    Some(s) => states.push(s as i32),
                    None => {
                        let e = ApiError::InvalidArgument {
                            field: "states",
                            message: format!("{word:?} is not a job state"),
                        };
                        return send(write, &error(&e)).await;
                    }
                }
            }
            let req = pb::ListJobsRequest { states, name: list.name, page_size: list.limit, page_token: String::new() };
            api.list(req).map(|r| json!({"ok": true, "jobs": r.jobs.iter().map(job_json).collect::<Vec<_>>()}))
        }
        Request::Watch(Id { id }) => return watch(api, &id, write).await,
        Request::Logs(Logs { id, follow, tail_bytes }) => {
            let mut rx = match api.logs(&id, follow, tail_bytes) {
                Ok(rx) => rx,
                Err(e) => return send(write, &error(&e)).await,
            };
            while let Some(chunk) = rx.recv().await {
                let data = String::from_utf8_lossy(&chunk.data);
                send(write, &json!({"ok": true, "stream": chunk.stream, "data": data})).await?;
            }
            Ok(json!({"ok": true, "end": true}))
        }
        Request::Events(Id { id }) => api.events(&id).map(|r| {
            let events: Vec<Value> = r.events.iter().map(trainerd_proto::json::event_json).collect();
            json!({"ok": true, "events": events})
        }),
        Request::Cancel(Id { id }) => {
            api.cancel(&id, caller.to_string()).await.map(|job| json!({"ok": true, "job": job_json(&job)}))
        }
        Request::Pause(Id { id }) => {
            api.pause(&id, caller.to_string()).await.map(|job| json!({"ok": true, "job": job_json(&job)}))
        }
        Request::Resume(Id { id }) => api.resume(&id).await.map(|job| json!({"ok": true, "job": job_json(&job)})),
        Request::Retry(req) => {
            api.retry(req, caller.to_string()).await.map(|job| json!({"ok": true, "job": job_json(&job)}))
        }
        Request::Rm(req) => api.remove(req, caller.to_string()).await.map(|r| {
            let mut value = trainerd_proto::json::removed_json(&r);
            value["ok"] = true.into();
            value
        }),
        Request::Df(Empty {}) => api.disk_usage().await.map(|d| {
            let mut value = trainerd_proto::json::disk_json(&d);
            value["ok"] = true.into();
            value
        }),
        Request::Metrics(req) => api.metrics(req).await.map(|m| {
            let mut value = trainerd_proto::json::metrics_json(&m);
            value["ok"] = true.into();
            value
        }),
        Request::Health(Empty {}) => api.health().map(|h| {
            let mut value = trainerd_proto::json::health_json(&h);
            value["ok"] = true.into();
            value
        }),
        Request::Reconcile(Empty {}) => {
            api.reconcile().await.map(|r| json!({"ok": true, "reconcile": trainerd_proto::json::reconcile_json(&r)}))
        }
        Request::Info(Empty {}) => {
            let mut value = trainerd_proto::json::info_json(&api.info());
            value["ok"] = true.into();
            Ok(value)
        }
    };
    send(write, &reply.unwrap_or_else(|e| error(&e))).await
}

/// Streams the snapshot and every update until the job ends, one line each.
async fn watch(api: &Arc<Api>, id: &str, write: &mut (impl AsyncWriteExt + Unpin)) -> std::io::Result<()> {
    let mut updates = match api.watch(id) {
        Ok(updates) => updates,
        Err(e) => return send(write, &error(&e)).await,
    };
    while let Some(update) = updates.next().await {
        let job = update.job.unwrap_or_default();
        let mut line = json!({"ok": true, "update": update.kind, "job": job_json(&job)});
        if let Some(point) = &update.point {
            line["point"] = trainerd_proto::json::point_json(point);
        }
        send(write, &line).await?;
    }
    Ok(())
}
