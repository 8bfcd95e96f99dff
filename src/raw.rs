//! The raw format: the guest disk is the file, byte for byte.

use crate::device::{check_range, BlockDevice, Extent, ExtentKind};
use crate::driver::{self, CreateParams, Driver, OpenParams, Opened};
use crate::error::{Error, Result};
use crate::storage::{Namespace, OpenOptions, Storage};
use std::path::Path;
use std::sync::Arc;

/// The raw row of the driver table.
pub static DRIVER: Driver = Driver {
    name: "raw",
    // Anything is a raw image; every other format is more specific.
    probe: |_| 1,
    open: open_driver,
    create: create_driver,
    // Values are checked when the image is created.
    check_create_options: |options| match options
        .iter()
        .find(|(k, _)| k != "preallocation" && k != "size")
    {
        Some((k, _)) => Err(driver::invalid_option("raw", k)),
        None => Ok(()),
    },
    create_options: &[crate::create_opts::SIZE],
    amend_options: &[],
    create_files: driver::one_file,
    supports_compression: false,
    // qemu-img info opens a raw image without I/O permissions: it locks out no one.
    info: |ns, path, _force_share| {
        let storage = driver::open_read_only(ns, path, true)?;
        let len = storage
            .len()
            .map_err(|e| Error::io("raw image: reading the file length", e))?;
        Ok(driver::FormatInfo {
            virtual_size: len.next_multiple_of(512),
            ..Default::default()
        })
    },
    measure: Some(measure),
    check: None,
    check_repairs: false,
    dump: None,
    // Metadata preallocation needs metadata; raw has none.
    resize: Some(driver::ResizePolicy {
        shrink: true,
        preallocation: &[
            crate::Preallocation::Off,
            crate::Preallocation::Falloc,
            crate::Preallocation::Full,
        ],
        whole_sectors: false,
        resize,
    }),
    amend: None,
    make_empty: None,
};

/// Resize the file itself: its length (not rounded to sectors) is the current size, and
/// the added part is preallocated as asked.
fn resize(ns: &dyn Namespace, path: &Path, job: driver::ResizeJob<'_>) -> Result<()> {
    let storage = ns
        .open(
            path,
            OpenOptions {
                write: true,
                ..Default::default()
            },
        )
        .map_err(|e| Error::io(format!("could not open '{}'", path.display()), e))?;
    let current = storage
        .len()
        .map_err(|e| Error::io("raw image: reading the file length", e))?;
    let size = (job.new_size)(current)?;
    let io = |e| Error::io("raw image: resizing", e);
    if size > current {
        match job.preallocation {
            crate::Preallocation::Falloc => {
                storage.allocate(current, size - current).map_err(io)?
            }
            crate::Preallocation::Full => {
                crate::storage::write_zero_bytes(&*storage, current, size - current).map_err(io)?
            }
            crate::Preallocation::Off | crate::Preallocation::Metadata => {}
        }
    }
    storage.set_len(size).map_err(io)?;
    storage.flush().map_err(io)
}

/// A raw image needs its virtual size, in whole sectors.
fn measure(
    source: driver::Source<'_>,
    options: &[(String, String)],
) -> Result<driver::Measurement> {
    use driver::{Measurement, Source};

    for (k, _) in options {
        if k != "preallocation" && k != "size" {
            return Err(driver::invalid_option("raw", k));
        }
    }
    let required = match source {
        Source::Image { device, .. } => device.virtual_size(),
        Source::Size(s) => s.next_multiple_of(512),
    };
    Ok(Measurement {
        required,
        fully_allocated: required,
        bitmaps: None,
    })
}

fn open_driver(ns: &dyn Namespace, path: &Path, p: &OpenParams) -> Result<Opened> {
    let storage = ns
        .open(
            path,
            OpenOptions {
                write: !p.read_only,
                unsafe_cache: p.unsafe_cache,
                // As QEMU's raw driver: a reader shares writes and resizes with others
                // unless it needs a stable source (see `OpenParams::stable_source`).
                force_share: p.force_share || (p.read_only && !p.stable_source),
            },
        )
        .map_err(|e| Error::io(format!("could not open '{}'", path.display()), e))?;
    Ok(Opened {
        device: Box::new(Raw::open(storage, p.read_only)?),
        backing: None,
    })
}

