//! VMDK images (issue 6). Placeholder until the driver lands: probing works, opening does not.

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use std::path::Path;

/// Whether `first` (the first bytes of a file) looks like a VMDK sparse header or descriptor.
pub fn probe(first: &[u8]) -> bool {
    first.starts_with(b"KDMV") || first.starts_with(b"# Disk DescriptorFile")
}

/// Open a VMDK image as a block device.
pub fn open_device(_path: &Path, _read_only: bool) -> Result<Box<dyn BlockDevice>> {
    Err(Error::unsupported("VMDK images"))
}

/// Create a VMDK image.
pub fn create_device(
    _path: &Path,
    _size: u64,
    _options: &[(String, String)],
) -> Result<Box<dyn BlockDevice>> {
    Err(Error::unsupported("VMDK images"))
}
