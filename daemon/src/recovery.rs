//! Brings a failed store back without a restart. When a write fails (a full disk), the store refuses
//! further writes (see `store::Store`); this task wakes on that failure, then once a second checks the
//! state dir's free space and reopens the store as soon as the reserve is free again. It reports each
//! step in systemd's STATUS, and tells the Supervisor when the store is writable again, which tells
//! every job actor to record what it held.
//!
//! A reopen that fails with room to spare is marked unrecoverable in the store's failure; the
//! Supervisor then stops feeding systemd's watchdog, so systemd restarts trainerd.

use crate::shared::Shared;
use crate::store::Recovery;
use crate::supervisor::SupervisorMsg;
use ractor::ActorRef;
use std::sync::Arc;
use std::time::Duration;

/// How often a failed store is looked at.
const EVERY: Duration = Duration::from_secs(1);

/// Runs for trainerd's life.
pub async fn run(shared: Arc<Shared>, supervisor: ActorRef<SupervisorMsg>) {
    loop {
        shared.store.wait_failed().await;
        let cause = shared.store.failure().map(|f| f.cause).unwrap_or_default();
        shared
            .notifier
            .notify(&format!("STATUS=degraded: the state store cannot write ({cause}); new jobs are refused"));
        let mut said = String::new();
        loop {
            tokio::time::sleep(EVERY).await;
            let (store, config) = (shared.store.clone(), shared.config());
            let attempt = crate::blocking::run("reopening the store", Duration::from_secs(60), move || {
                let free = crate::disk::free_bytes(&config.state_dir).unwrap_or(0);
                store.recover(free, config.disk_reserve)
            })
            .await;
            match attempt {
                Ok(Recovery::Recovered) | Ok(Recovery::Healthy) => {
                    shared.notifier.notify("STATUS=the state store was reopened and accepts writes again");
                    let _ = supervisor.cast(SupervisorMsg::StoreRecovered);
                    break;
                }
                Ok(Recovery::Waiting(why)) if why != said => {
                    tracing::warn!("the state store is not writable yet: {why}");
                    shared.notifier.notify(&format!("STATUS=degraded: the state store cannot write; {why}"));
                    said = why;
                }
                Ok(Recovery::Waiting(_)) => {}
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }
}
