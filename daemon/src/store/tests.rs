use super::records::*;
use super::*;
use trainerd_proto::trainer::CheckpointRef;

pub(crate) fn spec(name: &str, key: Option<&str>) -> JobSpec {
    JobSpec {
        name: name.into(),
        command: vec!["trainer-proc".into(), "--epochs".into(), "3".into()],
        workdir: "/tmp".into(),
        env: vec![("A".into(), "1".into())],
        gpus: 1,
        priority: 0,
        idempotency_key: key.map(Into::into),
        restart: RestartPolicy {
            on_failure: OnFailure::Restart,
            max_restarts: 5,
            window_ms: 600_000,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            healthy_after_ms: 600_000,
        },
        timeouts: Timeouts {
            startup_grace_ms: 300_000,
            heartbeat_timeout_ms: 600_000,
            stop_grace_ms: 30_000,
            pause_timeout_ms: 3_600_000,
        },
        protocol: Protocol::V1,
        idle_timeout_ms: None,
        progress_regex: None,
        resume_rule: None,
        more: Default::default(),
    }
}

#[test]
fn records_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = Store::open(dir.path()).unwrap();
        let (job, created) = store.create(spec("a", None), None, 1.0).unwrap();
        assert!(created);
        store.transition(job.id, JobState::Starting, Reason::Unspecified, 2.0, "", |_| {}).unwrap();
        job.id
    };
    let store = reopen(dir.path());
    let job = store.get(id).unwrap().unwrap();
    assert_eq!((job.state(), job.spec.name.as_str(), job.updated_at), (JobState::Starting, "a", 2.0));
    let kinds: Vec<_> = store.events(id).unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["submitted", "transition"]);
}

#[test]
fn ids_count_up_from_one_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let (job, _) = store.create(spec(name, None), None, 1.0).unwrap();
            store.append_event(job.id, &Event { at: 1.0, kind: "x".into(), message: String::new() }).unwrap();
            assert_eq!(job.id, JobId(i as u64 + 1));
        }
    }
    let store = reopen(dir.path());
    assert_eq!(store.create(spec("c", None), None, 1.0).unwrap().0.id, JobId(3));
}

#[test]
fn an_id_is_never_given_twice_whether_submitted_with_a_key_or_not_and_a_lost_counter_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let ids: Vec<JobId> = [None, Some("k"), None, Some("k"), Some("j")]
            .into_iter()
            .map(|key| store.create(spec("a", key), None, 1.0).unwrap().0.id)
            .collect();
        assert_eq!(ids, [JobId(1), JobId(2), JobId(3), JobId(2), JobId(4)], "a known key names its job again");
        // A crash that kept the newest job but not the counter's write (the writes are not one
        // transaction): the counter is rebuilt from the newest job.
        store.trees().unwrap().meta.insert(b"next_job", &2u64.to_be_bytes()).unwrap();
        store.flush().unwrap();
    }
    let store = reopen(dir.path());
    assert_eq!(store.create(spec("b", None), None, 1.0).unwrap().0.id, JobId(5));
    let kinds: Vec<_> = store.events(JobId(5)).unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["submitted"]);
}

#[test]
fn the_same_idempotency_key_returns_the_same_job() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (first, created) = store.create(spec("a", Some("k1")), None, 1.0).unwrap();
    assert!(created);
    let (again, created) = store.create(spec("b", Some("k1")), None, 2.0).unwrap();
    assert!(!created);
    assert_eq!(again.id, first.id);
    let (other, created) = store.create(spec("c", Some("k2")), None, 3.0).unwrap();
    assert!(created && other.id != first.id);
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn illegal_transitions_are_refused_and_terminal_jobs_never_move() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (job, _) = store.create(spec("a", None), None, 1.0).unwrap();
    let err = store.transition(job.id, JobState::Completed, Reason::Completed, 2.0, "", |_| {}).unwrap_err();
    assert_eq!(err.to_string(), format!("job {} is queued; it cannot become completed", job.id));
    store
        .transition(job.id, JobState::Cancelled, Reason::Cancelled, 2.0, "by alice", |r| {
            r.cancelled_by = Some("alice".into())
        })
        .unwrap();
    for to in trainerd_proto::state::ALL_STATES {
        assert!(store.transition(job.id, to, Reason::Unspecified, 3.0, "", |_| {}).is_err(), "{to:?}");
    }
    let job = store.get(job.id).unwrap().unwrap();
    assert_eq!((job.state(), job.cancelled_by.as_deref()), (JobState::Cancelled, Some("alice")));
    assert!(store.events(job.id).unwrap().last().unwrap().message.contains("queued -> cancelled: by alice"));
}

