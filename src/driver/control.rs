//! The data plane's mailbox: the requests other threads may send the event loop, which
//! answers them on its own thread between two batches (`Driver::answer`, the one dispatch), so
//! the `Device` needs no lock. The UAPI socket (`control::server`) and the daemon (reloads,
//! housekeeping) are its clients; this side knows nothing of them, nor of the text protocol
//! (as wireguard-go keeps `device/uapi.go` beside the device and `ipc/` for the socket).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::oplog::PeerNames;
use super::reconcile::{ApplyError, SetError};
use crate::proto::PublicKey;
use crate::reconcile::{Changes, DesiredDevice, SetRequest, Snapshot};

/// Requests waiting for the event loop; a sender waits when it is full.
pub const CONTROL_QUEUE: usize = 16;

/// A request for the event loop, answered by [`handle`].
pub enum ControlRequest {
    /// The running device, for a UAPI `get` (formatted off the loop's thread).
    Get { reply: oneshot::Sender<Snapshot> },
    /// A UAPI `set`, parsed and with its zones resolved, through the one reconciler.
    Set {
        request: SetRequest,
        reply: oneshot::Sender<Result<Changes, SetError>>,
    },
    /// A whole desired device (a config file's), through the one reconciler.
    Apply {
        desired: Box<DesiredDevice>,
        reply: oneshot::Sender<Result<Changes, ApplyError>>,
    },
    /// A re-resolved endpoint name: the endpoint of an existing peer (never creating one),
    /// through the one reconciler (`SetRequest::update_endpoint`, then the plan).
    Endpoint {
        public_key: PublicKey,
        endpoint: SocketAddr,
        reply: oneshot::Sender<Result<Changes, SetError>>,
    },
    /// Housekeeping (once a second): follow the TUN device's MTU, which `ip link set mtu`
    /// (as wg-quick runs it) changes behind the daemon's back; it bounds the padding.
    SyncMtu,
    /// The config's peer names, for the loop's log lines (see `driver::oplog`): at start
    /// and after each reload.
    Names(PeerNames),
    /// Stop the event loop (the daemon is shutting down); `Driver::run` returns.
    Stop,
}

impl std::fmt::Debug for ControlRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlRequest::Get { .. } => f.write_str("Get"),
            ControlRequest::Set { request, .. } => {
                write!(f, "Set({} operations)", request.len())
            }
            ControlRequest::Apply { desired, .. } => {
                write!(f, "Apply({} peers)", desired.peers.len())
            }
            ControlRequest::Endpoint { endpoint, .. } => write!(f, "Endpoint({endpoint})"),
            ControlRequest::SyncMtu => f.write_str("SyncMtu"),
            ControlRequest::Names(names) => write!(f, "Names({})", names.len()),
            ControlRequest::Stop => f.write_str("Stop"),
        }
    }
}

/// The sending end of the event loop's control channel: a bounded queue, and the waker that
/// interrupts the loop's `epoll_wait` so that it looks at the queue.
#[derive(Debug, Clone)]
pub struct ControlSender {
    tx: mpsc::Sender<ControlRequest>,
    waker: Option<Arc<mio::Waker>>,
}

/// The event loop is gone: its channel is closed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the data plane has stopped")]
pub struct LoopGone;

impl ControlSender {
    /// `waker`: None for a receiver that does not sleep in epoll (tests).
    pub fn new(tx: mpsc::Sender<ControlRequest>, waker: Option<Arc<mio::Waker>>) -> Self {
        ControlSender { tx, waker }
    }

    /// Queues `request`, waiting while the queue is full.
    pub async fn send(&self, request: ControlRequest) -> Result<(), LoopGone> {
        self.tx.send(request).await.map_err(|_| LoopGone)?;
        self.wake();
        Ok(())
    }

    /// Queues `request` unless the queue is full (then it is dropped: for housekeeping that
    /// the next tick asks for again).
    pub fn try_send(&self, request: ControlRequest) {
        if self.tx.try_send(request).is_ok() {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(waker) = &self.waker
            && let Err(e) = waker.wake()
        {
            tracing::debug!(error = %e, "cannot wake the event loop");
        }
    }

    /// Sends the request `make` builds around a reply channel and waits for the reply.
    pub async fn ask<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<R>) -> ControlRequest,
    ) -> Result<R, LoopGone> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| LoopGone)
    }

    /// The running device.
    pub async fn get(&self) -> Result<Snapshot, LoopGone> {
        self.ask(|reply| ControlRequest::Get { reply }).await
    }

    /// A UAPI `set` through the one reconciler.
    pub async fn set(&self, request: SetRequest) -> Result<Result<Changes, SetError>, LoopGone> {
        self.ask(|reply| ControlRequest::Set { request, reply })
            .await
    }

    /// The endpoint of the existing peer `public_key` (a re-resolved name), through the one
    /// reconciler; a peer that is gone stays gone.
    pub async fn set_endpoint(
        &self,
        public_key: PublicKey,
        endpoint: SocketAddr,
    ) -> Result<Result<Changes, SetError>, LoopGone> {
        self.ask(|reply| ControlRequest::Endpoint {
            public_key,
            endpoint,
            reply,
        })
        .await
    }

    /// The peer names the loop's log lines use from now on.
    pub async fn set_names(&self, names: PeerNames) -> Result<(), LoopGone> {
        self.send(ControlRequest::Names(names)).await
    }

    /// A whole desired device through the one reconciler.
    pub async fn apply(
        &self,
        desired: DesiredDevice,
    ) -> Result<Result<Changes, ApplyError>, LoopGone> {
        self.ask(|reply| ControlRequest::Apply {
            desired: Box::new(desired),
            reply,
        })
        .await
    }
}
