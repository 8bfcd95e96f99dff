//! Round trips between formats through the `vdisk` binary: raw → vmdk → qcow2 → vmdk → raw
//! must give back the original bytes, for every VMDK subformat vdisk writes.

mod common;

use common::s;

fn vdisk(args: &[&str]) {
    let o = common::vdisk(args);
    assert!(
        o.status.success(),
        "vdisk {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn raw_to_vmdk_to_qcow2_to_vmdk_to_raw_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 5 MiB of mixed content: text, a hole, random-looking bytes, zeros, an odd tail.
    let mut data = Vec::new();
    for i in 0..200_000u32 {
        data.extend_from_slice(format!("line {i} of the round trip\n").as_bytes());
    }
    data.resize(2 << 20, 0);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..(1 << 17) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.resize((5 << 20) - 512, 0);
    data.extend_from_slice(&[0xa5; 512]);
    let src = d.join("src.raw");
    std::fs::write(&src, &data).unwrap();
    for sub in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
    ] {
        let (v1, q, v2, back) = (
            d.join(format!("{sub}-1.vmdk")),
            d.join(format!("{sub}.qcow2")),
            d.join(format!("{sub}-2.vmdk")),
            d.join(format!("{sub}.raw")),
        );
        let o = format!("subformat={sub}");
        vdisk(&["convert", "-O", "vmdk", "-o", &o, s(&src), s(&v1)]);
        vdisk(&["convert", "-O", "qcow2", s(&v1), s(&q)]);
        vdisk(&["convert", "-O", "vmdk", "-o", &o, s(&q), s(&v2)]);
        vdisk(&["convert", "-O", "raw", s(&v2), s(&back)]);
        assert!(
            std::fs::read(&back).unwrap() == data,
            "{sub}: round trip changed the bytes"
        );
    }
}
