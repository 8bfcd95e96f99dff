//! Format probing and host-file safety: a probed raw image cannot be turned into something
//! that probes as qcow2 or VMDK by a write to its first sector, a file declared raw is never
//! followed to a backing file, `info` can be told never to open backing files, and a
//! backing file of unrecorded format that probes as a VMDK descriptor is not followed to
//! the extent files it names.

mod common;

use common::*;
use std::path::Path;
use vdisk::image::{self, Format, ImageOptions};

/// The first cluster of a real qcow2 image naming `backing` (raw) as its backing file.
fn qcow2_header_naming(dir: &Path, backing: &str) -> Vec<u8> {
    let p = dir.join("hdr.qcow2");
    qemu_img_ok(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-u".as_ref(),
        "-b".as_ref(),
        backing.as_ref(),
        "-F".as_ref(),
        "raw".as_ref(),
        p.as_os_str(),
        "1M".as_ref(),
    ]);
    let bytes = read(&p);
    std::fs::remove_file(&p).unwrap();
    bytes
}

#[test]
fn a_write_that_would_make_a_probed_raw_image_look_like_qcow2_is_refused() {
    let dir = tempdir();
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let header = qcow2_header_naming(dir.path(), "/etc/hostname");

    let mut img = image::open(&raw, &ImageOptions::default()).unwrap();
    assert_eq!(img.format, Format::RAW);
    let e = img.device.write_at(&header[..512], 0).unwrap_err();
    assert!(e.to_string().contains("block 0"), "{e}");
    // Only the magic, or a VMDK descriptor, is enough to be refused.
    assert!(img.device.write_at(b"QFI\xfb", 0).is_err());
    assert!(img
        .device
        .write_at(b"# Disk DescriptorFile\nversion=1\n", 0)
        .is_err());
    // Other writes to block 0, and any write past it, are fine.
    img.device.write_at(&[0x55; 512], 0).unwrap();
    img.device.write_at(&header[..512], 4096).unwrap();
    img.device.write_zeroes(0, 512).unwrap();
    drop(img);
    assert_eq!(
        image::open(&raw, &ImageOptions::default()).unwrap().format,
        Format::RAW
    );

    // Naming the format allows it, as in QEMU.
    let named = ImageOptions {
        format: Some(Format::RAW),
        ..Default::default()
    };
    let mut img = image::open(&raw, &named).unwrap();
    img.device.write_at(&header[..512], 0).unwrap();
}

#[test]
fn a_file_declared_raw_is_never_followed_to_the_backing_file_its_header_names() {
    let dir = tempdir();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, b"host secret").unwrap();
    let mut disk = qcow2_header_naming(dir.path(), secret.to_str().unwrap());
    disk.resize(1 << 20, 0);
    let path = dir.path().join("guest.img");
    std::fs::write(&path, &disk).unwrap();

    // As raw, the bytes are the guest's own: nothing from secret.txt.
    let out = dir.path().join("out.raw");
    vdisk_ok(&[
        "convert".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        path.as_os_str(),
        out.as_os_str(),
    ]);
    assert_eq!(read(&out), disk);
    let img = image::open(
        &path,
        &ImageOptions {
            format: Some(Format::RAW),
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(img.layers.len(), 1);
    let info = vdisk_ok(&[
        "info".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        path.as_os_str(),
    ]);
    assert!(!info.contains("backing"), "{info}");

    // `info --no-backing` on the probed file names the backing file without opening it,
    // even when it does not exist; --backing-chain cannot be combined with it.
    std::fs::remove_file(&secret).unwrap();
    let info = vdisk_ok(&["info".as_ref(), "--no-backing".as_ref(), path.as_os_str()]);
    assert!(info.contains("secret.txt"), "{info}");
    let r = vdisk([
        "info",
        "--no-backing",
        "--backing-chain",
        path.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
}

/// Turn the backing-format header extension of the qcow2 v3 image at `path` into an
/// extension of an unknown type, which readers skip: the image then records no format.
fn hide_backing_format(path: &Path) {
    let mut bytes = read(path);
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    let mut at = be32(&bytes, vdisk::qcow2::header::field::HEADER_LENGTH.offset) as usize;
    loop {
        let (kind, len) = (be32(&bytes, at), be32(&bytes, at + 4) as usize);
        assert_ne!(kind, 0, "no backing format extension");
        if kind == 0xe279_2aca {
            bytes[at..at + 4].copy_from_slice(&0x7664_6b31u32.to_be_bytes());
            break;
        }
        at += 8 + len.next_multiple_of(8);
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_backing_file_probed_as_a_vmdk_descriptor_is_not_followed_to_its_extents() {
    let dir = tempdir();
    // A "raw" backing file whose first sector is a VMDK descriptor naming another file.
    std::fs::write(dir.path().join("victim.bin"), vec![0x42u8; 1 << 20]).unwrap();
    let base = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"victim.bin\" 0\n".to_vec();
    std::fs::write(dir.path().join("base.img"), &base).unwrap();
    let top = dir.path().join("top.qcow2");
    qemu_img_ok(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-u".as_ref(),
        "-b".as_ref(),
        "base.img".as_ref(),
        "-F".as_ref(),
        "raw".as_ref(),
        top.as_os_str(),
        "1M".as_ref(),
    ]);
    // Drop the recorded format: the backing file will be probed. (Neither tool writes
    // such an image any more: rebase needs the format of a new backing file.)
    hide_backing_format(&top);
    let ro = ImageOptions {
        read_only: true,
        ..Default::default()
    };
    let e = image::open(&top, &ro)
        .err()
        .expect("the probed descriptor was followed");
    assert!(e.to_string().contains("VMDK descriptor"), "{e}");
    // Recording the format makes it an explicit choice.
    vdisk_ok(&[
        "rebase".as_ref(),
        "-u".as_ref(),
        "-b".as_ref(),
        "base.img".as_ref(),
        "-F".as_ref(),
        "vmdk".as_ref(),
        top.as_os_str(),
    ]);
    let mut img = image::open(&top, &ro).unwrap();
    let mut buf = [0u8; 16];
    img.device.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0x42; 16]);
}
