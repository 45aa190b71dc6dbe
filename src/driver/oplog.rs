//! Logs an operator can act on, at info level, from the data plane's thread: the core's
//! events with peer names, and summaries of what strangers make the daemon drop.
//!
//! Names: the daemon knows the config (`name` of each peer) and hands the loop a copy through
//! the control mailbox ([`ControlRequest::Names`](super::ControlRequest), at start and after
//! each reload), so the loop can name peers without a lock and without importing the daemon
//! or control layers (tests/layering.rs). A peer without a name shows as its key's short
//! fingerprint (the first 8 base64 characters and `…`, see `PublicKey`'s `Display`); a whole
//! key is never logged.
//!
//! Hostile traffic: anything a stranger can send (garbage, initiations for keys we do not
//! know, forged transport packets, a handshake flood that makes us send cookie replies)
//! must never produce one line per packet. Each drop only bumps a counter of its category
//! and marks its source address in a fixed bitmap (no allocation, nothing that grows with
//! the number of sources); a category's first drop opens a window, and when it ends
//! (a minute; see [`SUMMARY_INTERVAL_ENV`]) one line says how many there were from how
//! many sources. So at most one line per category per window, whatever the flood.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::{DropReason, Event, PublicKey};
use crate::reconcile::Changes;

/// Peer names from the config, by public key.
pub type PeerNames = HashMap<PublicKey, Arc<str>>;

/// Environment variable that shortens the summary window (whole seconds, at least 1).
/// For tests only: operators get the minute the README documents.
pub const SUMMARY_INTERVAL_ENV: &str = "TANDEM_LOG_SUMMARY_SECS";

/// How long one summary window lasts.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Most names one reload summary lists per kind (added, removed, changed).
const MAX_LISTED: usize = 10;

/// How a peer appears in a log line: its config name, else its key's short fingerprint.
pub struct Label<'a>(&'a PeerNames, &'a PublicKey);

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.get(self.1) {
            // Control characters dropped, so a name cannot forge a log line.
            Some(name) => name
                .chars()
                .filter(|c| !c.is_control())
                .try_for_each(|c| f.write_fmt(format_args!("{c}"))),
            None => write!(f, "{}", self.1),
        }
    }
}

pub fn label<'a>(names: &'a PeerNames, key: &'a PublicKey) -> Label<'a> {
    Label(names, key)
}

/// What a stranger can make us drop, by kind: one summary line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Malformed = 0,
    UnknownKey = 1,
    BadHandshake = 2,
    CookieReply = 3,
    RateLimited = 4,
    BadTransport = 5,
}

const CATEGORIES: usize = 6;

impl Category {
    const ALL: [Category; CATEGORIES] = [
        Category::Malformed,
        Category::UnknownKey,
        Category::BadHandshake,
        Category::CookieReply,
        Category::RateLimited,
        Category::BadTransport,
    ];

    /// The category of an inbound drop; None for what no datagram causes (outbound drops,
    /// handshake timeouts).
    fn of(reason: DropReason) -> Option<Category> {
        use DropReason::*;
        Some(match reason {
            Truncated | Oversized | UnknownType | ReservedNotZero | BufferTooSmall => {
                Category::Malformed
            }
            UnknownPeer => Category::UnknownKey,
            InvalidMac1
            | HandshakeDecrypt
            | LowOrderPoint
            | ReplayedInitiation
            | InitiationFlood
            | UnexpectedHandshakeMessage
            | InvalidCookieReply
            | NoPrivateKey => Category::BadHandshake,
            CookieRequired => Category::CookieReply,
            RateLimited => Category::RateLimited,
            UnknownReceiverIndex | KeypairExpired | ReplayedCounter | DecryptFailed
            | InvalidInnerPacket | SourceNotAllowed => Category::BadTransport,
            NoRoute | NoEndpoint | NoKeypair | QueueFull | HandshakeTimeout => return None,
        })
    }

    fn describe(self) -> &'static str {
        match self {
            Category::Malformed => "malformed datagrams dropped",
            Category::UnknownKey => "handshake initiations for unknown keys dropped",
            Category::BadHandshake => "invalid handshake messages dropped",
            Category::CookieReply => "cookie replies sent under load",
            Category::RateLimited => "handshakes rate limited under load",
            Category::BadTransport => "invalid transport packets dropped",
        }
    }
}

