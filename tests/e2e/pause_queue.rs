//! Pause and resume at epoch boundaries, the queue with its slots and GPUs.

use std::time::Duration;
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::{JobState, Reason};
use trainerd_tests::{events, fake_job, submit, trainer_proc_job, watch_until, Daemon};

const LIMIT: Duration = Duration::from_secs(90);

fn ended(job: &pb::Job) -> bool {
    trainerd_proto::state::is_terminal(job.state())
}

/// Pauses a running job and waits for PAUSED; returns the pause checkpoint's step.
async fn pause_when_running(client: &mut trainctl::Client, id: &str) -> u64 {
    watch_until(client, id, LIMIT, |j| j.state() == JobState::Running && j.step >= 1).await;
    let pausing = client.pause_job(pb::PauseJobRequest { id: id.into() }).await.unwrap().into_inner();
    assert_eq!(pausing.state(), JobState::Pausing);
    let paused = watch_until(client, id, LIMIT, |j| j.state() == JobState::Paused || ended(j)).await.pop().unwrap();
    assert_eq!((paused.state(), paused.reason()), (JobState::Paused, Reason::Paused), "{}", paused.message);
    paused.latest_checkpoint.expect("a pause records its checkpoint").step
}

#[tokio::test]
async fn pause_and_resume_three_times_ends_with_the_uninterrupted_weights() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.client().await;
    let reference = submit(&mut client, trainer_proc_job("reference", 4, &[])).await;
    // Every evaluation takes a second, so each pause request lands inside the epoch it was sent in.
    let paused = submit(
        &mut client,
        trainer_proc_job("paused", 4, &[("TRAINER_FAULT", "slow-eval@1"), ("TRAINER_FAULT_EVERY_ATTEMPT", "1")]),
    )
    .await;
    let mut steps = Vec::new();
    for _ in 0..3 {
        steps.push(pause_when_running(&mut client, &paused.id).await);
        let resumed = client.resume_job(pb::ResumeJobRequest { id: paused.id.clone() }).await.unwrap().into_inner();
        assert!(matches!(resumed.state(), JobState::Queued | JobState::Starting), "{:?}", resumed.state());
    }
    assert_eq!(steps, vec![20, 40, 60], "each pause ends an epoch and the next run starts the next epoch");
    let reference = watch_until(&mut client, &reference.id, LIMIT, ended).await.pop().unwrap();
    let last = watch_until(&mut client, &paused.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((last.state(), last.attempt, last.step), (JobState::Completed, 4, 80));
    assert_eq!(last.weights_sha256, reference.weights_sha256);
}

