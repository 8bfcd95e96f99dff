//! What `check` reports: the repair modes, the report with qemu-img's counters, exit codes,
//! JSON and human output, and the kinds of structure a host cluster can hold.

use crate::error::{Error, Result};
use std::cell::RefCell;

/// Something that takes check findings one line at a time.
pub type MessageSink = Box<dyn FnMut(&str)>;

thread_local! {
    /// Where [`CheckReport`] findings go while [`stream_messages`] runs on this thread.
    static MESSAGE_SINK: RefCell<Option<MessageSink>> = const { RefCell::new(None) };
}

/// Run `f`, handing every finding of the checks it runs to `sink` as it is found instead of
/// keeping it in the report: a check of a badly broken image reports every finding (as
/// qemu-img does) in constant memory.
pub fn stream_messages<R>(sink: MessageSink, f: impl FnOnce() -> R) -> R {
    let previous = MESSAGE_SINK.with(|s| s.replace(Some(sink)));
    let out = f();
    MESSAGE_SINK.with(|s| s.replace(previous));
    out
}

/// Low bits of a refcount table entry that must be zero.
pub const REFT_RESERVED_MASK: u64 = 0x1ff;

/// What `check` may repair (qemu-img's `-r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Repair {
    /// Only report.
    #[default]
    None,
    /// Free leaked clusters (`-r leaks`).
    Leaks,
    /// Free leaks, fix refcounts that are too low, rebuild the refcount structure when it is
    /// broken, fix COPIED flags and drop entries that point at impossible places (`-r all`).
    All,
}

impl std::str::FromStr for Repair {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "leaks" => Ok(Repair::Leaks),
            "all" => Ok(Repair::All),
            _ => Err(Error::invalid(format!(
                "--repair (-r) expects 'leaks' or 'all' not '{s}'"
            ))),
        }
    }
}

/// The result of a check, with the fields of qemu-img's `ImageCheck`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Problems that stopped parts of the check (I/O errors, unreadable structures).
    pub check_errors: u64,
    /// Inconsistencies that can corrupt data.
    pub corruptions: u64,
    /// Clusters whose stored refcount is higher than their use.
    pub leaks: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// One past the highest cluster in use or counted.
    pub image_end_offset: u64,
    /// Guest clusters of the virtual disk.
    pub total_clusters: u64,
    /// Guest clusters with data in the active L1 (normal, preallocated zero, compressed).
    pub allocated_clusters: u64,
    /// Allocated guest clusters not right after their predecessor on the host.
    pub fragmented_clusters: u64,
    /// Compressed guest clusters.
    pub compressed_clusters: u64,
    /// One line per finding, every one of them, as QEMU prints them on stderr (empty
    /// when they were streamed, see [`stream_messages`]).
    pub messages: Vec<String>,
    /// The check could not complete (qemu-img then exits with 1).
    pub failed: Option<String>,
}

impl CheckReport {
    pub(crate) fn msg(&mut self, m: String) {
        let streamed = MESSAGE_SINK.with(|s| match s.borrow_mut().as_mut() {
            Some(sink) => {
                sink(&m);
                true
            }
            None => false,
        });
        if !streamed {
            self.messages.push(m);
        }
    }

    /// qemu-img's exit code for this result: 1 check failed, 2 corruptions, 3 leaks, 0 clean.
    pub fn exit_code(&self) -> u8 {
        if self.failed.is_some() || self.check_errors > 0 {
            1
        } else if self.corruptions > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }

    /// qemu-img's JSON object (keys in the order qemu-img prints them; zero optional
    /// fields left out as qemu-img does).
    pub fn to_json(&self, filename: &str, format: &str) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        let opt = |m: &mut serde_json::Map<String, serde_json::Value>, k: &str, v: u64| {
            if v != 0 {
                m.insert(k.into(), v.into());
            }
        };
        opt(&mut m, "image-end-offset", self.image_end_offset);
        opt(&mut m, "compressed-clusters", self.compressed_clusters);
        opt(&mut m, "total-clusters", self.total_clusters);
        opt(&mut m, "corruptions", self.corruptions);
        opt(&mut m, "corruptions-fixed", self.corruptions_fixed);
        m.insert("check-errors".into(), self.check_errors.into());
        opt(&mut m, "leaks", self.leaks);
        opt(&mut m, "leaks-fixed", self.leaks_fixed);
        opt(&mut m, "allocated-clusters", self.allocated_clusters);
        m.insert("filename".into(), filename.into());
        m.insert("format".into(), format.into());
        opt(&mut m, "fragmented-clusters", self.fragmented_clusters);
        serde_json::Value::Object(m)
    }

    /// qemu-img's human summary (stdout part).
    pub fn to_human(&self) -> String {
        let mut s = String::new();
        if self.corruptions == 0 && self.leaks == 0 && self.check_errors == 0 {
            s.push_str("No errors were found on the image.\n");
        } else {
            if self.corruptions > 0 {
                s.push_str(&format!(
                    "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                    self.corruptions
                ));
            }
            if self.leaks > 0 {
                s.push_str(&format!(
                    "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                    self.leaks
                ));
            }
            if self.check_errors > 0 {
                s.push_str(&format!(
                    "\n{} internal errors have occurred during the check.\n",
                    self.check_errors
                ));
            }
        }
        if self.total_clusters != 0 && self.allocated_clusters != 0 {
            let a = self.allocated_clusters as f64;
            s.push_str(&format!(
                "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
                self.allocated_clusters,
                self.total_clusters,
                a * 100.0 / self.total_clusters as f64,
                self.fragmented_clusters as f64 * 100.0 / a,
                self.compressed_clusters as f64 * 100.0 / a
            ));
        }
        if self.image_end_offset != 0 {
            s.push_str(&format!("Image end offset: {}\n", self.image_end_offset));
        }
        s
    }
}

/// What a host cluster holds, as found by the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum ClusterUse {
    /// Nothing uses it and its refcount is 0.
    Free = 0,
    /// The header (with extensions and backing name).
    Header,
    /// The active L1 table.
    L1,
    /// A snapshot's L1 table.
    SnapshotL1,
    /// The refcount table.
    RefcountTable,
    /// A refcount block.
    RefcountBlock,
    /// The snapshot table.
    SnapshotTable,
    /// The bitmap directory, a bitmap table or bitmap data.
    Bitmap,
    /// An L2 table.
    L2,
    /// Guest data.
    Data,
    /// Compressed guest data.
    Compressed,
    /// Nothing uses it but its stored refcount is not 0.
    Leaked,
    /// The encryption header (a LUKS header and its key slots).
    CryptoHeader,
}

impl ClusterUse {
    /// Name used in messages and by `dump`.
    pub fn name(self) -> &'static str {
        match self {
            ClusterUse::Free => "free",
            ClusterUse::Header => "header",
            ClusterUse::L1 => "L1 table",
            ClusterUse::SnapshotL1 => "snapshot L1 table",
            ClusterUse::RefcountTable => "refcount table",
            ClusterUse::RefcountBlock => "refcount block",
            ClusterUse::SnapshotTable => "snapshot table",
            ClusterUse::Bitmap => "bitmap",
            ClusterUse::L2 => "L2 table",
            ClusterUse::Data => "data",
            ClusterUse::Compressed => "compressed data",
            ClusterUse::Leaked => "leaked",
            ClusterUse::CryptoHeader => "encryption header",
        }
    }

    pub(crate) fn is_metadata(self) -> bool {
        !matches!(
            self,
            ClusterUse::Free | ClusterUse::Data | ClusterUse::Compressed | ClusterUse::Leaked
        )
    }

    pub(crate) fn from_u8(v: u8) -> ClusterUse {
        use ClusterUse::*;
        [
            Free,
            Header,
            L1,
            SnapshotL1,
            RefcountTable,
            RefcountBlock,
            SnapshotTable,
            Bitmap,
            L2,
            Data,
            Compressed,
            Leaked,
            CryptoHeader,
        ]
        .get(v as usize)
        .copied()
        .unwrap_or(Free)
    }
}
