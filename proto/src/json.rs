//! The JSON forms of jobs, events, health, reconciliation and daemon info, shared by `trainctl
//! --json` and the JSON-lines control socket: each shape is written here once. Field names and state
//! words are stable: scripts depend on them.

use crate::state::state_word;
use crate::v1 as pb;
use serde_json::{json, Value};

/// The stable JSON fields of a job.
pub fn job_json(job: &pb::Job) -> Value {
    json!({
        "id": job.id,
        "name": job.name,
        "state": state_word(job.state()),
        "step": job.step,
        "total_steps": job.total_steps,
        "epoch": job.epoch,
        "loss": job.loss,
        "val_loss": job.val_loss,
        "restarts": job.restarts,
        "attempt": job.attempt,
        "exit_code": job.exit_code,
        "reason": reason_word(job.reason()),
        "queue_position": job.queue_position,
        "waiting_for": Some(&job.waiting_for).filter(|s| !s.is_empty()),
        "gpus": job.assigned_gpus,
        "latest_checkpoint": job.latest_checkpoint.as_ref().map(|c| json!({"path": c.path, "step": c.step, "epoch": c.epoch})),
        "weights_sha256": Some(&job.weights_sha256).filter(|s| !s.is_empty()),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "stalled": job.stalled,
        "message": job.message,
        "pid": job.pid,
        "protocol": job.protocol,
        "resumed_from": Some(&job.resumed_from).filter(|s| !s.is_empty()),
        "resume_ignored": job.resume_ignored,
        "restarts_exhausted": job.restarts_exhausted,
        "metrics": job.metrics,
        "rollbacks": job.rollbacks,
        "executor": job.executor,
        "slurm_job_id": job.slurm_job_id,
    })
}

/// Reads a submission's `env` given as a JSON object (`{"NAME": "value"}`) into the proto's list, in
/// the object's key order (sorted, as a map). Used by the generated `SubmitJobRequest`'s Deserialize.
pub fn env_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<pb::EnvVar>, D::Error> {
    let map: std::collections::BTreeMap<String, String> = serde::Deserialize::deserialize(d)?;
    Ok(map.into_iter().map(|(name, value)| pb::EnvVar { name, value }).collect())
}

/// The stable JSON fields of a job event.
pub fn event_json(e: &pb::Event) -> Value {
    json!({"at": e.at, "kind": e.kind, "message": e.message})
}

/// The stable JSON fields of DaemonInfo.
pub fn info_json(i: &pb::DaemonInfoResponse) -> Value {
    json!({
        "version": i.version,
        "api_version": i.api_version,
        "uptime_s": i.uptime_s,
        "slots": i.slots,
        "state_dir": i.state_dir,
        "protocol_version": i.protocol_version,
        "pid": i.pid,
    })
}

/// The stable JSON fields of a removal's answer.
pub fn removed_json(r: &pb::RemoveJobsResponse) -> Value {
    let removed: Vec<Value> = r
        .removed
        .iter()
        .map(|j| {
            json!({
                "id": j.id,
                "bytes_freed": j.bytes_freed,
                "kept_checkpoint": Some(&j.kept_checkpoint).filter(|k| !k.is_empty()),
            })
        })
        .collect();
    json!({ "removed": removed })
}

/// The stable JSON fields of a disk usage report (jobs largest first).
pub fn disk_json(d: &pb::DiskUsageResponse) -> Value {
    let jobs: Vec<Value> = d
        .jobs
        .iter()
        .map(|j| json!({"id": j.id, "name": j.name, "state": state_word(j.state()), "bytes": j.bytes, "at_least": j.at_least}))
        .collect();
    json!({"jobs": jobs, "total_bytes": d.total_bytes, "state_dir_free_bytes": d.state_dir_free_bytes})
}

/// The stable JSON fields of a reconciliation report.
pub fn reconcile_json(r: &pb::ReconcileResponse) -> Value {
    json!({"at": r.at, "checked": r.checked, "fixes": r.fixes, "count": r.count})
}

/// The stable JSON fields of a health report (jobs as a map from state word to count).
pub fn health_json(h: &pb::HealthResponse) -> Value {
    let jobs: serde_json::Map<String, Value> =
        h.jobs.iter().map(|c| (state_word(c.state()).to_string(), c.count.into())).collect();
    json!({
        "status": h.status,
        "divergent": h.divergent,
        "cause": Some(&h.cause).filter(|c| !c.is_empty()),
        "state_dir_free_bytes": h.state_dir_free_bytes,
        "resume_ignored": h.resume_ignored,
        "jobs": jobs,
        "last_reconcile": reconcile_json(&h.last_reconcile.clone().unwrap_or_default()),
    })
}

/// A number as JSON: finite ones as numbers, the others as the protocol's strings (`"NaN"`,
/// `"Infinity"`, `"-Infinity"`): JSON has no NaN, and a diverged loss must stay visible.
pub fn number(value: f64) -> Value {
    match value {
        v if v.is_nan() => json!("NaN"),
        v if v.is_infinite() && v > 0.0 => json!("Infinity"),
        v if v.is_infinite() => json!("-Infinity"),
        v => json!(v),
    }
}

/// The stable JSON form of a job's metric history: `{"names": [...], "series": {"loss": [{"step",
/// "value", "min", "max", "at", "attempt"}, ...]}}`.
pub fn metrics_json(m: &pb::GetMetricsResponse) -> Value {
    let series: serde_json::Map<String, Value> = m
        .series
        .iter()
        .map(|s| {
            let samples: Vec<Value> = s
                .samples
                .iter()
                .map(|p| {
                    json!({
                        "step": p.step,
                        "value": number(p.value),
                        "min": p.min.map(number),
                        "max": p.max.map(number),
                        "at": p.at,
                        "attempt": p.attempt,
                    })
                })
                .collect();
            (s.name.clone(), Value::Array(samples))
        })
        .collect();
    json!({"names": m.names, "series": series})
}

/// The JSON form of one progress report's metric values (a watch update's `point`).
pub fn point_json(p: &pb::MetricValues) -> Value {
    let values: serde_json::Map<String, Value> = p.values.iter().map(|(k, v)| (k.clone(), number(*v))).collect();
    json!({"step": p.step, "at": p.at, "attempt": p.attempt, "values": values})
}

/// A reason as a lowercase word (`stalled`, `crashed`, ...); empty when unspecified.
pub fn reason_word(reason: pb::Reason) -> &'static str {
    match reason {
        pb::Reason::Unspecified => "",
        pb::Reason::Completed => "completed",
        pb::Reason::Paused => "paused",
        pb::Reason::RetryableExit => "retryable_exit",
        pb::Reason::PermanentExit => "permanent_exit",
        pb::Reason::Crashed => "crashed",
        pb::Reason::Stalled => "stalled",
        pb::Reason::Cancelled => "cancelled",
        pb::Reason::Lost => "lost",
        pb::Reason::SpawnFailed => "spawn_failed",
        pb::Reason::RestartsExhausted => "restarts_exhausted",
        pb::Reason::Shutdown => "shutdown",
        pb::Reason::Diverged => "diverged",
        pb::Reason::AllocationEnded => "allocation_ended",
    }
}
