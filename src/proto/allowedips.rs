//! Cryptokey routing: the AllowedIPs table, longest-prefix match for IPv4 and IPv6.
//!
//! Outbound, a packet's destination selects the peer; inbound, a decrypted packet is kept only
//! if its source maps back to the peer it came from. Both are per-packet lookups.
//!
//! Layout: per address family, one hash table per prefix length, keyed by the masked address,
//! plus the list of lengths that currently hold any prefix, longest first. A lookup masks the
//! address to each length in use and probes that table, stopping at the first hit, so it costs
//! one hash probe per distinct prefix length configured (typically two or three: host routes,
//! a few subnets, maybe /0), and never allocates.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::prefix::Prefix;

/// Multiplicative hasher for the masked address keys.
///
/// The keys are prefixes from the configuration, not chosen by whoever sends packets, so the
/// table needs no keyed (DoS-resistant) hash; and std's `RandomState` would draw OS randomness
/// inside the core. A lookup only probes where the configured keys already are.
#[derive(Default, Clone, Copy)]
struct PrefixHasher(u64);

impl PrefixHasher {
    /// Folded 64x64->128 multiply: mixes every input bit into both the high bits (hashbrown's
    /// control byte) and the low bits (its bucket index).
    #[inline]
    fn mix(&mut self, x: u64) {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let full = u128::from(self.0 ^ x).wrapping_mul(u128::from(K));
        self.0 = (full as u64) ^ ((full >> 64) as u64);
    }
}

impl Hasher for PrefixHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for key types other than the u32/u128 used here; correct, not fast.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word.iter_mut().zip(chunk).for_each(|(d, s)| *d = *s);
            self.mix(u64::from_le_bytes(word));
        }
    }
    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.mix(u64::from(x));
    }
    #[inline]
    fn write_u128(&mut self, x: u128) {
        self.mix(x as u64);
        self.mix((x >> 64) as u64);
    }
}

type PrefixMap<K, T> = HashMap<K, T, BuildHasherDefault<PrefixHasher>>;

/// An address as an unsigned integer, most significant bit first.
trait Key: Copy + Eq + Hash + Ord {
    const BITS: u8;
    /// Keeps the top `cidr` bits (`cidr` <= BITS).
    fn masked(self, cidr: u8) -> Self;
}

impl Key for u32 {
    const BITS: u8 = 32;
    #[inline]
    fn masked(self, cidr: u8) -> Self {
        // A shift by the full width (cidr 0) is None: nothing is kept.
        self & u32::MAX
            .checked_shl(u32::from(<Self as Key>::BITS.saturating_sub(cidr)))
            .unwrap_or(0)
    }
}

impl Key for u128 {
    const BITS: u8 = 128;
    #[inline]
    fn masked(self, cidr: u8) -> Self {
        self & u128::MAX
            .checked_shl(u32::from(<Self as Key>::BITS.saturating_sub(cidr)))
            .unwrap_or(0)
    }
}

/// The prefixes of one address family.
#[derive(Clone)]
struct Family<K, T> {
    /// `by_len[cidr]` holds the prefixes of length `cidr`; BITS + 1 entries.
    by_len: Vec<PrefixMap<K, T>>,
    /// Lengths whose table is not empty, longest first: the lookup's probe order.
    lens: Vec<u8>,
    len: usize,
}

impl<K: Key, T: Copy + Eq> Family<K, T> {
    fn new() -> Self {
        Family {
            // Empty HashMaps do not allocate; only the Vec of their headers does.
            by_len: (0..=K::BITS).map(|_| PrefixMap::default()).collect(),
            lens: Vec::new(),
            len: 0,
        }
    }

    fn refresh_lens(&mut self) {
        self.lens.clear();
        for (cidr, table) in self.by_len.iter().enumerate().rev() {
            if !table.is_empty() {
                // by_len has at most 129 entries, so cidr fits in a u8.
                self.lens.push(cidr as u8);
            }
        }
    }

    fn insert(&mut self, key: K, cidr: u8, value: T) -> Option<T> {
        let table = self.by_len.get_mut(usize::from(cidr))?;
        let was_empty = table.is_empty();
        let previous = table.insert(key.masked(cidr), value);
        if previous.is_none() {
            self.len += 1;
        }
        if was_empty {
            self.refresh_lens();
        }
        previous
    }

