//! The device's peers: a slot vector with a free list, and a generation per slot, so that a
//! [`PeerId`] names one peer for good. Slots are reused when peers come and go, but a reused
//! slot has a new generation: a stale id (kept in a job, an event, a caller's map) finds
//! nothing instead of reaching the peer that now lives in its slot.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A handle to a peer inside one `Device`: its slot and the slot's generation when the peer
/// was added. Opaque to callers; valid until the peer is removed, and never again after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId {
    slot: u32,
    generation: u32,
}

#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
struct Slot<T> {
    /// Bumped on every removal, so ids handed out for earlier occupants stop matching.
    /// Wrapping: a stale id would have to outlive 2^32 reuses of its slot to match again.
    generation: u32,
    value: Option<T>,
    /// Handed out mutably since the last [`PeerTable::take_touched`] (listed in `touched`).
    touched: bool,
}

#[cfg_attr(any(test, feature = "testkit"), derive(Clone))]
pub(crate) struct PeerTable<T> {
    slots: Vec<Slot<T>>,
    /// Free slots, lowest first: peers keep the order they had before (slot order), and a
    /// removed peer's slot is the next to be filled, as before generations existed.
    free: BinaryHeap<Reverse<u32>>,
    /// Slots handed out mutably since the last [`PeerTable::take_touched`], each once: the
    /// device's timer schedule looks only at these peers, since a peer's timers can change
    /// only through a mutable borrow. (So no call site can forget to reschedule.)
    touched: Vec<u32>,
}

impl<T> Default for PeerTable<T> {
    fn default() -> Self {
        PeerTable {
            slots: Vec::new(),
            free: BinaryHeap::new(),
            touched: Vec::new(),
        }
    }
}

impl<T> PeerTable<T> {
    /// Stores `value` in the lowest free slot (or a new one) and returns its id.
    pub fn insert(&mut self, value: T) -> PeerId {
        if let Some(Reverse(slot)) = self.free.pop()
            && let Some(s) = self.slots.get_mut(slot as usize)
        {
            s.value = Some(value);
            if !s.touched {
                s.touched = true;
                self.touched.push(slot);
            }
            return PeerId {
                slot,
                generation: s.generation,
            };
        }
        // More than 2^32 peers cannot fit in memory anyway.
        let slot = self.slots.len() as u32;
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
            touched: true,
        });
        self.touched.push(slot);
        PeerId {
            slot,
            generation: 0,
        }
    }

    /// Makes room for `additional` more peers than the free slots hold.
    pub fn reserve(&mut self, additional: usize) {
        self.slots
            .reserve(additional.saturating_sub(self.free.len()));
    }

    /// The peer `id` names, if it is still there.
    pub fn get(&self, id: PeerId) -> Option<&T> {
        let s = self.slots.get(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.value.as_ref()
    }

    /// The peer `id` names, mutably; noted as touched (see [`PeerTable::take_touched`]).
    pub fn get_mut(&mut self, id: PeerId) -> Option<&mut T> {
        let s = self.slots.get_mut(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        let value = s.value.as_mut()?;
        if !s.touched {
            s.touched = true;
            self.touched.push(id.slot);
        }
        Some(value)
    }

    /// [`PeerTable::get_mut`] without noting the peer: for the one that reads the notes.
    pub fn get_mut_untracked(&mut self, id: PeerId) -> Option<&mut T> {
        let s = self.slots.get_mut(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.value.as_mut()
    }

    /// Moves the ids of the peers touched since the last call into `out` (cleared first),
    /// in the order they were first touched; removed ones are left out.
    pub fn take_touched(&mut self, out: &mut Vec<PeerId>) {
        out.clear();
        for slot in self.touched.drain(..) {
            if let Some(s) = self.slots.get_mut(slot as usize) {
                s.touched = false;
                if s.value.is_some() {
                    out.push(PeerId {
                        slot,
                        generation: s.generation,
                    });
                }
            }
        }
    }

    /// Takes the peer out; its id (and every copy of it) is dead from here on.
    pub fn remove(&mut self, id: PeerId) -> Option<T> {
        let s = self.slots.get_mut(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        let value = s.value.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(Reverse(id.slot));
        Some(value)
    }

    /// How many slots there are (occupied or not): the bound for [`PeerTable::id_at`].
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The id of the peer in slot `slot`, if one lives there. Lets a caller walk the table
    /// while it mutates the device in between (no borrow is held, nothing is allocated).
    pub fn id_at(&self, slot: usize) -> Option<PeerId> {
        let s = self.slots.get(slot)?;
        s.value.as_ref()?;
        Some(PeerId {
            slot: slot as u32,
            generation: s.generation,
        })
    }

    /// Every peer with its id, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (PeerId, &T)> {
        self.slots.iter().enumerate().filter_map(|(slot, s)| {
            let id = PeerId {
                slot: slot as u32,
                generation: s.generation,
            };
            s.value.as_ref().map(|v| (id, v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_id_never_reaches_the_peer_reusing_its_slot() {
        let mut t = PeerTable::default();
        let a = t.insert("a");
        let b = t.insert("b");
        assert_eq!(t.remove(a), Some("a"));
        let c = t.insert("c");
        assert_eq!(c.slot, a.slot, "the freed slot is reused");
        assert_ne!(c, a);
        assert_eq!(t.get(a), None);
        assert_eq!(t.get_mut(a), None);
        assert_eq!(t.remove(a), None, "a stale id removes nothing");
        assert_eq!(t.get(c), Some(&"c"));
        assert_eq!(t.get(b), Some(&"b"));
        assert_eq!(t.iter().count(), 2);
        assert_eq!(
            t.iter().map(|(id, v)| (id, *v)).collect::<Vec<_>>(),
            vec![(c, "c"), (b, "b")]
        );
    }

    #[test]
    fn lowest_free_slot_first_and_ids_by_slot() {
        let mut t = PeerTable::default();
        let ids: Vec<_> = (0..4).map(|i| t.insert(i)).collect();
        t.remove(ids[2]);
        t.remove(ids[1]);
        assert_eq!(t.insert(10).slot, 1);
        assert_eq!(t.insert(20).slot, 2);
        assert_eq!(t.insert(30).slot, 4);
        assert_eq!(t.slot_count(), 5);
        assert_eq!(t.id_at(0), Some(ids[0]));
        assert_eq!(t.id_at(5), None);
        t.remove(ids[3]);
        assert_eq!(t.id_at(3), None);
        assert!(t.iter().map(|(_, v)| v).eq([0, 10, 20, 30].iter()));
    }

    /// Against a naive model: a map from every id ever issued to what it should find.
    #[test]
    fn matches_a_naive_model() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut t = PeerTable::default();
        let mut issued: Vec<(PeerId, Option<u32>)> = Vec::new();
        for n in 0..2000u32 {
            if issued.is_empty() || rng.random_bool(0.55) {
                issued.push((t.insert(n), Some(n)));
            } else {
                let i = rng.random_range(0..issued.len());
                let (id, expect) = issued[i];
                assert_eq!(t.remove(id), expect);
                issued[i].1 = None;
            }
            let live = issued.iter().filter(|(_, v)| v.is_some()).count();
            assert_eq!(t.iter().count(), live);
        }
        for (id, expect) in issued {
            assert_eq!(t.get(id).copied(), expect);
        }
    }
}
