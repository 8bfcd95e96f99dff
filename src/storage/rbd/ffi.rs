//! The part of librados' and librbd's C API that [`super::image`] calls, declared by hand
//! from `rados/librados.h` and `rbd/librbd.h` (Ceph 16 "pacific"; every function here has
//! been in librbd since Ceph 15). Handles are opaque pointers; every function returns 0 or
//! a byte count on success and a negated errno on failure.
//!
//! Thread safety, as Ceph documents it: a `rados_t`, a `rados_ioctx_t` and an
//! `rbd_image_t` may be used from several threads at once (librbd serialises what needs
//! it internally); a completion is waited on and released by exactly one owner.

#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

/// A cluster handle (`rados_t`).
pub type rados_t = *mut c_void;
/// A pool I/O context (`rados_ioctx_t`).
pub type rados_ioctx_t = *mut c_void;
/// An open image (`rbd_image_t`).
pub type rbd_image_t = *mut c_void;
/// An asynchronous request's completion (`rbd_completion_t`).
pub type rbd_completion_t = *mut c_void;
/// Called by librbd when a request completes (unused: completions are waited on).
pub type rbd_callback_t = Option<extern "C" fn(rbd_completion_t, *mut c_void)>;
/// `rbd_diff_iterate2`'s callback: (offset, length, exists, argument); non-zero stops.
pub type diff_callback_t = extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// `RBD_FEATURE_FAST_DIFF`: the object map tells which objects exist.
pub const RBD_FEATURE_FAST_DIFF: u64 = 1 << 4;
/// `RBD_FLAG_FAST_DIFF_INVALID`: the object map needs a rebuild and cannot be trusted.
pub const RBD_FLAG_FAST_DIFF_INVALID: u64 = 1 << 1;

/// `rbd_image_info_t`, as `rbd_stat` fills it (the last three fields are deprecated).
#[repr(C)]
pub struct rbd_image_info_t {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: c_int,
    pub block_name_prefix: [c_char; 24],
    pub parent_pool: i64,
    pub parent_name: [c_char; 96],
}

#[link(name = "rados")]
extern "C" {
    pub fn rados_create(cluster: *mut rados_t, id: *const c_char) -> c_int;
    pub fn rados_conf_read_file(cluster: rados_t, path: *const c_char) -> c_int;
    pub fn rados_conf_set(cluster: rados_t, option: *const c_char, value: *const c_char) -> c_int;
    pub fn rados_connect(cluster: rados_t) -> c_int;
    pub fn rados_shutdown(cluster: rados_t);
    pub fn rados_ioctx_create(
        cluster: rados_t,
        pool_name: *const c_char,
        ioctx: *mut rados_ioctx_t,
    ) -> c_int;
    pub fn rados_ioctx_destroy(io: rados_ioctx_t);
    pub fn rados_ioctx_set_namespace(io: rados_ioctx_t, nspace: *const c_char);
}

#[link(name = "rbd")]
extern "C" {
    pub fn rbd_create(
        io: rados_ioctx_t,
        name: *const c_char,
        size: u64,
        order: *mut c_int,
    ) -> c_int;
    pub fn rbd_remove(io: rados_ioctx_t, name: *const c_char) -> c_int;
    pub fn rbd_open(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    pub fn rbd_open_read_only(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    pub fn rbd_close(image: rbd_image_t) -> c_int;
    pub fn rbd_stat(image: rbd_image_t, info: *mut rbd_image_info_t, infosize: usize) -> c_int;
    pub fn rbd_get_features(image: rbd_image_t, features: *mut u64) -> c_int;
    pub fn rbd_get_flags(image: rbd_image_t, flags: *mut u64) -> c_int;
    pub fn rbd_resize(image: rbd_image_t, size: u64) -> c_int;
    pub fn rbd_read(image: rbd_image_t, ofs: u64, len: usize, buf: *mut c_char) -> isize;
    pub fn rbd_write_zeroes(
        image: rbd_image_t,
        ofs: u64,
        len: usize,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> isize;
    pub fn rbd_flush(image: rbd_image_t) -> c_int;
    pub fn rbd_diff_iterate2(
        image: rbd_image_t,
        fromsnapname: *const c_char,
        ofs: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        cb: diff_callback_t,
        arg: *mut c_void,
    ) -> c_int;
    pub fn rbd_aio_create_completion(
        cb_arg: *mut c_void,
        complete_cb: rbd_callback_t,
        c: *mut rbd_completion_t,
    ) -> c_int;
    pub fn rbd_aio_write(
        image: rbd_image_t,
        off: u64,
        len: usize,
        buf: *const c_char,
        c: rbd_completion_t,
    ) -> c_int;
    pub fn rbd_aio_read(
        image: rbd_image_t,
        off: u64,
        len: usize,
        buf: *mut c_char,
        c: rbd_completion_t,
    ) -> c_int;
    pub fn rbd_aio_wait_for_complete(c: rbd_completion_t) -> c_int;
    pub fn rbd_aio_get_return_value(c: rbd_completion_t) -> isize;
    pub fn rbd_aio_release(c: rbd_completion_t);
}
