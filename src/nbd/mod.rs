//! An NBD server: one [`Export`] of any [`BlockDevice`], served to NBD clients (qemu, libnbd's
//! `nbdcopy`/`nbdinfo`, the Linux kernel client) over TCP or a Unix socket.
//!
//! * [`open`]: the device to serve: the image, an internal snapshot, or a temporary
//!   overlay over the image.
//! * [`proto`]: the wire format (constants and pure codecs).
//! * [`handshake`]: the fixed newstyle option haggling that picks the export, structured
//!   replies and metadata contexts.
//! * [`transmission`]: the request loop of one connection (READ, WRITE, BLOCK_STATUS, ...).
//! * [`dirty`]: dirty bitmaps as the `qemu:dirty-bitmap:NAME` context, behind the
//!   [`dirty::DirtySource`] trait.
//! * [`tls`]: TLS credentials and sessions (`NBD_OPT_STARTTLS`).
//! * [`server`]: listening, accepting up to `-e` clients, one thread per connection, and
//!   stopping cleanly (finish the request in flight, flush, close the image).
//!
//! The device sits behind one mutex: requests of all connections are applied one at a
//! time, so a FLUSH on any connection covers the writes of every connection, which is what
//! makes `NBD_FLAG_CAN_MULTI_CONN` safe to advertise.

pub mod dirty;
pub mod handshake;
pub mod open;
pub mod proto;
pub mod server;
pub mod tls;
pub mod transmission;

#[cfg(test)]
mod tests;

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use dirty::DirtySource;
use std::sync::{Mutex, MutexGuard};

/// How an export is offered (the qemu-nbd flags that shape it).
#[derive(Debug, Clone, Default)]
pub struct ExportConfig {
    /// The export name clients ask for (`-x`; qemu-nbd's default is the empty name).
    pub name: String,
    /// Free text sent as `NBD_INFO_DESCRIPTION` (`-D`).
    pub description: Option<String>,
    /// Refuse writes (`-r`, or an exported snapshot).
    pub read_only: bool,
    /// Offer the `qemu:allocation-depth` metadata context (`-A`).
    pub allocation_depth: bool,
    /// Pass TRIM on to the image (`--discard=unmap`); otherwise TRIM succeeds doing nothing,
    /// as with qemu-nbd's default `--discard=ignore`.
    pub discard: bool,
    /// Turn writes of all-zero data into zeroing requests (`--detect-zeroes`).
    pub detect_zeroes: DetectZeroes,
    /// How many clients may be connected at once (`-e`); more than one advertises
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    pub shared: usize,
}

/// qemu-nbd's `--detect-zeroes`: what happens to a WRITE whose payload is all zeros.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DetectZeroes {
    /// Written as data.
    #[default]
    Off,
    /// Zeroed instead, keeping the storage the range holds (zero clusters in qcow2).
    On,
    /// Zeroed instead, releasing the storage (needs `--discard=unmap`).
    Unmap,
}

/// The one export of a server: its device and how it is offered.
pub struct Export {
    config: ExportConfig,
    size: u64,
    device: Mutex<Box<dyn BlockDevice>>,
    /// The dirty bitmap offered as `qemu:dirty-bitmap:NAME`, if any (locked after
    /// `device`, never before it).
    dirty: Option<Mutex<Box<dyn DirtySource>>>,
}

impl Export {
    /// Offer `device` as described by `config`. A device opened read-only is always exported
    /// read-only.
    pub fn new(device: Box<dyn BlockDevice>, mut config: ExportConfig) -> Export {
        config.read_only |= device.is_read_only();
        config.shared = config.shared.max(1);
        Export {
            size: device.virtual_size(),
            device: Mutex::new(device),
            dirty: None,
            config,
        }
    }

    /// Offer `source` as the `qemu:dirty-bitmap:NAME` context too.
    pub fn with_dirty_bitmap(mut self, source: Box<dyn DirtySource>) -> Export {
        self.dirty = Some(Mutex::new(source));
        self
    }

    /// The name of the exported dirty bitmap's context, if there is one.
    pub fn dirty_context_name(&self) -> Option<String> {
        let d = self.dirty.as_ref()?;
        let guard = d.lock().unwrap_or_else(|p| p.into_inner());
        Some(dirty::context_name(guard.name()))
    }

    /// The dirty bitmap's source, for one request (after [`device`](Self::device)).
    pub fn dirty(&self) -> Option<MutexGuard<'_, Box<dyn DirtySource>>> {
        let d = self.dirty.as_ref()?;
        Some(d.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The export's configuration.
    pub fn config(&self) -> &ExportConfig {
        &self.config
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The transmission flags sent to a client (`structured`: whether it negotiated
    /// structured replies, without which `NBD_CMD_FLAG_DF` means nothing).
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        use proto::*;
        let mut flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_CACHE;
        if self.config.read_only {
            flags |= FLAG_READ_ONLY;
        } else {
            flags |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        }
        if structured {
            flags |= FLAG_SEND_DF;
        }
        if self.config.shared > 1 {
            flags |= FLAG_CAN_MULTI_CONN;
        }
        flags
    }

    /// The device, for one request. A connection thread that panicked while holding it
    /// cannot have left it half-updated in a way the lock would protect against (every
    /// device operation is complete or returns an error), so a poisoned lock is taken over.
    pub fn device(&self) -> MutexGuard<'_, Box<dyn BlockDevice>> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Flush and close the device (the server is stopping).
    pub fn close(&self) -> Result<()> {
        let mut dev = self.device();
        if self.config.read_only {
            return Ok(());
        }
        dev.close()
    }
}

/// The protocol's error number for a failed device operation.
pub fn errno_of(e: &Error) -> u32 {
    match e {
        Error::ReadOnly(_) => proto::EPERM,
        Error::InvalidArgument(_) => proto::EINVAL,
        Error::Unsupported(_) => proto::ENOTSUP,
        Error::Io { source, .. } => match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => proto::ENOSPC,
            Some(libc::ENOMEM) => proto::ENOMEM,
            _ => proto::EIO,
        },
        _ => proto::EIO,
    }
}
