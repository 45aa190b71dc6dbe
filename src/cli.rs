//! The command line: one `tandem` binary with subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "A userspace WireGuard daemon",
    long_about = "A userspace WireGuard daemon: a sans-IO protocol core and a thin tokio driver.\n\n\
                  Exit status: 0 success, 1 error, 2 usage, 78 invalid configuration."
)]
pub struct Cli {
    /// Log filter, e.g. `info`, `debug` or `tandem=debug,warn` (overrides RUST_LOG; default
    /// info).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bring up the interface of CONFIG and run it in the foreground until SIGINT or SIGTERM
    /// (SIGHUP reloads CONFIG).
    Up {
        /// TOML config, or a wg-quick `.conf` file.
        config: PathBuf,
    },
    /// Check CONFIG and print every problem (exit status 78 when it is invalid).
    Check { config: PathBuf },
    /// Print a new private key (base64), like `wg genkey`.
    Genkey,
    /// Read a private key on stdin and print its public key, like `wg pubkey`.
    Pubkey,
    /// Print a new preshared key (base64), like `wg genpsk`.
    Genpsk,
    /// Two daemons in two network namespaces: handshake, ping, a TCP transfer, then clean up
    /// (needs root).
    Demo {
        /// MiB to move over TCP through the tunnel.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
        mib: u64,
    },
    /// Helpers the demo and the tests run inside network namespaces.
    #[command(hide = true, subcommand)]
    DemoHelper(Helper),
}

#[derive(Debug, Subcommand)]
pub enum Helper {
    /// Accept one TCP connection and read it to the end.
    Recv {
        #[arg(long)]
        listen: SocketAddr,
        /// Write what arrives to this file...
        #[arg(long, conflicts_with = "pattern_seed")]
        out: Option<PathBuf>,
        /// ...or check it against the pattern with this seed (then `--bytes` is expected).
        #[arg(long, requires = "bytes")]
        pattern_seed: Option<u64>,
        #[arg(long)]
        bytes: Option<u64>,
        /// Seconds to wait for the connection and for each read.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Connect over TCP and send a file or the pattern.
    Send {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, conflicts_with = "pattern_seed")]
        file: Option<PathBuf>,
        #[arg(long, requires = "bytes")]
        pattern_seed: Option<u64>,
        #[arg(long)]
        bytes: Option<u64>,
        /// Seconds to keep retrying the connection, and for each write.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn subcommands_parse() {
        let cli = Cli::try_parse_from([
            "tandem",
            "--log-level",
            "debug",
            "up",
            "/etc/tandem/wg0.toml",
        ])
        .expect("parse");
        assert_eq!(cli.log_level.as_deref(), Some("debug"));
        assert!(matches!(cli.command, Command::Up { config } if config.ends_with("wg0.toml")));
        let cli = Cli::try_parse_from(["tandem", "check", "x.conf", "--log-level", "warn"])
            .expect("global flag after the subcommand");
        assert_eq!(cli.log_level.as_deref(), Some("warn"));
        assert!(matches!(
            Cli::try_parse_from(["tandem", "demo"])
                .expect("parse")
                .command,
            Command::Demo { mib: 64 }
        ));
        assert!(
            Cli::try_parse_from(["tandem", "up"]).is_err(),
            "CONFIG is required"
        );
        assert!(Cli::try_parse_from(["tandem", "demo", "--mib", "0"]).is_err());
    }

    #[test]
    fn helper_flags_are_exclusive() {
        assert!(
            Cli::try_parse_from([
                "tandem",
                "demo-helper",
                "send",
                "--connect",
                "10.0.0.1:1",
                "--file",
                "f",
                "--pattern-seed",
                "1",
                "--bytes",
                "5",
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "tandem",
                "demo-helper",
                "recv",
                "--listen",
                "10.0.0.1:1",
                "--pattern-seed",
                "1",
            ])
            .is_err(),
            "a pattern needs --bytes"
        );
    }
}
