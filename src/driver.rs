//! The driver table's row: what every image format offers the layers above it.
//!
//! Each format module exposes one [`Driver`] value (`raw::DRIVER`, `qcow2::DRIVER`,
//! `vmdk::DRIVER`); `image::DRIVERS` lists them, and nothing outside a format's own module
//! matches on the format. A [`Format`] is a handle on a row. Adding a format is a new
//! module with its driver value plus one line in `image::DRIVERS`.
//!
//! The functions in a row see only this layer and the ones below it (devices, storage,
//! namespaces): backing chains are the image layer's job, so `open` reports the backing
//! file an image names and `image` attaches it with [`BlockDevice::attach_backing`]. A row
//! function that opens the image itself and needs its chain (resize, amend) is handed an
//! [`OpenBacking`] by the caller instead.
//!
//! Besides opening and creating, a row says what the format allows: how it resizes
//! ([`ResizePolicy`]: shrinking, preallocation modes, sector alignment), whether it has
//! amendable options, checks, dumps and measurements, and whether `commit` empties it
//! afterwards ([`MakeEmpty`]). `None` is qemu-img's "not supported" for that format.

use crate::check_report::{CheckReport, Repair};
use crate::device::{BlockDevice, ExtentKind};
use crate::error::{Error, Result};
use crate::storage::Namespace;
use crate::Preallocation;
use std::path::{Path, PathBuf};

/// How the image layer asks a driver to open one image (one layer of a chain).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenParams {
    /// Refuse writes, and take only the locks a reader takes.
    pub read_only: bool,
    /// Skip fdatasync on flush (qemu-img's cache=unsafe).
    pub unsafe_cache: bool,
    /// Read-only opens only: do not lock out writers (qemu-img `-U`).
    pub force_share: bool,
    /// Read-only opens only: keep other processes from writing or resizing the image while
    /// it is read, as qemu-img convert does for its source. Formats with metadata always
    /// do; a raw image otherwise lets others write, as QEMU's raw driver does for
    /// `qemu-img info`, `compare`, `map` and `measure`.
    pub stable_source: bool,
    /// Only the image's metadata will be used (its size, its backing chain), as QEMU's
    /// no-I/O opens: an encrypted image opens without its secret, locked.
    pub metadata_only: bool,
    /// The image was probed as the backing file of another one (no format recorded there):
    /// refuse anything that would make vdisk open further files chosen by the image's
    /// first bytes.
    pub probed_backing: bool,
}

/// The backing file an opened image names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingRef {
    /// The name as recorded.
    pub name: String,
    /// The format as recorded, if any.
    pub format: Option<String>,
}

/// A driver's opened image.
pub struct Opened {
    /// The device, without its backing chain.
    pub device: Box<dyn BlockDevice>,
    /// The backing file it names, to be opened and attached by the caller.
    pub backing: Option<BackingRef>,
}

/// How to create a new image.
#[derive(Debug, Clone, Copy)]
pub struct CreateParams<'a> {
    /// The virtual size, when given apart from the options.
    pub size: Option<u64>,
    /// qemu-img style `-o` options (key, value), in order.
    pub options: &'a [(String, String)],
    /// Skip fdatasync on flush (qemu-img convert's cache=unsafe).
    pub unsafe_cache: bool,
}

/// What `info` shows of one image beyond its file: the format's own fields.
#[derive(Debug, Clone, Default)]
pub struct FormatInfo {
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// The allocation unit, for formats that have one.
    pub cluster_size: Option<u64>,
    /// Whether the image was not closed cleanly.
    pub dirty: bool,
    /// The backing file it names.
    pub backing: Option<BackingRef>,
    /// Internal snapshots, as qemu-img's JSON shows them.
    pub snapshots: Vec<serde_json::Value>,
    /// The "format-specific" data of qemu-img's JSON (its "type" is the driver's name).
    pub format_specific: Option<serde_json::Value>,
    /// Whether the image can carry persistent dirty bitmaps (qemu's
    /// `bdrv_supports_persistent_dirty_bitmap`; `measure` then reports a bitmaps size).
    pub supports_persistent_bitmaps: bool,
    /// Whether guest data is encrypted (qemu-img's `encrypted`).
    pub encrypted: bool,
}

