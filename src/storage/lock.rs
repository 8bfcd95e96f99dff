//! Image locking compatible with QEMU's file-posix driver, so that vdisk and a running QEMU
//! (or qemu-img, qemu-io) never write the same image at once.
//!
//! QEMU describes what an open image does with *permissions*: consistent read, write,
//! write-unchanged and resize (bits 0 to 3). For each permission an opener *holds* it takes
//! a shared (read) open-file-description lock on byte `100 + bit` of the file; for each
//! permission it does *not share* with other users it takes one on byte `200 + bit`. A new
//! opener first takes its own bytes, then tests for other openers' locks: it may not hold a
//! permission whose `200 + bit` byte someone else locks, nor refuse to share one whose
//! `100 + bit` byte someone else locks. The locks are `F_OFD_SETLK` read locks, released
//! when the file is closed, and tested with `F_OFD_GETLK` for a write lock.
//!
//! What vdisk takes mirrors what qemu-img takes on the file under a qcow2 or VMDK image
//! (the format driver never shares write or resize on the file holding its metadata):
//!
//! | open | holds | does not share |
//! | --- | --- | --- |
//! | read-only ([`LockRequest::READ`]) | consistent read | write, resize |
//! | read-write ([`LockRequest::WRITE`]) | consistent read, write, resize | write, resize |
//! | `-U`/`--force-share` ([`LockRequest::FORCE_SHARE`]) | consistent read | nothing |
//!
//! So a QEMU process writing an image makes every vdisk open of it fail with "image is in
//! use" unless `-U` is given (which only reads), and QEMU cannot open an image vdisk is
//! writing.
//!
//! A raw image has no metadata, and QEMU's raw driver passes its user's permissions
//! straight to the file: `qemu-img info`, `compare`, `map` and `measure` read a raw image
//! holding consistent read and sharing everything (as [`LockRequest::FORCE_SHARE`]), so
//! they work while a QEMU writes it; only `convert`'s source refuses to share write and
//! resize ([`LockRequest::READ`]). vdisk's raw driver does the same (the image layer's
//! `stable_source` option), and a probe reads the first bytes sharing everything. As in QEMU's `locking=auto`, a file system without OFD locks is used unlocked.
//!
//! One process may open the same file more than once (`vdisk commit` reads the chain while
//! writing its base): each open is a separate description, so its locks conflict with the
//! others exactly as another process's would. Callers arrange their opens accordingly.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

/// Permission bits, numbered as in QEMU (`BLK_PERM_*`).
pub mod perm {
    /// Reads see consistent data (no one else is writing behind the driver's back).
    pub const CONSISTENT_READ: u8 = 1 << 0;
    /// Writes that change the data.
    pub const WRITE: u8 = 1 << 1;
    /// Writes that do not change the guest-visible data.
    pub const WRITE_UNCHANGED: u8 = 1 << 2;
    /// Changing the file length.
    pub const RESIZE: u8 = 1 << 3;
    /// Every permission QEMU locks on (its fifth bit, graph modification, is not locked).
    pub const ALL: u8 = CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE;
}

/// First byte of the "holds permission" lock range.
pub const PERM_LOCK_BASE: i64 = 100;
/// First byte of the "does not share permission" lock range.
pub const SHARED_LOCK_BASE: i64 = 200;

/// QEMU's name for a permission bit, as in its "Failed to get "write" lock" message.
fn perm_name(bit: u8) -> &'static str {
    match bit {
        perm::CONSISTENT_READ => "consistent read",
        perm::WRITE => "write",
        perm::WRITE_UNCHANGED => "write unchanged",
        perm::RESIZE => "resize",
        _ => "unknown",
    }
}

/// The permissions an open holds and the ones it refuses to share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRequest {
    /// Permissions held (locked at `100 + bit`).
    pub held: u8,
    /// Permissions not shared with other users (locked at `200 + bit`).
    pub unshared: u8,
}

impl LockRequest {
    /// A read-only open of an image (qemu-img info, check, convert's source).
    pub const READ: LockRequest = LockRequest {
        held: perm::CONSISTENT_READ,
        unshared: perm::WRITE | perm::RESIZE,
    };
    /// A read-write open of an image.
    pub const WRITE: LockRequest = LockRequest {
        held: perm::CONSISTENT_READ | perm::WRITE | perm::RESIZE,
        unshared: perm::WRITE | perm::RESIZE,
    };
    /// A read-only open with qemu-img's `-U`: shares everything.
    pub const FORCE_SHARE: LockRequest = LockRequest {
        held: perm::CONSISTENT_READ,
        unshared: 0,
    };

    /// The request for an open with `write` access, optionally force-shared. Force-share
    /// is only meaningful for read-only opens; a writable open always takes the write lock.
    pub fn for_open(write: bool, force_share: bool) -> LockRequest {
        match (write, force_share) {
            (true, _) => LockRequest::WRITE,
            (false, true) => LockRequest::FORCE_SHARE,
            (false, false) => LockRequest::READ,
        }
    }
}

