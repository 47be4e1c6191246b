//! The host's user and group database, through libc (so NSS sources such as LDAP count too). Used
//! by the configuration (names to ids), the access check (who a peer is) and the start of an
//! attempt (the groups its user belongs to, which the shim passes on).

use std::ffi::{CStr, CString};

/// A user of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    pub home: std::path::PathBuf,
}

/// The groups a process of user `uid` with primary group `gid` has: the user's groups in the database
/// (with `gid` as the primary), or `gid` alone for a uid the database does not know.
pub fn groups_for(uid: u32, gid: u32) -> Vec<u32> {
    match user_by_uid(uid) {
        Some(user) => groups_of(&User { gid, ..user }),
        None => vec![gid],
    }
}

/// A user by name, or by number when `name` is all digits.
pub fn user(name: &str) -> Option<User> {
    if let Ok(uid) = name.parse::<u32>() {
        return user_by_uid(uid);
    }
    let name = CString::new(name).ok()?;
    passwd(|pwd, buf, result| {
        // SAFETY: every pointer is valid for the call; getpwnam_r writes only into pwd, buf and result.
        unsafe { libc::getpwnam_r(name.as_ptr(), pwd, buf.as_mut_ptr(), buf.len(), result) }
    })
}

/// The user with this uid, when the database knows one.
pub fn user_by_uid(uid: u32) -> Option<User> {
    passwd(|pwd, buf, result| {
        // SAFETY: as in `user`.
        unsafe { libc::getpwuid_r(uid, pwd, buf.as_mut_ptr(), buf.len(), result) }
    })
}

fn passwd(
    lookup: impl Fn(&mut libc::passwd, &mut Vec<libc::c_char>, &mut *mut libc::passwd) -> libc::c_int,
) -> Option<User> {
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: passwd is plain data; all-zero is a valid value to be overwritten.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result = std::ptr::null_mut();
        match lookup(&mut pwd, &mut buf, &mut result) {
            0 if result.is_null() => return None,
            // SAFETY: on success pw_name points into `buf`, NUL-terminated.
            0 => {
                let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
                // SAFETY: as pw_name.
                let home = unsafe { CStr::from_ptr(pwd.pw_dir) }.to_string_lossy().into_owned();
                return Some(User { name, uid: pwd.pw_uid, gid: pwd.pw_gid, home: home.into() });
            }
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            _ => return None,
        }
    }
}

/// A group's id by name, or the number itself when `name` is all digits.
pub fn group(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let name = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: group is plain data; all-zero is a valid value to be overwritten.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call.
        let rc = unsafe { libc::getgrnam_r(name.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut result) };
        match rc {
            0 if result.is_null() => return None,
            0 => return Some(grp.gr_gid),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            _ => return None,
        }
    }
}

/// The groups `user` belongs to, its primary group first (what `initgroups` would set).
pub fn groups_of(user: &User) -> Vec<u32> {
    let Ok(name) = CString::new(user.name.as_str()) else { return vec![user.gid] };
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut count = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `count` entries; getgrouplist writes at most that many and
        // sets `count` to the number it needs.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), user.gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        if groups.len() >= 65_536 {
            return vec![user.gid];
        }
        groups.resize((count.max(0) as usize).max(groups.len() * 2), 0);
    }
}

/// A process's supplementary groups, from the `Groups:` line of /proc/PID/status: what the kernel
/// itself checks file access against.
pub fn process_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        })
        .unwrap_or_default()
}

/// A uid with its name when the database knows one: `uid 1000 (alice)`.
pub fn describe_uid(uid: u32) -> String {
    match user_by_uid(uid) {
        Some(user) => format!("uid {uid} ({})", user.name),
        None => format!("uid {uid}"),
    }
}

/// trainerd's own effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_nobody_resolve_by_name_and_number() {
        let root = user("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(user("0").unwrap().name, "root");
        assert_eq!(group("root"), Some(0));
        assert_eq!(group("4242"), Some(4242));
        assert_eq!(user("no-such-user-here"), None);
        assert_eq!(group("no-such-group-here"), None);
        assert!(groups_of(&root).contains(&0));
        assert_eq!(describe_uid(0), "uid 0 (root)");
    }
}
