//! The library in a few lines: create an image, open it by path (format probed, backing
//! chain attached), write and read through the `BlockDevice` trait, then use the qcow2
//! driver directly on a storage opened through a namespace.

use vdisk::image::{self, Format, ImageOptions};
use vdisk::qcow2::{self, Qcow2};
use vdisk::storage::{HostFiles, Namespace, OpenOptions};
use vdisk::BlockDevice;

fn main() -> vdisk::Result<()> {
    let path = &std::env::temp_dir().join("vdisk-library-example.qcow2");

    // Create a 64 MiB qcow2 image (as `vdisk create -f qcow2 FILE 64M`).
    image::create(path, Format::QCOW2, Some(64 << 20), &[])?.close()?;

    // Open it by path: the format is probed and backing files are opened as well.
    let mut img = image::open(path, &ImageOptions::default())?;
    img.device.write_at(b"hello, qcow2", 1 << 20)?;
    let mut buf = [0u8; 12];
    img.device.read_at(&mut buf, 1 << 20)?;
    assert_eq!(&buf, b"hello, qcow2");
    img.device.flush()?;
    drop(img);

    // Or use the qcow2 driver directly on any storage (a file, memory, a fault injector).
    let write = OpenOptions {
        write: true,
        ..Default::default()
    };
    let storage = HostFiles
        .open(path, write)
        .map_err(|e| vdisk::Error::io("opening the image", e))?;
    let mut q = Qcow2::open(storage, qcow2::OpenOptions::default())?;
    println!(
        "{}: cluster size {}, {} bytes",
        Format::QCOW2,
        q.header().cluster_size(),
        q.virtual_size()
    );
    q.write_zeroes(1 << 20, 4096)?;
    q.flush()?;
    drop(q);
    std::fs::remove_file(path).map_err(|e| vdisk::Error::io("removing the example image", e))
}
