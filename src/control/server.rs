//! The UAPI socket, `/var/run/wireguard/<iface>.sock`, that `wg` and `wg-quick` talk to.
//!
//! Flow: a task accepts connections; a task per connection cuts the byte stream into requests
//! ([`Framer`]), parses each ([`parse_request`]), resolves IPv6 zones given by interface name
//! (`if_nametoindex`), and sends it through the event loop's mailbox (`driver::control`),
//! which answers it between two batches. So the `Device` is only ever touched by the event
//! loop's thread and needs no lock. A `set` goes through the one reconciler: one that moves the
//! listen port or changes the fwmark binds or marks first and answers EADDRINUSE when that
//! fails, with nothing changed. A `get` comes back as a snapshot and is formatted here.
//!
//! Besides wireguard-go's `get=1` and `set=1`, tandem answers `get=tandem` (which `wg` never
//! sends): the `get=1` reply with a `name=` line after each `public_key=` line of a peer the
//! config names, and device-level lines of tandem's own before the first peer
//! (`tandem_drop_<reason>=N` for every drop reason, `tandem_handshakes_completed=N`,
//! `tandem_handshakes_failed=N`, `tandem_under_load=0|1`), and after each peer's
//! `public_key=` line its `tandem_handshakes_failed=N`, for `tandem show` and
//! `tandem show --json`. The `get=1` reply
//! stays byte for byte wireguard-go's.
//!
//! The socket is created under umask 077 (only root may connect), in a directory created
//! with mode 0755 when missing, as wireguard-go does. A socket file left by a daemon that died
//! is replaced; one that still answers means the interface is served already.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::DirBuilder;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::uapi::{Frame, Framer, Request, SET_OK, UapiError, format_get, parse_request};
use crate::driver::ControlSender;
use crate::os;
use crate::proto::{DropReason, PublicKey};
use crate::reconcile::Snapshot;

/// Where wireguard-go, the kernel tools and `wg` look for userspace interfaces' sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// The operation line of tandem's own request (see the module notes).
const GET_TANDEM: &[u8] = b"get=tandem\n";

/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The largest reply [`query`] reads (a `get` of the largest device is far below this).
const MAX_REPLY_BYTES: u64 = 512 << 20;

/// The socket of interface `ifname` in `dir` (normally [`SOCKET_DIR`]).
pub fn socket_path(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(format!("{ifname}.sock"))
}

/// Peer names from the config, by public key, for `get=tandem`.
pub type PeerNames = HashMap<PublicKey, String>;

/// Why the socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the directory {}", path.display())]
    Directory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another live process answers on the socket: the interface is served already (perhaps
    /// in another network namespace: the directory is shared between them).
    #[error("{} is in use by another running daemon", path.display())]
    InUse { path: PathBuf },
    #[error("cannot listen on {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The socket file as created: its path and the (device, inode) it had, so the daemon can
/// tell that it was deleted (or replaced by another daemon's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still holds the file this daemon created. An error other than "not
    /// found" (which should not happen to root) counts as present, so that a passing glitch
    /// never stops the daemon.
    pub fn is_present(&self) -> bool {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) => (meta.dev(), meta.ino()) == self.identity,
            Err(e) => e.kind() != io::ErrorKind::NotFound,
        }
    }
}

/// A served UAPI socket. Dropping it stops accepting and removes the socket file (unless it
/// is no longer this daemon's).
#[derive(Debug)]
pub struct UapiServer {
    file: SocketFile,
    names: watch::Sender<Arc<PeerNames>>,
    accept: JoinHandle<()>,
}