#[test]
fn an_update_cannot_sneak_in_a_state_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (job, _) = store.create(spec("a", None), None, 1.0).unwrap();
    store.update(job.id, |r| r.step = 7).unwrap();
    let err = store.update(job.id, |r| r.state = JobState::Completed as i32).unwrap_err();
    assert!(matches!(err, StoreError::StateChangedByUpdate(_)));
    let job = store.get(job.id).unwrap().unwrap();
    assert_eq!((job.step, job.state()), (7, JobState::Queued));
    assert!(matches!(store.update(JobId(999), |_| {}), Err(StoreError::NotFound(_))));
}

#[test]
fn a_second_store_on_the_same_dir_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("another trainerd"), "{err}");
}

#[test]
fn a_store_opened_while_its_lock_is_still_held_waits_for_it() {
    // What a reopen in the same process meets: the closed database's lock is let go a moment later.
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(first);
    });
    let second = Store::open(dir.path());
    closer.join().unwrap();
    assert!(second.is_ok(), "{}", second.err().map(|e| e.to_string()).unwrap_or_default());
}

#[test]
fn the_envelope_refuses_unknown_formats() {
    let bytes = codec::encode(&42u32).unwrap();
    assert_eq!(codec::decode::<u32>(&bytes).unwrap(), 42);
    let mut newer = bytes.clone();
    newer[0] = codec::FORMAT + 1;
    assert!(matches!(codec::decode::<u32>(&newer), Err(codec::CodecError::UnknownFormat(_))));
    assert!(matches!(codec::decode::<u32>(&[]), Err(codec::CodecError::Empty)));
}

fn fixture_record() -> JobRecord {
    JobRecord {
        id: JobId(0x2a),
        spec: spec("fixture", Some("key-1")),
        state: JobState::Backoff as i32,
        reason: Reason::Crashed as i32,
        created_at: 1_790_000_000.25,
        updated_at: 1_790_000_100.5,
        attempts: vec![Attempt {
            number: 1,
            pid: Some(4242),
            pid_start_ticks: Some(123_456),
            started_at: 1_790_000_001.0,
            ended_at: Some(1_790_000_099.0),
            exit: Some(ExitStatus::Signal(9)),
            reason: Reason::Crashed as i32,
            resumed_from: None,
            resumed_step: None,
            first_step: None,
            resume_ignored: false,
            more: AttemptMore::default(),
        }],
        restart_times: vec![1_790_000_099.0],
        consecutive_failures: 1,
        next_restart_at: Some(1_790_000_101.0),
        latest_checkpoint: Some(CheckpointRef { path: "/ckpt/step-000000000028".into(), step: 28, epoch: 2 }),
        previous_checkpoint: Some(CheckpointRef { path: "/ckpt/step-000000000021".into(), step: 21, epoch: 2 }),
        step: 31,
        total_steps: 60,
        epoch: 2,
        total_epochs: 3,
        loss: Some(0.5),
        val_loss: None,
        exit_code: None,
        weights_sha256: None,
        cancelled_by: None,
        message: Some("killed by signal 9; restarting in 1 s".into()),
        run_as: None,
        restarts_exhausted: false,
    }
}

/// A record written by format 1 and committed: every later trainerd must keep reading it. Regenerate
/// (only when deliberately changing format 1, which should never happen) with TRAINERD_WRITE_FIXTURES=1.
#[test]
fn the_committed_format_1_fixture_still_decodes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/job-record-v1.bin");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[0], 1, "the fixture is format 1");
    assert_eq!(decode_job(&bytes).unwrap(), fixture_record());
}

/// The same for format 2, which added `run_as` (its jobs keep protocol v1's rules).
#[test]
fn the_committed_format_2_fixture_still_decodes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/job-record-v2.bin");
    let record = JobRecord { run_as: Some(RunAs { uid: 65534, gid: 65534 }), ..fixture_record() };
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[0], 2, "the fixture is format 2");
    assert_eq!(decode_job(&bytes).unwrap(), record);
}