/// The result of a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// Bytes the image needs for its current data.
    pub required: u64,
    /// Bytes the image needs with every cluster allocated.
    pub fully_allocated: u64,
    /// Bytes for persistent bitmaps (shown for a qcow2 v3 target measured from a qcow2
    /// input); vdisk copies no bitmaps, so this is 0 when present.
    pub bitmaps: Option<u64>,
}

impl Measurement {
    /// qemu-img's human output.
    pub fn to_human(&self) -> String {
        let mut s = format!(
            "required size: {}\nfully allocated size: {}\n",
            self.required, self.fully_allocated
        );
        if let Some(b) = self.bitmaps {
            s.push_str(&format!("bitmaps size: {b}\n"));
        }
        s
    }

    /// qemu-img's JSON object (keys in qemu-img's order).
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        if let Some(b) = self.bitmaps {
            m.insert("bitmaps".into(), b.into());
        }
        m.insert("required".into(), self.required.into());
        m.insert("fully-allocated".into(), self.fully_allocated.into());
        serde_json::Value::Object(m)
    }
}

/// What measuring needs of a persistent bitmap: its name's length and its granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapShape {
    /// Bytes of the name.
    pub name_len: usize,
    /// Guest bytes per bit.
    pub granularity: u64,
}

/// What to measure: an input image, or an empty one of a given size.
pub enum Source<'a> {
    /// An open input image.
    Image {
        /// The guest device (with its backing chain).
        device: &'a mut dyn BlockDevice,
        /// The input's persistent bitmaps, when it can carry them (a qcow2 version 3
        /// image); qemu-img then reports a bitmaps size.
        bitmaps: Option<Vec<BitmapShape>>,
    },
    /// A virtual size in bytes.
    Size(u64),
}

/// Guest bytes of `input` that a copy must store, rounded out to `cluster_size` clusters
/// (zero and unallocated runs are skipped).
pub fn allocated_bytes(input: &mut dyn BlockDevice, cluster_size: u64) -> Result<u64> {
    let size = input.virtual_size();
    let mut required = 0;
    let mut pos = 0;
    while pos < size {
        // As qemu-img: data over a hole of the host file reads as zeros and is not counted.
        let st = input.map_status(pos, size - pos)?;
        let ext = st.extent;
        let mut len = ext.length.max(1).min(size - pos);
        if ext.kind == ExtentKind::Data && !st.zero {
            len = (pos + len).next_multiple_of(cluster_size) - pos;
            required += pos % cluster_size + len;
        }
        pos += len;
    }
    Ok(required)
}

/// Which sections to print (all when none is selected).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpOptions {
    /// Header fields, extensions, feature names (VMDK: sparse header and descriptor).
    pub header: bool,
    /// The L1 table(s) (VMDK: the grain directory).
    pub l1: bool,
    /// Every L2 table (VMDK: every grain table).
    pub l2: bool,
    /// The refcount table and blocks.
    pub refcounts: bool,
    /// The snapshot table and each snapshot's L1 table.
    pub snapshots: bool,
    /// The guest-to-host map.
    pub map: bool,
    /// What each host cluster holds.
    pub clusters: bool,
    /// The persistent bitmaps: directory and tables (qcow2; shown when there are some).
    pub bitmaps: bool,
}

impl DumpOptions {
    /// Every section.
    pub fn all() -> Self {
        DumpOptions {
            header: true,
            l1: true,
            l2: true,
            refcounts: true,
            snapshots: true,
            map: true,
            clusters: true,
            bitmaps: true,
        }
    }

    /// Every section when none was asked for.
    pub fn or_all(self) -> Self {
        if self == DumpOptions::default() {
            DumpOptions::all()
        } else {
            self
        }
    }
}

/// A host offset or raw value as `dump` shows it: hexadecimal text.
pub fn hex(v: u64) -> serde_json::Value {
    serde_json::Value::String(format!("{v:#x}"))
}

