//! `create` of a new image by path, as qemu-img does it: the size from the argument, the
//! `size` option or else the backing file; the backing file and the options checked first,
//! so that a refused create prints nothing and makes no file.

use crate::create_opts;
use crate::error::{Error, Result};
use crate::image::{self, Format};
use std::path::{Path, PathBuf};

/// A create whose arguments have been checked: what it will make, before it makes it.
pub struct CreatePlan {
    file: PathBuf,
    format: Format,
    size: u64,
    options: Vec<(String, String)>,
}

/// What `create -o help` (or `?`) prints for `format`, when `options` ask for it: the
/// format's options, and the image file's too when `file_given`.
pub fn help(format: Format, options: &[(String, String)], file_given: bool) -> Option<String> {
    create_opts::wants_help(options).then(|| {
        create_opts::create_help(format.name(), format.driver().create_options, file_given)
    })
}

/// Check a create of a `format` image at `file` with qemu-img style `options` (key, value;
/// `backing_file` and `backing_fmt` among them) and the size argument `size_arg`. The
/// backing file is opened (read-only) to check it and to take its size when none is given,
/// unless `unsafe_backing`.
pub fn plan(
    file: &Path,
    format: Format,
    options: Vec<(String, String)>,
    size_arg: Option<u64>,
    unsafe_backing: bool,
) -> Result<CreatePlan> {
    if crate::storage::s3::is_s3_name(file) {
        return Err(Error::invalid(format!(
            "{}: an S3 object is written whole, in order, by convert (or delta); create cannot make an empty one to fill later",
            file.display()
        )));
    }
    let mut size = image::create_size(file, size_arg, &options)?;
    let find = |key: &str| {
        options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    if let Some(b) = find("backing_file") {
        let backing_size = check_backing(file, &b, find("backing_fmt"), unsafe_backing)?;
        size = size.or(backing_size);
    }
    let Some(size) = size else {
        return Err(Error::invalid("Image creation needs a size parameter"));
    };
    let options = image::check_create_options(format, &options)?;
    Ok(CreatePlan {
        file: file.to_path_buf(),
        format,
        size,
        options,
    })
}

/// Check the backing file `name` of a new image at `file` (its format `format` must be
/// given); its virtual size, unless `unsafe_backing` (then it is not opened).
fn check_backing(
    file: &Path,
    name: &str,
    format: Option<String>,
    unsafe_backing: bool,
) -> Result<Option<u64>> {
    if file.to_str() == Some(name) {
        return Err(Error::invalid(
            "Error: Trying to create an image with the same filename as the backing file",
        ));
    }
    crate::names::check_backing_name(name)?;
    let path = crate::chain::resolve(file, name)?;
    let Some(format) = format else {
        let detected = image::probe_path(&path, false)?;
        return Err(Error::invalid(format!(
            "Backing file specified without backing format (detected format of {name}: {detected}); use -F",
        )));
    };
    if unsafe_backing {
        return Ok(None);
    }
    let format: Format = format.parse().map_err(|_| {
        Error::invalid(format!(
            "Unknown driver '{format}'\nCould not open backing image."
        ))
    })?;
    let chain = image::open(
        &path,
        &image::ImageOptions {
            format: Some(format),
            read_only: true,
            metadata_only: true,
            ..Default::default()
        },
    )
    .map_err(|e| Error::invalid(format!("{}\nCould not open backing image.", qemu_words(&e))))?;
    Ok(Some(chain.device.virtual_size()))
}

/// `e` as QEMU words such errors: an I/O error's context capitalised ("Could not
/// create '...'") and its cause as `strerror` gives it.
pub(crate) fn qemu_words(e: &Error) -> String {
    match e {
        Error::Io { context, source } => {
            let mut c = context.chars();
            let first = c.next().map(|f| f.to_uppercase().collect::<String>());
            format!(
                "{}{}: {}",
                first.unwrap_or_default(),
                c.as_str(),
                crate::error::strerror(source)
            )
        }
        other => other.bare_message(),
    }
}

/// `e`, a reason a create of `file` failed, as qemu-img reports it: `FILE: reason`.
pub fn refusal(file: &Path, e: Error) -> Error {
    let name = crate::storage::display_name(file);
    let text = qemu_words(&e);
    match text.starts_with(&format!("{name}: ")) {
        true => Error::invalid(text),
        false => Error::invalid(format!("{name}: {text}")),
    }
}

/// `e`, a reason `convert` could not create its output `file` of `format`, as qemu-img
/// reports it: `FILE: error while converting FORMAT: reason`.
pub fn conversion_refusal(file: &Path, format: Format, e: Error) -> Error {
    let name = crate::storage::display_name(file);
    let text = qemu_words(&e);
    let reason = text.strip_prefix(&format!("{name}: ")).unwrap_or(&text);
    Error::invalid(format!(
        "{name}: error while converting {}: {reason}",
        format.name()
    ))
}

impl CreatePlan {
    /// qemu-img's line before it creates the image: `Formatting 'FILE', fmt=FMT k=v... size=N`,
    /// every option of the format in qemu-img's order, those not given at their default.
    pub fn summary(&self) -> String {
        create_opts::formatting_line(
            &crate::storage::display_name(&self.file),
            self.format.name(),
            &image::create_option_table(self.format),
            &self.options,
            self.size,
        )
    }

    /// Create the image; if that fails, the files it made are removed.
    pub fn create(self) -> Result<()> {
        let files =
            image::NewFiles::before_create(&self.file, self.format, self.size, &self.options);
        let mut dev = image::create(&self.file, self.format, Some(self.size), &self.options)?;
        dev.close()?;
        files.keep();
        Ok(())
    }
}
