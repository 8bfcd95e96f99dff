//! Opening images by path: the driver table, format probing, backing chains, and creating
//! new images.
//!
//! [`DRIVERS`] is the one list of formats. Probing asks every driver how sure it is that
//! the first bytes are its own and takes the surest; `-f` (an explicit [`Format`]) always
//! wins over probing. A driver opens one image and names its backing file; this module
//! resolves that name under the chain rules (see [`crate::chain`]) and attaches the opened
//! backing image.

pub mod opts;

use crate::chain::{self, Layer, Visited};
use crate::create_opts::{self, OptionDesc};
use crate::device::BlockDevice;
pub use crate::driver::Format;
use crate::driver::{BackingRef, CreateParams, Driver, OpenParams};
pub use crate::error::with_path;
use crate::error::{Error, Result};
use crate::qcow2::driver::SharedQcow2;
use crate::storage::attrs::{FileAttrs, DEFAULT_EXTENT_SIZE_HINT};
use crate::storage::{self, HostFiles, Namespace, Storage};
use std::path::{Path, PathBuf};

/// Every format vdisk knows, in the order `-f help` lists them. Adding a format is one
/// line here and its own module.
pub static DRIVERS: &[&Driver] = &[
    &crate::raw::DRIVER,
    &crate::qcow2::DRIVER,
    &crate::vmdk::DRIVER,
    &crate::vdi::DRIVER,
    &crate::vhd::DRIVER,
    &crate::vhdx::DRIVER,
];

impl Format {
    /// Raw bytes.
    pub const RAW: Format = Format::of(&crate::raw::DRIVER);
    /// QEMU copy-on-write v2/v3.
    pub const QCOW2: Format = Format::of(&crate::qcow2::DRIVER);
    /// VMware virtual disk.
    pub const VMDK: Format = Format::of(&crate::vmdk::DRIVER);
}