/// Format 3, which added the protocol, the idle timeout, progress from output, the resume rule, each
/// attempt's resume check and `restarts_exhausted`. Regenerate with TRAINERD_WRITE_FIXTURES=1 only
/// when introducing a format.
/// The record the committed format-3 fixture holds.
fn format_3_record() -> JobRecord {
    let mut record =
        JobRecord { run_as: Some(RunAs { uid: 1000, gid: 1000 }), restarts_exhausted: true, ..fixture_record() };
    record.spec.protocol = Protocol::None;
    record.spec.idle_timeout_ms = Some(60_000);
    record.spec.progress_regex = Some(r"(?P<step>\d+)/(?P<total>\d+)".into());
    record.spec.resume_rule = Some(ResumeRule {
        glob: "output/checkpoint-*".into(),
        arg: "--resume_from_checkpoint {checkpoint}".into(),
        marker: Some("trainer_state.json".into()),
    });
    record.attempts[0].resumed_from = Some("/ckpt/step-000000000021".into());
    record.attempts[0].resumed_step = Some(21);
    record.attempts[0].first_step = Some(0);
    record.attempts[0].resume_ignored = true;
    record
}

#[test]
fn the_committed_format_3_fixture_still_decodes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/job-record-v3.bin");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[0], 3, "the fixture is format 3");
    assert_eq!(decode_job(&bytes).unwrap(), format_3_record());
}

#[test]
fn the_committed_format_4_fixture_still_decodes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/job-record-v4.bin");
    let mut record = format_3_record();
    record.spec.more.progress_timeout_ms = Some(120_000);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[0], 4, "the fixture is format 4");
    assert_eq!(decode_job(&bytes).unwrap(), record);
}

/// Format 5, whose attempts hold their executor's handle (here a Slurm job, and a job that asks for
/// Slurm). Regenerate with TRAINERD_WRITE_FIXTURES=1 only when introducing a format.
#[test]
fn the_committed_format_5_fixture_still_decodes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/job-record-v5.bin");
    let mut record = format_3_record();
    record.spec.more.progress_timeout_ms = Some(120_000);
    record.spec.more.slurm = Some(SlurmSpec {
        partition: "gpu".into(),
        nodes: 2,
        tasks_per_node: 8,
        gpus_per_node: 8,
        time_minutes: 240,
        signal_margin_s: 120,
        ..SlurmSpec::default()
    });
    record.attempts[0].more.handle = Some(Handle::Slurm { name: "trainerd-00000000002a-1".into(), job_id: Some(17) });
    if std::env::var_os("TRAINERD_WRITE_FIXTURES").is_some() {
        std::fs::write(&path, codec::encode(&record).unwrap()).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[0], 5, "the fixture is format 5");
    assert_eq!(decode_job(&bytes).unwrap(), record);
}

#[test]
fn settings_a_newer_trainerd_added_are_ignored_and_missing_ones_take_their_defaults() {
    let mut bytes = codec::encode(&format_3_record()).unwrap();
    let blob = br#"{}"#;
    // The spec's settings come before the attempts' (whose own object is empty too).
    let at = bytes.windows(blob.len()).position(|w| w == blob).expect("the empty settings object");
    // Same length, so bincode's length prefix still holds: a field this build does not know.
    let newer = br#"{"x":1}"#;
    assert_eq!(newer.len() - blob.len(), 5);
    bytes.splice(at..at + blob.len(), newer.iter().copied());
    bytes[at - 1] += 5;
    assert_eq!(decode_job(&bytes).unwrap().spec.more, SpecMore::default());
}

