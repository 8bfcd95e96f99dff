//! `map`: the guest-to-host map with qemu-img map's fields, for any device and chain.

use crate::device::{BlockDevice, ExtentKind};
use crate::error::Result;
use crate::image::{self, Format, ImageOptions};
use serde::Serialize;
use std::path::Path;

/// One run of the map, in qemu-img map's JSON layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapEntry {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Chain layer that answered (0 = the image itself).
    pub depth: u32,
    /// Whether some layer has this range (false: reads zeros from nowhere).
    pub present: bool,
    /// Reads as zeros.
    pub zero: bool,
    /// Backed by data.
    pub data: bool,
    /// Stored compressed.
    pub compressed: bool,
    /// Host offset, when the data is contiguous in one file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl MapEntry {
    fn can_merge(&self, next: &MapEntry) -> bool {
        self.start + self.length == next.start
            && self.depth == next.depth
            && self.present == next.present
            && self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && match (self.offset, next.offset) {
                (Some(a), Some(b)) => a + self.length == b,
                (None, None) => true,
                _ => false,
            }
    }
}

/// Walk the whole device and return its map, adjacent equal runs merged.
pub fn map(dev: &mut dyn BlockDevice) -> Result<Vec<MapEntry>> {
    let size = dev.virtual_size();
    let mut out: Vec<MapEntry> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let e = dev.block_status(pos, size - pos)?;
        let entry = MapEntry {
            start: pos,
            length: e.length,
            depth: e.depth,
            present: e.kind != ExtentKind::Unallocated,
            zero: e.kind != ExtentKind::Data,
            data: e.kind == ExtentKind::Data,
            compressed: e.compressed,
            offset: if e.compressed { None } else { e.host_offset },
        };
        pos += e.length.max(1);
        match out.last_mut() {
            Some(last) if last.can_merge(&entry) => last.length += entry.length,
            _ => out.push(entry),
        }
    }
    Ok(out)
}

/// The map of an image file through its backing chain.
pub struct FileMap {
    /// The guest ranges, in order.
    pub entries: Vec<MapEntry>,
    /// The file of each layer, top first (indexed by [`MapEntry::depth`]).
    pub files: Vec<String>,
}

impl FileMap {
    /// qemu-img map's JSON output.
    pub fn to_json(&self) -> String {
        to_json(&self.entries)
    }

    /// qemu-img map's human output.
    pub fn to_human(&self) -> String {
        to_human(&self.entries, &|d| {
            self.files.get(d as usize).cloned().unwrap_or_default()
        })
    }
}

/// The map of the image at `path` (format `format`, probed when `None`) with its backing
/// chain, opened read-only (`force_share`: without locking out other users).
pub fn map_file(path: &Path, format: Option<Format>, force_share: bool) -> Result<FileMap> {
    let mut img = image::open(
        path,
        &ImageOptions {
            format,
            read_only: true,
            force_share,
            ..Default::default()
        },
    )?;
    let entries = map(img.device.as_mut())?;
    let files = img
        .layers
        .iter()
        .map(|l| l.path.display().to_string())
        .collect();
    Ok(FileMap { entries, files })
}

/// qemu-img map's JSON output (one object per line inside a list).
pub fn to_json(entries: &[MapEntry]) -> String {
    let lines: Vec<String> = entries
        .iter()
        .map(|e| {
            let mut s = format!(
                "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
                e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
            );
            if let Some(o) = e.offset {
                s += &format!(", \"offset\": {o}");
            }
            s + "}"
        })
        .collect();
    format!("[{}]", lines.join(",\n"))
}

/// qemu-img map's human output: data runs with their host offset and file, where
/// `file_of(depth)` names the layer's file.
pub fn to_human(entries: &[MapEntry], file_of: &dyn Fn(u32) -> String) -> String {
    let mut s = format!(
        "{:<16}{:<16}{:<16}{}\n",
        "Offset", "Length", "Mapped to", "File"
    );
    let mut rows: Vec<(u64, u64, u64, u32)> = Vec::new();
    for e in entries.iter().filter(|e| e.data) {
        let Some(off) = e.offset else { continue };
        match rows.last_mut() {
            Some(r) if r.0 + r.1 == e.start && r.2 + r.1 == off && r.3 == e.depth => {
                r.1 += e.length
            }
            _ => rows.push((e.start, e.length, off, e.depth)),
        }
    }
    for (start, len, off, depth) in rows {
        s += &format!(
            "{:<16}{:<16}{:<16}{}\n",
            format!("{start:#x}"),
            format!("{len:#x}"),
            format!("{off:#x}"),
            file_of(depth)
        );
    }
    s
}