/// qemu-img style `-o` options (key, value), in order.
pub type Options = [(String, String)];
/// [`Driver::open`].
pub type OpenFn = fn(ns: &dyn Namespace, path: &Path, params: &OpenParams) -> Result<Opened>;
/// [`Driver::create`].
pub type CreateFn =
    fn(ns: &dyn Namespace, path: &Path, params: &CreateParams<'_>) -> Result<Box<dyn BlockDevice>>;
/// [`Driver::create_files`].
pub type CreateFilesFn = fn(path: &Path, size: u64, options: &Options) -> Vec<PathBuf>;
/// [`Driver::info`].
pub type InfoFn = fn(ns: &dyn Namespace, path: &Path, force_share: bool) -> Result<FormatInfo>;
/// [`Driver::measure`].
pub type MeasureFn = fn(source: Source<'_>, options: &Options) -> Result<Measurement>;
/// [`Driver::check`].
pub type CheckFn =
    fn(ns: &dyn Namespace, path: &Path, repair: Repair, force_share: bool) -> Result<CheckReport>;
/// [`Driver::dump`].
pub type DumpFn = fn(
    ns: &dyn Namespace,
    path: &Path,
    opts: DumpOptions,
    force_share: bool,
) -> Result<serde_json::Value>;

/// Opens, read-only and with the rest of its chain, the backing file an image names: the
/// image layer's job, handed to a driver operation that opens the image itself (resize,
/// amend).
pub type OpenBacking<'a> = &'a mut dyn FnMut(&BackingRef) -> Result<Box<dyn BlockDevice>>;

/// What a resize asks of a driver.
pub struct ResizeJob<'a> {
    /// The new size, given the image's current one, after every check (those of all
    /// formats and those of the [`ResizePolicy`]). Called once the image is open, before
    /// anything changes.
    pub new_size: &'a mut dyn FnMut(u64) -> Result<u64>,
    /// Preallocation for the added part (one the policy allows).
    pub preallocation: Preallocation,
    /// Opens the backing chain, for a format resized with it attached.
    pub open_backing: OpenBacking<'a>,
}

/// [`ResizePolicy::resize`].
pub type ResizeFn = fn(ns: &dyn Namespace, path: &Path, job: ResizeJob<'_>) -> Result<()>;

/// How the images of a format change size (`qemu-img resize`). Every format that resizes
/// grows; shrinking needs `--shrink` and takes no preallocation (checked above the drivers).
#[derive(Clone, Copy)]
pub struct ResizePolicy {
    /// Whether the image may become smaller (with `--shrink`).
    pub shrink: bool,
    /// Preallocation modes for the added part; another is refused with qemu-img's
    /// "Unsupported preallocation mode".
    pub preallocation: &'static [Preallocation],
    /// Whether the new size must be a whole number of 512-byte sectors.
    pub whole_sectors: bool,
    /// Open the image at `path` for writing, get the new size from the job, resize.
    pub resize: ResizeFn,
}

/// [`Driver::amend`].
/// `force` is `amend --force`: allow the unsafe changes (for qcow2, LUKS key slot
/// changes that can lose the data).
pub type AmendFn = fn(
    ns: &dyn Namespace,
    path: &Path,
    options: &Options,
    force: bool,
    open_backing: OpenBacking<'_>,
) -> Result<()>;

/// Emptying an image after `commit` has copied its data into the backing chain (qemu's
/// make_empty), in two steps so that a commit refuses before it changes anything.
#[derive(Clone, Copy)]
pub struct MakeEmpty {
    /// Fail if the image at `path` could not be opened for writing (looking without
    /// locking it).
    pub check_writable: fn(ns: &dyn Namespace, path: &Path) -> Result<()>,
    /// Empty the image at `path`: every guest cluster reads from the backing chain again.
    pub run: fn(ns: &dyn Namespace, path: &Path) -> Result<()>,
}

/// One image format: its name and the functions that implement it.
pub struct Driver {
    /// The name qemu-img uses (`-f`, `-O`, `info`'s "file format").
    pub name: &'static str,
    /// How sure the driver is that an image starting with these bytes (up to 512 of them)
    /// is one of its own: 0 never, 100 certain. The highest score wins; raw answers 1.
    pub probe: fn(first: &[u8]) -> u32,
    /// Open the image at `path` (without its backing chain).
    pub open: OpenFn,
    /// Create a new image at `path` and return it open for writing.
    pub create: CreateFn,
    /// Check the `-o` options of a create without creating anything (qemu-img reports
    /// these before it prints "Formatting ...").
    pub check_create_options: fn(options: &Options) -> Result<()>,
    /// Its own `-o` options for create, in the order qemu-img's `Formatting` line shows
    /// them (the host file's options follow: [`crate::create_opts::FILE_OPTIONS`]).
    pub create_options: &'static [crate::create_opts::OptionDesc],
    /// The `-o` options `amend` takes (empty for formats without amend).
    pub amend_options: &'static [crate::create_opts::OptionDesc],
    /// Every file [`create`](Self::create) would make with these options, the image file
    /// first (options that do not parse: the image file alone).
    pub create_files: CreateFilesFn,
    /// Whether the format can store compressed data (QEMU's check for `convert -c`, made
    /// before the target is created).
    pub supports_compression: bool,
    /// Read what `info` shows of the image at `path` (opened read-only).
    pub info: InfoFn,
    /// What a new image of this format would need for `source` with these `-o` options
    /// (`qemu-img measure`); `None` for formats it cannot measure.
    pub measure: Option<MeasureFn>,
    /// Check the image at `path` for consistency, repairing what `repair` allows (opened
    /// writable then); `None` for formats without checks (qemu-img's exit 63).
    pub check: Option<CheckFn>,
    /// Whether [`check`](Self::check) can repair: QEMU's VDI and VMDK checks only report,
    /// and `check -r` on them is "not supported" (exit 63), as for a format without checks.
    pub check_repairs: bool,
    /// Every on-disk structure of the image at `path`, as one `dump` document; `None` for
    /// formats without metadata.
    pub dump: Option<DumpFn>,
    /// How its images change size; `None` for formats that cannot resize.
    pub resize: Option<ResizePolicy>,
    /// Change format options of the image at `path` in place (`qemu-img amend`); `None`
    /// for formats without amendable options.
    pub amend: Option<AmendFn>,
    /// Empty the image after a commit; `None` for formats that keep their data.
    pub make_empty: Option<MakeEmpty>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("name", &self.name).finish()
    }
}

/// A format: a handle on one row of the driver table.
#[derive(Clone, Copy)]
pub struct Format(&'static Driver);

impl Format {
    /// The format `driver` implements.
    pub const fn of(driver: &'static Driver) -> Self {
        Format(driver)
    }

    /// The driver.
    pub fn driver(self) -> &'static Driver {
        self.0
    }

    /// The name qemu-img uses.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// Whether the format can store compressed data at all.
    pub fn supports_compression(self) -> bool {
        self.0.supports_compression
    }
}

impl PartialEq for Format {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Format {}

impl std::fmt::Debug for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl OpenParams {
    /// A read-only open (without locking out writers when `force_share`), as `info`,
    /// `check` and `dump` make.
    pub fn read_only(force_share: bool) -> Self {
        OpenParams {
            read_only: true,
            force_share,
            ..Default::default()
        }
    }
}

/// Open the one file of an image at `path` through `ns` with `p`'s cache and sharing,
/// writable unless `read_only`, naming the file in the error.
pub fn open_file(
    ns: &dyn Namespace,
    path: &Path,
    read_only: bool,
    p: &OpenParams,
) -> Result<std::sync::Arc<dyn crate::storage::Storage>> {
    ns.open(
        path,
        crate::storage::OpenOptions {
            write: !read_only,
            unsafe_cache: p.unsafe_cache,
            force_share: p.force_share,
        },
    )
    .map_err(|e| {
        Error::io(
            format!("could not open '{}'", crate::storage::display_name(path)),
            e,
        )
    })
}

/// Open `path` read-only through `ns`, naming it in the error.
pub fn open_read_only(
    ns: &dyn Namespace,
    path: &Path,
    force_share: bool,
) -> Result<std::sync::Arc<dyn crate::storage::Storage>> {
    ns.open(
        path,
        crate::storage::OpenOptions {
            force_share,
            ..Default::default()
        },
    )
    .map_err(|e| {
        Error::io(
            format!("could not open '{}'", crate::storage::display_name(path)),
            e,
        )
    })
}

/// For [`Driver::create_files`] of a format whose image is one file.
pub fn one_file(path: &Path, _size: u64, _options: &[(String, String)]) -> Vec<PathBuf> {
    vec![path.to_path_buf()]
}

/// The error for an option a format does not know.
pub fn invalid_option(format: &str, key: &str) -> Error {
    Error::invalid(format!("invalid parameter '{key}' for {format}"))
}
