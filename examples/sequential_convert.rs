//! Convert an image into a qcow2 file laid out sequentially (header, all metadata, then the
//! data in guest order, each byte written once), as `vdisk convert -O qcow2` does for an
//! upload stream. For benchmarks/compare.sh's sequential rows and for trying the layout:
//!
//!     cargo run --release --example sequential_convert -- SRC OUT [key=value,...]

use std::path::PathBuf;
use std::sync::Arc;
use vdisk::image::{self, ImageOptions};
use vdisk::ops::convert::sequential::{convert_sequential, SequentialTarget};
use vdisk::ops::convert::ConvertOptions;
use vdisk::storage::{FileStorage, SequentialCheck};

fn main() -> vdisk::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(src), Some(out)) = (args.first(), args.get(1)) else {
        eprintln!("usage: sequential_convert SRC OUT [key=value,...]");
        std::process::exit(2);
    };
    let options = match args.get(2) {
        Some(o) => image::parse_options(o)?,
        None => Vec::new(),
    };
    let ro = ImageOptions {
        read_only: true,
        ..Default::default()
    };
    let mut source = image::open(&PathBuf::from(src), &ro)?.device;
    // A new file: an old one's tail would outlive the image.
    let _ = std::fs::remove_file(out);
    let mut file = FileStorage::create(&PathBuf::from(out))
        .map_err(|e| vdisk::Error::io(format!("could not create '{out}'"), e))?;
    // As `vdisk convert` (and qemu-img convert) by default: `-t unsafe`, no fdatasync.
    file.set_unsafe_cache(true);
    // The check costs one comparison a write and proves the output was written in order.
    let target = SequentialTarget {
        storage: Arc::new(SequentialCheck::new(Arc::new(file))),
        options: &options,
        backing: None,
        // As convert into an upload stream: a raw source is read once more to leave out
        // the clusters it holds only zeros in.
        scan_zeros: source.cluster_size().is_none(),
    };
    let copts = ConvertOptions {
        unallocated_is_zero: true,
        ..Default::default()
    };
    convert_sequential(source.as_mut(), target, copts, &mut |_, _| {}, &mut |_| {})
}
