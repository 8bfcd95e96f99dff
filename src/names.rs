//! Rules for the file names an image records (backing files; later VMDK extents and qcow2
//! data files): vdisk opens plain host paths only, never a protocol or a JSON
//! specification named by whoever wrote the image.

use crate::error::{Error, Result};

/// Check the backing file an existing overlay is to record (`None`: no backing file). A
/// name needs its format: without one every later open would have to probe the file, so
/// QEMU refuses to change a backing file that way ("backing format must be specified").
pub fn check_new_backing(name: Option<&str>, format: Option<&str>) -> Result<()> {
    let Some(name) = name else {
        return Ok(());
    };
    if format.is_none() {
        return Err(Error::invalid(format!(
            "Could not change the backing file to '{name}': backing format must be specified"
        )));
    }
    check_backing_name(name)
}

/// Refuse names that are not plain file paths.
pub fn check_backing_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("empty backing file name"));
    }
    if name.starts_with("json:") {
        return Err(Error::unsupported(format!(
            "backing file '{name}' is a JSON specification; vdisk opens plain files only"
        )));
    }
    if let Some((scheme, _)) = name.split_once(':') {
        let looks_like_scheme = !scheme.is_empty()
            && !scheme.contains('/')
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_'));
        if looks_like_scheme {
            return Err(Error::unsupported(format!(
                "backing file '{name}' names a protocol ('{scheme}:'); vdisk opens plain files only"
            )));
        }
    }
    if name.contains('\0') {
        return Err(Error::invalid("backing file name contains a NUL byte"));
    }
    Ok(())
}

/// Whether the recorded name `rel` can lead outside the directory it is read from:
/// absolute, or climbing with `..`.
pub fn leaves_directory(rel: &std::path::Path) -> bool {
    rel.components().any(|c| {
        matches!(
            c,
            std::path::Component::ParentDir
                | std::path::Component::RootDir
                | std::path::Component::Prefix(_)
        )
    })
}

/// The path of the external data file `name` that an image in `dir` records: a plain
/// file name (no protocol, no JSON) inside the image's directory. A name leading outside
/// it (absolute, or through `..`) is refused: whoever wrote the image chose it.
pub fn resolve_data_file(dir: &std::path::Path, name: &str) -> Result<std::path::PathBuf> {
    check_backing_name(name)?;
    let rel = std::path::Path::new(name);
    if leaves_directory(rel) {
        return Err(Error::unsupported(format!(
            "external data file '{name}' lies outside the image's directory; vdisk opens data files beside the image only"
        )));
    }
    Ok(dir.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_and_json_backing_names_are_refused() {
        for bad in [
            "json:{\"file\":{}}",
            "nbd:localhost:10809",
            "http://x/y",
            "https://x",
            "file:/etc/passwd",
            "ssh://h/p",
        ] {
            assert!(check_backing_name(bad).is_err(), "{bad}");
        }
        for good in [
            "base.qcow2",
            "/abs/base.raw",
            "../up/b.img",
            "dir/with:colon",
        ] {
            assert!(check_backing_name(good).is_ok(), "{good}");
        }
    }
}