/// Image formats qemu-img 10 knows that vdisk does not: named, they get a message listing
/// what vdisk knows, where any other name gets qemu-img's own "Unknown file format".
const QEMU_ONLY_FORMATS: &[&str] = &[
    "bochs",
    "cloop",
    "dmg",
    "luks",
    "parallels",
    "qcow",
    "qed",
    "vvfat",
];

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match DRIVERS.iter().find(|d| d.name == s) {
            Some(d) => Ok(Format::of(d)),
            None if QEMU_ONLY_FORMATS.contains(&s) => Err(Error::invalid(format!(
                "unsupported format '{s}' (vdisk knows {})",
                DRIVERS
                    .iter()
                    .map(|d| d.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            None => Err(Error::invalid(format!("Unknown file format '{s}'"))),
        }
    }
}

/// Guess the format of an image from its first bytes: the driver surest of it (the first
/// listed among equals).
pub fn probe_bytes(first: &[u8]) -> Format {
    let mut best = Format::RAW;
    let mut best_score = 0;
    for d in DRIVERS {
        let score = (d.probe)(first);
        if score > best_score {
            best = Format::of(d);
            best_score = score;
        }
    }
    best
}

/// Guess the format of the image in `storage`.
pub fn probe<S: Storage + ?Sized>(storage: &S) -> Result<Format> {
    let mut first = [0u8; 512];
    storage
        .read_at(&mut first, 0)
        .map_err(|e| Error::io("probing the image format", e))?;
    Ok(probe_bytes(&first))
}

/// Guess the format of the file at `path`, opening it read-only for the look.
///
/// The file is read without locking out writers whatever `force_share` says: as QEMU's
/// probe, a look at the first bytes is no claim on the image (the open that follows takes
/// the locks its format needs).
pub fn probe_path(path: &Path, force_share: bool) -> Result<Format> {
    let _ = force_share;
    probe(&*crate::driver::open_read_only(&HostFiles, path, true)?)
}

/// Probe the image at `path` that is about to be opened for writing: a probed raw image
/// gets qemu-img's warning ([`crate::probed_raw::warning`]).
pub fn probe_for_writing(path: &Path) -> Result<Format> {
    let format = probe_path(path, false)?;
    if format == Format::RAW {
        crate::probed_raw::warn(path);
    }
    Ok(format)
}

/// The format of the image at `path` (`format` when given, else probed), once its file
/// has been opened for writing: a file that cannot be written, or that another process
/// holds, is refused before anything else happens.
pub fn format_for_writing(path: &Path, format: Option<Format>) -> Result<Format> {
    let storage = HostFiles
        .open(
            path,
            crate::storage::OpenOptions {
                write: true,
                ..Default::default()
            },
        )
        .map_err(|e| {
            Error::io(
                format!("could not open '{}'", crate::storage::display_name(path)),
                e,
            )
        })?;
    match format {
        Some(f) => Ok(f),
        None => {
            let probed = probe(&*storage)?;
            if probed == Format::RAW {
                crate::probed_raw::warn(path);
            }
            Ok(probed)
        }
    }
}

/// How to open an image by path.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// The format; `None` probes it.
    pub format: Option<Format>,
    /// Open read-only.
    pub read_only: bool,
    /// Skip fdatasync on flush (qemu-img's cache=unsafe).
    pub unsafe_cache: bool,
    /// Do not open backing files (reads of unallocated clusters then return zeros).
    pub no_backing: bool,
    /// Read-only opens only: take no lock that keeps other processes from writing the
    /// image or its backing files (qemu-img `-U`). See [`crate::storage::lock`].
    pub force_share: bool,
    /// Read-only opens only: keep others from writing a raw image while it is read (the
    /// source of a convert); see [`OpenParams::stable_source`].
    pub stable_source: bool,
    /// Only the metadata of the chain will be used; see [`OpenParams::metadata_only`].
    pub metadata_only: bool,
}

/// An open image of any format.
pub struct Image {
    /// The guest-visible device (with its backing chain attached).
    pub device: Box<dyn BlockDevice>,
    /// The format it was opened as.
    pub format: Format,
    /// The chain, top first (one layer when there is no backing file).
    pub layers: Vec<Layer>,
}

/// Open the image at `path`, with its backing chain unless `opts.no_backing`.
pub fn open(path: &Path, opts: &ImageOptions) -> Result<Image> {
    let mut visited = Visited::default();
    let mut layers = Vec::new();
    let device = open_layer(path, opts.format, opts, &mut visited, &mut layers, false)?;
    let format = layers
        .first()
        .map(|l: &Layer| l.format)
        .unwrap_or(Format::RAW);
    Ok(Image {
        device,
        format,
        layers,
    })
}

fn open_layer(
    path: &Path,
    format: Option<Format>,
    opts: &ImageOptions,
    visited: &mut Visited,
    layers: &mut Vec<Layer>,
    probed_backing: bool,
) -> Result<Box<dyn BlockDevice>> {
    visited.enter(path)?;
    let probed = format.is_none();
    let format = match format {
        Some(f) => f,
        None => probe_path(path, opts.force_share)?,
    };
    let params = OpenParams {
        read_only: opts.read_only,
        unsafe_cache: opts.unsafe_cache,
        force_share: opts.force_share,
        stable_source: opts.stable_source,
        metadata_only: opts.metadata_only,
        probed_backing,
    };
    let opened = (format.driver().open)(&HostFiles, path, &params)?;
    let mut device = opened.device;
    if probed && !opts.read_only && format == Format::RAW {
        crate::probed_raw::warn(path);
        device = Box::new(crate::probed_raw::ProbedRaw::new(device, probe_bytes));
    }
    let layer = Layer {
        path: path.to_path_buf(),
        format,
        backing_name: opened.backing.as_ref().map(|b| b.name.clone()),
        backing_format: opened.backing.as_ref().and_then(|b| b.format.clone()),
    };
    layers.push(layer.clone());
    if !opts.no_backing {
        if let Some(backing) = open_backing(path, &layer, opts, visited, layers)? {
            device.attach_backing(backing)?;
        }
    }
    Ok(device)
}

/// Open the qcow2 image at `path` as the driver itself, for the operations that need more
/// than a [`BlockDevice`] (resize with preallocation, amend, snapshots), with its backing
/// chain attached read-only unless `opts.no_backing`. Returns the image and its chain, top
/// first.
pub fn open_qcow2(path: &Path, opts: &ImageOptions) -> Result<(SharedQcow2, Vec<Layer>)> {
    let mut visited = Visited::default();
    visited.enter(path)?;
    let params = OpenParams {
        read_only: opts.read_only,
        unsafe_cache: opts.unsafe_cache,
        force_share: opts.force_share,
        stable_source: opts.stable_source,
        metadata_only: opts.metadata_only,
        probed_backing: false,
    };
    let (mut q, backing) = crate::qcow2::driver::open_image(&HostFiles, path, &params)?;
    let layer = Layer {
        path: path.to_path_buf(),
        format: Format::QCOW2,
        backing_name: backing.as_ref().map(|b| b.name.clone()),
        backing_format: backing.and_then(|b| b.format),
    };
    let mut layers = vec![layer.clone()];
    if !opts.no_backing {
        if let Some(b) = open_backing(path, &layer, opts, &mut visited, &mut layers)? {
            q.set_backing(Some(b));
        }
    }
    Ok((q, layers))
}

/// Which internal snapshot to read (`convert -l`, `measure -l`): qemu-img's
/// `snapshot.id=ID,snapshot.name=NAME` form, or one word matched as an ID, then as a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRef {
    /// A plain `-l WORD`.
    IdOrName(String),
    /// `snapshot.id=` and/or `snapshot.name=`: a snapshot matching every one given.
    Exact {
        /// The ID asked for.
        id: Option<String>,
        /// The name asked for.
        name: Option<String>,
    },
}

