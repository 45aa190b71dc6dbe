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

use cli::{Cli, Command, Helper};
use tandem::config::{self, ConfigErrors};
use tandem::daemon::{self, EXIT_CONFIG, demo, detach, helper, status};
use tandem::keygen;
use tandem::os;

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
