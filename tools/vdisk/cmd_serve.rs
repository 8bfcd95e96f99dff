//! `vdisk serve [-f FMT] [--object DEF] [--image-opts] [-r] [-x NAME] [-D TEXT] [-l SNAPSHOT] [-s] [-B BITMAP] [-A] [-e N] [-t]
//! [--discard MODE] [--detect-zeroes MODE] [--cache MODE] [-b ADDR] [-p PORT] [-k PATH] [--tls-creds DIR] [--pid-file F] FILE`: serve an image
//! over NBD, as qemu-nbd does. The flags are defined here (not shared with other subcommands) because
//! their meaning is qemu-nbd's, not qemu-img's; `--object` and `--image-opts` (an encrypted image
//! with its `encrypt.key-secret`) mean the same in both.

use crate::flags::ImageSpecFlags;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vdisk::image::Format;
use vdisk::nbd::dirty::DirtySource;
use vdisk::nbd::open::{self, OpenExport, Source};
use vdisk::nbd::server::{self, Listener, ServeOptions};
use vdisk::nbd::{DetectZeroes, Export, ExportConfig};
use vdisk::{Error, Result};

/// Arguments of `serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Image format (probed when absent).
    #[arg(short = 'f', long = "format")]
    format: Option<String>,
    /// Export the image read-only.
    #[arg(short = 'r', long = "read-only")]
    read_only: bool,
    /// Export name (default: the empty name).
    #[arg(short = 'x', long = "export-name", default_value = "")]
    export_name: String,
    /// Export description.
    #[arg(short = 'D', long = "description")]
    description: Option<String>,
    /// Export this internal snapshot (ID or name), read-only.
    #[arg(short = 'l', long = "load-snapshot")]
    load_snapshot: Option<String>,
    /// Send writes to a temporary overlay, thrown away when the server exits.
    #[arg(short = 's', long = "snapshot")]
    snapshot: bool,
    /// Offer the qemu:allocation-depth metadata context.
    #[arg(short = 'A', long = "allocation-depth")]
    allocation_depth: bool,
    /// Export this persistent dirty bitmap as the qemu:dirty-bitmap:NAME context (a
    /// read-only export, or a disabled bitmap).
    #[arg(short = 'B', long = "bitmap")]
    bitmap: Option<String>,
    /// Clients served at once.
    #[arg(short = 'e', long = "shared", default_value_t = 1)]
    shared: usize,
    /// Keep serving after the last client leaves.
    #[arg(short = 't', long = "persistent")]
    persistent: bool,
    /// What TRIM does: ignore (default) or unmap.
    #[arg(long = "discard", default_value = "ignore")]
    discard: String,
    /// What a write of all-zero data becomes: off (a write), on (zeroing that keeps the
    /// storage) or unmap (zeroing that releases it; needs --discard=unmap).
    #[arg(long = "detect-zeroes", default_value = "off")]
    detect_zeroes: String,
    /// Host cache mode: unsafe skips fdatasync on FLUSH; none, writeback, writethrough
    /// and directsync keep every flush durable.
    #[arg(long = "cache", default_value = "writeback")]
    cache: String,
    /// Address to listen on (default 127.0.0.1).
    #[arg(short = 'b', long = "bind", default_value = "127.0.0.1")]
    bind: String,
    /// TCP port to listen on.
    #[arg(short = 'p', long = "port", default_value_t = 10809)]
    port: u16,
    /// Listen on this Unix socket instead of TCP.
    #[arg(short = 'k', long = "socket")]
    socket: Option<PathBuf>,
    /// Require TLS, with the credentials in this directory (ca-cert.pem, server-cert.pem,
    /// server-key.pem).
    #[arg(long = "tls-creds")]
    tls_creds: Option<PathBuf>,
    /// Write the server's process id to this file once it listens.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    // `--object secret,...` and `--image-opts` (`encrypt.key-secret`, `backing.encrypt.key-secret`).
    #[command(flatten)]
    spec: ImageSpecFlags,
    /// Image file.
    file: PathBuf,
}