/// Bits of the source bitmap: distinct sources are counted exactly (but for rare hash
/// collisions) while few, estimated by linear counting when many.
const SOURCE_BITS: usize = 1024;

/// Distinct source addresses, approximately, in fixed memory (linear counting: a bitmap of
/// hashed addresses; the estimate is `m ln(m / zero bits)`).
#[derive(Clone)]
struct Sources {
    bits: [u64; SOURCE_BITS / 64],
}

impl Sources {
    const EMPTY: Sources = Sources {
        bits: [0; SOURCE_BITS / 64],
    };

    fn insert(&mut self, hash: u64) {
        let bit = (hash % SOURCE_BITS as u64) as usize;
        self.bits[bit / 64] |= 1 << (bit % 64);
    }

    /// The estimate, and whether the bitmap is full (then it is a lower bound).
    fn estimate(&self) -> (u64, bool) {
        let ones: u32 = self.bits.iter().map(|w| w.count_ones()).sum();
        let zeros = SOURCE_BITS as f64 - f64::from(ones);
        let m = SOURCE_BITS as f64;
        if zeros == 0.0 {
            return ((m * m.ln()).round() as u64, true);
        }
        ((m * (m / zeros).ln()).round() as u64, false)
    }
}

/// One category's current window.
#[derive(Clone)]
struct Tally {
    count: u64,
    /// When the window ends (monotonic); None while nothing was dropped.
    until: Option<Duration>,
    sources: Sources,
}

/// The summaries of hostile drops (see the module notes).
pub struct Summaries {
    interval: Duration,
    tallies: [Tally; CATEGORIES],
    /// Drops by reason in the current windows, for the detail of each line.
    reasons: [u64; DropReason::COUNT],
    hasher: RandomState,
}

impl Summaries {
    pub fn new(interval: Duration) -> Self {
        Summaries {
            interval,
            tallies: std::array::from_fn(|_| Tally {
                count: 0,
                until: None,
                sources: Sources::EMPTY,
            }),
            reasons: [0; DropReason::COUNT],
            // Keyed per process, so a sender cannot choose addresses that collide.
            hasher: RandomState::new(),
        }
    }

    /// The window from [`SUMMARY_INTERVAL_ENV`] if set and valid, else a minute.
    pub fn from_env() -> Self {
        let interval = match std::env::var(SUMMARY_INTERVAL_ENV) {
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(n) if n >= 1 => Duration::from_secs(n),
                _ => {
                    tracing::warn!(value = %v, "ignoring {SUMMARY_INTERVAL_ENV}: not a positive number");
                    SUMMARY_INTERVAL
                }
            },
            Err(_) => SUMMARY_INTERVAL,
        };
        Summaries::new(interval)
    }

    /// A datagram from `source` was dropped for `reason` at `now` (monotonic). Constant
    /// time, no allocation, no log line.
    pub fn dropped(&mut self, reason: DropReason, source: IpAddr, now: Duration) {
        let Some(category) = Category::of(reason) else {
            return;
        };
        let hash = self.hasher.hash_one(source);
        let tally = &mut self.tallies[category as usize];
        tally.count += 1;
        tally.sources.insert(hash);
        if tally.until.is_none() {
            tally.until = Some(now + self.interval);
        }
        self.reasons[reason as usize] += 1;
    }

    /// When the earliest window ends, if one is open.
    pub fn deadline(&self) -> Option<Duration> {
        self.tallies.iter().filter_map(|t| t.until).min()
    }

    /// Logs (and closes) every window that has ended by `now`.
    pub fn flush_due(&mut self, now: Duration) {
        for category in Category::ALL {
            if self.tallies[category as usize]
                .until
                .is_some_and(|t| t <= now)
            {
                let line = self.close(category);
                tracing::info!("{line}");
            }
        }
    }

    /// Closes the window of `category`: its summary line.
    fn close(&mut self, category: Category) -> String {
        let tally = &mut self.tallies[category as usize];
        let (sources, full) = tally.sources.estimate();
        let count = tally.count;
        *tally = Tally {
            count: 0,
            until: None,
            sources: Sources::EMPTY,
        };
        let mut detail = Vec::new();
        for reason in DropReason::ALL {
            if Category::of(reason) == Some(category) {
                let n = std::mem::take(&mut self.reasons[reason as usize]);
                if n > 0 {
                    detail.push(format!("{reason} {n}"));
                }
            }
        }
        let window = if self.interval == SUMMARY_INTERVAL {
            "minute".to_owned()
        } else {
            format!("{} s", self.interval.as_secs())
        };
        let sources = match (full, sources) {
            (true, n) => format!("more than {n} sources"),
            (false, 1) => "1 source".to_owned(),
            (false, n) => format!("{n} sources"),
        };
        format!(
            "{}: {count} in the last {window} from {sources} ({})",
            category.describe(),
            detail.join(", ")
        )
    }
}

