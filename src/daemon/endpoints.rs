//! Endpoint names that never take the interface down.
//!
//! A config may give a peer's endpoint as `dns.name:port`. The daemon looks every name up
//! once before it configures the device (`settings::resolve`); a name that does not resolve
//! then leaves the peer without an endpoint (or, on a reload, with the one it has) instead of
//! failing. From then on the [`Resolver`] task, one per running config, follows the names:
//!
//! - A name that does not resolve is tried again after 1 s, 2 s, 4 s ... up to every 60 s
//!   ([`Backoff`]), so a daemon started before DNS works gets its endpoints when DNS comes.
//! - A peer whose endpoint came from a name and that has had no handshake for 135 s is looked
//!   up again ([`STALE_AFTER`], what wireguard-tools' `reresolve-dns.sh` does from cron), at
//!   most every 30 s ([`RECHECK`]), so a dynamic-DNS peer that moves is followed.
//! - A looked-up address reaches the device only when it differs from what the name gave last
//!   time: an address learned by roaming (an authenticated packet from elsewhere) is newer
//!   than a name that still says the same thing, and stays.
//! - Logs say when a name starts failing, resolves again or moves, never once per try.
//!
//! The address goes through the one reconciler: `ControlSender::set_endpoint`, which the data
//! plane turns into `SetRequest::update_endpoint` (update_only: a peer removed meanwhile is
//! not brought back) and plans like any other change. Lookups run on tokio's blocking pool
//! with a timeout, so neither the data plane nor the main loop ever waits for DNS.
//!
//! The schedule ([`Name`]) is pure, with time as an argument, so its rules are unit-tested in
//! virtual time; the task around it only sleeps, looks up and sends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::{Id, JoinSet};
use tokio::time::Instant;

use crate::config::{Config, EndpointSpec};
use crate::driver::ControlSender;
use crate::proto::PublicKey;
use crate::reconcile::Snapshot;

/// How long one lookup may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A peer without a handshake for this long has its name looked up again
/// (wireguard-tools' `reresolve-dns.sh`: REJECT_AFTER_TIME minus the 45 s it allows).
pub const STALE_AFTER: Duration = Duration::from_secs(135);

/// How often a stale peer's name is looked up again (the cron period `reresolve-dns.sh`
/// suggests).
pub const RECHECK: Duration = Duration::from_secs(30);

/// The first retry of a failing name, doubled after each failure up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// For tests only: milliseconds to use instead of [`STALE_AFTER`] (and as [`RECHECK`] when
/// shorter), so an end-to-end test sees a moved peer followed in seconds. Not a setting:
/// undocumented for users, and ignored unless it parses as a positive number.
pub const TEST_STALE_ENV: &str = "TANDEM_TEST_RERESOLVE_MS";

/// Why a name gave no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Lookup(std::io::Error),
    #[error("the name has no addresses")]
    NoAddress,
}

/// Looks `spec` up through the system resolver (on tokio's blocking pool, bounded by
/// [`RESOLVE_TIMEOUT`]); the first address it gives, as `wg` takes.
pub async fn lookup(spec: &EndpointSpec) -> Result<SocketAddr, ResolveError> {
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(spec.to_string()))
        .await
        .map_err(|_| ResolveError::Timeout(RESOLVE_TIMEOUT))?
        .map_err(ResolveError::Lookup)?;
    found.into_iter().next().ok_or(ResolveError::NoAddress)
}

/// The resolver's intervals: [`STALE_AFTER`] and [`RECHECK`], or shorter ones in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub stale_after: Duration,
    pub recheck: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            stale_after: STALE_AFTER,
            recheck: RECHECK,
        }
    }
}

impl Timing {
    /// The default, unless [`TEST_STALE_ENV`] asks for a shorter stale interval.
    pub fn from_env() -> Timing {
        Timing::with_override(std::env::var(TEST_STALE_ENV).ok().as_deref())
    }