#[tokio::test]
async fn pausing_a_queued_a_completed_and_a_paused_job() {
    let daemon = Daemon::start(&["--slots", "1"]);
    let mut client = daemon.client().await;
    let first = submit(&mut client, fake_job("first", &[("FAKE_STEPS", "10")])).await;
    let queued = submit(&mut client, fake_job("queued", &[("FAKE_STEPS", "5")])).await;
    let held = client.pause_job(pb::PauseJobRequest { id: queued.id.clone() }).await.unwrap().into_inner();
    assert_eq!(held.state(), JobState::Paused, "a queued job is held");
    let err = client.pause_job(pb::PauseJobRequest { id: queued.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("is already paused"), "{}", err.message());

    watch_until(&mut client, &first.id, LIMIT, ended).await;
    let err = client.pause_job(pb::PauseJobRequest { id: first.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("is completed"), "{}", err.message());
    let err = client.resume_job(pb::ResumeJobRequest { id: first.id.clone() }).await.unwrap_err();
    assert!(err.message().contains("only a paused job can be resumed"), "{}", err.message());

    let still = client.get_job(pb::GetJobRequest { id: queued.id.clone() }).await.unwrap().into_inner();
    assert_eq!(still.state(), JobState::Paused, "a held job does not start when a slot frees");
    client.resume_job(pb::ResumeJobRequest { id: queued.id.clone() }).await.unwrap();
    let last = watch_until(&mut client, &queued.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((last.state(), last.weights_sha256.as_str()), (JobState::Completed, "fake-5-0"));
}

#[tokio::test]
async fn a_resume_whose_checkpoint_is_gone_is_refused() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.client().await;
    let job = submit(&mut client, trainer_proc_job("gone", 3, &[("TRAINER_FAULT", "slow-eval@1")])).await;
    pause_when_running(&mut client, &job.id).await;
    let paused = client.get_job(pb::GetJobRequest { id: job.id.clone() }).await.unwrap().into_inner();
    std::fs::remove_dir_all(&paused.latest_checkpoint.unwrap().path).unwrap();
    let err = client.resume_job(pb::ResumeJobRequest { id: job.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("is not started from step 0"), "{}", err.message());
    let still = client.get_job(pb::GetJobRequest { id: job.id.clone() }).await.unwrap().into_inner();
    assert_eq!(still.state(), JobState::Paused);
}

#[tokio::test]
async fn two_slots_five_jobs_never_more_than_two_at_once_started_in_order() {
    let daemon = Daemon::start(&["--slots", "2"]);
    let mut client = daemon.client().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(submit(&mut client, fake_job(&format!("j{i}"), &[("FAKE_STEPS", "8")])).await.id);
    }
    let third = client.get_job(pb::GetJobRequest { id: ids[2].clone() }).await.unwrap().into_inner();
    assert_eq!(third.queue_position, 1);
    assert!(third.waiting_for.contains("a free slot (2 of 2 busy)"), "{}", third.waiting_for);
    let (mut spans, mut admitted) = (Vec::new(), Vec::new());
    for id in &ids {
        watch_until(&mut client, id, LIMIT, ended).await;
        let events = client.list_events(pb::ListEventsRequest { id: id.clone() }).await.unwrap().into_inner().events;
        let start = events.iter().find(|e| e.message.starts_with("queued -> starting")).unwrap().at;
        let end = events.iter().find(|e| e.message.contains("-> completed")).unwrap().at;
        spans.push((start, end));
        admitted.push(events.iter().find(|e| e.kind == "admitted").unwrap().at);
    }
    for (i, (start, _)) in spans.iter().enumerate() {
        let overlapping = spans.iter().filter(|(s, e)| s <= start && start < e).count();
        assert!(overlapping <= 2, "job {i} started while {overlapping} ran: {spans:?}");
    }
    assert!(admitted.windows(2).all(|w| w[0] <= w[1]), "admitted out of order: {admitted:?}");
}

#[tokio::test]
async fn gpus_are_given_whole_and_never_twice() {
    let daemon = Daemon::start(&["--gpus", "0,1,2"]);
    let mut client = daemon.client().await;
    let mut a = fake_job("a", &[("FAKE_STEPS", "15")]);
    a.gpus = 2;
    let mut b = fake_job("b", &[("FAKE_STEPS", "5")]);
    b.gpus = 2;
    let a = submit(&mut client, a).await;
    let b = submit(&mut client, b).await;
    let running = watch_until(&mut client, &a.id, LIMIT, |j| j.state() == JobState::Running).await.pop().unwrap();
    assert_eq!(running.assigned_gpus, vec![0, 1]);
    let waiting = client.get_job(pb::GetJobRequest { id: b.id.clone() }).await.unwrap().into_inner();
    assert_eq!(waiting.state(), JobState::Queued);
    assert!(waiting.waiting_for.contains("2 GPU(s) (1 free)"), "{}", waiting.waiting_for);
    let b_running = watch_until(&mut client, &b.id, LIMIT, |j| j.state() == JobState::Running).await.pop().unwrap();
    assert_eq!(b_running.assigned_gpus, vec![0, 1], "b starts once a's GPUs are free");
    let a_done = client.get_job(pb::GetJobRequest { id: a.id.clone() }).await.unwrap().into_inner();
    assert_eq!(a_done.state(), JobState::Completed);
    let mut too_many = fake_job("c", &[]);
    too_many.gpus = 4;
    let err = client.submit_job(too_many).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("gpus: asks for 4 GPU(s); this trainerd has 3"), "{}", err.message());
    let kinds: Vec<String> = events(&mut client, &a.id).await.into_iter().map(|e| e.0).collect();
    assert!(kinds.contains(&"submitted".to_string()));
}
