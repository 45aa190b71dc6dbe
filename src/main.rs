//! `tandem`: the command line. Parses arguments, sets up logging, runs one command and turns
//! its outcome into the exit status; an error is printed once, with its cause chain.

mod cli;

use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, Helper, PeerCommand};
use tandem::config::{self, ConfigErrors};
use tandem::daemon::{self, EXIT_CONFIG, demo, detach, helper, status};
use tandem::keygen;
use tandem::os;
use tandem::provision;

fn main() -> ExitCode {
    let cli = Cli::parse_checked();
    if let Err(e) = init_logging(cli.log_level.as_deref()) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Some(command) => run(command),
        None => match cli.ifname {
            Some(ifname) => run_interface(
                &ifname,
                cli.foreground,
                cli.log_level.as_deref(),
                cli.metrics,
            ),
            // clap requires one or the other.
            None => Err(anyhow::anyhow!("give a command or an interface name")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ConfigErrors>() {
            // Already in `FILE:LINE: KEY: MESSAGE` form, one per line.
            Some(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_CONFIG)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Logs go to stderr through `tracing`. `--log-level` wins over `RUST_LOG`; the default is
/// `info`. No colours or timestamps when stderr is not a terminal or goes to the journal
/// (which adds its own).
fn init_logging(level: Option<&str>) -> anyhow::Result<()> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).with_context(|| format!("invalid --log-level {l:?}"))?,
        None => match std::env::var("RUST_LOG") {
            Ok(v) if !v.trim().is_empty() => {
                EnvFilter::try_new(&v).with_context(|| format!("invalid RUST_LOG {v:?}"))?
            }
            _ => EnvFilter::new("info"),
        },
    };
    let plain = !std::io::stderr().is_terminal() || std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!plain);
    if plain {
        builder.without_time().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Loads and checks a config; warnings are logged.
fn load(path: &Path) -> anyhow::Result<config::Config> {
    Ok(config::load(path)?)
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up {
            config,
            no_offload,
            user,
            netns,
        } => {
            // First, while this is the only thread: every thread started later is born in
            // the namespace (setns acts per thread).
            if let Some(path) = &netns {
                os::enter_netns(path)
                    .with_context(|| format!("cannot enter the namespace {}", path.display()))?;
            }
            let mut loaded = load(&config)?;
            if no_offload {
                loaded.interface.offload = false;
            }
            daemon_runtime()?.block_on(daemon::up(&config, loaded, no_offload, user.as_deref()))
        }
        Command::Check { config } => {
            let loaded = load(&config)?;
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            println!(
                "{}: ok (interface {}, {} peer(s))",
                config.display(),
                loaded.interface.name,
                loaded.peers.len()
            );
            // Which peer files `include` matched, so a pattern that matches nothing shows.
            // (Possibly thousands of lines: a closed pipe is an error, not a panic.)
            let mut per_file: std::collections::HashMap<&Path, usize> = Default::default();
            for p in &loaded.peers {
                if let Some(f) = &p.file {
                    *per_file.entry(f.as_path()).or_default() += 1;
                }
            }
            let mut out = std::io::stdout().lock();
            for file in &loaded.included {
                let n = per_file.get(file.as_path()).copied().unwrap_or(0);
                writeln!(out, "include: {} ({n} peer(s))", file.display())?;
            }
            drop(out);
            // What `tandem up` will run and set besides the tunnel, so a typo shows now.
            let i = &loaded.interface;
            if !i.dns.is_empty() || !i.dns_search.is_empty() {
                let servers: Vec<String> = i.dns.iter().map(ToString::to_string).collect();
                println!(
                    "dns: {} (search: {})",
                    servers.join(", "),
                    i.dns_search.join(", ")
                );
            }
            for (stage, commands) in [
                ("pre_up", &i.hooks.pre_up),
                ("post_up", &i.hooks.post_up),
                ("pre_down", &i.hooks.pre_down),
                ("post_down", &i.hooks.post_down),
            ] {
                for command in commands {
                    println!("{stage}: {}", daemon::hooks::expand(command, &i.name));
                }
            }
            Ok(())
        }
        Command::Import { config } => {
            let loaded = load(&config)?;
            // Each warning names the file and line of the setting tandem does not apply.
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            let mut out = std::io::stdout().lock();
            out.write_all(config::to_toml(&loaded).as_bytes())?;
            out.flush()?;
            Ok(())
        }
        Command::Export { config } => {
            let loaded = load(&config)?;
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            let export = config::to_wg_quick(&loaded).map_err(|errors| {
                anyhow::anyhow!(
                    "{} cannot be written as a wg-quick file:\n{}",
                    config.display(),
                    errors.join("\n")
                )
            })?;
            for w in &export.warnings {
                eprintln!("warning: {w}");
            }
            let mut out = std::io::stdout().lock();
            out.write_all(export.text.as_bytes())?;
            out.flush()?;
            Ok(())
        }
        Command::Peer(p) => run_peer(p),
        Command::Show { iface, json } => status::show(iface.as_deref(), json),
        Command::Genkey => print_line(&keygen::genkey()?),
        Command::Genpsk => print_line(&keygen::genpsk()?),
        Command::Pubkey => {
            let mut input = String::new();
            std::io::stdin()
                .take(4096)
                .read_to_string(&mut input)
                .context("cannot read the private key from stdin")?;
            let public = keygen::pubkey(&input).context("stdin is not a private key")?;
            print_line(&public)
        }
        Command::Demo { mib } => demo::demo(&demo::DemoOptions { mib }),
        Command::DemoHelper(h) => run_helper(h),
    }
}

/// `tandem [-f] IFNAME`, wireguard-go's command line. Without `-f` (or wireguard-go's
/// `WG_PROCESS_FOREGROUND=1`) the daemon detaches and this returns once its socket is up.
fn run_interface(
    ifname: &str,
    foreground: bool,
    log_level: Option<&str>,
    metrics: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let detached = detach::is_detached_child();
    let foreground =
        foreground || std::env::var_os("WG_PROCESS_FOREGROUND").is_some_and(|v| v == "1");
    if !foreground && !detached {
        return detach::spawn_detached(ifname, log_level, metrics);
    }
    if detached && let Err(e) = os::new_session() {
        tracing::warn!(error = %e, "cannot start a new session");
    }
    daemon_runtime()?.block_on(daemon::bare(ifname, detached, metrics))
}

/// The daemon's tokio runtime: one thread for the main loop, plus the blocking pool (name
/// lookups, config reads), whose threads each drop to the daemon's privileges as they start,
/// before their first task (see `tandem::os::privilege`).
fn daemon_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(os::privilege::on_thread_start)
        .build()
        .context("cannot start the async runtime")
}