impl SnapshotRef {
    /// Read a `-l` argument as qemu-img does (the `snapshot.` prefix selects the key form).
    pub fn parse(arg: &str) -> Result<Self> {
        if !arg.starts_with("snapshot.") {
            return Ok(SnapshotRef::IdOrName(arg.to_string()));
        }
        let bad = || Error::invalid(format!("Failed in parsing snapshot param '{arg}'"));
        let (mut id, mut name) = (None, None);
        for (k, v) in parse_options(arg).map_err(|_| bad())? {
            match k.as_str() {
                "snapshot.id" => id = Some(v),
                "snapshot.name" => name = Some(v),
                _ => {
                    return Err(Error::invalid(format!(
                        "Invalid parameter '{k}'\nFailed in parsing snapshot param '{arg}'"
                    )))
                }
            }
        }
        Ok(SnapshotRef::Exact { id, name })
    }
}

/// Open the image at `path` (with its chain, read-only) showing internal snapshot `snap`
/// instead of its active disk. Only qcow2 has internal snapshots; another format is
/// refused as qemu-img refuses it.
pub fn open_snapshot(path: &Path, opts: &ImageOptions, snap: &SnapshotRef) -> Result<Image> {
    let format = match opts.format {
        Some(f) => f,
        None => probe_path(path, opts.force_share)?,
    };
    let fail = |why: &str| Error::invalid(format!("Failed to load snapshot: {why}"));
    if format != Format::QCOW2 {
        return Err(fail(&format!(
            "Block format '{}' used by device '' does not support temporarily loading internal snapshots",
            format.name()
        )));
    }
    let ro = ImageOptions {
        read_only: true,
        ..opts.clone()
    };
    let (mut q, layers) = open_qcow2(path, &ro)?;
    let idx = match snap {
        SnapshotRef::IdOrName(w) => q.find_snapshot(w),
        SnapshotRef::Exact { id, name } => q.find_snapshot_matching(id.as_deref(), name.as_deref()),
    };
    let idx = idx.ok_or_else(|| fail("Can't find snapshot"))?;
    q.load_snapshot_keeping_size(idx)?;
    Ok(Image {
        device: Box::new(q),
        format,
        layers,
    })
}

/// Open the image at `path` as qcow2 itself, without its backing chain, for an operation
/// only qcow2 has; another format is refused with `why` (what the operation needs).
pub fn open_qcow2_alone(
    path: &Path,
    read_only: bool,
    force_share: bool,
    why: &str,
) -> Result<SharedQcow2> {
    let format = match read_only {
        true => probe_path(path, force_share)?,
        false => probe_for_writing(path)?,
    };
    if format != Format::QCOW2 {
        return Err(Error::unsupported(format!(
            "'{}' is not a qcow2 image; {why}",
            path.display()
        )));
    }
    let opts = ImageOptions {
        read_only,
        force_share,
        no_backing: true,
        ..Default::default()
    };
    Ok(open_qcow2(path, &opts)?.0)
}

