//! The data plane on a thread of its own: [`Driver::run`]'s epoll loop, away from the
//! daemon's tokio runtime (signals, UAPI connections, netlink, reloads), which reaches it only
//! through the control channel. See `event_loop` for why it is not a tokio task.

use std::io;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::control::{ControlRequest, ControlSender};
use super::event_loop::{Driver, DriverError};
use crate::os::privilege;

/// A running data plane: its control channel, and the thread that hands the driver back
/// when the loop ends.
#[derive(Debug)]
pub struct DataPlane {
    control: ControlSender,
    /// The loop's result, sent as the thread ends (None once taken).
    finished: Option<oneshot::Receiver<Result<(), DriverError>>>,
    thread: Option<JoinHandle<Driver>>,
}

impl DataPlane {
    /// Starts `driver`'s loop on a new thread, answering requests sent through `control`
    /// (made by `driver.control_channel()`).
    pub fn spawn(mut driver: Driver, control: ControlSender) -> io::Result<DataPlane> {
        let (done, finished) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("tandem-data".to_owned())
            .spawn(move || {
                // First thing, before any packet or request: this thread drops to the
                // daemon's privilege plan, if one is in force (see os::privilege).
                let result = match privilege::enter_thread() {
                    Ok(()) => driver.run(),
                    Err(e) => Err(DriverError::Privileges(e)),
                };
                // Requests that can no longer be answered fail at once (their senders see
                // the channel closed) instead of waiting forever.
                driver.close_control();
                let _ = done.send(result);
                driver
            })?;
        Ok(DataPlane {
            control,
            finished: Some(finished),
            thread: Some(thread),
        })
    }

    /// The control channel, for the UAPI server and the daemon's housekeeping.
    pub fn control(&self) -> &ControlSender {
        &self.control
    }

    /// Waits until the loop ends by itself (the TUN device failed), and says why. Waits
    /// forever once the result was taken.
    pub async fn stopped(&mut self) -> Result<(), DriverError> {
        let Some(finished) = self.finished.as_mut() else {
            return std::future::pending().await;
        };
        let result = finished.await;
        self.finished = None;
        // The sender is dropped without a result only if the loop panicked.
        result.unwrap_or_else(|_| {
            Err(DriverError::Poll(io::Error::other(
                "the data plane thread ended unexpectedly",
            )))
        })
    }

    /// Stops the loop (if it still runs) and hands the driver back, so that the caller
    /// decides when the interface goes (dropping the driver removes it). None if the thread
    /// panicked (its driver, and with it the interface, is gone already).
    pub async fn stop(mut self) -> Option<Driver> {
        let _ = self.control.send(ControlRequest::Stop).await;
        let thread = self.thread.take()?;
        // The loop answers between two batches: a short wait, but off the runtime's thread.
        tokio::task::spawn_blocking(move || thread.join().ok())
            .await
            .ok()
            .flatten()
    }
}
