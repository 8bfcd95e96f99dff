//! `rebase` of an image by path: give an overlay another backing file (or none). Safe mode
//! first copies into the overlay every range where the new backing file differs from the
//! old chain, so the guest contents stay the same; unsafe mode only rewrites the name.

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::image::{self, Format, Image, ImageOptions};
use crate::ops::chain_ops;
use crate::ops::convert::Progress;
use std::path::Path;

/// One `qemu-img rebase`: what to rebase and how.
#[derive(Debug, Clone, Copy)]
pub struct Rebase<'a> {
    /// The image whose backing file changes.
    pub file: &'a Path,
    /// Its format (`-f`); probed when `None`, with qemu-img's warning for a probed raw image.
    pub format: Option<Format>,
    /// The new backing file's name as the overlay will record it, relative to its
    /// directory; `None`: no backing file.
    pub new_backing: Option<&'a str>,
    /// The new backing file's format (`-F`).
    pub new_format: Option<Format>,
    /// `-u`: only rewrite the name, copy nothing.
    pub unsafe_mode: bool,
    /// `-c`: the clusters safe mode writes are stored compressed.
    pub compress: bool,
    /// `-U`: the new backing file is read without locking out its writers (the image and
    /// its current chain are opened, and locked, as always, as qemu-img does).
    pub force_share: bool,
}

impl Rebase<'_> {
    /// Make `new_backing` of format `new_format` the backing file of the image. Unless
    /// `unsafe_mode`, the data that would change is copied into it first.
    pub fn run(&self, progress: Progress<'_>) -> Result<()> {
        // As qemu-img: safe mode opens the new backing file before anything else.
        let new_chain = match self.unsafe_mode {
            true => None,
            false => self.open_new_backing()?,
        };
        crate::names::check_new_backing(self.new_backing, self.new_format.map(Format::name))?;
        let format = match self.format {
            Some(f) => f,
            None => image::probe_for_writing(self.file)?,
        };
        if format != Format::QCOW2 {
            return Err(self.refuse(format));
        }
        if !self.unsafe_mode {
            self.copy_what_changes(new_chain, progress)?;
        }
        let mut top =
            image::open_qcow2_alone_as(self.file, Some(format), false, false, "rebase needs one")?;
        top.set_backing_file(self.new_backing, self.new_format.map(Format::name))?;
        top.close()
    }

    /// The error for an image of `format`, which is not qcow2: it is opened as asked (an
    /// image that is not of that format fails there, as in qemu-img), but only qcow2
    /// records a backing file. qemu-img first copies what the new backing would change
    /// into the image; vdisk refuses before writing.
    fn refuse(&self, format: Format) -> Error {
        let opened = image::open(
            self.file,
            &ImageOptions {
                format: Some(format),
                no_backing: true,
                ..Default::default()
            },
        );
        if let Err(e) = opened {
            return e;
        }
        if self.compress && !format.driver().supports_compression {
            return Error::invalid("Compression not supported for this file format");
        }
        Error::invalid(format!(
            "Could not change the backing file to '{}': Operation not supported",
            self.new_backing.unwrap_or("")
        ))
    }

    /// The new backing file with its chain, read-only (`None` when the backing file is
    /// being removed); a failure reads as in qemu-img.
    fn open_new_backing(&self) -> Result<Option<Image>> {
        let Some(n) = self.new_backing else {
            return Ok(None);
        };
        let p = crate::chain::resolve(self.file, n)?;
        let opts = ImageOptions {
            format: self.new_format,
            read_only: true,
            force_share: self.force_share,
            ..Default::default()
        };
        image::open(&p, &opts).map(Some).map_err(|e| {
            let why = match &e {
                // This prefix replaces the usual `Could not open 'X': `.
                Error::NotFormat { message, .. } => message.clone(),
                e => super::create::qemu_words(e),
            };
            Error::invalid(format!("Could not open new backing file '{n}': {why}"))
        })
    }

    /// Safe mode's copy: the overlay, writable with its current chain attached
    /// (read-only), takes every range where the new backing file reads differently.
    fn copy_what_changes(
        &self,
        mut new_chain: Option<Image>,
        progress: Progress<'_>,
    ) -> Result<()> {
        let mut chain = image::open(
            self.file,
            &ImageOptions {
                format: Some(Format::QCOW2),
                ..Default::default()
            },
        )?;
        let nb: Option<&mut dyn BlockDevice> = match new_chain.as_mut() {
            Some(i) => Some(i.device.as_mut()),
            None => None,
        };
        chain_ops::rebase_copy_with(chain.device.as_mut(), nb, self.compress, progress)?;
        chain.device.close()
    }
}