/// [`open_qcow2_alone`] for a command given `-f`: an image said to be qcow2 is opened as
/// qcow2 without probing (a file of another format then fails in qemu-img's words).
pub fn open_qcow2_alone_as(
    path: &Path,
    format: Option<Format>,
    read_only: bool,
    force_share: bool,
    why: &str,
) -> Result<SharedQcow2> {
    if format != Some(Format::QCOW2) {
        return open_qcow2_alone(path, read_only, force_share, why);
    }
    let opts = ImageOptions {
        read_only,
        force_share,
        no_backing: true,
        ..Default::default()
    };
    Ok(open_qcow2(path, &opts)?.0)
}

/// Open, read-only with the rest of its chain, the backing file `backing` that the
/// `format` image at `path` names, as [`open`] would attach it: for a driver operation
/// that opens the image itself (resize, amend; see [`crate::driver::OpenBacking`]).
pub fn open_backing_of(
    path: &Path,
    format: Format,
    backing: &BackingRef,
) -> Result<Box<dyn BlockDevice>> {
    let mut visited = Visited::default();
    visited.enter(path)?;
    let layer = Layer {
        path: path.to_path_buf(),
        format,
        backing_name: Some(backing.name.clone()),
        backing_format: backing.format.clone(),
    };
    let mut layers = vec![layer.clone()];
    open_backing(
        path,
        &layer,
        &ImageOptions::default(),
        &mut visited,
        &mut layers,
    )?
    .ok_or_else(|| Error::invalid(format!("'{}' names no backing file", path.display())))
}

/// Open, read-only, the backing file `layer` (the image at `path`) names, with the rest of
/// the chain below it; `None` when it names none.
fn open_backing(
    path: &Path,
    layer: &Layer,
    opts: &ImageOptions,
    visited: &mut Visited,
    layers: &mut Vec<Layer>,
) -> Result<Option<Box<dyn BlockDevice>>> {
    let Some(name) = &layer.backing_name else {
        return Ok(None);
    };
    let bpath = chain::resolve(path, name)?;
    crate::crypto::keyring::pass_to_backing(path, &bpath);
    let bfmt = match &layer.backing_format {
        Some(f) => Some(chain::parse_backing_format(f, path)?),
        None => None,
    };
    if !storage::is_remote(&bpath) && !bpath.exists() {
        return Err(Error::invalid(format!(
            "could not open backing file '{}' of '{}': no such file",
            bpath.display(),
            path.display()
        )));
    }
    let bopts = ImageOptions {
        format: None,
        read_only: true,
        unsafe_cache: false,
        no_backing: false,
        force_share: opts.force_share,
        stable_source: opts.stable_source,
        metadata_only: opts.metadata_only,
    };
    let backing = open_layer(&bpath, bfmt, &bopts, visited, layers, bfmt.is_none())?;
    if bfmt.is_none() {
        eprintln!(
            "vdisk: note: '{}' records no backing format; probed '{}' as {}",
            path.display(),
            bpath.display(),
            layers.last().map(|l| l.format.name()).unwrap_or("raw")
        );
    }
    Ok(Some(backing))
}

/// Create a new image of `format` at `path` with qemu-img style `options` (key, value).
pub fn create(
    path: &Path,
    format: Format,
    size: Option<u64>,
    options: &[(String, String)],
) -> Result<Box<dyn BlockDevice>> {
    create_with_cache(path, format, size, options, false)
}