    fn with_override(ms: Option<&str>) -> Timing {
        match ms.and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(ms) if ms > 0 => {
                let stale_after = Duration::from_millis(ms);
                Timing {
                    stale_after,
                    recheck: RECHECK.min(stale_after),
                }
            }
            _ => Timing::default(),
        }
    }
}

/// Retries of a failing name: 1 s, 2 s, 4 s ... then every 60 s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Counts one more failure; the wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        // 2^6 s is already past the cap; the shift stays small.
        let delay = FIRST_RETRY
            .saturating_mul(1 << self.failures.min(6))
            .min(MAX_RETRY);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What the running device says about a named peer when its name is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// The latest handshake was this long ago.
    Ago(Duration),
    /// None since the peer was added (or since the daemon started).
    Never,
    /// The peer is not on the device (removed over UAPI): nothing to update.
    NoPeer,
}

/// A change worth one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The name resolves again after failing; `pushed` when that changed the endpoint.
    Resolved { addr: SocketAddr, pushed: bool },
    /// The name stopped resolving (logged once; the retries are quiet).
    Failing { error: String },
    /// The name now gives another address, which was pushed.
    Moved { from: SocketAddr, to: SocketAddr },
}

/// What one lookup's result asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// An address to give the peer.
    pub push: Option<SocketAddr>,
    pub event: Option<Event>,
}

/// One peer's endpoint name and its schedule. Times are offsets from the resolver's start.
#[derive(Debug, Clone)]
pub struct Name {
    pub public_key: PublicKey,
    pub spec: EndpointSpec,
    /// How logs name the peer (its name or key fingerprint, never the key).
    pub label: String,
    /// What the name gave last time (pushed, or configured at start or reload).
    last: Option<SocketAddr>,
    failing: bool,
    backoff: Backoff,
    /// When the name is looked at next.
    due: Duration,
    in_flight: bool,
}

impl Name {
    /// A name that resolved to `addr` when the config was applied: looked at again once the
    /// peer could have gone stale.
    pub fn resolved(seed: Seed, addr: SocketAddr, now: Duration, timing: Timing) -> Name {
        Name {
            public_key: seed.public_key,
            spec: seed.spec,
            label: seed.label,
            last: Some(addr),
            failing: false,
            backoff: Backoff::default(),
            due: now + timing.stale_after,
            in_flight: false,
        }
    }

    /// A name that did not resolve when the config was applied (already logged then);
    /// `last` is what it gave before, if anything (a reload keeps the peer's address).
    pub fn failing(seed: Seed, last: Option<SocketAddr>, now: Duration) -> Name {
        let mut backoff = Backoff::default();
        Name {
            public_key: seed.public_key,
            spec: seed.spec,
            label: seed.label,
            last,
            failing: true,
            due: now + backoff.next_delay(),
            backoff,
            in_flight: false,
        }
    }

    pub fn due(&self) -> Duration {
        self.due
    }

    pub fn is_failing(&self) -> bool {
        self.failing
    }

    pub fn last(&self) -> Option<SocketAddr> {
        self.last
    }

    /// The name is due at `now`: whether to look it up now. A failing name always is; a
    /// resolved one when its peer has had no handshake for `stale_after` (else it waits
    /// until the peer would be stale).
    pub fn check(&mut self, now: Duration, handshake: Handshake, timing: Timing) -> bool {
        if self.failing {
            return true;
        }
        match handshake {
            Handshake::Ago(age) if age < timing.stale_after => {
                self.due = now + (timing.stale_after - age);
                false
            }
            Handshake::NoPeer => {
                self.due = now + timing.recheck;
                false
            }
            Handshake::Ago(_) | Handshake::Never => true,
        }
    }

