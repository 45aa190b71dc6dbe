//! Per-source token bucket for handshake messages under load, as the kernel's ratelimiter.c.
//!
//! Each source may send 20 handshake messages a second with a burst of 5. IPv4 sources are
//! keyed by their address, IPv6 sources by their /64 (one host usually owns a whole /64, so
//! keying by the full address would let it pick a fresh bucket per packet).
//!
//! The bucket counts time, not packets: it holds up to `TOKEN_MAX` nanoseconds of credit, gains
//! one nanosecond per nanosecond elapsed, and each packet costs `PACKET_COST` (50 ms). Memory is
//! bounded: past `max_entries` tracked sources, packets from new sources are refused outright
//! (as the kernel does on allocation failure) until `gc` forgets idle ones.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Duration;

use siphasher::sip::SipHasher13;

/// Sustained rate per source.
pub const PACKETS_PER_SECOND: u64 = 20;
/// Packets a quiet source may send back to back.
pub const PACKETS_BURSTABLE: u64 = 5;
/// Default bound on tracked sources: the kernel's on machines with more than 1 GiB of RAM
/// (a table of 8192 buckets, 8 entries per bucket). About 2 MiB at most.
pub const MAX_ENTRIES: usize = 8192 * 8;

const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// What one packet costs, in nanoseconds of credit: 50 ms.
const PACKET_COST: u64 = NANOS_PER_SECOND / PACKETS_PER_SECOND;
/// The bucket's capacity: the burst.
const TOKEN_MAX: u64 = PACKET_COST * PACKETS_BURSTABLE;
/// A source idle this long has a full bucket again, so forgetting it changes no answer.
const IDLE_TIMEOUT: u64 = NANOS_PER_SECOND;

/// What a bucket is keyed by: the IPv4 address, or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6Prefix64(u64),
}