/// [`create`], optionally without fdatasync on flush (qemu-img convert's cache=unsafe).
/// When it fails, the files it made are removed (see [`NewFiles`]).
///
/// The options are normalised first ([`normalise_create_options`]); the host file's own
/// (`nocow`, `extent_size_hint`) are set on the image file before the driver writes it.
pub fn create_with_cache(
    path: &Path,
    format: Format,
    size: Option<u64>,
    options: &[(String, String)],
    unsafe_cache: bool,
) -> Result<Box<dyn BlockDevice>> {
    let options = normalise_create_options(format, options)?;
    refuse_bad_remote_name(path)?;
    let files = NewFiles::before_create(path, format, size.unwrap_or(0), &options);
    let (file_opts, options): (Vec<_>, Vec<_>) = options
        .into_iter()
        .partition(|(k, _)| create_opts::is_file_only(k));
    set_file_attributes(path, &file_opts)?;
    let params = CreateParams {
        size,
        options: &options,
        unsafe_cache,
    };
    let device = (format.driver().create)(&HostFiles, path, &params)?;
    files.keep();
    Ok(device)
}

/// A malformed `rbd:` name is refused before any format driver quotes it (its message
/// shows the name with any typed-in key redacted).
fn refuse_bad_remote_name(path: &Path) -> Result<()> {
    if !storage::rbd::is_rbd_name(path) {
        return Ok(());
    }
    let text = path.to_string_lossy();
    match storage::rbd::RbdName::parse(&text) {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::io(
            format!("could not create '{}'", storage::display_name(path)),
            e,
        )),
    }
}

/// Every `-o` option `format` takes on create (its own, then the host file's), in the order
/// of qemu-img's `Formatting` line.
pub fn create_option_table(format: Format) -> Vec<OptionDesc> {
    create_opts::with_file_options(format.driver().create_options)
}

/// `options` checked against what `format` takes and normalised as qemu-img does (sizes
/// and numbers in decimal). The errors do not name the file: `create` names it (see
/// [`crate::ops::create::refusal`]), `convert` does not, as qemu-img.
pub fn normalise_create_options(
    format: Format,
    options: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    create_opts::normalise(&create_option_table(format), options)
}

