//! Images on Ceph RBD, named as qemu-img names them (`rbd:POOL/IMAGE[@SNAP][:conf=...]`,
//! see [`name`]). [`super::HostFiles`] sends such names here, so every format and
//! operation that opens files by name works on RBD images too (a raw disk, or a qcow2 or
//! VMDK stored in an RBD image).
//!
//! The storage itself ([`RbdStorage`]) talks to the cluster through librbd and librados,
//! the C libraries Ceph ships, over a thin hand-written FFI layer (`ffi`). It is built
//! only with the cargo feature `rbd`; without it, opening or creating an `rbd:` name fails
//! with a message that says so, and everything else works as before.

pub mod name;

#[cfg(feature = "rbd")]
mod cluster;
#[cfg(feature = "rbd")]
mod extents;
#[cfg(feature = "rbd")]
mod ffi;
#[cfg(feature = "rbd")]
mod image;
#[cfg(feature = "rbd")]
mod readahead;

#[cfg(feature = "rbd")]
pub use image::{RbdStorage, MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES};
pub use name::{is_rbd_name, RbdName};

use super::Storage;
use std::io;
use std::path::Path;
use std::sync::Arc;

fn parse(path: &Path) -> io::Result<RbdName> {
    let text = path.to_str().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "rbd image name is not UTF-8")
    })?;
    RbdName::parse(text)
}

/// Open the RBD image `path` names, for writing when `write`.
pub fn open(path: &Path, write: bool, unsafe_cache: bool) -> io::Result<Arc<dyn Storage>> {
    imp::open(&parse(path)?, write, unsafe_cache)
}

/// Create the RBD image `path` names, empty; an existing image is an error.
pub fn create(path: &Path, unsafe_cache: bool) -> io::Result<Arc<dyn Storage>> {
    imp::create(&parse(path)?, unsafe_cache)
}

/// Remove the RBD image `path` names.
pub fn remove(path: &Path) -> io::Result<()> {
    imp::remove(&parse(path)?)
}

/// Whether the RBD image `path` names exists (one connection to the cluster).
pub fn exists(path: &Path) -> io::Result<bool> {
    imp::exists(&parse(path)?)
}

/// What `path` points at when it is an RBD name (`rbd:POOL[/NS]/IMAGE[@SNAP]`, whatever
/// the settings), for telling whether two names are one image; `None` for other names.
pub fn identity(path: &Path) -> Option<String> {
    if !is_rbd_name(path) {
        return None;
    }
    parse(path).ok().map(|n| format!("rbd:{}", n.identity()))
}

#[cfg(feature = "rbd")]
mod imp {
    use super::{RbdName, RbdStorage, Storage};
    use std::io;
    use std::sync::Arc;

    pub fn open(name: &RbdName, write: bool, unsafe_cache: bool) -> io::Result<Arc<dyn Storage>> {
        Ok(Arc::new(RbdStorage::open(name, write, unsafe_cache)?))
    }

    pub fn create(name: &RbdName, unsafe_cache: bool) -> io::Result<Arc<dyn Storage>> {
        Ok(Arc::new(RbdStorage::create(name, unsafe_cache)?))
    }

    pub fn remove(name: &RbdName) -> io::Result<()> {
        RbdStorage::remove(name)
    }

    pub fn exists(name: &RbdName) -> io::Result<bool> {
        let (pool, cluster) = super::cluster::connect(name)?;
        let found = match super::cluster::open_image(&pool, name, false) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        };
        // The I/O context goes before the cluster handle it belongs to.
        drop(pool);
        drop(cluster);
        found
    }
}

/// Without the feature: every access is refused, saying what is missing.
#[cfg(not(feature = "rbd"))]
mod imp {
    use super::{RbdName, Storage};
    use std::io;
    use std::sync::Arc;

    fn unavailable() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "rbd: image names need vdisk built with the cargo feature `rbd` (librbd)",
        )
    }

    pub fn open(_: &RbdName, _write: bool, _unsafe_cache: bool) -> io::Result<Arc<dyn Storage>> {
        Err(unavailable())
    }

    pub fn create(_: &RbdName, _unsafe_cache: bool) -> io::Result<Arc<dyn Storage>> {
        Err(unavailable())
    }

    pub fn remove(_: &RbdName) -> io::Result<()> {
        Err(unavailable())
    }

    pub fn exists(_: &RbdName) -> io::Result<bool> {
        Err(unavailable())
    }
}
