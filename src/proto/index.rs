//! The receiver-index table: our random 32-bit indices -> the peer holding that handshake or
//! session. Indices come from our CSPRNG, so they are already uniform and need no hashing.
//!
//! A peer's indices are removed with its sessions; even one that outlived them would name the
//! removed peer's generation-checked `PeerId`, which finds nothing once the slot is reused.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::peer::PeerId;

/// Uses the index itself as the hash: the indices are random, an attacker cannot pick them.
#[derive(Default)]
pub struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u32(&mut self, i: u32) {
        // Spread into the high bits too, which hashbrown uses for its control bytes.
        self.0 = u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Default)]
#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
pub struct IndexTable {
    map: HashMap<u32, PeerId, BuildHasherDefault<IndexHasher>>,
}

impl IndexTable {
    /// A fresh index for `peer`, distinct from every index in use.
    pub fn allocate<R: rand_core::RngCore + ?Sized>(&mut self, peer: PeerId, rng: &mut R) -> u32 {
        loop {
            let candidate = rng.next_u32();
            if let std::collections::hash_map::Entry::Vacant(e) = self.map.entry(candidate) {
                e.insert(peer);
                return candidate;
            }
        }
    }

    pub fn get(&self, index: u32) -> Option<PeerId> {
        self.map.get(&index).copied()
    }

    pub fn remove(&mut self, index: u32) {
        self.map.remove(&index);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