fn run_peer(command: PeerCommand) -> anyhow::Result<()> {
    let socket_dir = Path::new(tandem::control::server::SOCKET_DIR);
    match command {
        PeerCommand::Add {
            config,
            name,
            public_key,
            address,
            endpoint,
            split,
            psk,
            qr,
            qr_file,
        } => {
            let addresses = provision::parse_addresses(&address)?;
            let request = provision::AddRequest {
                config,
                name,
                public_key,
                addresses,
                endpoint,
                split,
                psk,
                socket_dir: socket_dir.to_path_buf(),
            };
            // A QR file name that cannot work is refused before anything changes.
            if let Some(path) = &qr_file {
                provision::qr::check_path(path)?;
            }
            let added = provision::add(&request)?;
            let addrs: Vec<String> = added.addresses.iter().map(ToString::to_string).collect();
            eprintln!(
                "added peer {:?} ({}) with {} to {}",
                request.name,
                added.public_key.fingerprint(),
                addrs.join(", "),
                added.written.display()
            );
            // The conf first: it holds the only copy of the client's private key, so it is
            // printed even when the reload or the QR file fails afterwards.
            let mut out = std::io::stdout().lock();
            out.write_all(added.client_conf.as_bytes())?;
            if qr {
                writeln!(out)?;
                out.write_all(provision::qr::terminal(&added.client_conf)?.as_bytes())?;
                writeln!(out)?;
            }
            out.flush()?;
            if let Some(path) = &qr_file {
                provision::qr::write_file(path, &added.client_conf)?;
                eprintln!("QR code written to {}", path.display());
            }
            match added.reloaded? {
                provision::Reloaded::Applied { pid } => {
                    eprintln!("the running daemon (pid {pid}) reloaded: the peer is live")
                }
                provision::Reloaded::NotRunning => eprintln!(
                    "no daemon is running for this interface: the peer is used from its next start"
                ),
            }
            Ok(())
        }
        PeerCommand::Remove { config, peer } => {
            let removed = provision::remove(&config, &peer, socket_dir)?;
            if removed.deleted_file {
                eprintln!(
                    "removed peer {} and its file {}",
                    removed.label,
                    removed.file.display()
                );
            } else {
                eprintln!(
                    "removed peer {} from {}",
                    removed.label,
                    removed.file.display()
                );
            }
            match removed.reloaded {
                provision::Reloaded::Applied { pid } => {
                    eprintln!("the running daemon (pid {pid}) reloaded: the peer is gone")
                }
                provision::Reloaded::NotRunning => {
                    eprintln!("no daemon is running for this interface")
                }
            }
            Ok(())
        }
    }
}

fn print_line(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")?;
    out.flush()?;
    Ok(())
}

fn run_helper(h: Helper) -> anyhow::Result<()> {
    match h {
        Helper::Recv {
            listen,
            out,
            pattern_seed,
            bytes,
            timeout,
        } => {
            let sink = match (&out, pattern_seed, bytes) {
                (Some(path), _, _) => helper::Sink::File(path),
                (None, Some(seed), Some(bytes)) => helper::Sink::Pattern { seed, bytes },
                _ => bail!("recv needs --out FILE or --pattern-seed N --bytes N"),
            };
            let t = helper::receive(listen, sink, Duration::from_secs(timeout))?;
            print_line(&format!("received {t}"))
        }
        Helper::Send {
            connect,
            file,
            pattern_seed,
            bytes,
            timeout,
        } => {
            let source = match (&file, pattern_seed, bytes) {
                (Some(path), _, _) => helper::Source::File(path),
                (None, Some(seed), Some(bytes)) => helper::Source::Pattern { seed, bytes },
                _ => bail!("send needs --file FILE or --pattern-seed N --bytes N"),
            };
            let t = helper::send(connect, source, Duration::from_secs(timeout))?;
            print_line(&format!("sent {t}"))
        }
    }
}
