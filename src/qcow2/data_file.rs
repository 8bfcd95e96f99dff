//! External data files (`data_file`): the guest data of the image lives in a separate file,
//! each data cluster at the host offset equal to its guest offset, and the qcow2 file holds
//! only metadata. Data clusters are then not reference-counted: they belong to the data
//! file, not to the qcow2 file's allocator. With `data_file_raw` the data file is also kept
//! a valid raw image of the disk (every cluster mapped, zeros written as zeros).

use super::{ioerr, Qcow2};
use crate::error::{Error, Result};
use crate::storage::Storage;
use std::sync::Arc;

impl<S: Storage> Qcow2<S> {
    /// Whether guest data lives in an external data file.
    pub fn has_external_data(&self) -> bool {
        self.header.incompatible_features & super::header::incompat::EXTERNAL_DATA != 0
    }

    /// Use `st` as the external data file the header names; `name` is how `map` names it
    /// (the path it was opened by).
    pub fn attach_data_file(&mut self, st: Arc<dyn Storage>, name: String) {
        self.data_file = Some(st);
        self.data_file_name = Some(name);
    }

    /// The external data file, when one is attached.
    pub(crate) fn data_storage(&self) -> Option<&dyn Storage> {
        match self.has_external_data() {
            true => self.data_file.as_deref(),
            false => None,
        }
    }

    /// The name `map` gives the data file's runs.
    pub(crate) fn data_file_name(&self) -> Option<&str> {
        self.data_file_name.as_deref()
    }

    /// The external data file, or an error when it is not open.
    fn data_file(&self) -> Result<&Arc<dyn Storage>> {
        self.data_file.as_ref().ok_or_else(|| {
            Error::unsupported(format!(
                "external data file '{}' is not open",
                self.header.data_file().unwrap_or_default()
            ))
        })
    }

    /// Read guest data at host offset `host` (of the data file when there is one).
    pub(crate) fn read_data(&self, out: &mut [u8], host: u64) -> Result<()> {
        match self.has_external_data() {
            true => self.data_file()?.read_at(out, host),
            false => self.storage.read_at(out, host),
        }
        .map_err(ioerr("reading guest data"))
    }

    /// Write guest data at host offset `host` (of the data file when there is one).
    pub(crate) fn write_data(&self, buf: &[u8], host: u64) -> Result<()> {
        match self.has_external_data() {
            true => self.data_file()?.write_at(buf, host),
            false => self.storage.write_at(buf, host),
        }
        .map_err(ioerr("writing guest data"))
    }

    /// Make the data file durable (before metadata that points into it).
    pub(crate) fn flush_data_file(&self) -> Result<()> {
        match (&self.data_file, self.has_external_data()) {
            (Some(d), true) => d.flush().map_err(ioerr("flushing the data file")),
            _ => Ok(()),
        }
    }

    /// Zero `[host, host + len)` of a raw data file, so that its raw view reads what the
    /// guest reads.
    pub(crate) fn zero_raw_data(&self, host: u64, len: u64) -> Result<()> {
        if !self.header.data_file_raw() {
            return Ok(());
        }
        self.data_file()?
            .punch_hole(host, len)
            .map_err(ioerr("zeroing the data file"))
    }

    /// After a resize to `new_size`: the data file follows the disk, and a raw one maps
    /// the clusters a growth added (as QEMU does).
    pub(crate) fn resize_data_file(&mut self, new_size: u64) -> Result<()> {
        if !self.has_external_data() {
            return Ok(());
        }
        self.data_file()?
            .set_len(new_size)
            .map_err(ioerr("resizing the data file"))?;
        if self.header.data_file_raw() {
            self.preallocate(crate::Preallocation::Metadata)?;
        }
        Ok(())
    }

    /// `amend -o data_file=NAME,data_file_raw=on|off`: record a new name for the data file
    /// (a plain name beside the image), or stop keeping it raw. Making an existing data file
    /// raw is refused: its clusters would all have to be mapped first.
    pub(crate) fn amend_data_file(&mut self, name: Option<&str>, raw: Option<bool>) -> Result<()> {
        if name.is_none() && raw.is_none() {
            return Ok(());
        }
        if !self.has_external_data() {
            return Err(Error::invalid(
                "data-file can only be set for images that use an external data file",
            ));
        }
        if raw == Some(true) && !self.header.data_file_raw() {
            return Err(Error::unsupported(
                "turning data_file_raw on for an existing image (its data file is not a raw image of the disk)",
            ));
        }
        self.flush_metadata()?;
        if let Some(n) = name {
            crate::names::resolve_data_file(std::path::Path::new(""), n)?;
            self.header
                .set_extension(super::header::ext::DATA_FILE, Some(n.as_bytes().to_vec()));
        }
        if raw == Some(false) {
            self.header.autoclear_features &= !super::header::autoclear::RAW_EXTERNAL;
        }
        self.write_header()
    }

    /// Refuse what QEMU refuses on an image with an external data file: `what` names it.
    pub(crate) fn refuse_with_data_file(&self, what: &str) -> Result<()> {
        if self.has_external_data() {
            return Err(Error::unsupported(format!(
                "{what} in an image with an external data file"
            )));
        }
        Ok(())
    }
}
