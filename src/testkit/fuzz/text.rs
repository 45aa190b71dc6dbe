//! Fuzz bodies for the text inputs: TOML and wg-quick configs, UAPI requests and replies.

/// The text targets (name, body).
pub const TARGETS: &[super::Target] = &[];
