//! Consistency checks for `check`: every grain table and grain lies inside its extent
//! file and outside the metadata area, no two grain table entries share a grain, the
//! redundant grain directory and tables agree with the primary ones, and grain-sized
//! stretches of the file that nothing points at are counted as leaks.

use super::grain_table::GrainEntry;
use super::limits::SECTOR_SIZE;
use super::sparse::SparseExtent;
use super::{ExtentBody, Vmdk};
use crate::device::BlockDevice;
use crate::error::Result;
use serde::Serialize;

/// Most grain-sized slots tracked for leak detection (a bitmap of this many bits).
const MAX_LEAK_SLOTS: u64 = 1 << 26;

/// The result of [`Vmdk::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmdkCheckReport {
    /// Problems that make data unreliable.
    pub corruptions: u64,
    /// Grain-sized stretches of extent files that nothing uses (harmless, wasted space).
    pub leaks: u64,
    /// One line per problem found.
    pub messages: Vec<String>,
    /// Guest offset of the first grain (in guest order) that starts at or past the end of
    /// its extent file: qemu-img's check stops there and fails.
    #[serde(skip)]
    pub first_grain_past_eof: Option<u64>,
}

impl VmdkCheckReport {
    fn corruption(&mut self, msg: String) {
        self.corruptions += 1;
        self.messages.push(format!("ERROR: {msg}"));
    }

    fn leak(&mut self, msg: String) {
        self.leaks += 1;
        self.messages.push(format!("Leaked grain: {msg}"));
    }

    /// The report as `check` gives it. A grain past the end of its file is what qemu-img
    /// stops at: it reports that one grain (by guest sector) and fails with EINVAL.
    pub fn into_check_report(self) -> crate::check_report::CheckReport {
        use crate::check_report::CheckReport;
        match self.first_grain_past_eof {
            Some(guest) => CheckReport {
                messages: vec![format!(
                    "ERROR: cluster offset for sector {} points after EOF",
                    guest / SECTOR_SIZE
                )],
                failed: Some("Invalid argument".into()),
                ..Default::default()
            },
            None => CheckReport {
                corruptions: self.corruptions,
                leaks: self.leaks,
                messages: self.messages,
                ..Default::default()
            },
        }
    }

    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaks == 0
    }
}

impl Vmdk {
    /// Check every sparse extent of the image (grain tables are flushed first).
    pub fn check(&mut self) -> Result<VmdkCheckReport> {
        self.flush()?;
        let mut report = VmdkCheckReport::default();
        for extent in &self.extents {
            if let ExtentBody::Sparse(sparse) = &extent.body {
                check_sparse(sparse, &extent.filename, extent.start, &mut report);
            }
        }
        Ok(report)
    }
}

fn check_sparse(sparse: &SparseExtent, name: &str, guest_start: u64, report: &mut VmdkCheckReport) {
    let g = *sparse.geometry();
    let file_len = sparse.file_len();
    let grain = g.grain_bytes();
    let metadata_end = g.overhead * SECTOR_SIZE;
    let gd = sparse.directory();
    let rgd = sparse.redundant_directory();
    let gt_bytes = g.gt_bytes();
    let mut used: Vec<(u64, u64)> = Vec::new();
    let mut grains: Vec<u64> = Vec::new();
    let total_grains = g.capacity.div_ceil(g.grain_sectors);
    for (i, &gt_sector) in gd.iter().enumerate() {
        let r_sector = rgd.map(|r| r[i]);
        if gt_sector == 0 {
            if r_sector.is_some_and(|r| r != 0) {
                report.corruption(format!(
                    "{name}: grain directory entry {i} is empty but its redundant copy is not"
                ));
            }
            continue;
        }
        let table = match sparse.read_table_at(gt_sector) {
            Ok(t) => t,
            Err(e) => {
                report.corruption(format!("{name}: grain directory entry {i}: {e}"));
                continue;
            }
        };
        used.push((u64::from(gt_sector) * SECTOR_SIZE, gt_bytes));
        match r_sector {
            None => {}
            Some(0) => report.corruption(format!(
                "{name}: redundant grain directory entry {i} is empty but the primary is not"
            )),
            Some(r) => match sparse.read_table_at(r) {
                Ok(redundant) => {
                    used.push((u64::from(r) * SECTOR_SIZE, gt_bytes));
                    let differing = table.iter().zip(&redundant).filter(|(a, b)| a != b).count();
                    if differing > 0 {
                        report.corruption(format!(
                            "{name}: grain table {i} and its redundant copy differ in {differing} entries"
                        ));
                    }
                }
                Err(e) => {
                    report.corruption(format!("{name}: redundant grain directory entry {i}: {e}"))
                }
            },
        }
        for (j, &raw) in table.iter().enumerate() {
            let grain_index = i as u64 * u64::from(g.gtes_per_gt) + j as u64;
            if grain_index >= total_grains {
                break;
            }
            let GrainEntry::Allocated(off) = GrainEntry::from_raw(raw, g.zeroed_grain) else {
                continue;
            };
            let guest = guest_start + grain_index * grain;
            if off >= file_len {
                report.first_grain_past_eof.get_or_insert(guest);
                report.corruption(format!(
                    "{name}: grain for guest offset {guest:#x} at {off:#x} points past the end of the file"
                ));
            } else if off < metadata_end {
                report.corruption(format!(
                    "{name}: grain for guest offset {guest:#x} at {off:#x} points into the metadata area"
                ));
            } else {
                grains.push(off);
            }
        }
    }
    if g.compressed {
        return;
    }
    grains.sort_unstable();
    for pair in grains.windows(2) {
        if pair[0] == pair[1] {
            report.corruption(format!(
                "{name}: grain at {:#x} is used by more than one grain table entry",
                pair[0]
            ));
        }
    }
    used.push((g.gd_offset, g.gd_entries * 4));
    if let Some(r) = g.rgd_offset {
        used.push((r, g.gd_entries * 4));
    }
    used.extend(grains.iter().map(|&off| (off, grain)));
    count_leaks(&used, metadata_end, file_len, grain, name, report);
}

/// Count grain-sized slots between the metadata area and the end of the file that no
/// used range touches.
fn count_leaks(
    used: &[(u64, u64)],
    metadata_end: u64,
    file_len: u64,
    grain: u64,
    name: &str,
    report: &mut VmdkCheckReport,
) {
    let first = metadata_end.next_multiple_of(grain);
    if file_len <= first {
        return;
    }
    let slots = (file_len - first).div_ceil(grain);
    if slots > MAX_LEAK_SLOTS {
        return;
    }
    let mut bitmap = vec![0u64; slots.div_ceil(64) as usize];
    for &(start, len) in used {
        let end = (start + len).min(file_len);
        if len == 0 || end <= first {
            continue;
        }
        let a = (start.max(first) - first) / grain;
        let b = (end - first).div_ceil(grain);
        for slot in a..b.min(slots) {
            bitmap[(slot / 64) as usize] |= 1 << (slot % 64);
        }
    }
    for slot in 0..slots {
        if bitmap[(slot / 64) as usize] & (1 << (slot % 64)) == 0 {
            report.leak(format!("{name}: {:#x}", first + slot * grain));
        }
    }
}
