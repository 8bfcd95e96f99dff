//! What `info` shows for a VMDK image: qemu-img's `format-specific` data (content IDs,
//! subformat, and each extent's file, type, size and grain size), as JSON and as the
//! human-readable `Format specific information:` block.

use super::{ExtentBody, Vmdk};
use serde::Serialize;

/// qemu-img's `format-specific.data` for a vmdk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmdkInfo {
    pub cid: u32,
    pub parent_cid: u32,
    pub create_type: String,
    pub extents: Vec<VmdkExtentInfo>,
}

/// One extent in [`VmdkInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmdkExtentInfo {
    /// Present (and true) only for compressed extents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compressed: Option<bool>,
    pub virtual_size: u64,
    pub filename: String,
    /// Grain size in bytes; absent for flat extents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// The extent line's type (`SPARSE`, `FLAT`, …), empty for a bare sparse file.
    pub format: String,
}

impl Vmdk {
    /// The format-specific information `qemu-img info` shows.
    pub fn info(&self) -> VmdkInfo {
        VmdkInfo {
            cid: self.cid,
            parent_cid: self.parent_cid,
            create_type: self.create_type.clone(),
            extents: self
                .extents
                .iter()
                .map(|e| {
                    let (compressed, cluster_size) = match &e.body {
                        ExtentBody::Sparse(s) => {
                            let g = s.geometry();
                            (g.compressed.then_some(true), Some(g.grain_bytes()))
                        }
                        ExtentBody::Stream(w) => (Some(true), Some(w.grain_bytes())),
                        ExtentBody::Flat(_) | ExtentBody::Zero => (None, None),
                    };
                    VmdkExtentInfo {
                        compressed,
                        virtual_size: e.length,
                        filename: e.filename.clone(),
                        cluster_size,
                        format: e.type_name.clone(),
                    }
                })
                .collect(),
        }
    }

    /// The lines of qemu-img's human `Format specific information:` block, without the
    /// block's own four-space indentation (the caller adds it).
    pub fn human_lines(&self) -> Vec<String> {
        let info = self.info();
        let mut lines = vec![
            format!("cid: {}", info.cid),
            format!("parent cid: {}", info.parent_cid),
            format!("create type: {}", info.create_type),
            "extents:".to_string(),
        ];
        for (i, e) in info.extents.iter().enumerate() {
            lines.push(format!("    [{i}]:"));
            if let Some(c) = e.compressed {
                lines.push(format!("        compressed: {c}"));
            }
            lines.push(format!("        virtual size: {}", e.virtual_size));
            lines.push(format!("        filename: {}", e.filename));
            if let Some(c) = e.cluster_size {
                lines.push(format!("        cluster size: {c}"));
            }
            lines.push(format!("        format: {}", e.format));
        }
        lines
    }
}