    /// A lookup finished at `now`. The rule: push only an address that differs from what
    /// the name gave last time; log only a change of state.
    pub fn on_result(
        &mut self,
        now: Duration,
        result: Result<SocketAddr, &ResolveError>,
        timing: Timing,
    ) -> Outcome {
        match result {
            Ok(addr) => {
                let was_failing = std::mem::replace(&mut self.failing, false);
                self.backoff.reset();
                let push = (self.last != Some(addr)).then_some(addr);
                let event = match (was_failing, self.last) {
                    (true, _) => Some(Event::Resolved {
                        addr,
                        pushed: push.is_some(),
                    }),
                    (false, Some(from)) if from != addr => Some(Event::Moved { from, to: addr }),
                    // Unchanged (or a first address, which cannot happen unless failing).
                    (false, _) => None,
                };
                self.last = Some(addr);
                // A new address gets the time a handshake needs; an unchanged one is looked
                // at again after the recheck period while the peer stays silent.
                self.due = now
                    + if push.is_some() {
                        timing.stale_after
                    } else {
                        timing.recheck
                    };
                Outcome { push, event }
            }
            Err(error) => {
                let event = (!self.failing).then(|| Event::Failing {
                    error: error.to_string(),
                });
                self.failing = true;
                self.due = now + self.backoff.next_delay();
                Outcome { push: None, event }
            }
        }
    }
}

/// A named peer of a config that was just applied, and what its name gave then.
#[derive(Debug, Clone)]
pub struct Seed {
    pub public_key: PublicKey,
    pub spec: EndpointSpec,
    pub label: String,
    /// `None`: the name did not resolve.
    pub first: Option<SocketAddr>,
}

/// The named peers of `config`, with what each name gave (`endpoints`: one per peer, as
/// `settings::Resolved` holds them). Peers with an IP literal or no endpoint have nothing to
/// follow.
pub fn seeds(config: &Config, endpoints: &[Option<SocketAddr>]) -> Vec<Seed> {
    config
        .peers
        .iter()
        .zip(endpoints)
        .filter_map(|(peer, endpoint)| {
            let spec = peer.endpoint.as_ref()?;
            if spec.literal().is_some() {
                return None;
            }
            Some(Seed {
                public_key: peer.public_key,
                spec: spec.clone(),
                label: peer.label(),
                first: *endpoint,
            })
        })
        .collect()
}

/// What each name gave last, shared with the task so a replacement (after a reload) knows
/// the address a name that fails now had before.
type Memory = Arc<Mutex<HashMap<PublicKey, (EndpointSpec, SocketAddr)>>>;

/// The task following the names of the running config; stops when dropped.
#[derive(Debug)]
pub struct Resolver {
    task: Option<tokio::task::JoinHandle<()>>,
    memory: Memory,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Resolver {
    /// Starts following `seeds` (on the current tokio runtime). `previous`, the resolver of
    /// the config before a reload, is stopped; what its names gave carries over to the same
    /// peer and name.
    pub fn start(
        control: ControlSender,
        seeds: Vec<Seed>,
        previous: Option<Resolver>,
        timing: Timing,
    ) -> Resolver {
        let before = previous
            .map(|p| std::mem::take(&mut *p.memory.lock().unwrap_or_else(PoisonError::into_inner)))
            .unwrap_or_default();
        let now = Duration::ZERO;
        let mut remembered = HashMap::new();
        let names: Vec<Name> = seeds
            .into_iter()
            .map(|seed| match seed.first {
                Some(addr) => {
                    remembered.insert(seed.public_key, (seed.spec.clone(), addr));
                    Name::resolved(seed, addr, now, timing)
                }
                None => {
                    let last = before
                        .get(&seed.public_key)
                        .filter(|(spec, _)| *spec == seed.spec)
                        .map(|&(_, addr)| addr);
                    if let Some(addr) = last {
                        remembered.insert(seed.public_key, (seed.spec.clone(), addr));
                    }
                    Name::failing(seed, last, now)
                }
            })
            .collect();
        let memory: Memory = Arc::new(Mutex::new(remembered));
        let task = (!names.is_empty())
            .then(|| tokio::spawn(follow(control, names, timing, Arc::clone(&memory))));
        Resolver { task, memory }
    }
}

/// How long ago each peer's latest handshake was, by key.
fn handshakes(snapshot: &Snapshot) -> HashMap<PublicKey, Handshake> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    snapshot
        .peers
        .iter()
        .map(|p| {
            let h = match p.stats.last_handshake {
                Some(at) => Handshake::Ago(now.saturating_sub(at)),
                None => Handshake::Never,
            };
            (p.public_key, h)
        })
        .collect()
}

