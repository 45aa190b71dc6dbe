//! `tandem`: the command line. Parses arguments, sets up logging, runs one command and turns
//! its outcome into the exit status; an error is printed once, with its cause chain.

mod cli;

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, Helper};
use tandem::config::{self, ConfigErrors};
use tandem::daemon::{self, EXIT_CONFIG, demo, helper};
use tandem::keygen;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_level.as_deref()) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    match run(cli.command) {
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
        Command::Up { config } => {
            let loaded = load(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(daemon::up(&config, loaded))
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
            Ok(())
        }
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
