//! Backing chains: resolving, checking and opening the images below an overlay.
//!
//! Rules (see `format-spec/qcow2.md`, "Backing files"):
//! * a relative backing name resolves against the directory of the image naming it;
//! * names that look like protocol or JSON specifications (`json:{...}`, `nbd:`, `http:`,
//!   any `scheme:` prefix) are refused: vdisk only opens plain files;
//! * a recorded backing format must be one vdisk knows; with none recorded the backing image
//!   is probed, but accepted only as raw or as an image that has no backing of its own, and a
//!   note says so on stderr;
//! * a chain deeper than [`MAX_CHAIN_DEPTH`] or one that loops back on itself is an error.

use crate::driver::Format;
use crate::error::{Error, Result};
use crate::names::check_backing_name;
use std::path::{Path, PathBuf};

/// Deepest backing chain vdisk opens.
pub const MAX_CHAIN_DEPTH: usize = 64;

/// One image of a chain, top first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Path as resolved.
    pub path: PathBuf,
    /// Format it was opened as.
    pub format: Format,
    /// The backing name this image records, if any.
    pub backing_name: Option<String>,
    /// The backing format this image records, if any.
    pub backing_format: Option<String>,
}

/// Resolve `name` (as recorded in the image at `image_path`) to a path.
pub fn resolve(image_path: &Path, name: &str) -> Result<PathBuf> {
    check_backing_name(name)?;
    let p = Path::new(name);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let dir = image_path.parent().unwrap_or_else(|| Path::new(""));
    Ok(dir.join(p))
}

/// Parse a recorded backing format, refusing unknown ones.
pub fn parse_backing_format(fmt: &str, image_path: &Path) -> Result<Format> {
    fmt.parse::<Format>().map_err(|_| {
        Error::corrupt(
            "backing format extension",
            0,
            format!(
                "'{}' records backing format '{fmt}', which is not one vdisk can open",
                image_path.display()
            ),
        )
    })
}

/// Tracks the images opened so far, to refuse loops and over-deep chains.
#[derive(Debug, Default)]
pub struct Visited {
    seen: Vec<PathBuf>,
}

impl Visited {
    /// Record `path`; errors if it was seen before or the chain is too deep.
    pub fn enter(&mut self, path: &Path) -> Result<()> {
        let canon = crate::storage::canonical_name(path).map_err(|e| {
            Error::io(
                format!("could not open '{}'", crate::storage::display_name(path)),
                e,
            )
        })?;
        if self.seen.contains(&canon) {
            return Err(Error::invalid(format!(
                "backing chain loops back to '{}'",
                path.display()
            )));
        }
        if self.seen.len() >= MAX_CHAIN_DEPTH {
            return Err(Error::invalid(format!(
                "backing chain is deeper than {MAX_CHAIN_DEPTH} images"
            )));
        }
        self.seen.push(canon);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_backing_names_resolve_against_the_image_directory() {
        let p = resolve(Path::new("/images/vm/top.qcow2"), "../base.raw").unwrap();
        assert_eq!(p, Path::new("/images/vm/../base.raw"));
        let p = resolve(Path::new("top.qcow2"), "base.raw").unwrap();
        assert_eq!(p, Path::new("base.raw"));
    }
}