fn flock(kind: libc::c_short, start: i64) -> libc::flock {
    // SAFETY: flock is a plain C struct; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = 1;
    fl
}

/// Take (or with `F_UNLCK`, drop) a lock of `kind` on byte `start`.
fn set_byte(file: &File, kind: libc::c_short, start: i64) -> io::Result<()> {
    let fl = flock(kind, start);
    // SAFETY: fcntl with F_OFD_SETLK reads the flock struct we pass; the descriptor is open.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether another open file description holds a lock on byte `start`.
fn byte_locked_by_other(file: &File, start: i64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, start);
    // SAFETY: fcntl with F_OFD_GETLK reads and updates the flock struct we pass.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Errors meaning "this file system (or kernel) has no OFD locks": the file is then used
/// without locking, as QEMU does with `locking=auto`.
fn locking_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOLCK) | Some(libc::ENOTSUP) | Some(libc::ENOSYS)
    )
}

fn bits(set: u8) -> impl Iterator<Item = (u8, i64)> {
    (0..4)
        .map(|i| (1u8 << i, i64::from(i)))
        .filter(move |(b, _)| set & b != 0)
}

/// Lock `file` for `req`: take this open's bytes, then make sure no other open conflicts.
/// On a conflict every byte taken is released and the error says the image is in use.
///
/// A conflict is retried a few times over about 100 ms before it is reported: a process
/// that forks (to run qemu-img, say) briefly shares its open files with the child until the
/// child's exec closes them, and a lock seen only in that window is not a real user.
pub fn lock(file: &File, req: LockRequest) -> io::Result<()> {
    const RETRIES: u32 = 5;
    let mut attempt = 0;
    loop {
        match apply_and_check(file, req) {
            Ok(()) => return Ok(()),
            Err(e) if locking_unsupported(&e) => {
                unlock(file);
                return Ok(());
            }
            Err(e) => {
                unlock(file);
                if attempt >= RETRIES || !is_in_use(&e) {
                    return Err(e);
                }
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

fn apply_and_check(file: &File, req: LockRequest) -> io::Result<()> {
    let rd = libc::F_RDLCK as libc::c_short;
    for (_, i) in bits(req.held) {
        set_byte(file, rd, PERM_LOCK_BASE + i)?;
    }
    for (_, i) in bits(req.unshared) {
        set_byte(file, rd, SHARED_LOCK_BASE + i)?;
    }
    // A permission we hold must not be one somebody else refuses to share ...
    for (bit, i) in bits(req.held) {
        if byte_locked_by_other(file, SHARED_LOCK_BASE + i)? {
            return Err(in_use(format!("failed to get \"{}\" lock", perm_name(bit))));
        }
    }
    // ... and a permission we refuse to share must not be held by somebody else.
    for (bit, i) in bits(req.unshared) {
        if byte_locked_by_other(file, PERM_LOCK_BASE + i)? {
            return Err(in_use(format!(
                "failed to get shared \"{}\" lock",
                perm_name(bit)
            )));
        }
    }
    Ok(())
}

/// Release every lock byte this open may hold. Closing the file does the same.
pub fn unlock(file: &File) {
    let un = libc::F_UNLCK as libc::c_short;
    for (_, i) in bits(perm::ALL) {
        let _ = set_byte(file, un, PERM_LOCK_BASE + i);
        let _ = set_byte(file, un, SHARED_LOCK_BASE + i);
    }
}

fn in_use(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!(
            "image is in use: {what} (another process, such as QEMU, has it open); \
             use -U/--force-share to read it without locking"
        ),
    )
}

/// Whether `e` is the "image is in use" error of [`lock`].
pub fn is_in_use(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ResourceBusy && e.to_string().starts_with("image is in use")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path, write: bool) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .unwrap()
    }

    #[test]
    fn a_writer_excludes_readers_and_writers_but_not_force_share() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let w = open(&p, true);
        lock(&w, LockRequest::WRITE).unwrap();
        let e = lock(&open(&p, true), LockRequest::WRITE).unwrap_err();
        assert!(is_in_use(&e), "{e}");
        assert!(lock(&open(&p, false), LockRequest::READ).is_err());
        lock(&open(&p, false), LockRequest::FORCE_SHARE).unwrap();
        drop(w);
        lock(&open(&p, true), LockRequest::WRITE).unwrap();
    }

    #[test]
    fn readers_share_with_each_other_but_exclude_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let r1 = open(&p, false);
        lock(&r1, LockRequest::READ).unwrap();
        let r2 = open(&p, false);
        lock(&r2, LockRequest::READ).unwrap();
        let e = lock(&open(&p, true), LockRequest::WRITE).unwrap_err();
        assert!(e.to_string().contains("\"write\" lock"), "{e}");
        drop((r1, r2));
        lock(&open(&p, true), LockRequest::WRITE).unwrap();
    }
}
