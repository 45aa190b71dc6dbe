//! The driver's half of the one reconciler (see `crate::reconcile`): applying a plan to the
//! running device. What can fail (binding the new port, re-marking the sockets) is done
//! first; then the core's keys and peers change with calls that cannot fail. So an error
//! leaves sockets, keys, peers and sessions exactly as they were.

use super::event_loop::Driver;
use super::udp::{UdpError, UdpSockets};
use crate::reconcile::{
    Changes, DesiredDevice, DevicePlan, InvalidSet, Snapshot, apply_to_device, plan,
};

/// Why a plan could not be applied (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot listen on UDP port {port}")]
    Bind {
        port: u16,
        #[source]
        source: UdpError,
    },
    #[error("cannot set the fwmark to {mark}")]
    Fwmark {
        mark: u32,
        #[source]
        source: UdpError,
    },
}

/// Why a UAPI `set` was refused (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    /// EINVAL on the wire.
    #[error(transparent)]
    Invalid(#[from] InvalidSet),
    /// EADDRINUSE on the wire, as wireguard-go answers a failed rebind.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl Driver {
    /// The running device: the core's keys and peers, the sockets' port and mark.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::of(&self.device, self.udp().port(), self.udp().fwmark())
    }

    /// Makes the running device `desired` (a config file's), keeping the sessions of peers
    /// that stay, all in one go: for the start, before the loop runs. Requests that come
    /// while it runs are served in slices (`driver/job.rs`).
    pub fn reconcile(&mut self, desired: &DesiredDevice) -> Result<Changes, ApplyError> {
        let plan = plan(&self.snapshot(), desired);
        let changes = self.apply_plan(&plan)?;
        // A peer the config file brings with an endpoint gets an initiation at once (the
        // kernel waits for traffic): after a restart the peer is still sending under the
        // session we lost, and this brings the link back within a round trip instead of the
        // ~15 s its keepalive and rekey timers take. (A UAPI `set` does not: `wg` users
        // expect a peer they add to stay quiet until there is traffic, as with the kernel.)
        let now = self.now();
        for peer in plan.add.iter().filter(|p| p.endpoint.is_some()) {
            if let Some(id) = self.device.peer_id(&peer.public_key) {
                self.device.initiate_handshake(id, now);
            }
        }
        self.flush();
        Ok(changes)
    }

    /// Applies `plan`, all of it or (on error) none of it.
    pub fn apply_plan(&mut self, plan: &DevicePlan) -> Result<Changes, ApplyError> {
        self.begin_plan(plan)?;
        let now = self.now();
        apply_to_device(&mut self.device, plan, now);
        // A peer whose keepalive was just turned on has a keepalive or initiation waiting.
        self.flush();
        Ok(plan.changes())
    }

    /// The driver's part of `plan`: what can fail (a new port, the fwmark), undone on
    /// failure, then the new sockets installed. The core's part follows, which cannot fail
    /// (`apply_to_device`, or `PlanApplier` in slices).
    pub(super) fn begin_plan(&mut self, plan: &DevicePlan) -> Result<(), ApplyError> {
        let mark = plan.fwmark.unwrap_or(self.udp().fwmark());
        // Fallible steps first, each undone when a later one fails.
        let new_sockets = match plan.listen_port {
            Some(port) => Some(
                UdpSockets::bind(Some(port), mark)
                    .and_then(|sockets| self.register_udp(sockets))
                    .map_err(|source| ApplyError::Bind { port, source })?,
            ),
            None => None,
        };
        if new_sockets.is_none()
            && let Some(mark) = plan.fwmark
        {
            self.set_fwmark(mark)
                .map_err(|source| ApplyError::Fwmark { mark, source })?;
        }
        // Nothing below can fail.
        if let Some(sockets) = new_sockets {
            tracing::info!(
                from = self.udp().port(),
                to = sockets.port(),
                "listen port changed"
            );
            self.install_udp(sockets);
        }
        if let Some(mark) = plan.fwmark {
            tracing::info!(fwmark = mark, "fwmark changed");
        }
        if plan.private_key.is_some() {
            tracing::info!("private key changed: every session restarts");
        }
        Ok(())
    }

    /// Follows the TUN device's MTU (which `ip link set mtu` changes behind the daemon's
    /// back): it bounds the padding.
    pub fn sync_mtu(&mut self) {
        match self.tun.device.mtu() {
            Ok(mtu) if usize::from(mtu) != self.device.mtu() => {
                tracing::info!(mtu, "interface MTU changed");
                self.device.set_mtu(usize::from(mtu));
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the interface MTU"),
        }
    }
}
