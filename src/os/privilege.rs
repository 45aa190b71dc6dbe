//! Least privilege for the running daemon: every thread ends up with the capabilities of a
//! [`Plan`] (CAP_NET_ADMIN, perhaps CAP_NET_BIND_SERVICE) and nothing else, in its effective,
//! permitted, inheritable, ambient and bounding sets; with no-new-privs set; optionally as an
//! unprivileged user (its group, no supplementary groups); and the process is not dumpable.
//!
//! # Why per thread, and in which order
//!
//! On Linux, credentials (uids, gids, capability sets, securebits) and the no-new-privs flag
//! belong to each *thread*: `capset(2)`, `prctl(PR_CAPBSET_DROP)` and the raw `setresuid(2)`
//! change only the calling thread, and a new thread starts with a copy of its creator's. (glibc's
//! `setresuid` does reach every thread, by signalling each one; that is exactly what must *not*
//! happen here, see below.) So a drop done by the main thread alone would leave the data plane,
//! the crypto workers and tokio's blocking pool holding full root. The daemon therefore does it
//! in two moves:
//!
//! 1. [`publish`], first thing in `tandem up` / `tandem -f IFNAME`, while the process has a
//!    single thread: the plan is checked by applying it on a scratch thread (so an impossible
//!    plan fails the start before anything exists), then made known process-wide. From then on
//!    **every thread other than the main one drops as it starts** ([`enter_thread`]): the data
//!    plane thread and the crypto workers call it first thing, and the tokio runtime calls it
//!    from `on_thread_start` for each blocking-pool thread, before that thread runs any task.
//!    These threads change only their own credentials (raw, per-thread syscalls through
//!    `rustix`), so the main thread keeps root meanwhile.
//! 2. [`finish`], once setup is done (interface, addresses, routes, UAPI socket, DNS and the
//!    PostUp hooks, which run with full privileges as wg-quick runs them): the main thread drops
//!    too, and then *checks* every thread in `/proc/self/task/*/status`, refusing to run on if
//!    any still holds more than the plan. After this, threads can only be created by dropped
//!    threads, so they are born dropped (and [`enter_thread`] finds nothing left to do).
//!
//! Within one thread the order matters: the bounding set first (dropping needs CAP_SETPCAP),
//! then the user switch under PR_SET_KEEPCAPS (needs CAP_SETUID/CAP_SETGID; KEEPCAPS keeps the
//! permitted set across the uid change, which clears the effective set), then `capset` to the
//! plan in all three sets, then the ambient set (which needs the capability in both permitted
//! and inheritable), then no-new-privs and dumpable 0.
//!
//! The ambient set is what lets programs the daemon starts after the drop (PreDown/PostDown
//! hooks, `resolvconf -d`, `resolvectl revert`) keep CAP_NET_ADMIN even as an unprivileged
//! user; no-new-privs still keeps them from gaining anything through setuid or file
//! capabilities, and the bounding set caps what a root-owned child could get.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::process::{Gid, Uid};
use rustix::thread::{self as rt, CapabilitySet, CapabilitySets};

/// CAP_NET_ADMIN's bit: the TUN device, addresses, routes, rules, SO_MARK, net sysctls.
pub const CAP_NET_ADMIN: u64 = 1 << 12;
/// CAP_NET_BIND_SERVICE's bit: binding a UDP port below 1024.
pub const CAP_NET_BIND_SERVICE: u64 = 1 << 10;

/// How long [`finish`] waits for threads that were created but have not run their
/// [`enter_thread`] yet, before it calls the drop failed.
const VERIFY_PATIENCE: Duration = Duration::from_secs(2);

/// An unprivileged account to run as (`tandem up --user NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl Account {
    /// Looks `name` up in the user database (NSS: /etc/passwd and the like).
    pub fn lookup(name: &str) -> Result<Account, PrivilegeError> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => Ok(Account {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }),
            Ok(None) => Err(PrivilegeError::NoSuchUser(name.to_owned())),
            Err(e) => Err(PrivilegeError::Lookup(name.to_owned(), e.into())),
        }
    }
}

