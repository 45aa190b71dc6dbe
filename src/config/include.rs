//! `include = ["peers.d/*.toml"]`: which peer files a configuration reads. Patterns are taken
//! from the configuration file's directory; a pattern with wildcards (`*`, `?`, `[...]`) may
//! match nothing (an empty `peers.d/` is a fleet with no clients yet), a literal path must
//! exist. Files are read in a fixed order (the patterns' order, each pattern's matches sorted
//! by name), each once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::compile::At;
use super::error::Diagnostics;

/// True when `pattern` has glob wildcards; otherwise it names one file.
pub(crate) fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// The directory `include` patterns are relative to: the configuration file's.
pub(crate) fn base_dir(config: &Path) -> PathBuf {
    match config.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::new(),
    }
}

/// The files `patterns` name, in order, without repeats; problems are reported at the
/// pattern's line in the configuration file (the current file of `diag`).
pub(crate) fn expand(diag: &mut Diagnostics, patterns: &[At<String>]) -> Vec<PathBuf> {
    let base = base_dir(diag.main_file());
    let mut files: Vec<PathBuf> = Vec::new();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    for at in patterns {
        if at.value.trim().is_empty() {
            diag.error(at.line, &at.key, "an empty include pattern");
            continue;
        }
        let written = Path::new(&at.value);
        if !is_glob(&at.value) {
            let path = base.join(written);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => push_new(&mut files, &mut seen, path),
                Ok(_) => diag.error(
                    at.line,
                    &at.key,
                    format!("{} is not a file", path.display()),
                ),
                Err(e) => diag.error(
                    at.line,
                    &at.key,
                    format!("cannot read included file {}: {e}", path.display()),
                ),
            }
            continue;
        }
        // The directory part is the user's path, not a pattern: escape it.
        let full = if written.is_absolute() || base.as_os_str().is_empty() {
            at.value.clone()
        } else {
            format!(
                "{}/{}",
                glob::Pattern::escape(&base.to_string_lossy()),
                at.value
            )
        };
        let paths = match glob::glob(&full) {
            Ok(paths) => paths,
            Err(e) => {
                diag.error(
                    at.line,
                    &at.key,
                    format!("\"{}\" is not a valid pattern: {}", at.value, e.msg),
                );
                continue;
            }
        };
        let mut matched = Vec::new();
        for entry in paths {
            match entry {
                // Directories (peers.d/old/) are not peer files.
                Ok(path) if path.is_file() => matched.push(path),
                Ok(_) => {}
                Err(e) => diag.error(
                    at.line,
                    &at.key,
                    format!("cannot read {}: {}", e.path().display(), e.error()),
                ),
            }
        }
        matched.sort();
        for path in matched {
            push_new(&mut files, &mut seen, path);
        }
    }
    files
}

