//! VDI images (VirtualBox): dynamic, static and differencing, opened from arbitrary bytes through the
//! driver table, read, mapped, checked, dumped and written (see `disk_image.rs`).
#![no_main]

#[path = "disk_image.rs"]
mod disk_image;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| disk_image::exercise(&vdisk::vdi::DRIVER, data));