/// What every thread keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Capability bits ([`CAP_NET_ADMIN`], ...) kept in every set; all others go.
    pub keep: u64,
    /// The account to switch to, if any (else the uids stay as they are).
    pub user: Option<Account>,
}

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error("cannot look up user {0:?}")]
    Lookup(String, #[source] io::Error),
    #[error(
        "this process lacks {}, which the daemon needs (run it as root, or give it the \
         capability, e.g. systemd's AmbientCapabilities=)",
        names(*.0)
    )]
    Missing(u64),
    #[error("{step} failed")]
    Step {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("a different privilege plan is already in force")]
    Conflict,
    #[error("cannot read the threads' credentials in /proc/self/task")]
    Proc(#[source] io::Error),
    #[error("after the drop, threads still hold more than they should: {0}")]
    Verify(String),
    #[error("the privilege check thread could not be started or ended abnormally")]
    Scratch,
}

fn step(step: &'static str) -> impl FnOnce(rustix::io::Errno) -> PrivilegeError {
    move |e| PrivilegeError::Step {
        step,
        source: e.into(),
    }
}

static PLAN: OnceLock<Plan> = OnceLock::new();

thread_local! {
    /// Whether this thread has applied the plan.
    static APPLIED: Cell<bool> = const { Cell::new(false) };
}

/// The plan in force, once [`publish`]ed.
pub fn plan() -> Option<&'static Plan> {
    PLAN.get()
}

/// Checks `plan` (by applying it on a scratch thread) and makes it the process's: from now on
/// [`enter_thread`] applies it. Call it while the main thread is the only one.
pub fn publish(plan: Plan) -> Result<(), PrivilegeError> {
    let have = rt::capabilities(None)
        .map_err(step("reading the capabilities"))?
        .permitted
        .bits();
    if have & plan.keep != plan.keep {
        return Err(PrivilegeError::Missing(plan.keep & !have));
    }
    // A thread of its own, so that the main thread keeps its privileges for the setup.
    let checked = std::thread::Builder::new()
        .name("tandem-privcheck".to_owned())
        .spawn({
            let plan = plan.clone();
            move || apply(&plan)
        })
        .map_err(|_| PrivilegeError::Scratch)?
        .join()
        .map_err(|_| PrivilegeError::Scratch)?;
    checked?;
    match PLAN.get() {
        Some(existing) if *existing == plan => Ok(()),
        Some(_) => Err(PrivilegeError::Conflict),
        None => PLAN.set(plan).map_err(|_| PrivilegeError::Conflict),
    }
}

/// Applies the published plan to the calling thread, if there is one and the thread has not
/// done so yet. Threads tandem starts call it first thing.
pub fn enter_thread() -> Result<(), PrivilegeError> {
    let Some(plan) = PLAN.get() else {
        return Ok(());
    };
    if APPLIED.with(Cell::get) {
        return Ok(());
    }
    apply(plan)?;
    APPLIED.with(|a| a.set(true));
    Ok(())
}

/// For tokio's `on_thread_start`, which cannot return an error: a thread that cannot drop
/// must not run a single task, so the process stops here. [`publish`] applied the same plan
/// to a thread cloned from the same credentials, so this cannot fail short of a kernel
/// refusing what it allowed a moment before.
pub fn on_thread_start() {
    if let Err(e) = enter_thread() {
        tracing::error!("a new thread cannot drop its privileges, stopping: {e}");
        eprintln!("error: a new thread cannot drop its privileges: {e}");
        std::process::abort();
    }
}

/// The main thread's drop, once setup is done; then every thread of the process is checked.
/// Without a published plan, nothing happens.
pub fn finish() -> Result<(), PrivilegeError> {
    let Some(plan) = PLAN.get() else {
        return Ok(());
    };
    enter_thread()?;
    verify(plan)
}