/// The resolver task: sleeps until a name is due, looks due names up concurrently, and
/// pushes changed addresses through the data plane's mailbox. Ends when the data plane does.
async fn follow(control: ControlSender, mut names: Vec<Name>, timing: Timing, memory: Memory) {
    let start = Instant::now();
    let mut lookups: JoinSet<Result<SocketAddr, ResolveError>> = JoinSet::new();
    let mut running: HashMap<Id, usize> = HashMap::new();
    loop {
        let now = start.elapsed();
        let due: Vec<usize> = (0..names.len())
            .filter(|&i| !names[i].in_flight && names[i].due <= now)
            .collect();
        if !due.is_empty() {
            // One snapshot for every due name whose rule needs handshake times; it walks
            // every peer on the data plane, so it is taken at most once per wakeup.
            let ages = if due.iter().any(|&i| !names[i].failing) {
                match control.get().await {
                    Ok(snapshot) => handshakes(&snapshot),
                    Err(_) => return,
                }
            } else {
                HashMap::new()
            };
            let now = start.elapsed();
            for i in due {
                let name = &mut names[i];
                let handshake = ages
                    .get(&name.public_key)
                    .copied()
                    .unwrap_or(Handshake::NoPeer);
                if name.check(now, handshake, timing) {
                    name.in_flight = true;
                    let spec = name.spec.clone();
                    let id = lookups.spawn(async move { lookup(&spec).await }).id();
                    running.insert(id, i);
                }
            }
        }
        let next = names.iter().filter(|n| !n.in_flight).map(|n| n.due).min();
        tokio::select! {
            () = tokio::time::sleep_until(start + next.unwrap_or_default()), if next.is_some() => {}
            Some(joined) = lookups.join_next_with_id(), if !lookups.is_empty() => {
                let (id, result) = match joined {
                    Ok((id, result)) => (id, result),
                    // A lookup that panicked counts as a failed one.
                    Err(e) => (e.id(), Err(ResolveError::Lookup(std::io::Error::other(e.to_string())))),
                };
                let Some(i) = running.remove(&id) else { continue };
                let name = &mut names[i];
                name.in_flight = false;
                let outcome = name.on_result(start.elapsed(), result.as_ref().copied(), timing);
                log_event(name, outcome.event.as_ref());
                if let Some(addr) = outcome.push {
                    memory
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(name.public_key, (name.spec.clone(), addr));
                    match control.set_endpoint(name.public_key, addr).await {
                        Ok(Ok(changes)) if changes.changed.is_empty() => tracing::debug!(
                            peer = %name.label, endpoint = %name.spec,
                            "endpoint unchanged (or the peer is gone)"
                        ),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(
                            peer = %name.label, endpoint = %name.spec, error = %e,
                            "cannot set the resolved endpoint"
                        ),
                        Err(_) => return,
                    }
                }
            }
            else => {
                // No names left to wait for (cannot happen with at least one name).
                return;
            }
        }
    }
}