/// Logs one event of the core at info level, naming the peer.
pub fn log_event(names: &PeerNames, event: &Event) {
    match event {
        Event::HandshakeCompleted {
            public_key,
            endpoint,
            ..
        } => {
            let peer = label(names, public_key);
            match endpoint {
                Some(endpoint) => tracing::info!(%peer, %endpoint, "handshake completed"),
                None => tracing::info!(%peer, "handshake completed"),
            }
        }
        Event::HandshakeUnanswered {
            public_key,
            endpoint,
            ..
        } => {
            let peer = label(names, public_key);
            match endpoint {
                Some(endpoint) => tracing::info!(
                    %peer,
                    %endpoint,
                    "handshake not answered: retrying (is the peer up, and are both public keys right?)"
                ),
                None => tracing::info!(%peer, "handshake not answered: retrying"),
            }
        }
        Event::HandshakeGaveUp {
            public_key,
            attempts,
            waited,
            ..
        } => {
            let peer = label(names, public_key);
            tracing::info!(
                %peer,
                attempts,
                "handshake gave up after {} s: no response; trying again when there is traffic",
                waited.as_secs()
            );
        }
        Event::EndpointChanged {
            public_key,
            from,
            to,
            ..
        } => {
            let peer = label(names, public_key);
            tracing::info!(%peer, %from, %to, "endpoint changed");
        }
        Event::PeerReconnected {
            public_key,
            endpoint,
            unanswered_for,
            since_last_handshake,
            ..
        } => {
            let peer = label(names, public_key);
            let endpoint = endpoint.map_or_else(|| "none".to_owned(), |e| e.to_string());
            let unanswered = unanswered_for.map(|d| d.as_secs());
            let last = since_last_handshake.map(|d| d.as_secs());
            match (unanswered, last) {
                (Some(u), _) => tracing::info!(
                    %peer,
                    %endpoint,
                    "peer reconnected after {u} s without an answer"
                ),
                (None, Some(l)) => tracing::info!(
                    %peer,
                    %endpoint,
                    "peer reconnected: previous handshake {l} s ago"
                ),
                (None, None) => tracing::info!(%peer, %endpoint, "peer reconnected"),
            }
        }
    }
}

/// One line for a configuration change (a reload, a UAPI `set`): the peers added, removed and
/// changed by name (at most [`MAX_LISTED`] of each, then a count), and what changed of the
/// interface; `extra` adds what the caller knows beyond the device (addresses, MTU, DNS).
pub fn log_changes(message: &str, changes: &Changes, names: &PeerNames, extra: &[String]) {
    tracing::info!("{message}: {}", describe_changes(changes, names, extra));
}