impl UapiServer {
    /// Creates the socket of `ifname` in `dir` and serves it on the current tokio runtime,
    /// sending requests to `control` (from `Driver::control_channel`).
    pub fn start(
        dir: &Path,
        ifname: &str,
        control: ControlSender,
        names: PeerNames,
    ) -> Result<UapiServer, ServerError> {
        let path = socket_path(dir, ifname);
        let listener = bind(dir, &path)?;
        let bind_err = |source| ServerError::Bind {
            path: path.clone(),
            source,
        };
        let meta = std::fs::symlink_metadata(&path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = UnixListener::from_std(listener).map_err(bind_err)?;
        let (names, names_rx) = watch::channel(Arc::new(names));
        let accept = tokio::spawn(accept_loop(listener, control, names_rx));
        tracing::debug!(socket = %path.display(), "UAPI socket listening");
        Ok(UapiServer {
            file: SocketFile {
                path,
                identity: (meta.dev(), meta.ino()),
            },
            names,
            accept,
        })
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The socket file, for a watcher that stops the daemon when it is deleted.
    pub fn file(&self) -> SocketFile {
        self.file.clone()
    }

    /// Makes the socket removable by user `uid` (the daemon after `--user`): the file becomes
    /// theirs, and the directory, unless theirs already, gets group `gid` with group write
    /// and the sticky bit, so that members of the group may remove their own files and no
    /// one else's. A directory that already belongs to another non-root group is left alone
    /// (an error). Needs CAP_CHOWN and CAP_FOWNER, i.e. root, before the drop.
    pub fn hand_over(&self, uid: u32, gid: u32) -> io::Result<()> {
        let path = &self.file.path;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        let Some(dir) = path.parent() else {
            return Ok(());
        };
        let meta = std::fs::metadata(dir)?;
        if meta.uid() == uid {
            return Ok(());
        }
        if meta.gid() != 0 && meta.gid() != gid {
            return Err(io::Error::other(format!(
                "{} belongs to group {} already",
                dir.display(),
                meta.gid()
            )));
        }
        std::os::unix::fs::chown(dir, None, Some(gid))?;
        let mode = meta.permissions().mode() & 0o7777;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o1070))
    }

    /// Replaces the peer names `get=tandem` reports (after a reload).
    pub fn set_names(&self, names: PeerNames) {
        self.names.send_replace(Arc::new(names));
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        self.accept.abort();
        if self.file.is_present()
            && let Err(e) = std::fs::remove_file(&self.file.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(socket = %self.file.path.display(), error = %e, "cannot remove the UAPI socket");
        }
    }
}

/// Creates `dir` if needed (0755) and binds `path` under umask 077, replacing a stale socket.
fn bind(dir: &Path, path: &Path) -> Result<std::os::unix::net::UnixListener, ServerError> {
    let dir_err = |source| ServerError::Directory {
        path: dir.to_path_buf(),
        source,
    };
    let existed = dir.is_dir();
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(dir_err)?;
    // The mode given at creation passes through the umask, which is process-wide (and 077
    // while another socket of this process is being bound): say 0755 once more, explicitly.
    if !existed {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(dir_err)?;
    }
    // The mask is process-wide; nothing else creates files while the daemon starts.
    let previous = os::set_umask(0o077);
    let result = bind_replacing_stale(path);
    os::set_umask(previous);
    result
}

fn bind_replacing_stale(path: &Path) -> Result<std::os::unix::net::UnixListener, ServerError> {
    use std::os::unix::net::{UnixListener, UnixStream};
    let bind_err = |source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    match UnixListener::bind(path) {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse {
                    path: path.to_path_buf(),
                });
            }
            // Nobody answers: left behind by a daemon that did not exit cleanly.
            tracing::info!(socket = %path.display(), "replacing a stale UAPI socket");
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(bind_err(e)),
            }
            UnixListener::bind(path).map_err(bind_err)
        }
        Err(e) => Err(bind_err(e)),
    }
}

