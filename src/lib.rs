//! vdisk: virtual-machine disk images (qcow2, VMDK, raw).
//!
//! # Layers
//!
//! The crate is built in layers; a module only uses the layers below it.
//!
//! 1. [`storage`]: positioned I/O on a file, a memory buffer, or a fault-injecting buffer.
//! 2. Format drivers behind one trait, [`BlockDevice`]: [`raw`], [`qcow2`], [`vmdk`].
//! 3. [`image`]: format probing and opening an image by path (with its backing chain).
//! 4. [`ops`]: operations written once against [`BlockDevice`] (convert, ...).
//!
//! The `vdisk` command-line tool in `tools/` is a thin layer over this library.
//!
//! # Naming
//!
//! Names follow the formats' own vocabulary (`l1_index`, `l2_entry`, `refcount_block`,
//! `grain_table`) so that `format-spec/` and the code read alike.

pub mod chain;
pub mod codec;
pub mod device;
pub mod dump;
pub mod error;
pub mod image;
pub mod names;
pub mod ops;
pub mod probed_raw;
pub mod qcow2;
pub mod raw;
pub mod size;
pub mod storage;
pub mod vmdk;

pub use device::{BlockDevice, Extent, ExtentKind};
pub use error::{Error, Result};

/// How much of an image to allocate up front, as qemu-img's `preallocation` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Allocate nothing.
    #[default]
    Off,
    /// Allocate metadata only (qcow2); same as `Off` for raw.
    Metadata,
    /// Reserve host space with fallocate.
    Falloc,
    /// Write zeros to every byte.
    Full,
}

impl std::str::FromStr for Preallocation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(Preallocation::Off),
            "metadata" => Ok(Preallocation::Metadata),
            "falloc" => Ok(Preallocation::Falloc),
            "full" => Ok(Preallocation::Full),
            _ => Err(Error::invalid(format!(
                "invalid preallocation mode '{s}' (expected off, metadata, falloc or full)"
            ))),
        }
    }
}