/// Applies `plan` to the calling thread (see the module notes for the order).
fn apply(plan: &Plan) -> Result<(), PrivilegeError> {
    let keep = CapabilitySet::from_bits_retain(plan.keep);
    // 1. The bounding set: every capability the kernel knows (PR_CAPBSET_READ answers EINVAL
    // past the last one, so capabilities newer than this code go too).
    for bit in 0..64u32 {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if keep.contains(cap) {
            continue;
        }
        match rt::capability_is_in_bounding_set(cap) {
            Ok(true) => rt::remove_capability_from_bounding_set(cap)
                .map_err(step("dropping from the bounding set (needs CAP_SETPCAP)"))?,
            Ok(false) => {}
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(step("reading the bounding set")(e)),
        }
    }
    // 2. The user, this thread only. Skipped when the thread already is that user: a thread
    // created by one that dropped is born so, and could not call setgroups any more.
    if let Some(user) = &plan.user {
        let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
        let current = (
            rustix::process::getuid(),
            rustix::process::geteuid(),
            rustix::process::getgid(),
            rustix::process::getegid(),
        );
        if current != (uid, uid, gid, gid) {
            rt::set_keep_capabilities(true).map_err(step("PR_SET_KEEPCAPS"))?;
            rt::set_thread_groups(&[]).map_err(step("clearing the supplementary groups"))?;
            rt::set_thread_res_gid(gid, gid, gid).map_err(step("setresgid"))?;
            rt::set_thread_res_uid(uid, uid, uid).map_err(step("setresuid"))?;
            rt::set_keep_capabilities(false).map_err(step("PR_SET_KEEPCAPS"))?;
        }
    }
    // 3. Effective, permitted and inheritable: the plan's and nothing else.
    rt::set_capabilities(
        None,
        CapabilitySets {
            effective: keep,
            permitted: keep,
            inheritable: keep,
        },
    )
    .map_err(step("capset"))?;
    // 4. Ambient: the kept capabilities survive exec into the hooks and DNS helpers.
    rt::clear_ambient_capability_set().map_err(step("clearing the ambient set"))?;
    for bit in 0..64u32 {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if keep.contains(cap) {
            rt::configure_capability_in_ambient_set(cap, true)
                .map_err(step("raising an ambient capability"))?;
        }
    }
    // 5. Nothing gained through setuid or file capabilities, by this thread or its children.
    rt::set_no_new_privs(true).map_err(step("PR_SET_NO_NEW_PRIVS"))?;
    // 6. No core dumps, no ptrace by the same user, /proc/PID owned by root (process-wide).
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(step("PR_SET_DUMPABLE"))?;
    Ok(())
}

/// One thread's credentials as `/proc/PID/task/TID/status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThreadStatus {
    pub name: String,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// Real, effective, saved and filesystem ids.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl ThreadStatus {
    /// Parses a `status` file; None if a field is missing or malformed.
    pub fn parse(text: &str) -> Option<ThreadStatus> {
        let fields: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let hex = |k: &str| u64::from_str_radix(fields.get(k)?, 16).ok();
        let ids = |k: &str| -> Option<[u32; 4]> {
            let v: Vec<u32> = fields
                .get(k)?
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            v.try_into().ok()
        };
        Some(ThreadStatus {
            name: fields.get("Name")?.to_string(),
            cap_inh: hex("CapInh")?,
            cap_prm: hex("CapPrm")?,
            cap_eff: hex("CapEff")?,
            cap_bnd: hex("CapBnd")?,
            cap_amb: hex("CapAmb")?,
            no_new_privs: *fields.get("NoNewPrivs")? == "1",
            uids: ids("Uid")?,
            gids: ids("Gid")?,
            groups: fields
                .get("Groups")?
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?,
        })
    }

    /// What is wrong with this thread under `plan` (`uid`/`gid`: what every thread must have
    /// when the plan names no user), or None.
    pub fn problem(&self, plan: &Plan, uid: u32, gid: u32) -> Option<String> {
        let keep = plan.keep;
        let mut wrong = Vec::new();
        for (set, value) in [
            ("CapEff", self.cap_eff),
            ("CapPrm", self.cap_prm),
            ("CapInh", self.cap_inh),
            ("CapBnd", self.cap_bnd),
            ("CapAmb", self.cap_amb),
        ] {
            if value != keep {
                wrong.push(format!("{set} {value:016x}"));
            }
        }
        if !self.no_new_privs {
            wrong.push("NoNewPrivs 0".to_owned());
        }
        let (uid, gid) = plan.user.as_ref().map_or((uid, gid), |u| (u.uid, u.gid));
        if self.uids != [uid; 4] {
            wrong.push(format!("Uid {:?}", self.uids));
        }
        if self.gids != [gid; 4] {
            wrong.push(format!("Gid {:?}", self.gids));
        }
        if plan.user.is_some() && !self.groups.is_empty() {
            wrong.push(format!("Groups {:?}", self.groups));
        }
        (!wrong.is_empty()).then(|| format!("{} ({})", self.name, wrong.join(", ")))
    }
}

