//! Start-up and shutdown: open the store (which also keeps a second trainerd off the state dir),
//! restore the jobs, serve, and on SIGTERM or SIGINT stop serving and flush. A second signal exits at
//! once.
//!
//! On shutdown the Supervisor applies the shutdown policy: by default trainers keep running under
//! their shims and the next trainerd re-adopts them (see `Supervisor::pre_start`); `pause` and `stop`
//! wait until every job has paused or gone back to the queue. The store is flushed before exit under
//! every policy.

use crate::api::grpc;
use crate::api::Api;
use crate::config::{DaemonConfig, Flags};
use crate::hub::Hub;
use crate::shared::Shared;
use crate::store::Store;
use crate::supervisor::Supervisor;
use anyhow::Context;
use ractor::Actor;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

/// How long open client connections may delay a shutdown.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs trainerd until a shutdown signal.
pub async fn run(config: DaemonConfig, flags: Flags) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create the state dir {}", config.state_dir.display()))?;
    // The shim's check (a process started and waited for, up to a millisecond) overlaps the store's
    // opening: both come before the first answer after a restart.
    let (shim, store) = std::thread::scope(|scope| {
        let shim = scope.spawn(|| match &config.shim {
            Some(path) => crate::builtin_shim::Executable::at(path.clone()).map_err(anyhow::Error::from),
            None => crate::builtin_shim::Executable::builtin(&config.state_dir)
                .context("cannot run the built-in trainerd-shim; give --shim PATH"),
        });
        let store = Store::open(&config.state_dir.join("store"));
        (shim.join(), store)
    });
    let shim = shim.map_err(|_| anyhow::anyhow!("the check of the trainerd-shim panicked"))??;
    let store = Arc::new(store?);
    let listener = bind(&config.socket, config.socket_group)?;
    let control = bind(&config.control_socket, config.socket_group)?;
    let tcp = match config.listen {
        Some(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?)
        }
        None => None,
    };
    let config = Arc::new(config);
    let notifier = crate::systemd::Notifier::from_env();
    let hub = Arc::new(Hub::default());
    let shared = Arc::new(Shared {
        metrics: crate::metrics::Metrics::default(),
        notifier,
        store: store.clone(),
        hub: hub.clone(),
        config: std::sync::RwLock::new(config.clone()),
        last_reconcile: std::sync::Mutex::new(Default::default()),
        progress_watch: crate::job::watch::ProgressWatch::new(hub.streams())
            .context("cannot start the inotify watcher")?,
        removing: Default::default(),
        slurm: crate::job::executor::slurm::Cluster::new(config.slurm.poll_interval),
        shim,
    });
    let (supervisor, supervisor_done) = Actor::spawn(Some("supervisor".into()), Supervisor, shared.clone())
        .await
        .context("cannot start the supervisor")?;
    tokio::spawn(crate::recovery::run(shared.clone(), supervisor.clone()));
    tokio::spawn(crate::removal::run(shared.clone()));
    let api = Arc::new(Api {
        store: store.clone(),
        hub: shared.hub.clone(),
        supervisor: supervisor.clone(),
        shared: shared.clone(),
        started,
    });
    let mut hup = signal(SignalKind::hangup())?;
    let (reload_shared, reload_supervisor) = (shared.clone(), supervisor.clone());
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload(&flags, &reload_shared);
            let _ = reload_supervisor.cast(crate::supervisor::SupervisorMsg::Reloaded);
        }
    });

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_shared = shared.clone();
    let health = grpc::Health::new().await;
    let stop_health = health.reporter();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        stop_health.set(false).await;
        let _ = stop_tx.send(true);
        stop_shared.notifier.notify("STOPPING=1");
        // A second signal forces the exit, whatever is still draining.
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let control_task = tokio::spawn(crate::api::jsonl::serve(control, api.clone()));
    if let Some(addr) = config.metrics {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot serve metrics on {addr}"))?;
        tokio::spawn(serve_metrics(listener, shared.clone()));
    }
    if let Some(tcp) = tcp {
        grpc::serve_tcp(api.clone(), &health, tcp, config.tls.as_ref(), stopped(stop_rx.clone()))?;
    }
    // The Supervisor's pre_start restored every job before spawn returned: what clients see now is
    // what the store says.
    let counts = store.count();
    health.set(true).await;
    shared.notifier.notify(&format!("READY=1\nSTATUS=serving; {counts} jobs in the store"));
    println!("trainerd ready: socket {} state dir {}", config.socket.display(), config.state_dir.display());
    tracing::info!(socket = %config.socket.display(), "serving");
    let mut server = grpc::serve_unix(api, &health, listener, stopped(stop_rx.clone()))?;
    // Graceful shutdown waits for open connections, and a `trainctl watch` may never close its own:
    // in-flight requests get a short grace, then the server is dropped.
    tokio::select! {
        result = &mut server => result.context("the gRPC server's task ended abnormally")??,
        _ = async {
            stopped(stop_rx).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("clients still connected after {SHUTDOWN_GRACE:?}; closing their connections");
            server.abort();
            let _ = server.await;
        }
    }
    control_task.abort();
    let policy = shared.config().shutdown_policy;
    shared.notifier.notify(&format!("STATUS=stopping: shutdown policy {policy:?}"));
    let timeout = shared.config().shutdown_timeout;
    match supervisor.call(|reply| crate::supervisor::SupervisorMsg::Shutdown { reply }, Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(())) => tracing::info!(?policy, "shutdown policy applied"),
        Ok(ractor::rpc::CallResult::Timeout) => tracing::warn!(
            ?policy,
            "shutdown-timeout ({timeout:?}) reached; jobs still pausing or stopping run on under their shims and \
             are re-adopted by the next trainerd"
        ),
        other => tracing::error!(?policy, "the shutdown policy could not be applied: {other:?}"),
    }
    supervisor.stop(None);
    if tokio::time::timeout(SHUTDOWN_GRACE, supervisor_done).await.is_err() {
        tracing::warn!("the supervisor did not stop within {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    // Metric points are written behind (store::history); a stop writes the rest of them. Every
    // transition was flushed when it was made; for those this flush is belt and braces.
    if let Err(e) = store.write_metric_tails() {
        tracing::warn!("the last metric points could not be written: {e}");
    }
    if let Err(e) = store.flush() {
        tracing::error!("the final flush of the store failed: {e}; every acknowledged transition was flushed already");
    }
    let _ = std::fs::remove_file(&config.socket);
    let _ = std::fs::remove_file(&config.control_socket);
    tracing::info!("stopped; the store is flushed");
    Ok(())
}

/// Answers `GET /metrics` with the text exposition; anything else gets 404. One request per connection.
async fn serve_metrics(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let response = if request.starts_with("GET /metrics ") {
                let records = shared.store.list().unwrap_or_default();
                let counts: Vec<(&str, u64)> = trainerd_proto::state::ALL_STATES
                    .iter()
                    .map(|s| {
                        (
                            trainerd_proto::state::state_word(*s),
                            records.iter().filter(|r| r.state() == *s).count() as u64,
                        )
                    })
                    .collect();
                let queued = counts.iter().find(|(s, _)| *s == "queued").map(|c| c.1).unwrap_or(0) as usize;
                let body = shared.metrics.render(&counts, queued, shared.store.flush_histogram());
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
            };
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// SIGHUP: reads the configuration file again (under the original flags) and applies what can change
/// while running: slots, job defaults, the heartbeat interval, log caps. Paths, listeners and the GPU
/// pool keep their values, with a warning naming each change that needs a restart.
fn reload(flags: &Flags, shared: &Shared) {
    let new = match flags.clone().with_file().and_then(Flags::resolve) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("SIGHUP: the configuration is invalid, nothing changed: {e}");
            return;
        }
    };
    let old = shared.config();
    let mut fixed = Vec::new();
    if new.state_dir != old.state_dir {
        fixed.push("state-dir");
    }
    if new.socket != old.socket {
        fixed.push("socket");
    }
    if new.control_socket != old.control_socket {
        fixed.push("control-socket");
    }
    if new.listen != old.listen {
        fixed.push("listen");
    }
    if new.tls != old.tls {
        fixed.push("tls-cert, tls-key");
    }
    if new.socket_group != old.socket_group {
        fixed.push("socket-group");
    }
    if new.gpus != old.gpus {
        fixed.push("gpus");
    }
    if new.metrics != old.metrics {
        fixed.push("metrics");
    }
    if !fixed.is_empty() {
        tracing::warn!("SIGHUP: {} cannot change while trainerd runs; restart it to apply", fixed.join(", "));
    }
    let applied = DaemonConfig {
        state_dir: old.state_dir.clone(),
        socket: old.socket.clone(),
        control_socket: old.control_socket.clone(),
        listen: old.listen,
        tls: old.tls.clone(),
        socket_group: old.socket_group,
        metrics: old.metrics,
        gpus: old.gpus.clone(),
        ..new
    };
    tracing::info!(slots = applied.slots, "SIGHUP: configuration reloaded");
    *shared.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(applied);
}

/// Binds the socket, replacing a stale file a dead daemon left, and makes it mode 0660 in `group`
/// (who passes the file permissions is then checked again by peer credentials, see `access`).
/// Called only after the store is open, so a live daemon's socket is never removed (the live daemon
/// holds the store's lock).
fn bind(path: &std::path::Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the socket's directory {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot replace the stale socket {}", path.display()));
        }
        _ => {}
    }
    let listener = UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give the socket {} to group {gid}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot make the socket {} mode 0660", path.display()))?;
    Ok(listener)
}