/// Set by SIGINT and SIGTERM: the server stops.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    let (discard, detect_zeroes, unsafe_cache) = modes(&a)?;
    let format: Option<Format> = a.format.as_deref().map(str::parse).transpose()?;
    let resolved = a.spec.resolve(&a.file, format)?;
    a.file = resolved.path;
    let format = resolved.format;
    let source = match (&a.load_snapshot, a.snapshot) {
        (Some(_), true) => {
            return Err(Error::invalid("-l and -s cannot be used together"));
        }
        (Some(name), false) => Source::Snapshot(name.clone()),
        (None, true) => Source::TemporaryOverlay,
        (None, false) => Source::Image,
    };
    let read_only = a.read_only || a.load_snapshot.is_some();
    let dirty = match &a.bitmap {
        Some(name) => Some(bitmap_source(&a, name, read_only)?),
        None => None,
    };
    let device = open::open_device(
        &a.file,
        &OpenExport {
            format,
            read_only,
            unsafe_cache,
            source,
        },
    )?;
    let config = ExportConfig {
        name: a.export_name.clone(),
        description: a.description.clone(),
        read_only,
        allocation_depth: a.allocation_depth,
        discard,
        detect_zeroes,
        shared: a.shared,
    };
    let mut export = Export::new(device, config);
    if let Some(source) = dirty {
        export = export.with_dirty_bitmap(source);
    }
    let export = Arc::new(export);
    let tls = match &a.tls_creds {
        Some(dir) => Some(vdisk::nbd::tls::load_server_config(dir)?),
        None => None,
    };
    let listener = listen(&a)?;
    if let Some(p) = &a.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
    }
    install_stop_handlers();
    let opts = ServeOptions {
        shared: a.shared.max(1),
        persistent: a.persistent,
        tls,
    };
    let served = server::serve(&listener, export, &opts, &STOP);
    if let Some(p) = &a.pid_file {
        let _ = std::fs::remove_file(p);
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// The `--discard`, `--detect-zeroes` and `--cache` modes, refused as qemu-nbd refuses them.
fn modes(a: &Args) -> Result<(bool, DetectZeroes, bool)> {
    let discard = match a.discard.as_str() {
        "ignore" | "off" => false,
        "unmap" | "on" => true,
        d => return Err(Error::invalid(format!("Invalid discard mode `{d}'"))),
    };
    let detect_zeroes = match a.detect_zeroes.as_str() {
        "off" => DetectZeroes::Off,
        "on" => DetectZeroes::On,
        "unmap" if discard => DetectZeroes::Unmap,
        "unmap" => {
            return Err(Error::invalid(
                "setting detect-zeroes to unmap is not allowed without setting discard \
                 operation to unmap",
            ))
        }
        d => {
            return Err(Error::invalid(format!(
                "Failed to parse detect_zeroes mode: invalid parameter value: {d}"
            )))
        }
    };
    let unsafe_cache = match a.cache.as_str() {
        "unsafe" => true,
        "none" | "writeback" | "writethrough" | "directsync" => false,
        c => return Err(Error::invalid(format!("invalid cache mode '{c}'"))),
    };
    Ok((discard, detect_zeroes, unsafe_cache))
}

/// The source of persistent bitmap `name` for `-B` (see
/// [`vdisk::nbd::open::bitmap_source`]); not with `-l` or `-s`.
fn bitmap_source(a: &Args, name: &str, read_only: bool) -> Result<Box<dyn DirtySource>> {
    if a.load_snapshot.is_some() || a.snapshot {
        return Err(Error::unsupported(format!(
            "-B {name}: exporting a bitmap with -l or -s is not supported"
        )));
    }
    vdisk::nbd::open::bitmap_source(&a.file, name, read_only)
}

fn listen(a: &Args) -> Result<Listener> {
    if let Some(path) = &a.socket {
        let l = UnixListener::bind(path)
            .map_err(|e| Error::io(format!("listening on {}", path.display()), e))?;
        return Ok(Listener::Unix(l, path.clone()));
    }
    let addr = (a.bind.as_str(), a.port);
    match TcpListener::bind(addr) {
        Ok(l) => Ok(Listener::Tcp(l)),
        Err(e) if e.kind() == ErrorKind::AddrInUse => Err(Error::io(
            format!(
                "listening on {}:{} (is another server there?)",
                a.bind, a.port
            ),
            e,
        )),
        Err(e) => Err(Error::io(format!("listening on {}:{}", a.bind, a.port), e)),
    }
}

fn install_stop_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_stop_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}
