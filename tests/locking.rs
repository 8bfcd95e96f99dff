//! Sharing images with a running QEMU: vdisk takes and honours QEMU's image locks (see
//! `vdisk::storage::lock`). Each test keeps a real `qemu-io` process holding an image open
//! (reading commands from a pipe that stays open), or holds an image in this process and
//! runs `qemu-io`/`qemu-img` against it.

mod common;

use common::hold::QemuIo;
use common::*;
use std::path::Path;
use vdisk::image::{self, ImageOptions};
use vdisk::qcow2::{OpenOptions, Qcow2};
use vdisk::storage::{FileStorage, OpenOptions as FileOptions};
use vdisk::BlockDevice;

fn qcow2(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    qemu_img_ok(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        p.as_os_str(),
        "4M".as_ref(),
    ]);
    p
}

/// A qcow2 overlay `name` in `dir` whose backing file is the qcow2 image `base`.
fn overlay(dir: &Path, name: &str, base: &Path) -> std::path::PathBuf {
    let p = dir.join(name);
    qemu_img_ok(&[
        os("create"),
        os("-q"),
        os("-f"),
        os("qcow2"),
        os("-b"),
        base.as_os_str(),
        os("-F"),
        os("qcow2"),
        p.as_os_str(),
    ]);
    p
}

/// `out`, the result of `what`, succeeded (`ok`) or failed (`!ok`).
fn assert_success(what: &str, out: &std::process::Output, ok: bool) {
    assert_eq!(out.status.success(), ok, "{}", describe(what, out));
}