async fn accept_loop(
    listener: UnixListener,
    control: ControlSender,
    names: watch::Receiver<Arc<PeerNames>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, control.clone(), names.clone()));
            }
            Err(e) => {
                // Out of descriptors and the like: wait a little instead of spinning.
                tracing::warn!(error = %e, "UAPI accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Where the next request in a connection's buffer ends.
#[derive(Debug, PartialEq, Eq)]
enum Framed {
    Incomplete,
    /// Too large: close the connection.
    Close,
    /// A UAPI request of this many bytes, for [`parse_request`].
    Uapi(usize),
    /// `get=tandem` and its blank line.
    TandemGet(usize),
    /// `get=tandem` followed by something other than the blank line: answer this error.
    Invalid(usize, UapiError),
}

fn frame(buf: &[u8], framer: &mut Framer) -> Framed {
    if buf.starts_with(GET_TANDEM) {
        let len = GET_TANDEM.len() + 1;
        return match buf.get(GET_TANDEM.len()) {
            None => Framed::Incomplete,
            Some(b'\n') => Framed::TandemGet(len),
            Some(_) => Framed::Invalid(len, UapiError::invalid("trailing character in get")),
        };
    }
    match framer.poll(buf) {
        Frame::Incomplete => Framed::Incomplete,
        Frame::TooLarge => Framed::Close,
        Frame::Complete(n) => Framed::Uapi(n),
    }
}

async fn serve_connection(
    mut stream: UnixStream,
    control: ControlSender,
    names: watch::Receiver<Arc<PeerNames>>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut framer = Framer::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        // Answer every complete request in the buffer, in order.
        loop {
            let (len, reply) = match frame(&buf, &mut framer) {
                Framed::Incomplete => break,
                Framed::Close => return,
                Framed::Invalid(len, e) => (len, Some(e.reply())),
                Framed::TandemGet(len) => (len, tandem_get(&control, &names).await),
                Framed::Uapi(len) => {
                    let text = String::from_utf8_lossy(buf.get(..len).unwrap_or_default());
                    (len, answer(&text, &control).await)
                }
            };
            buf.drain(..len.min(buf.len()));
            let Some(reply) = reply else {
                return; // not an operation, or the event loop is gone: close, as wireguard-go
            };
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
    // The peer stopped sending: a `set` without its blank line still applies (as in
    // wireguard-go, whose line scanner ends there too); anything else is dropped.
    if !buf.is_empty() {
        let text = String::from_utf8_lossy(&buf);
        if let Some(reply) = answer(&text, &control).await {
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    }
}

/// The reply to one UAPI request, or `None` to close the connection.
async fn answer(text: &str, control: &ControlSender) -> Option<String> {
    match parse_request(text) {
        Request::Get => Some(format_get(&control.get().await.ok()?)),
        Request::Set(mut request) => {
            if let Err(e) = request.resolve_zones(os::if_nametoindex) {
                tracing::warn!("UAPI set refused, nothing changed: {e}");
                return Some(UapiError::from(e).reply());
            }
            // The loop logs what changed, or why nothing did.
            match control.set(request).await.ok()? {
                Ok(_) => Some(SET_OK.to_owned()),
                Err(e) => Some(UapiError::from(&e).reply()),
            }
        }
        Request::Invalid(e) => {
            tracing::warn!("UAPI request refused: {}", e.message);
            Some(e.reply())
        }
        Request::Close => None,
    }
}

async fn tandem_get(
    control: &ControlSender,
    names: &watch::Receiver<Arc<PeerNames>>,
) -> Option<String> {
    let snapshot = control.get().await.ok()?;
    let reply = format_get(&snapshot);
    let names = Arc::clone(&names.borrow());
    Some(add_device_lines(
        &add_names(&add_peer_lines(&reply, &snapshot), &names),
        &tandem_device_lines(&snapshot),
    ))
}

/// A `get=1` reply with tandem's own per-peer lines after each `public_key=` line
/// (`tandem_handshakes_failed=N`), from `snapshot` (which the reply was formatted from).
pub fn add_peer_lines(get_reply: &str, snapshot: &Snapshot) -> String {
    let failed: HashMap<PublicKey, u64> = snapshot
        .peers
        .iter()
        .map(|p| (p.public_key, p.stats.handshakes_failed))
        .collect();
    let mut out = String::with_capacity(get_reply.len() + failed.len() * 28);
    for line in get_reply.split_inclusive('\n') {
        out.push_str(line);
        let n = line
            .strip_prefix("public_key=")
            .map(|hex| hex.trim_end_matches('\n'))
            .and_then(|hex| PublicKey::from_hex(hex).ok())
            .and_then(|key| failed.get(&key));
        if let Some(n) = n {
            let _ = writeln!(out, "tandem_handshakes_failed={n}");
        }
    }
    out
}

/// tandem's own device-level lines of a `get=tandem` reply (see the module notes).
pub fn tandem_device_lines(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for reason in DropReason::ALL {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "tandem_drop_{}={}",
            reason.as_str(),
            snapshot.drops.get(reason)
        );
    }
    let _ = writeln!(
        out,
        "tandem_handshakes_completed={}",
        snapshot.handshakes_completed
    );
    let _ = writeln!(
        out,
        "tandem_handshakes_failed={}",
        snapshot.handshakes_failed
    );
    let _ = writeln!(out, "tandem_under_load={}", u8::from(snapshot.under_load));
    out
}

/// `get_reply` with `lines` inserted where the device's part ends: before the first
/// `public_key=` line, or before `errno=` when there is no peer (a reader takes every line
/// after a `public_key=` as that peer's).
pub fn add_device_lines(get_reply: &str, lines: &str) -> String {
    let at = get_reply
        .split_inclusive('\n')
        .scan(0usize, |offset, line| {
            let start = *offset;
            *offset += line.len();
            Some((start, line))
        })
        .find(|(_, line)| line.starts_with("public_key=") || line.starts_with("errno="))
        .map_or(get_reply.len(), |(start, _)| start);
    let mut out = String::with_capacity(get_reply.len() + lines.len());
    out.push_str(&get_reply[..at]);
    out.push_str(lines);
    out.push_str(&get_reply[at..]);
    out
}

/// A `get=1` reply with `name=NAME` after the `public_key=` line of each named peer. Control
/// characters in a name are dropped, so a name cannot break the line protocol.
pub fn add_names(get_reply: &str, names: &PeerNames) -> String {
    let mut out = String::with_capacity(get_reply.len() + names.len() * 24);
    for line in get_reply.split_inclusive('\n') {
        out.push_str(line);
        let name = line
            .strip_prefix("public_key=")
            .map(|hex| hex.trim_end_matches('\n'))
            .and_then(|hex| PublicKey::from_hex(hex).ok())
            .and_then(|key| names.get(&key));
        if let Some(name) = name {
            out.push_str("name=");
            out.extend(name.chars().filter(|c| !c.is_control()));
            out.push('\n');
        }
    }
    out
}

/// Sends `request` (e.g. `"get=1\n\n"`) to the UAPI socket at `path` and returns everything
/// the daemon writes back until it closes the connection. For `tandem show`.
pub fn query(path: &Path, request: &str, timeout: Duration) -> io::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request.as_bytes())?;
    // No more requests: the daemon answers this one and closes.
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = Vec::new();
    stream.take(MAX_REPLY_BYTES).read_to_end(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::sync::mpsc;

    use crate::driver::{ControlRequest, SetError};
    use crate::proto::{Device, Now, PrivateKey};
    use crate::reconcile::{self, Snapshot};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("tandem-uapisrv-{tag}-{}-{n}", std::process::id()));
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from_bytes([seed; 32])
    }

    fn now() -> Now {
        Now::new(Duration::from_secs(5), Duration::from_secs(1_700_000_000))
    }

    /// Stands in for the event loop, for the socket's own tests: answers from a device of
    /// its own through the reconciler's pure steps (the driver's dispatch, sockets included,
    /// is tested on a real driver in tests/data_plane.rs).
    fn device_only_loop(mut rx: mpsc::Receiver<ControlRequest>) -> JoinHandle<Device> {
        tokio::spawn(async move {
            let mut device = Device::new(Some(key(1)), [3; 32]);
            while let Some(request) = rx.recv().await {
                let snapshot = Snapshot::of(&device, 51820, 0);
                match request {
                    ControlRequest::Get { reply } => {
                        let _ = reply.send(snapshot);
                    }
                    ControlRequest::Set { request, reply } => {
                        let result = request.desired(&snapshot).map(|desired| {
                            let plan = reconcile::plan(&snapshot, &desired);
                            reconcile::apply_to_device(&mut device, &plan, now());
                            plan.changes()
                        });
                        let _ = reply.send(result.map_err(SetError::from));
                    }
                    ControlRequest::Apply { .. }
                    | ControlRequest::Endpoint { .. }
                    | ControlRequest::SyncMtu
                    | ControlRequest::Names(_)
                    | ControlRequest::Stop => {}
                }
            }
            device
        })
    }

    async fn exchange(path: &Path, request: &[u8]) -> String {
        exchange_in_pieces(path, request, request.len().max(1)).await
    }

    /// Writes the request `piece` bytes at a time, yielding in between, so the server sees
    /// requests cut at arbitrary points.
    async fn exchange_in_pieces(path: &Path, request: &[u8], piece: usize) -> String {
        let mut stream = UnixStream::connect(path).await.expect("connect");
        for part in request.chunks(piece) {
            stream.write_all(part).await.expect("write");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stream.shutdown().await.expect("shutdown");
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut reply))
            .await
            .expect("reply within 5 s")
            .expect("read");
        reply
    }

    fn peer_hex(seed: u8) -> String {
        key(seed).public_key().to_hex()
    }

    #[test]
    fn serves_get_set_and_tandem_get_over_the_socket() {
        let dir = TempDir::new("serve");
        rt().block_on(async {
            let (tx, rx) = mpsc::channel(crate::driver::control::CONTROL_QUEUE);
            let tx = ControlSender::new(tx, None);
            let device = device_only_loop(rx);
            let mut names = PeerNames::new();
            names.insert(key(2).public_key(), "site-b\n".into());
            let server = UapiServer::start(&dir.0, "tnd-test0", tx, names).expect("start");
            let path = server.path().to_path_buf();
            assert_eq!(path, dir.0.join("tnd-test0.sock"));

            // The directory is 0755 and the socket 0600 whatever the umask was.
            let dir_mode = std::fs::metadata(&dir.0).expect("dir").permissions().mode();
            assert_eq!(dir_mode & 0o777, 0o755);
            let sock_mode = std::fs::symlink_metadata(&path)
                .expect("socket")
                .permissions()
                .mode();
            assert_eq!(sock_mode & 0o777, 0o700, "{sock_mode:o}");

            // Three requests on one connection, cut in pieces by the writer.
            let set = format!(
                "set=1\npublic_key={}\nallowed_ip=10.0.0.2/32\n\nset=1\npublic_key={}\n\
                 allowed_ip=10.0.0.3/32\n\nget=1\n\n",
                peer_hex(2),
                peer_hex(3)
            );
            let reply = exchange_in_pieces(&path, set.as_bytes(), 7).await;
            assert!(
                reply.starts_with("errno=0\n\nerrno=0\n\nprivate_key="),
                "{reply}"
            );
            assert!(reply.contains("allowed_ip=10.0.0.3/32\n"), "{reply}");

            let get = exchange(&path, b"get=1\n\n").await;
            assert!(get.starts_with("private_key="), "{get}");
            assert!(get.ends_with("errno=0\n\n"), "{get}");
            assert!(!get.contains("name="), "{get}");

            let named = exchange(&path, b"get=tandem\n\n").await;
            // The device's own lines come before the first peer: every drop reason, the
            // handshake counts and the load state.
            let device_lines = tandem_device_lines(&Snapshot::default());
            assert_eq!(
                device_lines.lines().count(),
                DropReason::COUNT + 3,
                "{device_lines}"
            );
            assert!(device_lines.contains("tandem_drop_truncated=0\n"));
            assert!(device_lines.ends_with(
                "tandem_handshakes_completed=0\ntandem_handshakes_failed=0\ntandem_under_load=0\n"
            ));
            // Each peer's failed handshakes right after its key.
            let with_peers: String = get
                .split_inclusive('\n')
                .map(|line| {
                    if line.starts_with("public_key=") {
                        format!("{line}tandem_handshakes_failed=0\n")
                    } else {
                        line.to_owned()
                    }
                })
                .collect();
            let with_device =
                with_peers.replacen("public_key=", &format!("{device_lines}public_key="), 1);
            let expected = with_device.replace(
                &format!("public_key={}\n", peer_hex(2)),
                &format!("public_key={}\nname=site-b\n", peer_hex(2)),
            );
            assert_eq!(named, expected);
            assert_ne!(named, get);

            // Names can be replaced (after a reload).
            server.set_names(PeerNames::new());
            assert_eq!(exchange(&path, b"get=tandem\n\n").await, with_device);

            // A set cut short by the end of the stream still applies, like wireguard-go.
            let reply = exchange(
                &path,
                format!("set=1\npublic_key={}\nremove=true\n", peer_hex(3)).as_bytes(),
            )
            .await;
            assert_eq!(reply, "errno=0\n\n");
            assert!(!exchange(&path, b"get=1\n\n").await.contains(&peer_hex(3)));

            // Errors: an invalid set changes nothing; a trailing byte after get; an unknown
            // operation closes without a reply; get without its blank line gets none.
            let before = exchange(&path, b"get=1\n\n").await;
            let bad = format!("set=1\npublic_key={}\nallowed_ip=nonsense\n\n", peer_hex(4));
            assert_eq!(exchange(&path, bad.as_bytes()).await, "errno=-22\n\n");
            assert_eq!(exchange(&path, b"get=1\n\n").await, before);
            assert_eq!(exchange(&path, b"get=1\nx").await, "errno=-22\n\n");
            assert_eq!(exchange(&path, b"get=tandem\nx").await, "errno=-22\n\n");
            assert_eq!(exchange(&path, b"hello=1\n\nget=1\n\n").await, "");
            assert_eq!(exchange(&path, b"get=1\n").await, "");
            // A zone naming no interface is EINVAL; loopback resolves.
            let zoned = |zone: &str| {
                format!(
                    "set=1\npublic_key={}\nendpoint=[fe80::1%{zone}]:51820\n\n",
                    peer_hex(2)
                )
            };
            assert_eq!(
                exchange(&path, zoned("tandem-none0").as_bytes()).await,
                "errno=-22\n\n"
            );
            assert_eq!(exchange(&path, zoned("lo").as_bytes()).await, "errno=0\n\n");
            let lo = os::if_nametoindex("lo").expect("lo exists");
            assert!(
                exchange(&path, b"get=1\n\n")
                    .await
                    .contains(&format!("endpoint=[fe80::1%{lo}]:51820\n"))
            );

            drop(server);
            assert!(!path.exists(), "the socket is removed on drop");
            let device = device.await.expect("event loop");
            assert_eq!(device.peers().len(), 1);
        });
    }

    #[test]
    fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = TempDir::new("stale");
        rt().block_on(async {
            let (tx, _rx) = mpsc::channel(crate::driver::control::CONTROL_QUEUE);
            let tx = ControlSender::new(tx, None);
            let first = UapiServer::start(&dir.0, "tnd-test1", tx.clone(), PeerNames::new())
                .expect("start");
            let again = UapiServer::start(&dir.0, "tnd-test1", tx.clone(), PeerNames::new());
            assert!(matches!(again, Err(ServerError::InUse { .. })), "{again:?}");
            assert!(first.file().is_present(), "the refused start left it alone");

            // A socket file nobody listens on (a daemon that was killed) is replaced.
            let path = socket_path(&dir.0, "tnd-test2");
            drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
            assert!(path.exists());
            let second =
                UapiServer::start(&dir.0, "tnd-test2", tx, PeerNames::new()).expect("start");
            assert!(second.file().is_present());
            assert_eq!(
                exchange(second.path(), b"nonsense\n").await,
                "",
                "the new socket answers"
            );
        });
    }

    #[test]
    fn deletion_and_replacement_are_noticed_and_drop_spares_a_replacement() {
        let dir = TempDir::new("gone");
        rt().block_on(async {
            let (tx, _rx) = mpsc::channel(crate::driver::control::CONTROL_QUEUE);
            let tx = ControlSender::new(tx, None);
            let server =
                UapiServer::start(&dir.0, "tnd-test3", tx, PeerNames::new()).expect("start");
            let file = server.file();
            assert!(file.is_present());
            std::fs::remove_file(server.path()).expect("remove");
            assert!(!file.is_present());
            // Another daemon's socket now at the path: not ours, so drop leaves it.
            let other = std::os::unix::net::UnixListener::bind(server.path()).expect("bind");
            assert!(!file.is_present());
            let path = server.path().to_path_buf();
            drop(server);
            assert!(
                path.exists(),
                "another daemon's socket must survive our exit"
            );
            drop(other);
        });
    }

    #[test]
    fn query_reads_the_whole_reply() {
        let dir = TempDir::new("query");
        let (tx, rx) = mpsc::channel(crate::driver::control::CONTROL_QUEUE);
        let tx = ControlSender::new(tx, None);
        let runtime = rt();
        let _guard = runtime.enter();
        let _device = device_only_loop(rx);
        let server = UapiServer::start(&dir.0, "tnd-test4", tx, PeerNames::new()).expect("start");
        let path = server.path().to_path_buf();
        // The blocking client runs on its own thread while the runtime serves.
        let client = std::thread::spawn(move || query(&path, "get=1\n\n", Duration::from_secs(5)));
        let reply = runtime.block_on(async {
            loop {
                if client.is_finished() {
                    break client.join().expect("client thread");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let reply = reply.expect("query");
        assert!(reply.starts_with("private_key="), "{reply}");
        assert!(reply.ends_with("listen_port=51820\nerrno=0\n\n"), "{reply}");
        drop(server);
    }

    #[test]
    fn framing_of_tandem_get() {
        let mut framer = Framer::new();
        assert_eq!(frame(b"get=tan", &mut framer), Framed::Incomplete);
        assert_eq!(frame(b"get=tandem\n", &mut framer), Framed::Incomplete);
        assert_eq!(
            frame(b"get=tandem\n\nget=1\n\n", &mut framer),
            Framed::TandemGet(12)
        );
        assert!(matches!(
            frame(b"get=tandem\nx", &mut framer),
            Framed::Invalid(12, _)
        ));
        assert_eq!(frame(b"get=1\n\n", &mut framer), Framed::Uapi(7));
        assert_eq!(frame(b"get=tandemx\n", &mut framer), Framed::Uapi(12));
    }

    #[test]
    fn names_follow_their_public_key_lines_only() {
        let a = key(2).public_key();
        let b = key(3).public_key();
        let mut names = PeerNames::new();
        names.insert(a, "site\u{7}-a".into());
        let reply = format!(
            "private_key={}\nlisten_port=1\npublic_key={}\nrx_bytes=0\npublic_key={}\nrx_bytes=0\nerrno=0\n\n",
            key(1).to_hex(),
            a.to_hex(),
            b.to_hex()
        );
        let expected = format!(
            "private_key={}\nlisten_port=1\npublic_key={}\nname=site-a\nrx_bytes=0\npublic_key={}\nrx_bytes=0\nerrno=0\n\n",
            key(1).to_hex(),
            a.to_hex(),
            b.to_hex()
        );
        assert_eq!(add_names(&reply, &names), expected);
        assert_eq!(add_names(&reply, &PeerNames::new()), reply);
    }

    #[test]
    fn device_lines_go_before_the_first_peer_or_errno() {
        let x = "x=1\n";
        assert_eq!(
            add_device_lines("listen_port=1\npublic_key=ab\nrx_bytes=0\nerrno=0\n\n", x),
            "listen_port=1\nx=1\npublic_key=ab\nrx_bytes=0\nerrno=0\n\n"
        );
        assert_eq!(
            add_device_lines("listen_port=1\nerrno=0\n\n", x),
            "listen_port=1\nx=1\nerrno=0\n\n"
        );
        assert_eq!(add_device_lines("errno=0\n\n", x), "x=1\nerrno=0\n\n");
        // The drop counters are read by `tandem show` as they were written.
        let mut snapshot = Snapshot::default();
        snapshot.drops.count(DropReason::InvalidMac1);
        snapshot.under_load = true;
        let reply = add_device_lines("errno=0\n\n", &tandem_device_lines(&snapshot));
        let status = crate::control::show::parse_get_reply(&reply).expect("parse");
        assert_eq!(status.drops.get("invalid_mac1"), Some(&1));
        assert_eq!(status.drops.get("truncated"), Some(&0));
        assert_eq!(status.drops.len(), DropReason::COUNT);
        assert_eq!(status.under_load, Some(true));
    }

    #[test]
    fn sys_helpers_used_here() {
        assert_eq!(os::if_nametoindex("lo"), Some(1), "loopback is index 1");
        assert_eq!(os::if_nametoindex("tandem-nope9"), None);
        assert_eq!(os::if_nametoindex("nul\0byte"), None);
        assert_eq!(os::if_indextoname(1).as_deref(), Some("lo"));
        assert_eq!(os::if_indextoname(u32::MAX), None);
    }
}