    fn remove(&mut self, key: K, cidr: u8) -> Option<T> {
        let table = self.by_len.get_mut(usize::from(cidr))?;
        let removed = table.remove(&key.masked(cidr))?;
        self.len -= 1;
        if table.is_empty() {
            self.refresh_lens();
        }
        Some(removed)
    }

    fn remove_value(&mut self, value: T) {
        let mut removed = 0;
        for table in &mut self.by_len {
            let before = table.len();
            table.retain(|_, v| *v != value);
            removed += before - table.len();
        }
        if removed > 0 {
            self.len -= removed;
            self.refresh_lens();
        }
    }

    #[inline]
    fn lookup(&self, key: K) -> Option<T> {
        self.lens.iter().find_map(|&cidr| {
            self.by_len
                .get(usize::from(cidr))
                .and_then(|table| table.get(&key.masked(cidr)))
                .copied()
        })
    }

    /// Every prefix as (address, cidr, value), in no particular order.
    fn entries(&self) -> impl Iterator<Item = (K, u8, T)> + '_ {
        self.by_len
            .iter()
            .enumerate()
            .flat_map(|(cidr, table)| table.iter().map(move |(&k, &v)| (k, cidr as u8, v)))
    }

    fn clear(&mut self) {
        for table in &mut self.by_len {
            table.clear();
        }
        self.lens.clear();
        self.len = 0;
    }
}

/// The cryptokey routing table: IP prefixes mapped to a peer handle `T`.
#[derive(Clone)]
pub struct AllowedIps<T> {
    v4: Family<u32, T>,
    v6: Family<u128, T>,
}

impl<T: Copy + Eq> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Eq + std::fmt::Debug> std::fmt::Debug for AllowedIps<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(p, v)| (p.to_string(), v)))
            .finish()
    }
}

impl<T: Copy + Eq> AllowedIps<T> {
    pub fn new() -> Self {
        AllowedIps {
            v4: Family::new(),
            v6: Family::new(),
        }
    }

    /// Host bits beyond the prefix length are masked off. A prefix already present moves to
    /// `value` (kernel semantics); returns the previous value. A [`Prefix`]'s length always
    /// fits its family, so this cannot fail.
    pub fn insert(&mut self, prefix: Prefix, value: T) -> Option<T> {
        match prefix.addr() {
            IpAddr::V4(a) => self.v4.insert(a.to_bits(), prefix.len(), value),
            IpAddr::V6(a) => self.v6.insert(a.to_bits(), prefix.len(), value),
        }
    }

    /// Removes exactly `prefix` (host bits ignored); returns its value.
    pub fn remove(&mut self, prefix: Prefix) -> Option<T> {
        match prefix.addr() {
            IpAddr::V4(a) => self.v4.remove(a.to_bits(), prefix.len()),
            IpAddr::V6(a) => self.v6.remove(a.to_bits(), prefix.len()),
        }
    }

    /// Removes every prefix of one peer.
    pub fn remove_value(&mut self, value: T) {
        self.v4.remove_value(value);
        self.v6.remove_value(value);
    }