/// The text of [`log_changes`].
pub fn describe_changes(changes: &Changes, names: &PeerNames, extra: &[String]) -> String {
    let mut parts = Vec::new();
    for (what, keys) in [
        ("added", &changes.added),
        ("removed", &changes.removed),
        ("changed", &changes.changed),
    ] {
        if keys.is_empty() {
            continue;
        }
        let mut listed: Vec<String> = keys
            .iter()
            .take(MAX_LISTED)
            .map(|k| label(names, k).to_string())
            .collect();
        if keys.len() > MAX_LISTED {
            listed.push(format!("and {} more", keys.len() - MAX_LISTED));
        }
        parts.push(format!("{what} {}", listed.join(", ")));
    }
    if let Some(port) = changes.listen_port {
        parts.push(format!("listen port {port}"));
    }
    if let Some(mark) = changes.fwmark {
        parts.push(format!("fwmark {mark:#x}"));
    }
    if changes.private_key_changed {
        parts.push("private key changed (every session restarts)".to_owned());
    }
    parts.extend(extra.iter().cloned());
    if parts.is_empty() {
        parts.push("nothing changed".to_owned());
    }
    parts.push(format!("{} peer(s) unchanged", changes.unchanged));
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PrivateKey;

    fn key(i: u8) -> PublicKey {
        PrivateKey::from_bytes([i; 32]).public_key()
    }

    /// A writer for a test subscriber: everything logged, in one buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `f` logs at info level, formatted as the daemon's plain (journal) output.
    fn logged(f: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    /// The lines the README's "Logs" table shows, as the daemon writes them.
    #[test]
    fn event_lines_name_the_peer() {
        let mut names = PeerNames::new();
        names.insert(key(1), Arc::from("phone"));
        let id = {
            let mut d = crate::proto::Device::new(None, [0; 32]);
            d.upsert_peer(&crate::proto::PeerConfig::new(key(1)))
                .expect("peer")
        };
        let at: std::net::SocketAddr = "192.0.2.7:51820".parse().expect("addr");
        let to: std::net::SocketAddr = "198.51.100.8:4500".parse().expect("addr");
        let text = logged(|| {
            for event in [
                Event::HandshakeCompleted {
                    peer: id,
                    public_key: key(1),
                    endpoint: Some(at),
                },
                Event::HandshakeUnanswered {
                    peer: id,
                    public_key: key(1),
                    endpoint: Some(at),
                },
                Event::HandshakeGaveUp {
                    peer: id,
                    public_key: key(1),
                    attempts: 20,
                    waited: Duration::from_millis(95_400),
                },
                Event::PeerReconnected {
                    peer: id,
                    public_key: key(1),
                    endpoint: Some(at),
                    unanswered_for: Some(Duration::from_secs(42)),
                    since_last_handshake: Some(Duration::from_secs(300)),
                },
                Event::PeerReconnected {
                    peer: id,
                    public_key: key(2),
                    endpoint: Some(to),
                    unanswered_for: None,
                    since_last_handshake: Some(Duration::from_secs(300)),
                },
                Event::EndpointChanged {
                    peer: id,
                    public_key: key(1),
                    from: at,
                    to,
                },
            ] {
                log_event(&names, &event);
            }
        });
        let fp = key(2).to_string();
        let want = [
            "handshake completed peer=phone endpoint=192.0.2.7:51820".to_owned(),
            "handshake not answered: retrying (is the peer up, and are both public keys \
             right?) peer=phone endpoint=192.0.2.7:51820"
                .to_owned(),
            "handshake gave up after 95 s: no response; trying again when there is traffic \
             peer=phone attempts=20"
                .to_owned(),
            "peer reconnected after 42 s without an answer peer=phone endpoint=192.0.2.7:51820"
                .to_owned(),
            format!(
                "peer reconnected: previous handshake 300 s ago peer={fp} \
                 endpoint=198.51.100.8:4500"
            ),
            "endpoint changed peer=phone from=192.0.2.7:51820 to=198.51.100.8:4500".to_owned(),
        ];
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), want.len(), "{text}");
        for (line, want) in lines.iter().zip(&want) {
            assert!(
                line.starts_with(" INFO ") && line.ends_with(want.as_str()),
                "{line:?} does not end with {want:?}"
            );
        }
        assert!(!text.contains(&key(1).to_base64()));
        assert!(!text.contains(&key(2).to_base64()));
    }

    #[test]
    fn every_inbound_reason_has_a_category() {
        let outbound = [
            DropReason::NoRoute,
            DropReason::NoEndpoint,
            DropReason::NoKeypair,
            DropReason::QueueFull,
            DropReason::HandshakeTimeout,
        ];
        for reason in DropReason::ALL {
            assert_eq!(
                Category::of(reason).is_none(),
                outbound.contains(&reason),
                "{reason}"
            );
        }
    }

    /// A flood gives one line per window with the exact count and the number of sources;
    /// nothing before the window ends, nothing after it while quiet.
    #[test]
    fn a_flood_is_one_line_per_window() {
        let mut s = Summaries::new(SUMMARY_INTERVAL);
        let t0 = Duration::from_secs(100);
        for i in 0..10_000u32 {
            let source = IpAddr::from([192, 0, 2, (i % 3) as u8]);
            s.dropped(DropReason::UnknownType, source, t0);
        }
        s.dropped(DropReason::Truncated, IpAddr::from([192, 0, 2, 0]), t0);
        s.dropped(DropReason::UnknownPeer, IpAddr::from([192, 0, 2, 9]), t0);
        s.dropped(DropReason::NoRoute, IpAddr::from([192, 0, 2, 9]), t0);
        assert_eq!(s.deadline(), Some(t0 + SUMMARY_INTERVAL));
        assert_eq!(
            s.close(Category::Malformed),
            "malformed datagrams dropped: 10001 in the last minute from 3 sources \
             (truncated 1, unknown_type 10000)"
        );
        assert_eq!(
            s.close(Category::UnknownKey),
            "handshake initiations for unknown keys dropped: 1 in the last minute from 1 \
             source (unknown_peer 1)"
        );
        assert_eq!(s.deadline(), None);
    }

    /// Many sources are estimated within a few percent (checked at six standard errors), in
    /// fixed memory; past the bitmap's
    /// range the line says "more than".
    #[test]
    fn distinct_sources_are_estimated() {
        let mut s = Summaries::new(SUMMARY_INTERVAL);
        for i in 0..500u32 {
            let source = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            s.dropped(DropReason::DecryptFailed, source, Duration::ZERO);
            s.dropped(DropReason::DecryptFailed, source, Duration::ZERO);
        }
        let (n, full) = s.tallies[Category::BadTransport as usize]
            .sources
            .estimate();
        assert!(!full);
        // Linear counting with 1024 bits has a standard error of about 2.4 % (12 sources) at
        // 500, and the hash is keyed at random per run: +-75 is six standard errors, so the
        // check cannot flake (+-25 failed about one run in twenty).
        assert!((425..=575).contains(&n), "{n}");
        let mut s = Summaries::new(SUMMARY_INTERVAL);
        for i in 0..100_000u32 {
            let source = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            s.dropped(DropReason::InvalidMac1, source, Duration::ZERO);
        }
        let line = s.close(Category::BadHandshake);
        assert!(
            line.contains("100000 in the last minute from more than"),
            "{line}"
        );
    }

    #[test]
    fn labels_are_names_or_fingerprints() {
        let mut names = PeerNames::new();
        names.insert(key(1), Arc::from("phone\n"));
        assert_eq!(label(&names, &key(1)).to_string(), "phone");
        let unnamed = label(&names, &key(2)).to_string();
        assert_eq!(unnamed, format!("{}…", &key(2).to_base64()[..8]));
    }

    #[test]
    fn change_summary_names_peers_and_bounds_lists() {
        let mut names = PeerNames::new();
        names.insert(key(1), Arc::from("phone"));
        let changes = Changes {
            added: vec![key(1), key(2)],
            removed: (10..22).map(key).collect(),
            changed: vec![],
            unchanged: 3,
            listen_port: Some(51821),
            fwmark: None,
            private_key_changed: false,
        };
        let text = describe_changes(&changes, &names, &["MTU 1400".to_owned()]);
        let fp = key(2).to_string();
        assert!(
            text.starts_with(&format!("added phone, {fp}; removed ")),
            "{text}"
        );
        assert!(
            text.ends_with("and 2 more; listen port 51821; MTU 1400; 3 peer(s) unchanged"),
            "{text}"
        );
        assert!(!text.contains(&key(1).to_base64()), "{text}");
        assert_eq!(
            describe_changes(&Changes::default(), &names, &[]),
            "nothing changed; 0 peer(s) unchanged"
        );
    }
}