impl SourceKey {
    fn of(source: IpAddr) -> Self {
        match source {
            IpAddr::V4(a) => SourceKey::V4(a.to_bits()),
            // The top 64 bits: the network part of the address.
            IpAddr::V6(a) => SourceKey::V6Prefix64((a.to_bits() >> 64) as u64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// When this source last sent, in nanoseconds on the caller's monotonic clock.
    last_ns: u64,
    /// Credit in nanoseconds, at most TOKEN_MAX.
    tokens: u64,
}

/// Builds SipHash-1-3 hashers under a secret key, so that a sender cannot pick source
/// addresses that all land in one bucket of the table and turn each lookup into a long scan.
#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
struct KeyedSip {
    key: [u8; 16],
}

impl BuildHasher for KeyedSip {
    type Hasher = SipHasher13;
    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_key(&self.key)
    }
}

/// Handshake rate limiter, one per device.
#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
pub struct RateLimiter {
    table: HashMap<SourceKey, Bucket, KeyedSip>,
    max_entries: usize,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash key stays out of logs.
        f.debug_struct("RateLimiter")
            .field("sources", &self.table.len())
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

/// Nanoseconds since the caller's epoch; saturates (at ~584 years) rather than wraps.
fn nanos(now: Duration) -> u64 {
    u64::try_from(now.as_nanos()).unwrap_or(u64::MAX)
}

impl RateLimiter {
    /// `hash_seed` comes from the caller's RNG: the core draws no randomness itself.
    pub fn new(hash_seed: [u8; 16]) -> Self {
        Self::with_max_entries(hash_seed, MAX_ENTRIES)
    }

    /// As `new`, tracking at most `max_entries` sources at once.
    pub fn with_max_entries(hash_seed: [u8; 16], max_entries: usize) -> Self {
        RateLimiter {
            table: HashMap::with_hasher(KeyedSip { key: hash_seed }),
            max_entries,
        }
    }

    /// May a handshake message from `source` be processed at `now`? Takes one packet's cost
    /// from its bucket when it may.
    pub fn allow(&mut self, source: IpAddr, now: Duration) -> bool {
        let now_ns = nanos(now);
        let key = SourceKey::of(source);
        if let Some(bucket) = self.table.get_mut(&key) {
            // The credit earned since the last packet, capped at the burst. A clock that went
            // backwards earns nothing (and does not move `last_ns` back).
            let elapsed = now_ns.saturating_sub(bucket.last_ns);
            let tokens = bucket.tokens.saturating_add(elapsed).min(TOKEN_MAX);
            bucket.last_ns = bucket.last_ns.max(now_ns);
            let allowed = tokens >= PACKET_COST;
            bucket.tokens = if allowed {
                tokens - PACKET_COST
            } else {
                tokens
            };
            return allowed;
        }
        if self.table.len() >= self.max_entries {
            // Full: refuse rather than evict, so a flood of spoofed sources cannot push out
            // the buckets of the sources it is flooding alongside.
            return false;
        }
        // A new source starts with a full bucket, minus this packet.
        self.table.insert(
            key,
            Bucket {
                last_ns: now_ns,
                tokens: TOKEN_MAX - PACKET_COST,
            },
        );
        true
    }

    /// Forgets sources idle for more than a second (their buckets are full again anyway).
    /// The driver calls this about once a second while the limiter is in use.
    pub fn gc(&mut self, now: Duration) {
        let now_ns = nanos(now);
        self.table
            .retain(|_, b| now_ns.saturating_sub(b.last_ns) <= IDLE_TIMEOUT);
    }

    /// Number of sources tracked.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Forgets every source.
    pub fn clear(&mut self) {
        self.table.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: [u8; 16] = *b"tandem-ratelimit";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test literal")
    }
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_of_five_then_refused() {
        let mut r = RateLimiter::new(SEED);
        let a = ip("192.0.2.1");
        for i in 0..5 {
            assert!(r.allow(a, ms(1000)), "packet {i} of the burst");
        }
        assert!(!r.allow(a, ms(1000)));
        assert!(!r.allow(a, ms(1000)));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn refills_one_token_per_50_ms() {
        let mut r = RateLimiter::new(SEED);
        let a = ip("192.0.2.1");
        let t0 = Duration::from_secs(7);
        for _ in 0..5 {
            assert!(r.allow(a, t0));
        }
        assert!(!r.allow(a, t0 + ms(49)));
        // Refusals do not spend credit: 49 ms + 1 ms make one token.
        assert!(r.allow(a, t0 + ms(50)));
        assert!(!r.allow(a, t0 + ms(50)));
        assert!(!r.allow(a, t0 + ms(99)));
        assert!(r.allow(a, t0 + ms(100)));
        // 150 ms of quiet: three tokens.
        for _ in 0..3 {
            assert!(r.allow(a, t0 + ms(250)));
        }
        assert!(!r.allow(a, t0 + ms(250)));
    }

    #[test]
    fn sustained_rate_is_twenty_per_second() {
        let mut r = RateLimiter::new(SEED);
        let a = ip("2001:db8::1");
        let t0 = Duration::from_secs(3);
        for _ in 0..5 {
            assert!(r.allow(a, t0));
        }
        // Hammer every millisecond for ten seconds: exactly 20 a second get through.
        let mut allowed = 0;
        for i in 1..=10_000 {
            if r.allow(a, t0 + ms(i)) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 200);
    }

    #[test]
    fn bucket_caps_at_the_burst() {
        let mut r = RateLimiter::new(SEED);
        let a = ip("192.0.2.1");
        assert!(r.allow(a, ms(0)));
        // A long quiet spell (no gc) refills only up to the burst.
        for _ in 0..5 {
            assert!(r.allow(a, Duration::from_secs(3600)));
        }
        assert!(!r.allow(a, Duration::from_secs(3600)));
    }

    #[test]
    fn clock_going_backwards_earns_nothing() {
        let mut r = RateLimiter::new(SEED);
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            assert!(r.allow(a, ms(500)));
        }
        assert!(!r.allow(a, ms(100)));
        assert!(!r.allow(a, ms(540)));
        assert!(r.allow(a, ms(550)));
    }

    #[test]
    fn one_v6_64_shares_a_bucket() {
        let mut r = RateLimiter::new(SEED);
        let a = ip("2001:db8:1:2::1");
        let b = ip("2001:db8:1:2:ffff:eeee:dddd:cccc");
        for _ in 0..3 {
            assert!(r.allow(a, ms(0)));
        }
        assert!(r.allow(b, ms(0)));
        assert!(r.allow(b, ms(0)));
        assert!(!r.allow(a, ms(0)));
        assert!(!r.allow(b, ms(0)));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn different_v6_64s_and_v4_are_independent() {
        let mut r = RateLimiter::new(SEED);
        let sources = [
            ip("2001:db8:1:2::1"),
            ip("2001:db8:1:3::1"),
            ip("192.0.2.1"),
            ip("192.0.2.2"),
            // Same low bits as 192.0.2.1, other family: keyed as ::/64, not as the v4.
            ip("::ffff:192.0.2.1"),
        ];
        for s in sources {
            for _ in 0..5 {
                assert!(r.allow(s, ms(0)), "{s}");
            }
            assert!(!r.allow(s, ms(0)), "{s}");
        }
        assert_eq!(r.len(), 5);
        // Another address in ::/64 finds that bucket already empty.
        assert!(!r.allow(ip("::c000:201"), ms(0)));
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn gc_forgets_sources_idle_over_a_second() {
        let mut r = RateLimiter::new(SEED);
        let a = ip("192.0.2.1");
        let b = ip("2001:db8::1");
        assert!(r.allow(a, ms(0)));
        assert!(r.allow(b, ms(500)));
        r.gc(ms(1000));
        assert_eq!(r.len(), 2, "idle for exactly one second is kept");
        r.gc(ms(1001));
        assert_eq!(r.len(), 1);
        r.gc(ms(1501));
        assert_eq!(r.len(), 0);
        assert!(r.is_empty());
        // A forgotten source starts over with a full bucket.
        for _ in 0..5 {
            assert!(r.allow(a, ms(2000)));
        }
        assert!(!r.allow(a, ms(2000)));
    }

    #[test]
    fn bound_refuses_new_sources_until_gc() {
        let mut r = RateLimiter::with_max_entries(SEED, 3);
        let known = [ip("192.0.2.1"), ip("192.0.2.2"), ip("2001:db8::1")];
        for s in known {
            assert!(r.allow(s, ms(0)));
        }
        // Full: a new source is refused, even its first packet, and is not tracked.
        assert!(!r.allow(ip("192.0.2.3"), ms(0)));
        assert!(!r.allow(ip("2001:db8:0:1::1"), ms(0)));
        assert_eq!(r.len(), 3);
        // Known sources keep their buckets.
        assert!(r.allow(known[0], ms(10)));
        // Once the idle ones are gone, new sources get in again.
        assert!(r.allow(known[1], ms(1500)));
        r.gc(ms(1500));
        assert_eq!(r.len(), 1);
        assert!(r.allow(ip("192.0.2.3"), ms(1500)));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn default_bound_holds_under_a_spoofed_flood() {
        let mut r = RateLimiter::new(SEED);
        let mut admitted = 0usize;
        for i in 0..(MAX_ENTRIES as u32 + 1000) {
            if r.allow(
                IpAddr::V4(std::net::Ipv4Addr::from_bits(0x0a00_0000 + i)),
                ms(0),
            ) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, MAX_ENTRIES);
        assert_eq!(r.len(), MAX_ENTRIES);
        r.gc(ms(1001));
        assert!(r.is_empty());
    }

    #[test]
    fn hash_is_keyed_by_the_seed() {
        let key = SourceKey::of(ip("192.0.2.1"));
        let a = KeyedSip { key: SEED }.hash_one(key);
        let b = KeyedSip { key: [0; 16] }.hash_one(key);
        assert_ne!(a, b);
        assert_eq!(a, KeyedSip { key: SEED }.hash_one(key));
    }
}