/// Every thread of the calling process: (thread id, status).
pub fn threads() -> io::Result<Vec<(u32, ThreadStatus)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread that ended since the listing has nothing left to check.
        let Ok(text) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let status = ThreadStatus::parse(&text).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "unexpected status format")
        })?;
        out.push((tid, status));
    }
    Ok(out)
}

/// Checks every thread against `plan`, giving threads that were just created (and may not
/// have reached their [`enter_thread`] yet) a moment.
fn verify(plan: &Plan) -> Result<(), PrivilegeError> {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let deadline = Instant::now() + VERIFY_PATIENCE;
    loop {
        let problems: Vec<String> = threads()
            .map_err(PrivilegeError::Proc)?
            .iter()
            .filter_map(|(tid, s)| s.problem(plan, uid, gid).map(|p| format!("{tid} {p}")))
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(PrivilegeError::Verify(problems.join("; ")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `CAP_NET_ADMIN, CAP_NET_BIND_SERVICE`-style names of the bits in `caps`.
pub fn names(caps: u64) -> String {
    let known = [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"),
    ];
    let mut out: Vec<String> = Vec::new();
    for bit in 0..64 {
        let cap = 1u64 << bit;
        if caps & cap != 0 {
            out.push(
                known
                    .iter()
                    .find(|(c, _)| *c == cap)
                    .map_or_else(|| format!("capability {bit}"), |(_, n)| (*n).to_owned()),
            );
        }
    }
    if out.is_empty() {
        "no capability".to_owned()
    } else {
        out.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\ttandem-data\nUmask:\t0022\nState:\tS (sleeping)\n\
        Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nGroups:\t\n\
        CapInh:\t0000000000001000\nCapPrm:\t0000000000001000\nCapEff:\t0000000000001000\n\
        CapBnd:\t0000000000001000\nCapAmb:\t0000000000001000\nNoNewPrivs:\t1\n";

    fn nobody() -> Plan {
        Plan {
            keep: CAP_NET_ADMIN,
            user: Some(Account {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534,
            }),
        }
    }

    #[test]
    fn status_files_parse() {
        let s = ThreadStatus::parse(STATUS).expect("parses");
        assert_eq!(s.name, "tandem-data");
        assert_eq!((s.cap_eff, s.cap_bnd, s.cap_amb), (0x1000, 0x1000, 0x1000));
        assert!(s.no_new_privs);
        assert_eq!(s.uids, [65534; 4]);
        assert!(s.groups.is_empty());
        assert_eq!(s.problem(&nobody(), 0, 0), None);
        assert!(ThreadStatus::parse("Name:\tx\n").is_none());
    }

    #[test]
    fn a_thread_with_more_is_named_with_what_it_holds() {
        let root = STATUS
            .replace("CapBnd:\t0000000000001000", "CapBnd:\t000001ffffffffff")
            .replace("NoNewPrivs:\t1", "NoNewPrivs:\t0");
        let s = ThreadStatus::parse(&root).expect("parses");
        let problem = s.problem(&nobody(), 0, 0).expect("a problem");
        assert!(problem.contains("tandem-data"), "{problem}");
        assert!(problem.contains("CapBnd 000001ffffffffff"), "{problem}");
        assert!(problem.contains("NoNewPrivs 0"), "{problem}");
        // Without a user, the uids must be the process's own.
        let stay = Plan {
            keep: CAP_NET_ADMIN,
            user: None,
        };
        let s = ThreadStatus::parse(STATUS).expect("parses");
        assert!(
            s.problem(&stay, 0, 0)
                .expect("uid 0 expected")
                .contains("Uid")
        );
        assert_eq!(s.problem(&stay, 65534, 65534), None);
    }

    #[test]
    fn capability_names() {
        assert_eq!(names(CAP_NET_ADMIN), "CAP_NET_ADMIN");
        assert_eq!(
            names(CAP_NET_ADMIN | CAP_NET_BIND_SERVICE),
            "CAP_NET_BIND_SERVICE, CAP_NET_ADMIN"
        );
        assert_eq!(names(1 << 21), "capability 21");
        assert_eq!(names(0), "no capability");
    }

    #[test]
    fn an_unknown_user_is_refused_by_name() {
        let e = Account::lookup("tandem-no-such-user-xyz").expect_err("no such user");
        assert!(e.to_string().contains("tandem-no-such-user-xyz"), "{e}");
        let root = Account::lookup("root").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
    }
}