fn push_new(files: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>, path: PathBuf) {
    if seen.insert(path.clone()) {
        files.push(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_util::{TempDir, private, public};
    use crate::config::{load, to_toml};

    #[test]
    fn globs_and_literals() {
        assert!(is_glob("peers.d/*.toml"));
        assert!(is_glob("p?.toml"));
        assert!(is_glob("[ab].toml"));
        assert!(!is_glob("peers.d/phone.toml"));
        assert_eq!(base_dir(Path::new("srv.toml")), PathBuf::new());
        assert_eq!(
            base_dir(Path::new("/etc/tandem/srv.toml")),
            Path::new("/etc/tandem")
        );
    }

    fn server(include: &str) -> String {
        format!(
            "# the server\n[interface]\nprivate_key = \"{}\"\naddress = [\"10.5.0.1/24\"]\n\
             include = [{include}]\n\n[[peer]]\nname = \"main-peer\"\n\
             public_key = \"{}\"\nallowed_ips = [\"10.5.0.2/32\"]\n",
            private(1),
            public(2)
        )
    }

    fn peer(name: &str, seed: u8, ip: &str) -> String {
        format!(
            "[[peer]]\nname = \"{name}\"\npublic_key = \"{}\"\nallowed_ips = [\"{ip}\"]\n",
            public(seed)
        )
    }

    #[test]
    fn peers_come_from_matching_files_in_name_order() {
        let dir = TempDir::new("inc-order");
        let config = dir.write("srv.toml", &server("\"peers.d/*.toml\""));
        // Written out of order, plus files the pattern does not match.
        dir.write("peers.d/b.toml", &peer("bee", 4, "10.5.0.4/32"));
        dir.write("peers.d/a.toml", &peer("ay", 3, "10.5.0.3/32"));
        dir.write("peers.d/notes.txt", "not toml at all");
        std::fs::create_dir_all(dir.path.join("peers.d/old.toml")).unwrap();
        let c = load(&config).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = c.peers.iter().map(|p| p.name.as_deref().unwrap()).collect();
        assert_eq!(names, ["main-peer", "ay", "bee"]);
        assert_eq!(c.peers[0].file, None);
        assert_eq!(
            c.peers[1].file.as_deref(),
            Some(dir.path.join("peers.d/a.toml").as_path())
        );
        assert_eq!(
            c.included,
            [
                dir.path.join("peers.d/a.toml"),
                dir.path.join("peers.d/b.toml")
            ]
        );
        assert_eq!(c.interface.include, ["peers.d/*.toml"]);

        // Exported to wg-quick: one file, which the warning says.
        let export = crate::config::to_wg_quick(&c).unwrap();
        assert!(
            export.text.contains("# friendly_name = bee\n"),
            "{}",
            export.text
        );
        assert!(
            export
                .warnings
                .iter()
                .any(|w| w.contains("2 included file(s)")),
            "{:?}",
            export.warnings
        );

        // Written back: the pattern stays, the included peers stay in their files.
        let text = to_toml(&c);
        assert!(text.contains("include = [\"peers.d/*.toml\"]"), "{text}");
        assert!(!text.contains("\"ay\""), "{text}");
        let again = crate::config::parse_toml(&config, &text).unwrap();
        assert_eq!((&again.interface, &again.peers), (&c.interface, &c.peers));
    }

    #[test]
    fn key_files_in_an_included_file_are_relative_to_it() {
        let dir = TempDir::new("inc-keyfile");
        let config = dir.write("srv.toml", &server("\"peers.d/*.toml\""));
        let psk = crate::proto::keys::PresharedKey::from_bytes([7; 32]);
        let psk_path = dir.write("peers.d/ay.psk", &psk.to_base64());
        std::fs::set_permissions(
            &psk_path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )
        .unwrap();
        dir.write(
            "peers.d/a.toml",
            &format!(
                "{}preshared_key_file = \"ay.psk\"\n",
                peer("ay", 3, "10.5.0.3/32")
            ),
        );
        let c = load(&config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.peers[1].preshared_key, Some(psk));
        assert_eq!(
            c.peers[1].preshared_key_file.as_deref(),
            Some(psk_path.as_path())
        );
    }

    #[test]
    fn a_glob_may_match_nothing_a_literal_must_exist() {
        let dir = TempDir::new("inc-empty");
        let config = dir.write("srv.toml", &server("\"peers.d/*.toml\""));
        let c = load(&config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.peers.len(), 1);
        assert!(c.included.is_empty());

        let config = dir.write("srv.toml", &server("\"peers.d/*.toml\", \"phone.toml\""));
        let e = load(&config).unwrap_err();
        assert_eq!(e.len(), 1, "{e}");
        let err = &e.0[0];
        assert_eq!((err.line, err.key.as_str()), (Some(5), "interface.include"));
        assert!(err.message.contains("phone.toml"), "{err}");
        assert!(err.message.contains("No such file"), "{err}");

        let config = dir.write("srv.toml", &server("\"[bad\""));
        let e = load(&config).unwrap_err();
        assert!(e.0[0].message.contains("not a valid pattern"), "{e}");
    }

    #[test]
    fn errors_name_the_included_file_and_line_all_at_once() {
        let dir = TempDir::new("inc-errors");
        let mut main = server("\"peers.d/*.toml\"");
        main = main.replace("address = [\"10.5.0.1/24\"]", "address = [\"10.5.0.1/40\"]");
        let config = dir.write("srv.toml", &main);
        dir.write("peers.d/a.toml", &peer("ay", 3, "10.5.0.3/32"));
        dir.write(
            "peers.d/b.toml",
            "[[peer]]\nname = \"bee\"\npublic_key = \"AAAA\"\nallowed_ips = [\"10.5.0.4/32\"]\n\
             [interface]\nmtu = 1400\n",
        );
        let e = load(&config).unwrap_err();
        let shown = e.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 3, "{shown}");
        // The main file's errors first, then the included files' in order.
        assert!(
            lines[0].contains("srv.toml:4: interface.address"),
            "{shown}"
        );
        assert!(
            lines[1].contains("peers.d/b.toml:3: peer[1].public_key: decodes to 3 bytes"),
            "{shown}"
        );
        assert!(
            lines[2].contains("peers.d/b.toml:5: interface: an included file holds [[peer]]"),
            "{shown}"
        );
    }

    #[test]
    fn duplicates_across_files_name_both_places() {
        let dir = TempDir::new("inc-dups");
        let config = dir.write("srv.toml", &server("\"peers.d/*.toml\""));
        dir.write("peers.d/a.toml", &peer("ay", 3, "10.5.0.3/32"));
        // Same key as a.toml, same address as the main file's peer, same name as a.toml.
        dir.write(
            "peers.d/b.toml",
            &format!(
                "# b\n[[peer]]\nname = \"ay\"\npublic_key = \"{}\"\nallowed_ips = [\"10.5.0.2/32\"]\n",
                public(3)
            ),
        );
        let e = load(&config).unwrap_err();
        let a = dir.path.join("peers.d/a.toml").display().to_string();
        let main = config.display().to_string();
        let b = dir.path.join("peers.d/b.toml");
        let in_b: Vec<_> = e.iter().filter(|e| e.file == b).collect();
        assert_eq!(in_b.len(), 3, "{e}");
        let find = |key: &str| {
            in_b.iter()
                .find(|e| e.key == key)
                .unwrap_or_else(|| panic!("no {key}: {e}"))
        };
        let name = find("peer[1].name");
        assert_eq!(name.line, Some(3));
        assert!(name.message.contains(&format!("peer[1] ({a}:2)")), "{name}");
        let key = find("peer[1].public_key");
        assert!(
            key.message
                .contains(&format!("duplicate peer: peer[1] \"ay\" ({a}:3)")),
            "{key}"
        );
        let ips = find("peer[1].allowed_ips");
        assert!(
            ips.message
                .contains(&format!("peer[1] \"main-peer\" ({main}:10)")),
            "{ips}"
        );
    }
}