/// Set the host file options (`nocow`, `extent_size_hint`, already normalised) on the
/// image file at `path`, as qemu-img's file protocol does when it creates one.
fn set_file_attributes(path: &Path, file_opts: &[(String, String)]) -> Result<()> {
    if storage::is_remote(path) {
        // An RBD image is no host file: it has none of these attributes.
        return Ok(());
    }
    let last = |key: &str| {
        file_opts
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let hint = last("extent_size_hint");
    let attrs = FileAttrs {
        nocow: matches!(last("nocow"), Some("on" | "yes" | "true" | "y")),
        extent_size_hint: match hint {
            Some(v) => v.parse().unwrap_or(0),
            None => DEFAULT_EXTENT_SIZE_HINT,
        },
        hint_given: hint.is_some(),
    };
    match storage::attrs::apply(path, attrs) {
        Ok(Some(warning)) => {
            eprintln!("vdisk: warning: {warning}");
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            Err(Error::invalid(format!("{}: {e}", path.display())))
        }
        Err(e) => Err(Error::io(
            format!("could not create '{}'", crate::storage::display_name(path)),
            e,
        )),
    }
}

/// The files a new image is made of that did not exist before it was created. Dropped
/// without [`keep`](Self::keep), it removes them: a failed create or convert leaves nothing
/// behind, and never removes a file that was there before (that one stays, truncated or
/// partly written, as qemu-img leaves it). An RBD image counts too: one that did not exist
/// (asked of the cluster) is removed again, where qemu-img leaves it. An S3 object needs
/// nothing: it appears only once complete.
#[must_use = "dropping NewFiles removes the files it lists"]
pub struct NewFiles {
    paths: Vec<PathBuf>,
}

impl NewFiles {
    /// The files creating a `format` image of `size` bytes at `path` with `options` would
    /// make, less those that exist now. Call it before creating the image.
    pub fn before_create(
        path: &Path,
        format: Format,
        size: u64,
        options: &[(String, String)],
    ) -> NewFiles {
        let all = (format.driver().create_files)(path, size, options);
        let absent = |p: &PathBuf| match std::fs::symlink_metadata(p) {
            // Unknown (no cluster, no feature) counts as existing: never removed.
            _ if storage::rbd::is_rbd_name(p) => matches!(storage::rbd::exists(p), Ok(false)),
            _ if storage::is_remote(p) => false,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            Ok(_) => false,
        };
        NewFiles {
            paths: all.into_iter().filter(absent).collect(),
        }
    }

    /// The image is complete: keep its files.
    pub fn keep(mut self) {
        self.paths.clear();
    }
}

impl Drop for NewFiles {
    fn drop(&mut self) {
        for p in &self.paths {
            // Best effort: the operation's own error is the one to report.
            let _ = match storage::rbd::is_rbd_name(p) {
                true => storage::rbd::remove(p),
                false => std::fs::remove_file(p),
            };
        }
    }
}

/// The virtual size a new image at `path` gets from the size argument `size_arg` and the
/// `size` options (the last one wins). As qemu-img, giving both is refused: "The image size
/// must be specified only once".
pub fn create_size(
    path: &Path,
    size_arg: Option<u64>,
    options: &[(String, String)],
) -> Result<Option<u64>> {
    let option = match options.iter().rev().find(|(k, _)| k == "size") {
        Some((_, v)) => Some(crate::create_opts::option_size("size", v)?),
        None => None,
    };
    match (size_arg, option) {
        (Some(_), Some(_)) => Err(Error::invalid(format!(
            "{}: The image size must be specified only once",
            path.display()
        ))),
        (a, o) => Ok(a.or(o)),
    }
}

/// Check that every `-o` option is one `format` knows with a well-formed value, and refuse
/// what qemu-img refuses when it creates an image, without creating anything: among them a
/// backing format without a backing file, and raw `preallocation=metadata` (qemu-img
/// prints its "Formatting ..." line before these two, as it finds them while creating;
/// vdisk refuses before printing anything). The errors do not name the file (the caller
/// does, as qemu-img: see [`crate::ops::create::refusal`]).
pub fn check_create_options(
    format: Format,
    options: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let refuse = |why: &str| Err(Error::invalid(why));
    if format == Format::RAW && options.iter().any(|(k, _)| k == "backing_fmt") {
        return refuse("Backing file format not supported for file format 'raw'");
    }
    let options = normalise_create_options(format, options)?;
    check_normalised_options(format, &options)?;
    Ok(options)
}

/// The checks of [`check_create_options`] past the option names and value types, on
/// options [`normalise_create_options`] has already accepted.
pub fn check_normalised_options(format: Format, options: &[(String, String)]) -> Result<()> {
    let refuse = |why: &str| Err(Error::invalid(why));
    let has = |key: &str| options.iter().any(|(k, _)| k == key);
    let own: Vec<_> = options
        .iter()
        .filter(|(k, _)| !create_opts::is_file_only(k))
        .cloned()
        .collect();
    (format.driver().check_create_options)(&own)?;
    if has("backing_fmt") && !has("backing_file") && format == Format::QCOW2 {
        return refuse("Backing format cannot be used without backing file");
    }
    let backing_fmt = options.iter().rev().find(|(k, _)| k == "backing_fmt");
    if let Some((_, f)) = backing_fmt.filter(|_| format == Format::QCOW2) {
        if f.parse::<Format>().is_err() && !QEMU_ONLY_FORMATS.contains(&f.as_str()) {
            return Err(Error::invalid(format!(
                "Parameter 'backing-fmt' does not accept value '{f}'"
            )));
        }
    }
    let metadata = options
        .iter()
        .any(|(k, v)| k == "preallocation" && v == "metadata");
    if format == Format::RAW && metadata {
        return refuse("Unsupported preallocation mode: metadata");
    }
    Ok(())
}

/// The `key=value` pairs of every `-o` list in `lists`, in order (`-o` may be repeated).
pub fn parse_option_lists(lists: &[String]) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for list in lists {
        pairs.extend(parse_options(list)?);
    }
    Ok(pairs)
}

/// Split a qemu-img `-o` string (`a=1,b=2`; `,,` escapes a comma) into pairs.
pub fn parse_options(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut parts = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    for p in parts.into_iter().filter(|p| !p.is_empty()) {
        if p == "help" || p == "?" {
            // A request for the option list (see `create_opts::wants_help`).
            out.push((p, String::new()));
            continue;
        }
        match p.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None => {
                return Err(Error::invalid(format!(
                    "invalid option '{p}' (expected key=value)"
                )))
            }
        }
    }
    Ok(out)
}
