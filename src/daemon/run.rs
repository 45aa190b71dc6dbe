//! `tandem up`: set everything up, run the data plane until SIGINT or SIGTERM, reload on
//! SIGHUP, and take everything down again.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use super::notify;
use super::reload::{self, Prepared};
use super::settings::{self, Resolved};
use crate::config::Config;
use crate::driver::tun::{TunError, open_tun};
use crate::driver::{Clock, Driver, UdpSockets};
use crate::keygen::os_random;
use crate::netconf::{self, Applied, NetConf};
use crate::proto::Device;

/// The state the main loop keeps besides the driver.
pub(crate) struct Running {
    pub driver: Driver,
    pub netconf: NetConf,
    pub applied: Applied,
    pub config: Config,
    pub path: PathBuf,
}

/// Signals the daemon handles, registered before anything is set up so that none is missed.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        let register =
            |kind, name| signal(kind).with_context(|| format!("cannot install the {name} handler"));
        Ok(Signals {
            interrupt: register(SignalKind::interrupt(), "SIGINT")?,
            terminate: register(SignalKind::terminate(), "SIGTERM")?,
            hangup: register(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

/// Runs the interface described by the (already checked) `config` read from `path`, until a
/// signal stops it. Everything set up is taken down on the way out, also after an error.
pub async fn up(path: &Path, config: Config) -> anyhow::Result<()> {
    let signals = Signals::new()?;
    for warning in &config.warnings {
        tracing::warn!("{}", warning.to_string().trim_start_matches("warning: "));
    }
    let resolved = settings::resolve(config).await?;
    let mut running = set_up(path, resolved).await?;
    let result = main_loop(&mut running, signals).await;
    notify::stopping();
    tear_down(running).await;
    result
}

async fn set_up(path: &Path, resolved: Resolved) -> anyhow::Result<Running> {
    let iface = &resolved.config.interface;
    // Segmentation offload (IFF_VNET_HDR: GSO reads, GRO writes) when asked for; a kernel
    // that refuses it still gets a working, slower device.
    let tun = match open_tun(&iface.name, iface.offload) {
        Ok(tun) => Ok(tun),
        Err(TunError::Open { source, .. })
            if iface.offload
                && !matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) =>
        {
            tracing::warn!(error = %source, "TUN offload unavailable, running without it");
            open_tun(&iface.name, false)
        }
        Err(e) => Err(e),
    };
    let tun = tun.map_err(|e| {
        let hint = match &e {
            TunError::Open { source, .. }
                if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) =>
            {
                " (needs root or CAP_NET_ADMIN)"
            }
            _ => "",
        };
        anyhow::Error::new(e).context(format!("cannot create interface {}{hint}", iface.name))
    })?;
    let udp =
        UdpSockets::bind(iface.listen_port, iface.fwmark).context("cannot open the UDP sockets")?;
    let seed = os_random::<32>().context("cannot seed the protocol's random number generator")?;
    let mut device = Device::new(Some(iface.private_key.clone()), seed);
    device.set_mtu(usize::from(iface.mtu));
    let mut driver = Driver::new(device, tun, udp, Clock::new());
    let now = driver.now();
    settings::sync_peers(&mut driver.device, &resolved, now)?;

    let nc = NetConf::new()
        .await
        .context("cannot open a netlink socket")?;
    let (plan, warnings) = settings::interface_plan(&resolved.config, &driver.tun.name);
    for w in warnings {
        tracing::warn!("{w}");
    }
    let applied = netconf::apply(&nc, &plan)
        .await
        .with_context(|| format!("cannot configure interface {}", driver.tun.name))?;
    let status = format!(
        "{} up: listening on UDP port {}, {} peer(s)",
        driver.tun.name,
        driver.udp.port(),
        resolved.config.peers.len()
    );
    tracing::info!(
        interface = %driver.tun.name,
        public_key = %iface.private_key.public_key(),
        port = driver.udp.port(),
        offload = driver.tun.offload,
        peers = resolved.config.peers.len(),
        "interface up"
    );
    notify::ready(&status);
    Ok(Running {
        driver,
        netconf: nc,
        applied,
        config: resolved.config,
        path: path.to_path_buf(),
    })
}

async fn main_loop(running: &mut Running, mut signals: Signals) -> anyhow::Result<()> {
    // Reloads are prepared (file read, checked, names resolved) off the loop, so traffic keeps
    // flowing meanwhile; only the newest one is applied.
    let (prepared_tx, mut prepared_rx) = mpsc::channel::<(u64, anyhow::Result<Prepared>)>(4);
    let mut generation = 0u64;
    loop {
        tokio::select! {
            r = running.driver.run() => {
                return r.context("the data plane stopped");
            }
            _ = signals.interrupt.recv() => {
                tracing::info!("SIGINT received, shutting down");
                return Ok(());
            }
            _ = signals.terminate.recv() => {
                tracing::info!("SIGTERM received, shutting down");
                return Ok(());
            }
            _ = signals.hangup.recv() => {
                tracing::info!(config = %running.path.display(), "SIGHUP received, reloading");
                notify::reloading();
                generation += 1;
                let tx = prepared_tx.clone();
                let path = running.path.clone();
                let this = generation;
                tokio::spawn(async move {
                    let result = reload::prepare(&path).await;
                    // The loop holds the receiver for as long as it runs.
                    let _ = tx.send((this, result)).await;
                });
            }
            Some((this, result)) = prepared_rx.recv() => {
                if this != generation {
                    continue; // a newer SIGHUP came meanwhile: its result follows
                }
                match result {
                    Ok(prepared) => {
                        if let Err(e) = reload::apply(running, prepared).await {
                            tracing::error!("reload failed, configuration unchanged: {e:#}");
                        }
                    }
                    Err(e) => tracing::error!("reload failed, configuration unchanged: {e:#}"),
                }
                notify::ready(&format!("{} up (reloaded)", running.driver.tun.name));
            }
        }
    }
}

async fn tear_down(running: Running) {
    let Running {
        driver,
        netconf,
        applied,
        ..
    } = running;
    if let Err(e) = netconf::teardown(&netconf, &applied).await {
        tracing::warn!("interface teardown incomplete: {e:#}");
    }
    let name = driver.tun.name.clone();
    // Closing the TUN descriptor removes the interface, and with it anything left on it.
    drop(driver);
    tracing::info!(interface = %name, "interface removed");
}