#[test]
fn a_failed_store_refuses_writes_keeps_serving_reads_and_is_reopened_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (job, _) = store.create(spec("a", None), None, 1.0).unwrap();
    assert_eq!(store.recover(0, 1), Recovery::Healthy);
    store.fail_with(std::io::Error::from_raw_os_error(libc::ENOSPC));
    let failure = store.failure().unwrap();
    assert!(failure.out_of_space && !failure.unrecoverable, "{failure:?}");
    assert!(failure.cause.starts_with("no space left on the file system of"), "{}", failure.cause);
    let refused = store.transition(job.id, JobState::Starting, Reason::Unspecified, 2.0, "", |_| {}).unwrap_err();
    assert!(refused.is_unavailable(), "{refused}");
    assert!(store.create(spec("b", None), None, 2.0).unwrap_err().is_unavailable());
    assert_eq!(store.get(job.id).unwrap().unwrap().state(), JobState::Queued, "reads go on");
    // Not reopened while the reserve is not free; reopened once it is.
    assert!(matches!(store.recover(10, 100), Recovery::Waiting(w) if w.starts_with("waiting for space")));
    assert!(store.failure().is_some());
    assert_eq!(store.recover(100, 100), Recovery::Recovered);
    assert!(store.failure().is_none());
    store.transition(job.id, JobState::Starting, Reason::Unspecified, 3.0, "", |_| {}).unwrap();
    assert_eq!(store.get(job.id).unwrap().unwrap().state(), JobState::Starting);
}

#[test]
fn a_store_that_cannot_be_reopened_with_room_to_spare_is_unrecoverable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create(spec("a", None), None, 1.0).unwrap();
    store.fail_with(std::io::Error::from_raw_os_error(libc::EIO));
    let failure = store.failure().unwrap();
    assert!(!failure.out_of_space && !failure.unrecoverable);
    assert!(failure.cause.starts_with("an I/O error in"), "{}", failure.cause);
    // Something that is not sled's database where it was: the reopen fails for a reason space cannot cure.
    let db = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).find(|p| p.ends_with("db")).unwrap();
    std::fs::rename(&db, dir.path().join("db.moved")).unwrap();
    std::fs::create_dir(&db).unwrap();
    assert!(matches!(store.recover(u64::MAX, 1), Recovery::Waiting(w) if w.starts_with("reopening failed")));
    assert!(store.failure().unwrap().unrecoverable, "restarting trainerd is the remedy left");
    let closed = store.get(JobId(1)).unwrap_err();
    assert!(closed.is_unavailable() && closed.to_string().contains("reopening failed"), "{closed}");
    assert!(store.list().unwrap_err().is_unavailable());
    assert_eq!(store.records().count(), 1, "one error, then the end");
    assert_eq!(store.count(), 0);
}

/// Opens a store just dropped in this process: sled's background flusher may hold the file lock a
/// moment longer (a daemon's restart is a new process, whose lock the kernel frees at exit).
fn reopen(dir: &std::path::Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(dir) {
            Ok(store) => return store,
            Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(e) => panic!("cannot reopen the store: {e}"),
        }
    }
}

#[test]
fn keys_counts_pages_events_and_messages_read_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ids: Vec<JobId> = ["a", "b", "c"]
        .iter()
        .map(|n| store.create(spec(n, Some(&format!("key-{n}"))), None, 1.0).unwrap().0.id)
        .collect();
    assert_eq!(store.count(), 3);
    assert_eq!(store.find_key("key-b").unwrap(), Some(ids[1]));
    assert_eq!(store.find_key("key-z").unwrap(), None);
    let before: Vec<JobId> = store.records_before(ids[2]).map(|r| r.unwrap().id).collect();
    assert_eq!(before, [ids[1], ids[0]], "below the id, newest first");
    let moved = store.transition(ids[0], JobState::Starting, Reason::Unspecified, 2.0, "first try", |_| {}).unwrap();
    assert_eq!(moved.message.as_deref(), Some("first try"));
    let moved = store.transition(ids[0], JobState::Running, Reason::Unspecified, 3.0, "", |_| {}).unwrap();
    assert_eq!(moved.message.as_deref(), Some("first try"), "an empty message keeps the last one");
    let note = Event { at: 4.0, kind: "note".into(), message: "hello".into() };
    store.append_event(ids[0], &note).unwrap();
    assert_eq!(store.events(ids[0]).unwrap().last(), Some(&note));
    assert!(store.flush_histogram().count() >= 4, "every write above was flushed and timed");
}