/// The preallocation mode raw `-o` options ask for (raw knows no other option).
fn create_preallocation(options: &[(String, String)]) -> Result<crate::Preallocation> {
    let mut prealloc = crate::Preallocation::Off;
    for (k, v) in options {
        match k.as_str() {
            "preallocation" => prealloc = v.parse()?,
            "size" => {}
            _ => return Err(driver::invalid_option("raw", k)),
        }
    }
    Ok(prealloc)
}

fn create_driver(
    ns: &dyn Namespace,
    path: &Path,
    p: &CreateParams<'_>,
) -> Result<Box<dyn BlockDevice>> {
    let prealloc = create_preallocation(p.options)?;
    let size = p
        .size
        .ok_or_else(|| Error::invalid("image size must be specified"))?;
    let storage: Arc<dyn Storage> = ns.create(path, p.unsafe_cache).map_err(|e| {
        Error::io(
            format!("could not create '{}'", crate::storage::display_name(path)),
            e,
        )
    })?;
    Ok(Box::new(Raw::create(storage, size, prealloc)?))
}

/// A raw image over any storage.
pub struct Raw<S: Storage> {
    storage: S,
    size: u64,
    read_only: bool,
}

impl<S: Storage> Raw<S> {
    /// Open `storage` as a raw image; its length is the virtual size.
    pub fn open(storage: S, read_only: bool) -> Result<Self> {
        let size = storage
            .len()
            .map_err(|e| Error::io("raw image: reading the file length", e))?;
        // QEMU sees files in whole 512-byte sectors; the tail reads as zeros.
        let size = size.next_multiple_of(512);
        Ok(Raw {
            storage,
            size,
            read_only,
        })
    }

    /// Create a raw image of `size` bytes in `storage` (which should be empty).
    pub fn create(storage: S, size: u64, prealloc: crate::Preallocation) -> Result<Self> {
        let io = |e| Error::io("raw image: creating", e);
        // As qemu-img, sizes are whole 512-byte sectors.
        let size = size.next_multiple_of(512);
        if storage.len().map_err(io)? > 0 {
            storage.set_len(0).map_err(io)?;
        }
        match prealloc {
            crate::Preallocation::Off | crate::Preallocation::Metadata => {
                storage.set_len(size).map_err(io)?
            }
            crate::Preallocation::Falloc => storage.allocate(0, size).map_err(io)?,
            crate::Preallocation::Full => {
                crate::storage::write_zero_bytes(&storage, 0, size).map_err(io)?
            }
        }
        storage.set_len(size).map_err(io)?;
        storage.flush().map_err(io)?;
        Self::open(storage, false)
    }

    /// The storage underneath.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly("raw image is open read-only".into()))
        } else {
            Ok(())
        }
    }
}

impl<S: Storage> BlockDevice for Raw<S> {
    fn format_name(&self) -> &'static str {
        "raw"
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        self.storage
            .read_at(buf, offset)
            .map_err(|e| Error::io(format!("raw image: reading at {offset:#x}"), e))
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        check_range(self.size, offset, buf.len() as u64)?;
        self.storage
            .write_at(buf, offset)
            .map_err(|e| Error::io(format!("raw image: writing at {offset:#x}"), e))
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(self.size, offset, len)?;
        self.storage
            .punch_hole(offset, len)
            .map_err(|e| Error::io(format!("raw image: zeroing at {offset:#x}"), e))
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }

    fn flush(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.storage
            .flush()
            .map_err(|e| Error::io("raw image: flushing", e))
    }

    /// Flush and end writing: an upload storage completes its object here.
    fn close(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.storage
            .finish()
            .map_err(|e| Error::io("raw image: finishing", e))
    }

    fn block_status(&mut self, offset: u64, max_len: u64) -> Result<Extent> {
        check_range(self.size, offset, max_len.min(1))?;
        let (data, len) = self
            .storage
            .data_extent(offset)
            .map_err(|e| Error::io("raw image: querying holes", e))?;
        let length = len.min(max_len).min(self.size - offset).max(1);
        Ok(Extent {
            start: offset,
            length,
            kind: if data {
                ExtentKind::Data
            } else {
                ExtentKind::Zero
            },
            host_offset: Some(offset),
            compressed: false,
            depth: 0,
        })
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn resize(&mut self, size: u64) -> Result<()> {
        self.check_writable()?;
        self.storage
            .set_len(size)
            .map_err(|e| Error::io("raw image: resizing", e))?;
        self.size = size;
        Ok(())
    }
}
