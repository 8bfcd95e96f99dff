//! Reaching an RBD image: a connection to the cluster ([`Cluster`]), an I/O context on the
//! pool ([`Pool`]), and the open image handle ([`ImageHandle`]), each closed when dropped.
//! The settings come from the image name as qemu-img reads them: the default Ceph
//! configuration (`$CEPH_CONF`, `/etc/ceph/ceph.conf`, ...) unless `conf=` names a file,
//! then every other setting in order; `id=` picks the client.

use super::ffi;
use super::name::RbdName;
use std::ffi::CString;
use std::io;
use std::ptr;

/// An error from librados or librbd: `r` is a negated errno; the message is `what`, then
/// the system's text for the errno (`error opening pool x: No such file or directory`).
pub fn rbd_error(r: i64, what: &str) -> io::Error {
    let errno = i32::try_from(-r).unwrap_or(libc::EIO);
    let os = io::Error::from_raw_os_error(errno);
    let text = crate::storage::strerror(&os);
    io::Error::new(os.kind(), format!("{what}: {text}"))
}

/// A C string for librados; names with a NUL byte are refused.
pub fn c_string(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "rbd name or setting holds a NUL byte",
        )
    })
}

/// A connected cluster handle.
pub struct Cluster(ffi::rados_t);

// SAFETY: librados documents a cluster handle as usable from any thread; it is only
// shut down in Drop, when no other reference exists.
unsafe impl Send for Cluster {}
// SAFETY: as above.
unsafe impl Sync for Cluster {}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: the handle came from rados_create and is shut down once.
        unsafe { ffi::rados_shutdown(self.0) }
    }
}

/// An I/O context on one pool (and namespace).
pub struct Pool(ffi::rados_ioctx_t);

// SAFETY: librados I/O contexts are thread-safe; destroyed once in Drop.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the handle came from rados_ioctx_create and is destroyed once, before
        // its cluster (the owner drops the pool first).
        unsafe { ffi::rados_ioctx_destroy(self.0) }
    }
}

/// An open image.
pub struct ImageHandle(pub ffi::rbd_image_t);

// SAFETY: librbd image handles take concurrent calls from several threads (its ImageCtx
// locks internally); closed once in Drop.
unsafe impl Send for ImageHandle {}
// SAFETY: as above.
unsafe impl Sync for ImageHandle {}

impl Drop for ImageHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from rbd_open* and is closed once, before its pool.
        unsafe {
            ffi::rbd_close(self.0);
        }
    }
}

/// Connect to the cluster `name` says, and open its pool. Returns the pool first: drop it
/// before the cluster.
pub fn connect(name: &RbdName) -> io::Result<(Pool, Cluster)> {
    let id = name.option("id").map(c_string).transpose()?;
    let mut handle: ffi::rados_t = ptr::null_mut();
    // SAFETY: `handle` is a valid out-pointer; `id` is NUL-terminated or null.
    let r =
        unsafe { ffi::rados_create(&mut handle, id.as_ref().map_or(ptr::null(), |c| c.as_ptr())) };
    if r < 0 {
        return Err(rbd_error(r.into(), "error initializing"));
    }
    let cluster = Cluster(handle);
    if name.option("conf").is_none() {
        // The default places; as qemu-img, a missing default file is not an error.
        // SAFETY: a null path asks librados for its default search list.
        unsafe { ffi::rados_conf_read_file(cluster.0, ptr::null()) };
    }
    for (k, v) in &name.options {
        match k.as_str() {
            "id" => {}
            "conf" => {
                let path = c_string(v)?;
                // SAFETY: valid handle and NUL-terminated path.
                let r = unsafe { ffi::rados_conf_read_file(cluster.0, path.as_ptr()) };
                if r < 0 {
                    return Err(rbd_error(r.into(), &format!("error reading conf file {v}")));
                }
            }
            _ => {
                let (ck, cv) = (c_string(k)?, c_string(v)?);
                // SAFETY: valid handle and NUL-terminated strings.
                let r = unsafe { ffi::rados_conf_set(cluster.0, ck.as_ptr(), cv.as_ptr()) };
                if r < 0 {
                    return Err(rbd_error(r.into(), &format!("invalid conf option {k}")));
                }
            }
        }
    }
    // SAFETY: valid, configured handle.
    let r = unsafe { ffi::rados_connect(cluster.0) };
    if r < 0 {
        return Err(rbd_error(r.into(), "error connecting"));
    }
    let pool_name = c_string(&name.pool)?;
    let mut io: ffi::rados_ioctx_t = ptr::null_mut();
    // SAFETY: connected handle, NUL-terminated pool name, valid out-pointer.
    let r = unsafe { ffi::rados_ioctx_create(cluster.0, pool_name.as_ptr(), &mut io) };
    if r < 0 {
        return Err(rbd_error(
            r.into(),
            &format!("error opening pool {}", name.pool),
        ));
    }
    let pool = Pool(io);
    if let Some(ns) = &name.namespace {
        let ns = c_string(ns)?;
        // SAFETY: valid I/O context; librados copies the string.
        unsafe { ffi::rados_ioctx_set_namespace(pool.0, ns.as_ptr()) };
    }
    Ok((pool, cluster))
}

/// Open the image (at its snapshot, if named) in `pool`; read-only unless `write`.
pub fn open_image(pool: &Pool, name: &RbdName, write: bool) -> io::Result<ImageHandle> {
    if write && name.snapshot.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "an rbd snapshot is read-only",
        ));
    }
    let image = c_string(&name.image)?;
    let snap = name.snapshot.as_deref().map(c_string).transpose()?;
    let snap_ptr = snap.as_ref().map_or(ptr::null(), |c| c.as_ptr());
    let mut handle: ffi::rbd_image_t = ptr::null_mut();
    // SAFETY: valid I/O context, NUL-terminated names (or null snapshot), valid out-pointer.
    let r = unsafe {
        if write {
            ffi::rbd_open(pool.0, image.as_ptr(), &mut handle, snap_ptr)
        } else {
            ffi::rbd_open_read_only(pool.0, image.as_ptr(), &mut handle, snap_ptr)
        }
    };
    if r < 0 {
        return Err(rbd_error(
            r.into(),
            &format!("error reading header from {}", name.image),
        ));
    }
    Ok(ImageHandle(handle))
}

/// Create the image `name` empty (size 0; it grows as it is written or resized). An
/// existing image is an error, as in qemu-img (`File exists`).
pub fn create_image(pool: &Pool, name: &RbdName) -> io::Result<()> {
    if name.snapshot.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "Can't use snapshot name for image creation",
        ));
    }
    let image = c_string(&name.image)?;
    let mut order: std::os::raw::c_int = 0;
    // SAFETY: valid I/O context, NUL-terminated name, valid out-pointer (0: default order).
    let r = unsafe { ffi::rbd_create(pool.0, image.as_ptr(), 0, &mut order) };
    if r < 0 {
        return Err(rbd_error(r.into(), "error rbd create"));
    }
    Ok(())
}

/// Remove the image `name` (and its data).
pub fn remove_image(pool: &Pool, name: &RbdName) -> io::Result<()> {
    let image = c_string(&name.image)?;
    // SAFETY: valid I/O context and NUL-terminated name.
    let r = unsafe { ffi::rbd_remove(pool.0, image.as_ptr()) };
    if r < 0 {
        return Err(rbd_error(
            r.into(),
            &format!("error removing {}", name.image),
        ));
    }
    Ok(())
}
