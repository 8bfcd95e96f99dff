//! What convert reads from: one image, several images read one after another (qemu-img's
//! `convert a b c OUT`), or an internal snapshot of a qcow2 image (`-l`).

use crate::device::{BlockDevice, Extent};
use crate::error::{Error, Result};
use crate::image::{self, Image, ImageOptions};
use crate::qcow2::snapshot_load::SnapshotRef;
use crate::Format;
use std::path::Path;

/// Parse `-l`'s argument as qemu-img does: `snapshot.id=ID`, `snapshot.name=NAME` (either
/// or both, comma-separated), or a bare ID-or-name. A bare word yields two candidates,
/// tried in order: by ID, then by name.
pub fn parse_snapshot_param(s: &str) -> Result<Vec<SnapshotRef>> {
    if !s.starts_with("snapshot.") {
        return Ok(vec![
            SnapshotRef {
                id: Some(s.to_string()),
                name: None,
            },
            SnapshotRef {
                id: None,
                name: Some(s.to_string()),
            },
        ]);
    }
    let mut r = SnapshotRef::default();
    for item in image::opts::split(s) {
        let value = item.value.unwrap_or_else(|| "on".into());
        match item.key.as_str() {
            "snapshot.id" => r.id = Some(value),
            "snapshot.name" => r.name = Some(value),
            k => {
                return Err(Error::invalid(format!(
                    "Invalid parameter '{k}'\nFailed in parsing snapshot param '{s}'"
                )))
            }
        }
    }
    Ok(vec![r])
}

/// Open the image at `path` read-only with `opts` and make it read snapshot `candidates`
/// (the first that exists), with qemu-img's messages when none does or the format has no
/// internal snapshots.
pub fn open_snapshot(
    path: &Path,
    opts: &ImageOptions,
    candidates: &[SnapshotRef],
) -> Result<Image> {
    let failed = |why: &str| Error::invalid(format!("Failed to load snapshot: {why}"));
    let format = match opts.format {
        Some(f) => f,
        None => image::probe_path(path, opts.force_share)?,
    };
    if format != Format::QCOW2 {
        let image = image::open(path, opts)?;
        drop(image);
        return Err(failed(&format!(
            "Block format '{}' used by device '' does not support temporarily loading internal snapshots",
            format.name()
        )));
    }
    let ro = ImageOptions {
        read_only: true,
        ..opts.clone()
    };
    let (mut q, layers) = image::open_qcow2(path, &ro)?;
    let index = candidates
        .iter()
        .find_map(|c| q.find_snapshot_ref(c))
        .ok_or_else(|| failed("Can't find snapshot"))?;
    q.load_snapshot_read_only(index)?;
    Ok(Image {
        device: Box::new(q),
        format,
        layers,
    })
}

/// Several devices read as one, each after the previous (read-only).
pub struct Concat {
    parts: Vec<Box<dyn BlockDevice>>,
    /// Guest offset where each part starts, then the total size.
    starts: Vec<u64>,
}

impl Concat {
    /// The devices `parts`, in order.
    pub fn new(parts: Vec<Box<dyn BlockDevice>>) -> Result<Concat> {
        let mut starts = vec![0u64];
        let mut end = 0u64;
        for p in &parts {
            end = end
                .checked_add(p.virtual_size())
                .ok_or_else(|| Error::invalid("the source images add up to more than 16 EiB"))?;
            starts.push(end);
        }
        Ok(Concat { parts, starts })
    }

    /// The part holding guest offset `offset` (< size) and the offset inside it.
    fn locate(&self, offset: u64) -> (usize, u64) {
        let i = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let i = i.min(self.parts.len().saturating_sub(1));
        (i, offset - self.starts[i])
    }

    fn refuse() -> Error {
        Error::ReadOnly("the concatenated source images are read-only".into())
    }
}

impl BlockDevice for Concat {
    fn format_name(&self) -> &'static str {
        "concat"
    }

    fn virtual_size(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::device::check_range(self.virtual_size(), offset, buf.len() as u64)?;
        let mut done = 0usize;
        while done < buf.len() {
            let (i, local) = self.locate(offset + done as u64);
            let room = (self.starts[i + 1] - self.starts[i] - local) as usize;
            let n = room.min(buf.len() - done);
            if n == 0 {
                return Err(Error::invalid("concatenated read found an empty part"));
            }
            self.parts[i].read_at(&mut buf[done..done + n], local)?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Self::refuse())
    }

    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Err(Self::refuse())
    }

    fn discard(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Err(Self::refuse())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn block_status(&mut self, offset: u64, max_len: u64) -> Result<Extent> {
        crate::device::check_range(self.virtual_size(), offset, max_len.min(1))?;
        let (i, local) = self.locate(offset);
        let room = self.starts[i + 1] - self.starts[i] - local;
        let mut e = self.parts[i].block_status(local, max_len.min(room))?;
        e.start = offset;
        e.length = e.length.min(room);
        // Host offsets name another file than the first part's: drop them.
        e.host_offset = None;
        e.compressed = false;
        Ok(e)
    }

    fn is_read_only(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_param_takes_qemu_img_spellings() {
        let r = parse_snapshot_param("snapshot.id=1,snapshot.name=a,,b").unwrap();
        assert_eq!(
            r,
            vec![SnapshotRef {
                id: Some("1".into()),
                name: Some("a,b".into())
            }]
        );
        let r = parse_snapshot_param("s1").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].id.as_deref(), Some("s1"));
        assert_eq!(r[1].name.as_deref(), Some("s1"));
        assert!(parse_snapshot_param("snapshot.bogus=1").is_err());
    }
}
