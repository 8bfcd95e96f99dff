//! The helpers `tests/delta.rs` and `tests/delta_invariant.rs` share: reading the extents
//! of `qemu-img map` and `vdisk delta --list` JSON, and counting the clusters they touch.

use crate::common::parse_json;
use std::collections::BTreeSet;

/// The clusters of `cluster` bytes, below `size`, that the extents `[(start, len)]` touch.
pub fn clusters_of(
    extents: impl IntoIterator<Item = (u64, u64)>,
    cluster: u64,
    size: u64,
) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    let last = size.div_ceil(cluster);
    for (start, len) in extents {
        set.extend(start / cluster..(start + len).div_ceil(cluster).min(last));
    }
    set
}

/// (start, length, zero) of each entry of a `qemu-img map` or `delta --list` JSON array
/// that passes `keep`.
pub fn json_extents(
    text: &str,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<(u64, u64, bool)> {
    let v = parse_json("extents", text);
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| keep(e))
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["zero"].as_bool().unwrap(),
            )
        })
        .collect()
}