    /// Longest-prefix match. An IPv4-mapped IPv6 address is looked up as IPv6, as the
    /// kernel does.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a.octets()),
            IpAddr::V6(a) => self.lookup_v6(&a.octets()),
        }
    }

    /// Longest-prefix match of an IPv4 address in network byte order. No allocation.
    #[inline]
    pub fn lookup_v4(&self, addr: [u8; 4]) -> Option<T> {
        self.v4.lookup(u32::from_be_bytes(addr))
    }

    /// Longest-prefix match of an IPv6 address in network byte order. No allocation.
    #[inline]
    pub fn lookup_v6(&self, addr: &[u8; 16]) -> Option<T> {
        self.v6.lookup(u128::from_be_bytes(*addr))
    }

    /// The prefixes of one peer, IPv4 first, each family by address then length.
    pub fn prefixes_of(&self, value: T) -> Vec<Prefix> {
        self.iter()
            .filter(|&(_, v)| v == value)
            .map(|(p, _)| p)
            .collect()
    }

    /// Every prefix (host bits cleared) with its value, IPv4 first, each family by address
    /// then length.
    pub fn iter(&self) -> impl Iterator<Item = (Prefix, T)> + '_ {
        let mut v4: Vec<(u32, u8, T)> = self.v4.entries().collect();
        v4.sort_unstable_by_key(|&(k, c, _)| (k, c));
        let mut v6: Vec<(u128, u8, T)> = self.v6.entries().collect();
        v6.sort_unstable_by_key(|&(k, c, _)| (k, c));
        // The tables only hold lengths that fit their family, so `new` cannot fail here.
        let prefix = |addr: IpAddr, len: u8| Prefix::new(addr, len).unwrap_or(Prefix::host(addr));
        v4.into_iter()
            .map(move |(k, c, v)| (prefix(IpAddr::V4(Ipv4Addr::from_bits(k)), c), v))
            .chain(
                v6.into_iter()
                    .map(move |(k, c, v)| (prefix(IpAddr::V6(Ipv6Addr::from_bits(k)), c), v)),
            )
    }

    pub fn len(&self) -> usize {
        self.v4.len + self.v6.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // A fixed-seed generator, so the random tests replay.
    use crate::testkit::rng::SplitMix64;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().expect("test literal"))
    }
    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().expect("test literal"))
    }
    fn p(addr: IpAddr, len: u8) -> Prefix {
        Prefix::new(addr, len).expect("test prefix")
    }

    #[test]
    fn longest_prefix_wins_v4() {
        let mut t = AllowedIps::new();
        t.insert(p(v4("0.0.0.0"), 0), 'd');
        t.insert(p(v4("10.0.0.0"), 8), 'a');
        t.insert(p(v4("10.1.0.0"), 16), 'b');
        t.insert(p(v4("10.1.2.3"), 32), 'c');
        assert_eq!(t.lookup(v4("10.1.2.3")), Some('c'));
        assert_eq!(t.lookup(v4("10.1.2.4")), Some('b'));
        assert_eq!(t.lookup(v4("10.2.0.1")), Some('a'));
        assert_eq!(t.lookup(v4("192.168.1.1")), Some('d'));
        assert_eq!(t.lookup_v4([10, 1, 2, 3]), Some('c'));
        assert_eq!(t.len(), 4);
        // /0 of one family says nothing about the other.
        assert_eq!(t.lookup(v6("::1")), None);
    }

    #[test]
    fn longest_prefix_wins_v6() {
        let mut t = AllowedIps::new();
        t.insert(p(v6("::"), 0), 0u32);
        t.insert(p(v6("2001:db8::"), 32), 1);
        t.insert(p(v6("2001:db8:1::"), 48), 2);
        t.insert(p(v6("2001:db8:1::7"), 128), 3);
        assert_eq!(t.lookup(v6("2001:db8:1::7")), Some(3));
        assert_eq!(t.lookup(v6("2001:db8:1::8")), Some(2));
        assert_eq!(t.lookup(v6("2001:db8:2::8")), Some(1));
        assert_eq!(t.lookup(v6("fe80::1")), Some(0));
        let a: Ipv6Addr = "2001:db8:1::7".parse().unwrap();
        assert_eq!(t.lookup_v6(&a.octets()), Some(3));
        assert_eq!(t.lookup(v4("1.2.3.4")), None);
    }

    #[test]
    fn host_bits_are_masked_and_reinsert_moves() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(p(v4("192.168.7.9"), 24), 1u8), None);
        assert_eq!(t.prefixes_of(1), vec![p(v4("192.168.7.0"), 24)]);
        // The same prefix written with other host bits is the same prefix: it moves.
        assert_eq!(t.insert(p(v4("192.168.7.200"), 24), 2), Some(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.prefixes_of(1), vec![]);
        assert_eq!(t.lookup(v4("192.168.7.1")), Some(2));
        assert_eq!(t.remove(p(v4("192.168.7.55"), 24)), Some(2));
        assert!(t.is_empty());
        assert_eq!(t.lookup(v4("192.168.7.1")), None);
    }

    #[test]
    fn remove_value_and_clear() {
        let mut t = AllowedIps::new();
        t.insert(p(v4("10.0.0.0"), 8), 1u8);
        t.insert(p(v4("10.0.0.1"), 32), 2);
        t.insert(p(v6("fd00::"), 8), 1);
        t.insert(p(v6("fd00::2"), 128), 2);
        t.remove_value(2);
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(v4("10.0.0.1")), Some(1));
        assert_eq!(t.lookup(v6("fd00::2")), Some(1));
        assert_eq!(
            t.prefixes_of(1),
            vec![p(v4("10.0.0.0"), 8), p(v6("fd00::"), 8)]
        );
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.lookup(v4("10.0.0.1")), None);
        assert_eq!(t.iter().count(), 0);
    }

    #[test]
    fn order_is_stable() {
        let mut a = AllowedIps::new();
        let mut b = AllowedIps::new();
        let prefixes = [
            (v6("fd00::"), 64),
            (v4("10.0.0.0"), 8),
            (v4("10.0.0.0"), 24),
            (v4("1.0.0.0"), 8),
            (v6("::"), 0),
        ];
        for &(addr, c) in &prefixes {
            a.insert(p(addr, c), 7u8);
        }
        for &(addr, c) in prefixes.iter().rev() {
            b.insert(p(addr, c), 7u8);
        }
        let expected = vec![
            p(v4("1.0.0.0"), 8),
            p(v4("10.0.0.0"), 8),
            p(v4("10.0.0.0"), 24),
            p(v6("::"), 0),
            p(v6("fd00::"), 64),
        ];
        assert_eq!(a.prefixes_of(7), expected);
        assert_eq!(b.prefixes_of(7), expected);
    }

    /// The naive model: a list of (masked prefix as u128 with its family, cidr, value) and a
    /// linear longest match.
    #[derive(Default)]
    struct Model {
        entries: Vec<(bool, u128, u8, u8)>,
    }

    fn bits_of(addr: IpAddr) -> (bool, u128, u8) {
        match addr {
            IpAddr::V4(a) => (false, u128::from(a.to_bits()), 32),
            IpAddr::V6(a) => (true, a.to_bits(), 128),
        }
    }

    /// Masks `x`, an address of `width` bits, to its top `cidr` bits, the slow obvious way.
    fn mask(x: u128, width: u8, cidr: u8) -> u128 {
        let mut m = 0u128;
        for i in 0..cidr {
            m |= 1 << (width - 1 - i);
        }
        x & m
    }

    impl Model {
        fn insert(&mut self, addr: IpAddr, cidr: u8, value: u8) -> Option<u8> {
            let (six, x, w) = bits_of(addr);
            let x = mask(x, w, cidr);
            for e in &mut self.entries {
                if e.0 == six && e.1 == x && e.2 == cidr {
                    let old = e.3;
                    e.3 = value;
                    return Some(old);
                }
            }
            self.entries.push((six, x, cidr, value));
            None
        }
        fn remove(&mut self, addr: IpAddr, cidr: u8) -> Option<u8> {
            let (six, x, w) = bits_of(addr);
            let x = mask(x, w, cidr);
            let i = self
                .entries
                .iter()
                .position(|e| e.0 == six && e.1 == x && e.2 == cidr)?;
            Some(self.entries.swap_remove(i).3)
        }
        fn best(&self, addr: IpAddr) -> Option<&(bool, u128, u8, u8)> {
            let (six, x, w) = bits_of(addr);
            self.entries
                .iter()
                .filter(|e| e.0 == six && mask(x, w, e.2) == e.1)
                .max_by_key(|e| e.2)
        }
        fn lookup(&self, addr: IpAddr) -> Option<u8> {
            self.best(addr).map(|e| e.3)
        }
        /// Length of the matching prefix.
        fn longest(&self, addr: IpAddr) -> Option<u8> {
            self.best(addr).map(|e| e.2)
        }
    }

    /// A random address near a few hot spots, so that prefixes overlap and lookups hit.
    fn random_addr(rng: &mut SplitMix64, six: bool) -> IpAddr {
        let r = rng.next_u64();
        if six {
            let hot = [
                0x2001_0db8_0000_0000_0000_0000_0000_0000u128,
                0xfd00_0000_0000_0000_0000_0000_0000_0000,
                0,
            ];
            let base = hot[rng.below(3) as usize];
            // Vary bits at a random depth below the hot spot.
            let shift = rng.below(128) as u32;
            let noise = ((u128::from(r) << 64) | u128::from(rng.next_u64())) >> shift;
            IpAddr::V6(Ipv6Addr::from_bits(base ^ noise))
        } else {
            let hot = [0x0a00_0000u32, 0xc0a8_0000, 0];
            let base = hot[rng.below(3) as usize];
            let shift = rng.below(32) as u32;
            IpAddr::V4(Ipv4Addr::from_bits(base ^ ((r as u32) >> shift)))
        }
    }

    fn random_cidr(rng: &mut SplitMix64, six: bool) -> u8 {
        let max = if six { 128 } else { 32 };
        match rng.below(6) {
            0 => 0,
            1 => max,
            _ => rng.below(u64::from(max) + 1) as u8,
        }
    }

    #[test]
    fn matches_naive_model_on_random_operations() {
        let mut rng = SplitMix64::new(0x616c_6c6f_7765_6469);
        // How many lookups matched a /0, some other prefix, or nothing: all must occur.
        let (mut default_hits, mut hits, mut misses) = (0, 0, 0);
        for round in 0..20 {
            let mut t: AllowedIps<u8> = AllowedIps::new();
            let mut m = Model::default();
            for step in 0..1_500 {
                let six = rng.below(2) == 1;
                let addr = random_addr(&mut rng, six);
                let ctx = format!("round {round} step {step} {addr}");
                match rng.below(20) {
                    0..=5 => {
                        let cidr = random_cidr(&mut rng, six);
                        let value = rng.below(8) as u8;
                        assert_eq!(
                            t.insert(p(addr, cidr), value),
                            m.insert(addr, cidr, value),
                            "{ctx}/{cidr}: insert"
                        );
                    }
                    6 => {
                        let cidr = random_cidr(&mut rng, six);
                        assert_eq!(
                            t.remove(p(addr, cidr)),
                            m.remove(addr, cidr),
                            "{ctx}: remove"
                        );
                    }
                    7 if !m.entries.is_empty() => {
                        // Remove a prefix that is present, written with random host bits.
                        let i = rng.below(m.entries.len() as u64) as usize;
                        let (six, x, cidr, _) = m.entries[i];
                        let host = u128::from(rng.next_u64()) >> cidr.min(64);
                        let a = if six {
                            IpAddr::V6(Ipv6Addr::from_bits(x | (host & !mask(!0, 128, cidr))))
                        } else {
                            let bits = (x as u32) | (host as u32 & !(mask(!0, 32, cidr) as u32));
                            IpAddr::V4(Ipv4Addr::from_bits(bits))
                        };
                        assert_eq!(
                            t.remove(p(a, cidr)),
                            m.remove(a, cidr),
                            "{ctx}: remove present"
                        );
                    }
                    8 if rng.below(10) == 0 => {
                        let value = rng.below(8) as u8;
                        t.remove_value(value);
                        m.entries.retain(|e| e.3 != value);
                    }
                    _ => {
                        let expected = m.lookup(addr);
                        match m.longest(addr) {
                            Some(0) => default_hits += 1,
                            Some(_) => hits += 1,
                            None => misses += 1,
                        }
                        assert_eq!(t.lookup(addr), expected, "{ctx}: lookup");
                        match addr {
                            IpAddr::V4(a) => assert_eq!(t.lookup_v4(a.octets()), expected),
                            IpAddr::V6(a) => assert_eq!(t.lookup_v6(&a.octets()), expected),
                        }
                    }
                }
                assert_eq!(t.len(), m.entries.len(), "{ctx}: len");
            }
            // Final state: the same set of prefixes, and each peer's list matches.
            let mut expected: Vec<(Prefix, u8)> = m
                .entries
                .iter()
                .map(|&(six, x, c, v)| {
                    let a = if six {
                        IpAddr::V6(Ipv6Addr::from_bits(x))
                    } else {
                        IpAddr::V4(Ipv4Addr::from_bits(x as u32))
                    };
                    (p(a, c), v)
                })
                .collect();
            expected.sort_by_key(|&(q, _)| (q.addr(), q.len()));
            assert_eq!(
                t.iter().collect::<Vec<_>>(),
                expected,
                "round {round}: iter"
            );
            for value in 0..8 {
                let mine: Vec<Prefix> = expected
                    .iter()
                    .filter(|e| e.1 == value)
                    .map(|e| e.0)
                    .collect();
                assert_eq!(
                    t.prefixes_of(value),
                    mine,
                    "round {round}: prefixes_of({value})"
                );
            }
        }
        assert!(
            default_hits > 500 && hits > 500 && misses > 500,
            "lookups poorly spread: /0 {default_hits}, longer {hits}, none {misses}"
        );
    }
}
