//! vdisk: virtual-machine disk images (qcow2, VMDK, raw).
//!
//! # Layers
//!
//! The crate is built in layers; a module only names modules of its own layer or below,
//! and `tests/layers.rs` fails the build of the test suite when one does not (or when two
//! modules name each other).
//!
//! 0. [`storage`]: positioned I/O on a host file, a memory buffer or a fault-injecting
//!    buffer, and [`storage::Namespace`]: opening and creating the files of an image by
//!    name ([`storage::HostFiles`], or [`storage::MemFiles`] in tests).
//! 1. Shared vocabulary: [`error`], [`device`] (the [`BlockDevice`] trait), [`size`],
//!    [`codec`], [`names`] (rules for recorded file names), [`check_report`], [`crypto`]
//!    (LUKS1 and legacy AES encryption, and the process's secrets), and
//!    [`driver`]: the row type of the driver table ([`driver::Driver`]) and [`Format`],
//!    a handle on one row.
//! 2. Format drivers, each a module exposing one `DRIVER` row: [`raw`], [`qcow2`],
//!    [`vmdk`]. A driver never names another driver.
//! 3. [`image`]: the driver table (`image::DRIVERS`), probing, opening an image by path
//!    with its backing chain ([`chain`]), creating images; [`probed_raw`] guards raw
//!    images whose format was probed.
//! 4. [`ops`] (create, convert, commit, rebase, compare, map, measure, info, check,
//!    resize, amend, snapshot, bench, dd, delta), [`dump`] and [`nbd`] (an NBD server for any
//!    device): written once against [`BlockDevice`] and the driver table; each takes an
//!    image by path, so a command is one call.
//!
//! The `vdisk` command-line tool in `tools/` parses flags and calls one library function
//! per command; it opens no storage itself.
//!
//! Adding a format: a new module under `src/` with its `DRIVER` value (probe, open, create,
//! its `-o` options, info, and where it has them measure, check, dump, its resize policy,
//! amend and make-empty), plus one line in `image::DRIVERS`.
//!
//! # Naming
//!
//! Names follow the formats' own vocabulary (`l1_index`, `l2_entry`, `refcount_block`,
//! `grain_table`) so that `format-spec/` and the code read alike.

pub mod chain;
pub mod check_report;
pub mod codec;
pub mod create_opts;
pub mod crypto;
pub mod device;
pub mod driver;
pub mod dump;
pub mod error;
pub mod image;
pub mod names;
pub mod nbd;
pub mod ops;
pub mod probed_raw;
pub mod qcow2;
pub mod raw;
pub mod size;
pub mod storage;
pub mod uuid;
pub mod vdi;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

pub use device::{BlockDevice, Extent, ExtentKind};
pub use driver::Format;
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

impl Preallocation {
    /// The name qemu-img uses for the mode.
    pub fn name(self) -> &'static str {
        match self {
            Preallocation::Off => "off",
            Preallocation::Metadata => "metadata",
            Preallocation::Falloc => "falloc",
            Preallocation::Full => "full",
        }
    }
}

impl std::str::FromStr for Preallocation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(Preallocation::Off),
            "metadata" => Ok(Preallocation::Metadata),
            "falloc" => Ok(Preallocation::Falloc),
            "full" => Ok(Preallocation::Full),
            // qemu's words when it parses the mode by name (raw create, qcow2 measure).
            _ => Err(Error::invalid(format!("invalid parameter value: {s}"))),
        }
    }
}
