//! Who may use trainerd, and as whom a job runs. Both interfaces ask here: the gRPC interceptor
//! (`api::grpc`) and the control socket (`api::jsonl`). Denials are written to the audit log
//! (target `trainerd::audit`), which is what an administrator greps after an incident.
//!
//! The rules, in order:
//! - on a unix socket the kernel names the peer (SO_PEERCRED): root, trainerd's own user, the users
//!   in `allow-users`, and members of `allow-groups` or of `socket-group` (primary or supplementary
//!   group) are let in; everyone else gets PERMISSION_DENIED;
//! - on TCP there is no peer identity, so every request must carry `authorization: Bearer TOKEN`;
//! - when trainerd runs as root, a job runs as `job-user` if one is configured, else as the local
//!   user who submitted it. A TCP submission has no local user, so without `job-user` it is refused:
//!   nothing runs as root unless root asked for it.

use crate::store::records::RunAs;
use crate::users;

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A local process on a unix socket, as the kernel reports it.
    Local { uid: u32, gid: u32, pid: Option<i32> },
    /// A TCP client that presented the bearer token.
    Remote { addr: Option<std::net::SocketAddr> },
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Local { uid, .. } => f.write_str(&users::describe_uid(*uid)),
            Caller::Remote { addr: Some(addr) } => write!(f, "a TCP client at {addr}"),
            Caller::Remote { addr: None } => f.write_str("a TCP client"),
        }
    }
}

/// A secret that never appears in `Debug` output (check-config prints the configuration).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The access rules, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct Access {
    /// trainerd's own effective uid.
    pub own_uid: u32,
    pub users: Vec<u32>,
    pub groups: Vec<u32>,
    /// What a TCP client must present.
    pub token: Option<Secret>,
    /// Whom jobs run as when trainerd is root, whoever submitted them.
    pub job_user: Option<RunAs>,
}

impl Access {
    /// Lets a local peer in, or says why not (and writes the audit line).
    pub fn check_local(&self, uid: u32, gid: u32, pid: Option<i32>, socket: &str) -> Result<(), String> {
        if uid == 0 || uid == self.own_uid || self.users.contains(&uid) || self.groups.contains(&gid) {
            return Ok(());
        }
        if let Some(pid) = pid {
            if users::process_groups(pid).iter().any(|g| self.groups.contains(g)) {
                return Ok(());
            }
        }
        let who = users::describe_uid(uid);
        tracing::warn!(target: "trainerd::audit", uid, gid, pid, socket, "denied {who}: not an allowed user or group");
        Err(format!(
            "{who} may not use this trainerd; an administrator can add the user to allow-users, or the user to \
             one of the groups in allow-groups or socket-group, in trainerd's configuration"
        ))
    }

    /// Checks a TCP request's `authorization` header (and writes the audit line on a denial).
    pub fn check_token(&self, header: Option<&[u8]>, peer: Option<std::net::SocketAddr>) -> Result<(), String> {
        let Some(token) = &self.token else {
            return Err("this trainerd accepts no TCP requests (no token-file is configured)".into());
        };
        let presented = header.and_then(|h| h.strip_prefix(b"Bearer ".as_slice()));
        match presented {
            Some(p) if constant_time_eq(p, token.0.as_bytes()) => Ok(()),
            Some(_) => {
                tracing::warn!(target: "trainerd::audit", ?peer, "denied a TCP client: wrong bearer token");
                Err("the bearer token is wrong".into())
            }
            None => {
                tracing::warn!(target: "trainerd::audit", ?peer, "denied a TCP client: no bearer token");
                Err("send `authorization: Bearer TOKEN` (trainctl --token-file FILE)".into())
            }
        }
    }

    /// Whom a job `caller` submits runs as. `None`: as trainerd itself (trainerd is not root, so it
    /// could not run it as anyone else).
    pub fn run_as(&self, caller: &Caller) -> Result<Option<RunAs>, String> {
        if self.own_uid != 0 {
            return Ok(None);
        }
        if let Some(user) = self.job_user {
            return Ok(Some(user));
        }
        match caller {
            Caller::Local { uid, gid, .. } => Ok(Some(RunAs { uid: *uid, gid: *gid })),
            Caller::Remote { .. } => Err("a job submitted over TCP has no local user to run as, and trainerd runs \
                 as root; set job-user in trainerd's configuration, or submit on the unix socket"
                .into()),
        }
    }
}