/// Run vdisk; it must fail (exit 1, or 2 for compare, as qemu-img) with the "image is in
/// use" message.
fn assert_in_use(args: &[&std::ffi::OsStr]) {
    let out = vdisk(args);
    let what = format!("vdisk {args:?}");
    let code = if args[0] == "compare" { 2 } else { 1 };
    assert_eq!(out.status.code(), Some(code), "{}", describe(&what, &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("image is in use"),
        "{}",
        describe(&what, &out)
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{}",
        describe(&what, &out)
    );
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn an_image_qemu_io_holds_read_write_refuses_every_vdisk_open_without_force_share() {
    let dir = tempdir();
    let img = qcow2(dir.path(), "vm.qcow2");
    let other = qcow2(dir.path(), "other.qcow2");
    let p = img.as_os_str();
    let before = read(&img);
    let held = QemuIo::hold(&[], &img);

    assert_in_use(&[os("snapshot"), os("-c"), os("s1"), p]);
    assert_in_use(&[os("snapshot"), os("-l"), p]);
    assert_in_use(&[os("info"), p]);
    assert_in_use(&[os("check"), p]);
    assert_in_use(&[os("check"), os("-r"), os("all"), p]);
    assert_in_use(&[os("map"), p]);
    assert_in_use(&[os("resize"), p, os("8M")]);
    assert_in_use(&[os("amend"), os("-o"), os("lazy_refcounts=on"), p]);
    assert_in_use(&[os("compare"), p, other.as_os_str()]);
    let out = dir.path().join("out.raw");
    assert_in_use(&[os("convert"), os("-O"), os("raw"), p, out.as_os_str()]);
    // The create must not truncate the image in use.
    assert_in_use(&[os("create"), os("-f"), os("qcow2"), p, os("1M")]);
    assert_eq!(
        read(&img),
        before,
        "a refused vdisk command changed the image"
    );

    // -U reads without locking, as qemu-img -U.
    for args in [
        vec![os("info"), os("-U"), p],
        vec![os("info"), os("-U"), os("--backing-chain"), p],
        vec![os("snapshot"), os("-l"), os("-U"), p],
        vec![os("check"), os("-U"), p],
        vec![os("map"), os("-U"), p],
        vec![os("dump"), os("-U"), os("--header"), p],
        vec![os("measure"), os("-U"), os("-O"), os("qcow2"), p],
        vec![os("compare"), os("-U"), p, other.as_os_str()],
        vec![
            os("convert"),
            os("-U"),
            os("-O"),
            os("raw"),
            p,
            out.as_os_str(),
        ],
    ] {
        vdisk_ok(&args);
    }
    // ... but -U never writes.
    let r = vdisk([os("snapshot"), os("-U"), os("-c"), os("s1"), p]);
    assert_eq!(
        r.status.code(),
        Some(1),
        "{}",
        describe("snapshot -U -c", &r)
    );
    let r = vdisk([os("check"), os("-U"), os("-r"), os("all"), p]);
    assert_eq!(r.status.code(), Some(1), "{}", describe("check -U -r", &r));

    drop(held);
    vdisk_ok(&[os("snapshot"), os("-c"), os("s1"), p]);
    assert!(vdisk_ok(&[os("snapshot"), os("-l"), p]).contains("s1"));
}

#[test]
fn an_image_qemu_io_holds_read_only_can_be_read_but_not_written_by_vdisk() {
    let dir = tempdir();
    let img = qcow2(dir.path(), "ro.qcow2");
    let p = img.as_os_str();
    let held = QemuIo::hold(&["-r"], &img);
    vdisk_ok(&[os("info"), p]);
    vdisk_ok(&[os("check"), p]);
    vdisk_ok(&[os("snapshot"), os("-l"), p]);
    assert_in_use(&[os("snapshot"), os("-c"), os("s1"), p]);
    assert_in_use(&[os("resize"), p, os("8M")]);
    drop(held);
    vdisk_ok(&[os("resize"), p, os("8M")]);
}

#[test]
fn the_backing_file_of_an_image_qemu_io_writes_cannot_be_committed_into() {
    let dir = tempdir();
    let base = qcow2(dir.path(), "base.qcow2");
    let top = overlay(dir.path(), "top.qcow2", &base);
    let mid = overlay(dir.path(), "mid.qcow2", &base);
    // A VM runs on `top`, so `base` is its read-only backing file.
    let held = QemuIo::hold(&[], &top);
    assert_in_use(&[os("commit"), mid.as_os_str()]);
    assert_in_use(&[os("snapshot"), os("-c"), os("s"), base.as_os_str()]);
    // Reading the shared base is fine; so is writing another overlay of it.
    vdisk_ok(&[os("info"), base.as_os_str()]);
    vdisk_ok(&[os("snapshot"), os("-c"), os("s"), mid.as_os_str()]);
    drop(held);
    vdisk_ok(&[os("commit"), mid.as_os_str()]);
}

fn qemu_io_read(path: &Path) -> std::process::Output {
    qemu_io([os("-c"), os("read 0 512"), path.as_os_str()])
}

#[test]
fn qemu_refuses_an_image_vdisk_has_open_for_writing() {
    let dir = tempdir();
    let img = qcow2(dir.path(), "busy.qcow2");
    let storage = FileStorage::open(
        &img,
        FileOptions {
            write: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut q = Qcow2::open(storage, OpenOptions::default()).unwrap();
    q.write_at(&[7u8; 512], 0).unwrap();
    q.flush().unwrap();

    let out = qemu_io_read(&img);
    assert_success("qemu-io read", &out, false);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lock"),
        "{}",
        describe("qemu-io read", &out)
    );
    let out = qemu_io([os("-r"), os("-c"), os("read 0 512"), img.as_os_str()]);
    assert_success("qemu-io -r", &out, false);
    let out = qemu_img([os("info"), img.as_os_str()]);
    assert_success("qemu-img info", &out, false);
    // qemu-img -U still reads it, as vdisk -U would.
    qemu_img_ok(&[os("info"), os("-U"), img.as_os_str()]);

    drop(q);
    let out = qemu_io_read(&img);
    assert_success("qemu-io after close", &out, true);
}

#[test]
fn vdisk_locks_backing_files_as_read_only_opens_do() {
    let dir = tempdir();
    let base = qcow2(dir.path(), "base.qcow2");
    let top = overlay(dir.path(), "top.qcow2", &base);
    let img = image::open(&top, &ImageOptions::default()).unwrap();
    assert_eq!(img.layers.len(), 2);
    // The backing file may be read by QEMU, but not written.
    let out = qemu_io_read(&base);
    assert_success("qemu-io rw base", &out, false);
    let out = qemu_io([os("-r"), os("-c"), os("read 0 512"), base.as_os_str()]);
    assert_success("qemu-io -r base", &out, true);
    drop(img);
    let out = qemu_io_read(&base);
    assert_success("qemu-io rw base", &out, true);
}

#[test]
fn two_read_only_vdisk_opens_share_an_image() {
    let dir = tempdir();
    let img = qcow2(dir.path(), "shared.qcow2");
    let ro = ImageOptions {
        read_only: true,
        ..Default::default()
    };
    let a = image::open(&img, &ro).unwrap();
    let b = image::open(&img, &ro).unwrap();
    let e = image::open(&img, &ImageOptions::default())
        .err()
        .expect("a writable open while two readers hold the image");
    assert!(e.to_string().contains("image is in use"), "{e}");
    drop((a, b));
    image::open(&img, &ImageOptions::default()).unwrap();
}
