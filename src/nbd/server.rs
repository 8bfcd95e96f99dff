//! Listening and connections: accept clients on a TCP or Unix socket, at most `shared` at
//! once, each on its own thread (handshake, then transmission), and stop cleanly.
//!
//! Stopping (the caller sets the `stop` flag, from a signal handler for example): accept
//! no more clients, shut down the reading side of every open connection so that its
//! thread ends after replying to the request it is working on, wait for the threads, then
//! flush and close the export's device.

use super::handshake::{greet, haggle, Outcome, Tls};
use super::tls::{Shared, TlsConfig};
use super::transmission::serve_requests;
use super::Export;
use crate::error::{Error, Result};
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the accept loop waits before looking at the stop flag again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long a client may take over the handshake (qemu-nbd's default limit is the same).
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// How long a stopping server waits for connections to finish their request in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Buffer size of a connection's writing side.
const IO_BUFFER: usize = 256 << 10;

/// Where the server listens.
pub enum Listener {
    Tcp(TcpListener),
    /// The socket, and its path (removed when the server stops).
    Unix(UnixListener, PathBuf),
}

impl Listener {
    fn fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept()?.0)),
        }
    }
}

/// One client's socket.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(limit),
            Stream::Unix(s) => s.set_read_timeout(limit),
        }
    }

    fn shutdown(&self, how: Shutdown) {
        // The peer may already be gone; there is nothing more to do then.
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// How the server runs (qemu-nbd's `-e`, `-t` and `--tls-creds`).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Clients served at once; further ones wait in the listen queue.
    pub shared: usize,
    /// Keep serving after the last client leaves (otherwise the server stops then).
    pub persistent: bool,
    /// Require TLS with these settings.
    pub tls: Option<TlsConfig>,
}

/// The connections being served: their sockets (to shut down when stopping) and threads.
#[derive(Default)]
struct Clients {
    active: Arc<AtomicUsize>,
    sockets: Arc<Mutex<Vec<(u64, Stream)>>>,
    threads: Vec<JoinHandle<()>>,
    next_id: u64,
}

/// Serve `export` on `listener` until `stop` is set, or (without `persistent`) until the
/// last client has left. Then flush and close the device.
pub fn serve(
    listener: &Listener,
    export: Arc<Export>,
    opts: &ServeOptions,
    stop: &AtomicBool,
) -> Result<()> {
    let mut clients = Clients::default();
    let mut served = false;
    let accepted = accept_loop(listener, &export, opts, stop, &mut clients, &mut served);
    // Let each connection finish the request it is on; a client that stopped reading
    // its replies gets STOP_GRACE, then its socket is closed under it.
    for (_, s) in lock(&clients.sockets).iter() {
        s.shutdown(Shutdown::Read);
    }
    let deadline = std::time::Instant::now() + STOP_GRACE;
    while clients.threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(POLL_INTERVAL / 10);
    }
    for (_, s) in lock(&clients.sockets).iter() {
        s.shutdown(Shutdown::Both);
    }
    for t in clients.threads.drain(..) {
        let _ = t.join();
    }
    if let Listener::Unix(_, path) = listener {
        let _ = std::fs::remove_file(path);
    }
    let closed = export.close();
    accepted.and(closed)
}

fn accept_loop(
    listener: &Listener,
    export: &Arc<Export>,
    opts: &ServeOptions,
    stop: &AtomicBool,
    clients: &mut Clients,
    served: &mut bool,
) -> Result<()> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let active = clients.active.load(Ordering::SeqCst);
        if *served && active == 0 && !opts.persistent {
            return Ok(());
        }
        clients.threads.retain(|t| !t.is_finished());
        if active >= opts.shared.max(1) || !readable(listener.fd(), POLL_INTERVAL) {
            if active >= opts.shared.max(1) {
                std::thread::sleep(POLL_INTERVAL / 10);
            }
            continue;
        }
        let stream = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("accepting an NBD client", e)),
        };
        *served = true;
        clients.spawn(stream, export, opts.tls.clone())?;
    }
}

impl Clients {
    fn spawn(
        &mut self,
        stream: Stream,
        export: &Arc<Export>,
        tls: Option<TlsConfig>,
    ) -> Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let clone = stream
            .try_clone()
            .map_err(|e| Error::io("cloning a client socket", e))?;
        lock(&self.sockets).push((id, clone));
        self.active.fetch_add(1, Ordering::SeqCst);
        let export = Arc::clone(export);
        let active = Arc::clone(&self.active);
        let sockets = Arc::clone(&self.sockets);
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-client-{id}"))
            .spawn(move || {
                // A client that breaks the protocol or hangs up only ends its connection.
                let _ = connection(stream, &export, tls);
                lock(&sockets).retain(|(i, _)| *i != id);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(t) => {
                self.threads.push(t);
                Ok(())
            }
            Err(e) => {
                lock(&self.sockets).retain(|(i, _)| *i != id);
                self.active.fetch_sub(1, Ordering::SeqCst);
                Err(Error::io("starting a connection thread", e))
            }
        }
    }
}

/// One connection from greeting to goodbye.
fn connection(mut stream: Stream, export: &Export, tls: Option<TlsConfig>) -> io::Result<()> {
    // A client that connects and says nothing must not hold a slot forever: the
    // handshake has a time limit, lifted for transmission.
    stream.set_read_timeout(Some(HANDSHAKE_LIMIT))?;
    let Some(flags) = greet(&mut stream)? else {
        return Ok(());
    };
    let result = match tls {
        None => plain_connection(&mut stream, export, flags),
        Some(config) => tls_connection(&mut stream, export, flags, config),
    };
    stream.shutdown(Shutdown::Both);
    result
}

fn plain_connection(stream: &mut Stream, export: &Export, flags: u32) -> io::Result<()> {
    let negotiated = match haggle(stream, export, flags, Tls::Off)? {
        Outcome::Transmission(n) => n,
        Outcome::StartTls | Outcome::Closed => return Ok(()),
    };
    stream.set_read_timeout(None)?;
    let writer = BufWriter::with_capacity(IO_BUFFER, stream.try_clone()?);
    serve_requests(stream.try_clone()?, writer, export, negotiated)
}

/// Haggle in the clear until the client starts TLS, then haggle and serve inside it.
fn tls_connection(
    stream: &mut Stream,
    export: &Export,
    flags: u32,
    config: TlsConfig,
) -> io::Result<()> {
    if haggle(stream, export, flags, Tls::Required)? != Outcome::StartTls {
        return Ok(());
    }
    let session = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
    let tls = Shared::new(rustls::StreamOwned::new(session, stream.try_clone()?));
    let negotiated = match haggle(&mut tls.clone(), export, flags, Tls::Active)? {
        Outcome::Transmission(n) => n,
        Outcome::StartTls | Outcome::Closed => return Ok(()),
    };
    stream.set_read_timeout(None)?;
    let writer = BufWriter::with_capacity(IO_BUFFER, tls.clone());
    let served = serve_requests(tls.clone(), writer, export, negotiated);
    tls.with(|t| {
        t.conn.send_close_notify();
        // The client may be gone already.
        let _ = t.flush();
    });
    served
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `fd` has a connection waiting, waiting at most `timeout`.
fn readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pfd` is one valid pollfd that outlives the call, and the count passed is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}