/// Compares without an early exit, so the time taken says nothing about where a guess went wrong.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access {
            own_uid: 0,
            users: vec![1000],
            groups: vec![500],
            token: Some(Secret("s3cret-token".into())),
            job_user: None,
        }
    }

    #[test]
    fn local_peers_are_let_in_by_user_or_group_and_others_are_told_what_to_ask_for() {
        let a = access();
        assert!(a.check_local(0, 0, None, "s").is_ok());
        assert!(a.check_local(1000, 1000, None, "s").is_ok());
        assert!(a.check_local(2000, 500, None, "s").is_ok());
        let err = a.check_local(2000, 2000, None, "s").unwrap_err();
        assert!(err.starts_with("uid 2000 may not use this trainerd") && err.contains("allow-users"), "{err}");
    }

    #[test]
    fn root_is_let_in_whoever_trainerd_runs_as_and_so_is_trainerds_own_user() {
        let a = Access { own_uid: 1000, users: vec![], groups: vec![], ..access() };
        assert!(a.check_local(0, 0, None, "s").is_ok(), "root");
        assert!(a.check_local(1000, 1000, None, "s").is_ok(), "trainerd's own user");
        assert!(a.check_local(1001, 1000, None, "s").is_err());
    }

    #[test]
    fn a_supplementary_group_of_the_peer_process_lets_it_in() {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: playing another user with supplementary groups needs root");
            return;
        }
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("1000");
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let groups = [4242 as libc::gid_t];
                if libc::setgroups(1, groups.as_ptr()) != 0 || libc::setgid(2000) != 0 || libc::setuid(2000) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let pid = Some(child.id() as i32);
        let member = Access { groups: vec![4242], ..access() };
        let outsider = Access { groups: vec![4243], ..access() };
        let (allowed, denied) = (member.check_local(2000, 2000, pid, "s"), outsider.check_local(2000, 2000, pid, "s"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(allowed.is_ok(), "a member by a supplementary group: {allowed:?}");
        assert!(denied.is_err());
    }

    #[test]
    fn callers_and_secrets_in_words() {
        let remote: std::net::SocketAddr = "127.0.0.1:7070".parse().unwrap();
        assert_eq!(Caller::Remote { addr: Some(remote) }.to_string(), "a TCP client at 127.0.0.1:7070");
        assert_eq!(Caller::Remote { addr: None }.to_string(), "a TCP client");
        assert_eq!(Caller::Local { uid: 0, gid: 0, pid: None }.to_string(), users::describe_uid(0));
        assert_eq!(format!("{:?}", Secret("s3cret".into())), "Secret(***)", "a secret never shows");
    }

    #[test]
    fn tokens_must_match_exactly() {
        let a = access();
        assert!(a.check_token(Some(b"Bearer s3cret-token"), None).is_ok());
        assert_eq!(a.check_token(Some(b"Bearer s3cret-tokem"), None).unwrap_err(), "the bearer token is wrong");
        assert_eq!(a.check_token(Some(b"Bearer s3cret-token2"), None).unwrap_err(), "the bearer token is wrong");
        // Two differences that would cancel out if they were xor-ed together rather than or-ed.
        assert!(constant_time_eq(b"ab", b"ab") && !constant_time_eq(b"ab", b"ba"));
        assert!(a.check_token(None, None).unwrap_err().contains("--token-file"));
        let none = Access { token: None, ..access() };
        assert!(none.check_token(Some(b"Bearer s3cret-token"), None).is_err());
    }

    #[test]
    fn jobs_run_as_the_submitter_or_the_job_user_and_never_as_root_for_a_tcp_client() {
        let a = access();
        let alice = Caller::Local { uid: 1000, gid: 1000, pid: None };
        assert_eq!(a.run_as(&alice), Ok(Some(RunAs { uid: 1000, gid: 1000 })));
        assert!(a.run_as(&Caller::Remote { addr: None }).unwrap_err().contains("set job-user"));
        let fixed = Access { job_user: Some(RunAs { uid: 7, gid: 8 }), ..access() };
        assert_eq!(fixed.run_as(&Caller::Remote { addr: None }), Ok(Some(RunAs { uid: 7, gid: 8 })));
        let unprivileged = Access { own_uid: 1000, ..access() };
        assert_eq!(unprivileged.run_as(&alice), Ok(None));
    }
}
