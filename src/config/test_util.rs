//! Shared helpers for the config tests: fixed keys and self-cleaning temporary files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ConfigError, ConfigErrors};
use crate::proto::keys::PrivateKey;

/// A valid private key (base64) built from a seed byte, and its public key.
pub(crate) fn key_pair(seed: u8) -> (String, String) {
    let k = PrivateKey::from_bytes([seed; 32]).clamped();
    (k.to_base64(), k.public_key().to_base64())
}

pub(crate) fn public(seed: u8) -> String {
    key_pair(seed).1
}

pub(crate) fn private(seed: u8) -> String {
    key_pair(seed).0
}

/// A file under the system temp dir that is removed when dropped (also when a test fails).
pub(crate) struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub(crate) fn new(tag: &str, contents: &str, mode: u32) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "tandem-config-test-{}-{n}-{tag}",
            std::process::id()
        ));
        std::fs::write(&path, contents).expect("write temp file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .expect("chmod temp file");
        }
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Finds the error reported for `key`, or fails listing everything reported.
pub(crate) fn error_for<'e>(errors: &'e ConfigErrors, key: &str) -> &'e ConfigError {
    errors
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no error for {key}; got:\n{errors}"))
}

/// Asserts that an error for `key` on `line` mentions `needle`.
pub(crate) fn assert_error(errors: &ConfigErrors, key: &str, line: usize, needle: &str) {
    let found = errors
        .iter()
        .any(|e| e.key == key && e.line == Some(line) && e.message.contains(needle));
    assert!(
        found,
        "expected an error for {key} on line {line} containing {needle:?}; got:\n{errors}"
    );
}

pub(crate) fn file(name: &str) -> &Path {
    Path::new(name)
}

/// A directory under the system temp dir, removed with its contents when dropped.
pub(crate) struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "tandem-config-dir-{}-{n}-{tag}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// Writes `contents` to `rel` below the directory (creating parent directories).
    pub(crate) fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.path.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&path, contents).expect("write file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