#[test]
fn what_counts_as_a_full_disk() {
    use std::io::{Error, ErrorKind};
    let io = |e: Error| sled::Error::Io(e);
    assert!(out_of_space(&io(Error::from_raw_os_error(libc::ENOSPC))));
    assert!(out_of_space(&io(Error::from_raw_os_error(libc::EDQUOT))));
    assert!(out_of_space(&io(Error::new(ErrorKind::StorageFull, "full"))));
    assert!(out_of_space(&io(Error::other("write failed: No space left on device (os error 28)"))));
    assert!(out_of_space(&io(Error::other("write failed: Disk quota exceeded"))));
    assert!(!out_of_space(&io(Error::from_raw_os_error(libc::EIO))));
    assert!(!out_of_space(&sled::Error::Unsupported("no".into())));
    assert!(!StoreError::NotFound(JobId(1)).is_unavailable());
}

#[test]
fn a_store_failed_by_an_io_error_is_reopened_at_once_and_waiters_hear_of_failures() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    runtime.block_on(async {
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.wait_failed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a healthy store has not failed");
        store.fail_with(std::io::Error::from_raw_os_error(libc::EIO));
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await.unwrap().unwrap();
    });
    assert!(store.flush().unwrap_err().is_unavailable());
    assert_eq!(store.recover(0, 100), Recovery::Recovered, "not a lack of space: no room needed");
    store.flush().unwrap();
}

#[test]
fn a_long_metric_history_stays_bounded_keeps_its_extremes_and_its_last_value_and_rewinds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (job, _) = store.create(spec("m", None), None, 1.0).unwrap();
    let n = 12_000u64;
    for step in 1..=n {
        let loss = if step == 77 {
            1e9
        } else if step == 5_555 {
            -1.0
        } else {
            1.0 / step as f64
        };
        let point = metrics::PointRef { step, at: step as f64, attempt: 1, values: &[("loss", loss)] };
        store.append_point(job.id, &point).unwrap();
    }
    let t = store.trees().unwrap();
    let raw: usize =
        t.chunks.scan_prefix(job.id.0.to_be_bytes()).values().map(|v| codec::sequence_len(&v.unwrap()).unwrap()).sum();
    let buckets = t.buckets.scan_prefix(job.id.0.to_be_bytes()).count();
    assert!(raw <= metrics::RAW_MAX && buckets <= metrics::BUCKETS_MAX, "{raw} points, {buckets} buckets");
    let all = store.metrics(job.id, 0, u64::MAX).unwrap();
    let loss = &all["loss"];
    assert!(loss.windows(2).all(|w| w[0].step < w[1].step), "in step order");
    assert_eq!(loss.last().unwrap().step, n, "the newest point is kept at full resolution");
    let high = loss.iter().map(|s| s.max.unwrap_or(s.value)).fold(f64::MIN, f64::max);
    let low = loss.iter().map(|s| s.min.unwrap_or(s.value)).fold(f64::MAX, f64::min);
    assert_eq!((high, low), (1e9, -1.0), "a folded span keeps its extremes");
    // A later attempt continues from step 10,000: what came after is replaced.
    let removed = store.rewind_metrics(job.id, 10_000).unwrap();
    assert_eq!(removed, 2_000);
    assert_eq!(store.metrics(job.id, 0, u64::MAX).unwrap()["loss"].last().unwrap().step, 10_000);
    // Survives a reopen; a removed job takes its history with it.
    drop(t);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.metrics(job.id, 9_990, 10_000).unwrap()["loss"].len(), 11);
    store.transition(job.id, JobState::Cancelled, Reason::Cancelled, 2.0, "", |_| {}).unwrap();
    store.delete(job.id).unwrap();
    assert!(store.metrics(job.id, 0, u64::MAX).unwrap().is_empty());
}

/// Writers that change one record at once each see the other's change (compare and swap, read
/// again on a conflict): no update is lost, and a transition racing updates keeps their edits.
#[test]
fn concurrent_changes_of_one_record_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let (job, _) = store.create(spec("a", None), None, 1.0).unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..50 {
                    store
                        .update_unflushed(job.id, |r| {
                            r.message = Some(format!("{}{w}", r.message.clone().unwrap_or_default()))
                        })
                        .unwrap();
                }
                if w == 0 {
                    store.transition(job.id, JobState::Starting, Reason::Unspecified, 2.0, "", |_| {}).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let record = store.get(job.id).unwrap().unwrap();
    let message = record.message.clone().unwrap_or_default();
    for w in 0..4 {
        assert_eq!(message.matches(char::from(b'0' + w)).count(), 50, "writer {w}'s updates in {message:?}");
    }
    assert_eq!(record.state(), JobState::Starting);
}