fn log_event(name: &Name, event: Option<&Event>) {
    let (peer, endpoint) = (&name.label, &name.spec);
    match event {
        None => {}
        Some(Event::Resolved { addr, pushed: true }) => tracing::info!(
            peer = %peer, endpoint = %endpoint, address = %addr,
            "endpoint name resolves now; peer endpoint set"
        ),
        Some(Event::Resolved {
            addr,
            pushed: false,
        }) => tracing::info!(
            peer = %peer, endpoint = %endpoint, address = %addr,
            "endpoint name resolves again, to the same address; peer endpoint kept"
        ),
        Some(Event::Failing { error }) => tracing::warn!(
            peer = %peer, endpoint = %endpoint, error = %error,
            "endpoint name does not resolve; the peer keeps its endpoint, retrying in the \
             background"
        ),
        Some(Event::Moved { from, to }) => tracing::info!(
            peer = %peer, endpoint = %endpoint, from = %from, to = %to,
            "endpoint name moved; peer endpoint updated"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PrivateKey;

    const T: Timing = Timing {
        stale_after: STALE_AFTER,
        recheck: RECHECK,
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn seed() -> Seed {
        Seed {
            public_key: PrivateKey::from_bytes([5; 32]).public_key(),
            spec: EndpointSpec {
                host: "vpn.example.org".into(),
                port: 51820,
            },
            label: "office".into(),
            first: None,
        }
    }

    fn nxdomain() -> ResolveError {
        ResolveError::Lookup(std::io::Error::other("no such host"))
    }

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(b.next_delay(), secs(1));
        // No overflow however long a name fails.
        let mut b = Backoff { failures: u32::MAX };
        assert_eq!(b.next_delay(), MAX_RETRY);
    }

    #[test]
    fn a_failing_name_retries_with_backoff_and_logs_once() {
        let mut n = Name::failing(seed(), None, secs(0));
        assert_eq!(n.due(), secs(1));
        let mut now = n.due();
        let mut dues = Vec::new();
        for _ in 0..7 {
            assert!(
                n.check(now, Handshake::NoPeer, T),
                "a failing name is always looked up"
            );
            let out = n.on_result(now, Err(&nxdomain()), T);
            assert_eq!(out, Outcome::default(), "failing again: no push, no log");
            dues.push((n.due() - now).as_secs());
            now = n.due();
        }
        assert_eq!(dues, [2, 4, 8, 16, 32, 60, 60]);

        // It resolves: pushed (there was no address), logged once, backoff reset.
        let out = n.on_result(now, Ok(addr("192.0.2.1:51820")), T);
        assert_eq!(out.push, Some(addr("192.0.2.1:51820")));
        assert!(matches!(
            out.event,
            Some(Event::Resolved { pushed: true, .. })
        ));
        assert!(!n.is_failing());
        // It fails again: logged once, the first retry after 1 s again.
        let out = n.on_result(now, Err(&nxdomain()), T);
        assert!(matches!(out.event, Some(Event::Failing { .. })));
        assert_eq!(out.push, None);
        assert_eq!(n.due() - now, secs(1));
        assert_eq!(n.last(), Some(addr("192.0.2.1:51820")), "the address stays");
    }

    #[test]
    fn changed_address_is_pushed_unchanged_is_not() {
        let a = addr("192.0.2.1:51820");
        let b = addr("198.51.100.9:51820");
        let mut n = Name::resolved(seed(), a, secs(0), T);
        // Unchanged: nothing, not even a log line (roaming may have moved the peer since).
        let out = n.on_result(secs(200), Ok(a), T);
        assert_eq!(out, Outcome::default());
        assert_eq!(n.due(), secs(200) + RECHECK);
        // Changed: pushed and logged as a move.
        let out = n.on_result(secs(230), Ok(b), T);
        assert_eq!(out.push, Some(b));
        assert_eq!(out.event, Some(Event::Moved { from: a, to: b }));
        assert_eq!(n.last(), Some(b));
        // And then unchanged again.
        assert_eq!(n.on_result(secs(400), Ok(b), T), Outcome::default());
    }

    #[test]
    fn failing_name_that_comes_back_unchanged_keeps_the_roamed_endpoint() {
        // A reload could not resolve the name; the peer kept its address `a` (maybe roamed
        // away from it since). The name comes back with `a`: nothing to push.
        let a = addr("192.0.2.1:51820");
        let mut n = Name::failing(seed(), Some(a), secs(0));
        let out = n.on_result(secs(1), Ok(a), T);
        assert_eq!(out.push, None);
        assert_eq!(
            out.event,
            Some(Event::Resolved {
                addr: a,
                pushed: false
            })
        );
    }

    #[test]
    fn only_a_peer_without_a_recent_handshake_is_looked_up_again() {
        let a = addr("192.0.2.1:51820");
        let mut n = Name::resolved(seed(), a, secs(0), T);
        assert_eq!(
            n.due(),
            STALE_AFTER,
            "first look once the peer could be stale"
        );
        // A handshake 100 s ago: wait until it is 135 s old.
        assert!(!n.check(secs(135), Handshake::Ago(secs(100)), T));
        assert_eq!(n.due(), secs(135 + 35));
        // Still fresh then (a rekey came): wait again.
        assert!(!n.check(secs(170), Handshake::Ago(secs(10)), T));
        assert_eq!(n.due(), secs(170 + 125));
        // Stale, or never: look up.
        assert!(n.check(secs(295), Handshake::Ago(secs(135)), T));
        assert!(n.check(secs(295), Handshake::Never, T));
        // A peer removed over UAPI: nothing to update, look again later.
        assert!(!n.check(secs(295), Handshake::NoPeer, T));
        assert_eq!(n.due(), secs(295) + RECHECK);
    }

    #[test]
    fn test_override_shortens_the_intervals_only_when_valid() {
        assert_eq!(Timing::with_override(None), Timing::default());
        assert_eq!(Timing::with_override(Some("0")), Timing::default());
        assert_eq!(Timing::with_override(Some("soon")), Timing::default());
        let t = Timing::with_override(Some("1500"));
        assert_eq!(t.stale_after, Duration::from_millis(1500));
        assert_eq!(t.recheck, Duration::from_millis(1500));
        let t = Timing::with_override(Some("600000"));
        assert_eq!(t.recheck, RECHECK);
    }

    #[test]
    fn only_names_are_followed() {
        let text = format!(
            "[interface]\nname = \"tnd0\"\nprivate_key = \"{}\"\n\n\
             [[peer]]\nname = \"lit\"\npublic_key = \"{}\"\nendpoint = \"192.0.2.1:1\"\n\n\
             [[peer]]\nname = \"named\"\npublic_key = \"{}\"\nendpoint = \"vpn.example.org:2\"\n\n\
             [[peer]]\nname = \"none\"\npublic_key = \"{}\"\n",
            PrivateKey::from_bytes([1; 32]).to_base64(),
            PrivateKey::from_bytes([2; 32]).public_key().to_base64(),
            PrivateKey::from_bytes([3; 32]).public_key().to_base64(),
            PrivateKey::from_bytes([4; 32]).public_key().to_base64(),
        );
        let config = match crate::config::parse_toml(std::path::Path::new("t.toml"), &text) {
            Ok(c) => c,
            Err(e) => panic!("test config does not parse:\n{e}"),
        };
        let got = seeds(&config, &[Some(addr("192.0.2.1:1")), None, None]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].label, "named");
        assert_eq!(got[0].spec.to_string(), "vpn.example.org:2");
        assert_eq!(got[0].first, None, "it did not resolve");
    }

    #[tokio::test]
    async fn localhost_resolves_through_the_system_resolver() {
        let spec = EndpointSpec {
            host: "localhost".into(),
            port: 4000,
        };
        let got = lookup(&spec).await.expect("localhost resolves");
        assert!(got.ip().is_loopback(), "{got}");
        assert_eq!(got.port(), 4000);
    }
}
