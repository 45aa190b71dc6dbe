//! The command line: one `tandem` binary with subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "A userspace WireGuard daemon",
    long_about = "A userspace WireGuard daemon: a sans-IO protocol core, an epoll data-plane thread and a tokio control thread.\n\n\
                  `tandem [-f] IFNAME` works like wireguard-go: it creates interface IFNAME and \
                  its UAPI socket /var/run/wireguard/IFNAME.sock, to be configured by `wg` and \
                  `ip` (so WG_QUICK_USERSPACE_IMPLEMENTATION=tandem wg-quick up works).\n\n\
                  Exit status: 0 success, 1 error, 2 usage, 78 invalid configuration.",
    override_usage = "tandem [OPTIONS] <COMMAND>\n       tandem [OPTIONS] [-f] <IFNAME>",
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// Log filter, e.g. `info`, `debug` or `tandem=debug,warn` (overrides RUST_LOG; default
    /// info).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// With IFNAME: stay in the foreground and log to stderr (default: detach once the
    /// interface and its socket exist).
    #[arg(short = 'f', long, requires = "ifname")]
    pub foreground: bool,

    /// With IFNAME: serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9586), GET /metrics.
    /// (`tandem up` takes it from the config's `[metrics] listen`.)
    #[arg(long, value_name = "ADDR", requires = "ifname")]
    pub metrics: Option<SocketAddr>,

    /// Create interface IFNAME (wireguard-go style) and serve its UAPI socket until the
    /// interface or the socket is deleted, or SIGINT/SIGTERM.
    #[arg(value_name = "IFNAME", required = true, value_parser = interface_name)]
    pub ifname: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// Parses the command line, exiting with a usage error (status 2) as clap does.
    pub fn parse_checked() -> Cli {
        let cli = Cli::parse();
        if let Err(e) = cli.check() {
            e.exit();
        }
        cli
    }

    /// What clap cannot express here: IFNAME and `-f` go without a subcommand.
    pub fn check(&self) -> Result<(), clap::Error> {
        if self.command.is_some() && (self.foreground || self.ifname.is_some()) {
            return Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "IFNAME and -f cannot be used with a subcommand",
            ));
        }
        Ok(())
    }
}

