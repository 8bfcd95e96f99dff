//! Attributes of a new host file that qemu-img's file protocol sets when it creates one:
//! no copy-on-write (`nocow`, the `FS_NOCOW_FL` inode flag, which btrfs honours) and an
//! extent size hint (`extent_size_hint`, `FS_IOC_FSSETXATTR`, which XFS honours).
//!
//! Both are hints: a file system without them leaves the file as it is. As qemu-img, a
//! failed nocow is silent, and a failed extent size hint is reported (as a warning) only
//! when the hint was asked for.

use std::fs::File;
use std::io;
use std::path::Path;

/// The extent size hint qemu-img sets when none is given.
pub const DEFAULT_EXTENT_SIZE_HINT: u64 = 1 << 20;

/// What to set on a new file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileAttrs {
    /// Set `FS_NOCOW_FL`.
    pub nocow: bool,
    /// The extent size hint in bytes (0: none).
    pub extent_size_hint: u64,
    /// Whether the hint was asked for (a failure is then worth a warning).
    pub hint_given: bool,
}

#[cfg(target_os = "linux")]
mod sys {
    /// `FS_IOC_GETFLAGS` (`_IOR('f', 1, long)`).
    pub const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    /// `FS_IOC_SETFLAGS` (`_IOW('f', 2, long)`).
    pub const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
    /// The inode flag that turns copy-on-write off.
    pub const FS_NOCOW_FL: libc::c_int = 0x0080_0000;
    /// `FS_IOC_FSGETXATTR` (`_IOR('X', 31, struct fsxattr)`).
    pub const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
    /// `FS_IOC_FSSETXATTR` (`_IOW('X', 32, struct fsxattr)`).
    pub const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
    /// `fsx_xflags` bit: `fsx_extsize` is set.
    pub const FS_XFLAG_EXTSIZE: u32 = 0x800;

    /// The kernel's `struct fsxattr`.
    #[repr(C)]
    #[derive(Default)]
    pub struct FsXattr {
        pub xflags: u32,
        pub extsize: u32,
        pub nextents: u32,
        pub projid: u32,
        pub cowextsize: u32,
        pub pad: [u8; 8],
    }
}

/// Turn copy-on-write off for `file` where the file system can; silent otherwise.
#[cfg(target_os = "linux")]
fn set_nocow(file: &File) {
    use std::os::unix::io::AsRawFd;
    let fd = file.as_raw_fd();
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int to the pointer, which lives for the call.
    if unsafe { libc::ioctl(fd, sys::FS_IOC_GETFLAGS, &mut flags) } == 0 {
        flags |= sys::FS_NOCOW_FL;
        // SAFETY: FS_IOC_SETFLAGS reads one int from the pointer, which lives for the call.
        unsafe { libc::ioctl(fd, sys::FS_IOC_SETFLAGS, &flags) };
    }
}

/// Set the extent size hint of `file` to `bytes`.
#[cfg(target_os = "linux")]
fn set_extent_size_hint(file: &File, bytes: u32) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let fd = file.as_raw_fd();
    let mut attr = sys::FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR fills one struct fsxattr, which lives for the call.
    if unsafe { libc::ioctl(fd, sys::FS_IOC_FSGETXATTR, &mut attr) } != 0 {
        return Err(io::Error::last_os_error());
    }
    attr.xflags |= sys::FS_XFLAG_EXTSIZE;
    attr.extsize = bytes;
    // SAFETY: FS_IOC_FSSETXATTR reads one struct fsxattr, which lives for the call.
    if unsafe { libc::ioctl(fd, sys::FS_IOC_FSSETXATTR, &attr) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_nocow(_file: &File) {}

#[cfg(not(target_os = "linux"))]
fn set_extent_size_hint(_file: &File, _bytes: u32) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Set `attrs` on the file at `path`, creating it (empty) if it does not exist. Returns
/// the warning to print when an asked-for hint could not be set.
pub fn apply(path: &Path, attrs: FileAttrs) -> io::Result<Option<String>> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if attrs.nocow {
        set_nocow(&file);
    }
    if attrs.extent_size_hint == 0 {
        return Ok(None);
    }
    let bytes = u32::try_from(attrs.extent_size_hint).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, "Extent size hint is too large")
    })?;
    match set_extent_size_hint(&file, bytes) {
        Err(e) if attrs.hint_given => Ok(Some(format!("Failed to set extent size hint: {e}"))),
        _ => Ok(None),
    }
}
