//! A full tunnel the wg-quick way (its `add_default`), as kernel objects netconf can add,
//! recognise and remove one at a time.
//!
//! For each address family in which a peer owns the default route (`/0`), with the firewall
//! mark M on tandem's own UDP sockets:
//! - a default route through the interface in routing table M;
//! - the rule `not fwmark M lookup M`: every packet except tandem's own (marked) ones takes
//!   that default route, so the encrypted packets to the server still leave by the physical
//!   link;
//! - the rule `lookup main suppress_prefixlength 0`: main's routes other than its default one
//!   (the LAN's, the on-link prefixes) are still used, before the rule above.
//!
//! The rules carry tandem's protocol number ([`RULE_PROTOCOL`]) and the suppress rule carries
//! the mark as `fwmark M/0` (a mask of 0 matches every packet, so it changes nothing), so both
//! rules of one tunnel are recognisable: after a `kill -9`, the next start finds and replaces
//! exactly the rules of its own mark and leaves every other rule alone. The kernel picks the
//! priorities as it does for wg-quick's `ip rule add` (just above the first non-local rule),
//! and the suppress rule is added last, so it comes first.

use std::fmt;

use super::NetconfError;

/// The routing protocol number on tandem's policy rules ("proto 116" in `ip rule`): not one
/// of iproute2's registered numbers, so no other tool's rule carries it.
pub const RULE_PROTOCOL: u8 = 116;

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// The full tunnel an interface plan asks for: the mark (which is also the table) and the
/// families that have a `/0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullTunnel {
    pub mark: u32,
    pub v4: bool,
    pub v6: bool,
}

/// One kernel object of a full tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyPart {
    /// The default route through the interface in table `table` (= the mark).
    DefaultRoute { family: Family, table: u32 },
    /// `not fwmark MARK lookup MARK`.
    NotMarked { family: Family, mark: u32 },
    /// `fwmark MARK/0 lookup main suppress_prefixlength 0` (the mark only as a tag).
    SuppressMainDefault { family: Family, mark: u32 },
}

/// A part as it is in place: for a rule, the priority the kernel gave it (when known), so
/// that undoing its removal puts it back exactly where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Placed {
    pub part: PolicyPart,
    /// None: let the kernel choose (on add), or any priority (on delete).
    pub priority: Option<u32>,
}

impl Placed {
    /// A part to add where the kernel puts it.
    pub fn new(part: PolicyPart) -> Placed {
        Placed {
            part,
            priority: None,
        }
    }
}

impl fmt::Display for Placed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.priority {
            Some(p) if self.part.is_rule() => write!(f, "{} (priority {p})", self.part),
            _ => write!(f, "{}", self.part),
        }
    }
}

impl PolicyPart {
    pub fn family(self) -> Family {
        match self {
            PolicyPart::DefaultRoute { family, .. }
            | PolicyPart::NotMarked { family, .. }
            | PolicyPart::SuppressMainDefault { family, .. } => family,
        }
    }

    /// Whether this part is a policy rule (not a route).
    pub fn is_rule(self) -> bool {
        !matches!(self, PolicyPart::DefaultRoute { .. })
    }
}

impl fmt::Display for PolicyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PolicyPart::DefaultRoute { family, table } => {
                write!(f, "{family} default route in table {table}")
            }
            PolicyPart::NotMarked { family, mark } => {
                write!(f, "{family} rule `not fwmark {mark} lookup {mark}`")
            }
            PolicyPart::SuppressMainDefault { family, .. } => {
                write!(f, "{family} rule `lookup main suppress_prefixlength 0`")
            }
        }
    }
}

impl FullTunnel {
    /// The families asked for, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = Family> {
        [(self.v4, Family::V4), (self.v6, Family::V6)]
            .into_iter()
            .filter_map(|(on, family)| on.then_some(family))
    }

    /// The kernel objects, in the order they are added: per family the route before the
    /// rules that send traffic to it, and the suppress rule last (the kernel puts a rule
    /// without a priority before the others, so it is consulted first).
    pub fn parts(&self) -> Vec<PolicyPart> {
        let mark = self.mark;
        self.families()
            .flat_map(|family| {
                [
                    PolicyPart::DefaultRoute {
                        family,
                        table: mark,
                    },
                    PolicyPart::NotMarked { family, mark },
                    PolicyPart::SuppressMainDefault { family, mark },
                ]
            })
            .collect()
    }

    /// A mark that names a routing table that is not one of the kernel's own: 0 is no mark
    /// (and RT_TABLE_UNSPEC), 253..=255 are the default, main and local tables.
    pub fn check(&self) -> Result<(), NetconfError> {
        if self.mark == 0 || (253..=255).contains(&self.mark) {
            return Err(NetconfError::ReservedTable(self.mark));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_come_route_first_suppress_last_per_family() {
        let ft = FullTunnel {
            mark: 51820,
            v4: true,
            v6: true,
        };
        let parts = ft.parts();
        assert_eq!(parts.len(), 6);
        assert_eq!(
            parts[..3],
            [
                PolicyPart::DefaultRoute {
                    family: Family::V4,
                    table: 51820
                },
                PolicyPart::NotMarked {
                    family: Family::V4,
                    mark: 51820
                },
                PolicyPart::SuppressMainDefault {
                    family: Family::V4,
                    mark: 51820
                },
            ]
        );
        assert!(parts[3..].iter().all(|p| p.family() == Family::V6));
        let v6_only = FullTunnel { v4: false, ..ft };
        assert!(v6_only.parts().iter().all(|p| p.family() == Family::V6));
    }

    #[test]
    fn kernel_tables_are_not_a_mark() {
        for mark in [0, 253, 254, 255] {
            let ft = FullTunnel {
                mark,
                v4: true,
                v6: false,
            };
            assert!(
                matches!(ft.check(), Err(NetconfError::ReservedTable(m)) if m == mark),
                "{mark}"
            );
        }
        for mark in [1, 252, 256, 51820, u32::MAX] {
            let ft = FullTunnel {
                mark,
                v4: false,
                v6: true,
            };
            assert!(ft.check().is_ok(), "{mark}");
        }
    }
}