/// IFNAME must be a valid interface name (it also names the socket file).
fn interface_name(text: &str) -> Result<String, String> {
    tandem::config::check_interface_name(text)
        .map(|()| text.to_owned())
        .map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bring up the interface of CONFIG and run it in the foreground until SIGINT or SIGTERM
    /// (SIGHUP reloads CONFIG); `wg` sees it through /var/run/wireguard/NAME.sock.
    Up {
        /// TOML config, or a wg-quick `.conf` file.
        config: PathBuf,
        /// Turn every offload off (TUN GSO/GRO and UDP GSO/GRO), whatever the config says.
        #[arg(long)]
        no_offload: bool,
        /// Once the interface is up (and PostUp has run), switch to this user and its group
        /// (no supplementary groups), keeping CAP_NET_ADMIN only; reloads, `wg set` and the
        /// UAPI socket keep working. Without it the daemon stays root, with CAP_NET_ADMIN only.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Enter the network namespace at PATH first (`tandem demo` starts its daemons so,
        /// without `ip netns exec`).
        #[arg(long, value_name = "PATH", hide = true)]
        netns: Option<PathBuf>,
    },
    /// Check CONFIG and print every problem (exit status 78 when it is invalid).
    Check { config: PathBuf },
    /// Print CONFIG (e.g. a wg-quick `.conf` file) as tandem TOML; warnings for settings
    /// tandem does not apply (DNS, hooks, SaveConfig) go to stderr.
    Import { config: PathBuf },
    /// Print CONFIG as a wg-quick `.conf` (the inverse of `import`); what wg-quick cannot
    /// hold is named on stderr (key files are written inline, peer names as
    /// `# friendly_name =` comments).
    Export { config: PathBuf },
    /// Add or remove a peer of a TOML config and make the running daemon use it at once.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Show interfaces the way `wg show` does, with peer names from tandem's config (all
    /// interfaces with a socket in /var/run/wireguard when IFACE is not given).
    Show {
        iface: Option<String>,
        /// Print JSON instead (the schema is in the README): everything `wg show dump` has
        /// but the private key, plus peer names, a connected flag and drop counters.
        #[arg(long)]
        json: bool,
    },
    /// Print a new private key (base64), like `wg genkey`.
    Genkey,
    /// Read a private key on stdin and print its public key, like `wg pubkey`.
    Pubkey,
    /// Print a new preshared key (base64), like `wg genpsk`.
    Genpsk,
    /// Two daemons in two network namespaces: handshake, UDP echo round trips, a TCP
    /// transfer, then clean up (needs root).
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
pub enum PeerCommand {
    /// Add a peer to CONFIG (a new file in the first `include` directory, else a [[peer]]
    /// block in CONFIG keeping its comments), reload the running daemon and print the
    /// client's wg-quick `.conf`.
    Add {
        config: PathBuf,
        /// The peer's name (unique).
        #[arg(long)]
        name: String,
        /// The client's public key (base64); default: generate a key pair and put the
        /// private key in the printed `.conf`.
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
        /// `auto` (the next free address in each of the interface's subnets) or addresses,
        /// comma-separated.
        #[arg(long, default_value = "auto", value_name = "auto|ADDR[,ADDR]")]
        address: String,
        /// HOST:PORT (or HOST, with the server's listen_port) the client connects to.
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: Option<String>,
        /// Route only the server's networks through the tunnel (default: everything).
        #[arg(long)]
        split: bool,
        /// Also generate a preshared key for this peer.
        #[arg(long)]
        psk: bool,
        /// Print the `.conf` as a QR code too (for the WireGuard phone apps).
        #[arg(long)]
        qr: bool,
        /// Write the QR code to this file (.png or .svg).
        #[arg(long, value_name = "FILE")]
        qr_file: Option<PathBuf>,
    },
    /// Remove the peer named NAME (or with public key KEY) from CONFIG or its peer file, and
    /// reload the running daemon.
    Remove {
        config: PathBuf,
        #[arg(value_name = "NAME|KEY")]
        peer: String,
    },
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
        assert!(
            matches!(cli.command, Some(Command::Up { config, no_offload: false, user: None, netns: None }) if config.ends_with("wg0.toml"))
        );
        assert!(matches!(
            Cli::try_parse_from(["tandem", "up", "--user", "tandem", "wg0.toml"])
                .expect("parse")
                .command,
            Some(Command::Up { user: Some(u), .. }) if u == "tandem"
        ));
        let cli = Cli::try_parse_from(["tandem", "check", "x.conf", "--log-level", "warn"])
            .expect("global flag after the subcommand");
        assert_eq!(cli.log_level.as_deref(), Some("warn"));
        assert!(matches!(
            Cli::try_parse_from(["tandem", "demo"])
                .expect("parse")
                .command,
            Some(Command::Demo { mib: 64 })
        ));
        assert!(matches!(
            Cli::try_parse_from(["tandem", "show"])
                .expect("parse")
                .command,
            Some(Command::Show {
                iface: None,
                json: false
            })
        ));
        assert!(matches!(
            Cli::try_parse_from(["tandem", "show", "wg0"]).expect("parse").command,
            Some(Command::Show { iface: Some(i), json: false }) if i == "wg0"
        ));
        let cli = Cli::try_parse_from(["tandem", "-f", "--metrics", "127.0.0.1:9586", "wg0"])
            .expect("--metrics with IFNAME");
        assert_eq!(cli.metrics, Some("127.0.0.1:9586".parse().expect("addr")));
        assert!(Cli::try_parse_from(["tandem", "--metrics", "127.0.0.1:9586"]).is_err());
        assert!(Cli::try_parse_from(["tandem", "--metrics", "nope", "wg0"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["tandem", "show", "--json", "wg0"]).expect("parse").command,
            Some(Command::Show { iface: Some(i), json: true }) if i == "wg0"
        ));
        assert!(matches!(
            Cli::try_parse_from(["tandem", "import", "wg0.conf"]).expect("parse").command,
            Some(Command::Import { config }) if config.ends_with("wg0.conf")
        ));
        assert!(matches!(
            Cli::try_parse_from(["tandem", "export", "a.toml"]).expect("parse").command,
            Some(Command::Export { config }) if config.ends_with("a.toml")
        ));
        let cli = Cli::try_parse_from([
            "tandem",
            "peer",
            "add",
            "srv.toml",
            "--name",
            "phone",
            "--split",
            "--qr-file",
            "p.png",
        ])
        .expect("peer add");
        assert!(matches!(
            cli.command,
            Some(Command::Peer(PeerCommand::Add { name, address, split: true, qr: false, .. }))
                if name == "phone" && address == "auto"
        ));
        assert!(
            Cli::try_parse_from(["tandem", "peer", "add", "srv.toml"]).is_err(),
            "--name"
        );
        assert!(matches!(
            Cli::try_parse_from(["tandem", "peer", "remove", "srv.toml", "phone"]).expect("parse").command,
            Some(Command::Peer(PeerCommand::Remove { peer, .. })) if peer == "phone"
        ));
        assert!(
            Cli::try_parse_from(["tandem", "up"]).is_err(),
            "CONFIG is required"
        );
        assert!(Cli::try_parse_from(["tandem", "demo", "--mib", "0"]).is_err());
    }

    #[test]
    fn wireguard_go_command_line() {
        let cli = Cli::try_parse_from(["tandem", "wg0"]).expect("bare interface name");
        assert_eq!(
            (cli.ifname.as_deref(), cli.foreground, cli.command.is_none()),
            (Some("wg0"), false, true)
        );
        for args in [
            &["tandem", "-f", "wg1"][..],
            &["tandem", "--foreground", "wg1"],
            &["tandem", "wg1", "-f"],
        ] {
            let cli = Cli::try_parse_from(args).expect("foreground");
            assert_eq!((cli.ifname.as_deref(), cli.foreground), (Some("wg1"), true));
        }
        let cli = Cli::try_parse_from(["tandem", "--log-level", "debug", "-f", "wg2"])
            .expect("with a log level");
        assert_eq!(cli.log_level.as_deref(), Some("debug"));
        // Subcommand names stay subcommands; invalid names and missing arguments are usage
        // errors.
        assert!(matches!(
            Cli::try_parse_from(["tandem", "genkey"])
                .expect("parse")
                .command,
            Some(Command::Genkey)
        ));
        for bad in [
            &["tandem"][..],
            &["tandem", "-f"],
            &["tandem", "much-too-long-ifname"],
            &["tandem", "a/b"],
            &["tandem", "wg0", "wg1"],
            &["tandem", "-f", "up", "x.toml"],
        ] {
            let parsed = Cli::try_parse_from(bad);
            assert!(
                parsed.is_err() || parsed.as_ref().is_ok_and(|c| c.check().is_err()),
                "{bad:?}"
            );
        }
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
