//! The VMDK text descriptor parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdisk::vmdk::Descriptor;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Descriptor::parse(data, 0) {
        let _ = d.extents.len();
        let _ = d.create_type.len();
    }
});
