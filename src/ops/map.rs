//! `map`: the guest-to-host map with qemu-img map's fields, for any device and chain,
//! printed as qemu-img prints it (JSON lines, or the human table of data runs).

use crate::device::{BlockDevice, ExtentKind};
use crate::error::{Error, Result};
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
    /// The file holding the data at `offset`, when the format names one (a VMDK extent
    /// file); otherwise the layer's own file.
    #[serde(skip)]
    pub file: Option<String>,
}

impl MapEntry {
    fn can_merge(&self, next: &MapEntry) -> bool {
        self.start + self.length == next.start
            && self.depth == next.depth
            && self.present == next.present
            && self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && self.file == next.file
            && match (self.offset, next.offset) {
                (Some(a), Some(b)) => a + self.length == b,
                (None, None) => true,
                _ => false,
            }
    }
}

/// Walk the whole device and return its map, adjacent equal runs merged.
pub fn map(dev: &mut dyn BlockDevice) -> Result<Vec<MapEntry>> {
    map_range(dev, 0, None)
}

/// The map of guest bytes from `start`, at most `max_length` of them, as qemu-img map
/// `--start-offset`/`--max-length` walk it. An empty range gives one empty entry at
/// `start`, which qemu-img's JSON output shows.
pub fn map_range(
    dev: &mut dyn BlockDevice,
    start: u64,
    max_length: Option<u64>,
) -> Result<Vec<MapEntry>> {
    let size = dev.virtual_size();
    let end = max_length.map_or(size, |len| start.saturating_add(len).min(size));
    let mut out: Vec<MapEntry> = Vec::new();
    let mut pos = start;
    while pos < end {
        let s = dev.map_status(pos, end - pos)?;
        let e = s.extent;
        let offset = if e.compressed { None } else { e.host_offset };
        let entry = MapEntry {
            start: pos,
            length: e.length.clamp(1, end - pos),
            depth: e.depth,
            present: e.kind != ExtentKind::Unallocated,
            zero: s.zero,
            data: e.kind == ExtentKind::Data,
            compressed: e.compressed,
            file: offset.and(s.file),
            offset,
        };
        pos += entry.length;
        match out.last_mut() {
            Some(last) if last.can_merge(&entry) => last.length += entry.length,
            _ => out.push(entry),
        }
    }
    if out.is_empty() {
        out.push(MapEntry {
            start,
            length: 0,
            depth: 0,
            present: false,
            zero: false,
            data: false,
            compressed: false,
            offset: None,
            file: None,
        });
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

    /// qemu-img map's human output, up to the first run it cannot show.
    pub fn to_human(&self) -> HumanMap {
        to_human(&self.entries, &|d| {
            self.files.get(d as usize).cloned().unwrap_or_default()
        })
    }
}

/// The map of the guest range from `start` (`max_length` bytes, or to the end) of the
/// image at `path` (format `format`, probed when `None`) with its backing chain, opened
/// read-only (`force_share`: without locking out other users).
pub fn map_file(
    path: &Path,
    format: Option<Format>,
    force_share: bool,
    start: u64,
    max_length: Option<u64>,
) -> Result<FileMap> {
    let mut img = image::open(
        path,
        &ImageOptions {
            format,
            read_only: true,
            force_share,
            ..Default::default()
        },
    )?;
    let entries = map_range(img.device.as_mut(), start, max_length)?;
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

/// qemu-img map's human output, as far as qemu-img gets: the table of runs holding
/// nonzero data, with the file holding each (`file_of(depth)` names a layer's own file).
pub struct HumanMap {
    /// What is printed, up to the first run qemu-img cannot show.
    pub text: String,
    /// Why the table stops early: a data run with no host offset (compressed data).
    pub error: Option<Error>,
}

/// The human map of `entries`.
pub fn to_human(entries: &[MapEntry], file_of: &dyn Fn(u32) -> String) -> HumanMap {
    let mut text = format!(
        "{:<16}{:<16}{:<16}{}\n",
        "Offset", "Length", "Mapped to", "File"
    );
    for e in entries {
        if e.data && e.offset.is_none() {
            return HumanMap {
                text,
                error: Some(Error::invalid(
                    "File contains external, encrypted or compressed clusters.",
                )),
            };
        }
        if let (true, false, Some(off)) = (e.data, e.zero, e.offset) {
            let file = e.file.clone().unwrap_or_else(|| file_of(e.depth));
            text += &format!(
                "{:<16}{:<16}{:<16}{}\n",
                c_hex(e.start),
                c_hex(e.length),
                c_hex(off),
                file
            );
        }
    }
    HumanMap { text, error: None }
}

/// A number as C's `%#x` prints it: `0x` before every value but zero.
fn c_hex(n: u64) -> String {
    if n == 0 {
        "0".into()
    } else {
        format!("{n:#x}")
    }
}
