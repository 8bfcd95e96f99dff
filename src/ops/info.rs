//! `info`: what qemu-img info reports, as a serialisable structure with qemu-img's keys.

use crate::image::Format;
use serde::Serialize;

/// qemu-img's `format-specific` object.
#[derive(Debug, Clone, Serialize)]
pub struct FormatSpecific {
    /// "qcow2", "vmdk", "file".
    #[serde(rename = "type")]
    pub kind: String,
    /// The format's own fields.
    pub data: serde_json::Value,
}

/// One child node (qemu-img shows the protocol layer as child "file").
#[derive(Debug, Clone, Serialize)]
pub struct Child {
    /// Child name ("file").
    pub name: String,
    /// Its info.
    pub info: Box<ImageInfo>,
}

/// The result of `info`, in qemu-img's JSON layout and key order.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// Child nodes.
    pub children: Vec<Child>,
    /// Internal snapshots.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<serde_json::Value>,
    /// Backing format.
    #[serde(
        rename = "backing-filename-format",
        skip_serializing_if = "Option::is_none"
    )]
    pub backing_format: Option<String>,
    /// Guest size in bytes.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    /// File name as given.
    pub filename: String,
    /// Cluster size, for formats that have one.
    #[serde(rename = "cluster-size", skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// Format name.
    pub format: String,
    /// Host bytes used; `None` where the storage cannot tell (RBD), as qemu-img's
    /// "disk size: unavailable".
    #[serde(rename = "actual-size", skip_serializing_if = "Option::is_none")]
    pub actual_size: Option<u64>,
    /// Format-specific data.
    #[serde(rename = "format-specific", skip_serializing_if = "Option::is_none")]
    pub format_specific: Option<FormatSpecific>,
    /// Backing file, resolved.
    #[serde(
        rename = "full-backing-filename",
        skip_serializing_if = "Option::is_none"
    )]
    pub full_backing_filename: Option<String>,
    /// Backing file name as recorded.
    #[serde(rename = "backing-filename", skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    /// Guest data is encrypted (shown only then, as qemu-img).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// Dirty flag.
    #[serde(rename = "dirty-flag")]
    pub dirty_flag: bool,
}

impl ImageInfo {
    /// Info for the protocol layer of an image: `protocol` is `file` for a host file,
    /// `rbd` for an RBD image ([`crate::storage::Storage::protocol`]).
    pub fn file_node(filename: &str, len: u64, actual: Option<u64>, protocol: &str) -> ImageInfo {
        ImageInfo {
            children: Vec::new(),
            // QEMU reports file lengths in whole 512-byte sectors.
            virtual_size: len.next_multiple_of(512),
            filename: filename.to_string(),
            cluster_size: None,
            format: protocol.into(),
            actual_size: actual,
            backing_filename: None,
            full_backing_filename: None,
            backing_format: None,
            snapshots: Vec::new(),
            format_specific: Some(FormatSpecific {
                kind: protocol.into(),
                data: serde_json::json!({}),
            }),
            encrypted: false,
            dirty_flag: false,
        }
    }

    /// Info for a format node over `file`.
    pub fn new(filename: &str, format: Format, virtual_size: u64, file: ImageInfo) -> ImageInfo {
        ImageInfo {
            virtual_size,
            filename: filename.to_string(),
            cluster_size: None,
            format: format.name().into(),
            actual_size: file.actual_size,
            backing_filename: None,
            full_backing_filename: None,
            backing_format: None,
            snapshots: Vec::new(),
            format_specific: None,
            encrypted: false,
            dirty_flag: false,
            children: vec![Child {
                name: "file".into(),
                info: Box::new(file),
            }],
        }
    }

    /// Info for a format node over `file`, with what its driver read (`f`).
    pub fn from_format(
        filename: &str,
        format: Format,
        f: crate::driver::FormatInfo,
        file: ImageInfo,
    ) -> ImageInfo {
        let mut info = ImageInfo::new(filename, format, f.virtual_size, file);
        info.cluster_size = f.cluster_size;
        info.dirty_flag = f.dirty;
        info.encrypted = f.encrypted;
        if let Some(b) = f.backing {
            info.backing_filename = Some(b.name);
            info.backing_format = b.format;
        }
        info.snapshots = f.snapshots;
        info.format_specific = f.format_specific.map(|data| FormatSpecific {
            kind: format.name().into(),
            data,
        });
        info
    }

    /// JSON as qemu-img prints it (4-space indentation).
    pub fn to_json(&self) -> String {
        to_qemu_json(self)
    }

    /// The human-readable form qemu-img prints.
    pub fn to_human(&self) -> String {
        use crate::size::human_size;
        let mut s = String::new();
        s += &format!("image: {}\n", self.filename);
        s += &format!("file format: {}\n", self.format);
        s += &format!(
            "virtual size: {} ({} bytes)\n",
            human_size(self.virtual_size),
            self.virtual_size
        );
        s += &format!("disk size: {}\n", disk_size_text(self.actual_size));
        if self.encrypted {
            s += "encrypted: yes\n";
        }
        if let Some(cs) = self.cluster_size {
            s += &format!("cluster_size: {cs}\n");
        }
        if self.dirty_flag {
            s += "cleanly shut down: no\n";
        }
        if let Some(b) = &self.backing_filename {
            s += &format!("backing file: {b}");
            if let Some(full) = &self.full_backing_filename {
                if full != b {
                    s += &format!(" (actual path: {full})");
                }
            }
            s += "\n";
        }
        if let Some(f) = &self.backing_format {
            s += &format!("backing file format: {f}\n");
        }
        if !self.snapshots.is_empty() {
            s += "Snapshot list:\n";
            s += &crate::ops::info::snapshot_table_text(&self.snapshots);
        }
        if let Some(fs) = &self.format_specific {
            if let Some(obj) = fs.data.as_object() {
                if !obj.is_empty() {
                    s += "Format specific information:\n";
                    for (k, v) in obj {
                        human_value(&mut s, 1, k, v);
                    }
                }
            }
        }
        for c in &self.children {
            s += &format!("Child node '/{}':\n", c.name);
            s += &format!("    filename: {}\n", c.info.filename);
            s += &format!("    protocol type: {}\n", c.info.format);
            s += &format!(
                "    file length: {} ({} bytes)\n",
                human_size(c.info.virtual_size),
                c.info.virtual_size
            );
            s += &format!("    disk size: {}\n", disk_size_text(c.info.actual_size));
            if let Some(cs) = c.info.cluster_size {
                s += &format!("    cluster_size: {cs}\n");
            }
        }
        s
    }
}

/// `disk size:` as qemu-img prints it: a size, or `unavailable` when unknown.
fn disk_size_text(actual: Option<u64>) -> String {
    match actual {
        Some(n) => crate::size::human_size(n),
        None => "unavailable".into(),
    }
}

/// The host bytes `storage` uses; `None` when it cannot say (an RBD image).
fn host_usage(storage: &dyn crate::storage::Storage) -> std::io::Result<Option<u64>> {
    match storage.allocated_bytes() {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => Ok(None),
        Err(e) => Err(e),
    }
}

fn human_value(s: &mut String, depth: usize, k: &str, v: &serde_json::Value) {
    let pad = "    ".repeat(depth);
    let key = k.replace('-', " ");
    match v {
        serde_json::Value::Array(items) => {
            *s += &format!("{pad}{key}:\n");
            for (i, item) in items.iter().enumerate() {
                match item {
                    serde_json::Value::Object(o) => {
                        *s += &format!("{pad}    [{i}]:\n");
                        for (k2, v2) in o {
                            human_value(s, depth + 2, k2, v2);
                        }
                    }
                    serde_json::Value::String(t) => *s += &format!("{pad}    [{i}]: {t}\n"),
                    other => *s += &format!("{pad}    [{i}]: {other}\n"),
                }
            }
        }
        serde_json::Value::Object(o) => {
            *s += &format!("{pad}{key}:\n");
            for (k2, v2) in o {
                human_value(s, depth + 1, k2, v2);
            }
        }
        serde_json::Value::String(t) => *s += &format!("{pad}{key}: {t}\n"),
        other => *s += &format!("{pad}{key}: {other}\n"),
    }
}

/// The snapshot list as qemu-img prints it (header line and one line per snapshot).
pub fn snapshot_table_text(snaps: &[serde_json::Value]) -> String {
    let mut s = format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
        "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
    );
    for v in snaps {
        let g = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        let date = crate::size::format_date(g("date-sec") as i64);
        let secs = g("vm-clock-sec");
        let clock = format!(
            "{:04}:{:02}:{:02}.{:03}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            g("vm-clock-nsec") / 1_000_000
        );
        let icount = v
            .get("icount")
            .and_then(|x| x.as_u64())
            .map_or_else(|| "--".to_string(), |i| i.to_string());
        s += &format!(
            "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
            v.get("id").and_then(|x| x.as_str()).unwrap_or(""),
            v.get("name").and_then(|x| x.as_str()).unwrap_or(""),
            crate::size::human_size(g("vm-state-size")),
            date,
            clock,
            icount
        );
    }
    s
}

/// Serialise with qemu-img's 4-space indentation.
pub fn to_qemu_json<T: Serialize>(v: &T) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    if v.serialize(&mut ser).is_err() {
        return "{}".into();
    }
    let text = String::from_utf8(out).unwrap_or_default();
    // qemu-img prints empty arrays and objects over two lines.
    let mut fixed = String::with_capacity(text.len());
    for line in text.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let (body, comma) = match line.strip_suffix(',') {
            Some(b) => (b, ","),
            None => (line, ""),
        };
        if let Some(head) = body.strip_suffix("[]") {
            fixed += &format!("{head}[\n{indent}]{comma}\n");
        } else if let Some(head) = body.strip_suffix("{}") {
            fixed += &format!("{head}{{\n{indent}}}{comma}\n");
        } else {
            fixed += line;
            fixed += "\n";
        }
    }
    fixed.pop();
    fixed
}

/// Info for the image at `path` (its own layer only; backing files are named, not opened).
pub fn image_info(path: &std::path::Path, format: Option<Format>) -> crate::Result<ImageInfo> {
    image_info_shared(path, format, false)
}

/// [`image_info`], optionally without locking out writers (qemu-img info `-U`).
pub fn image_info_shared(
    path: &std::path::Path,
    format: Option<Format>,
    force_share: bool,
) -> crate::Result<ImageInfo> {
    use crate::error::Error;
    let ns = crate::storage::HostFiles;
    let name = path.display().to_string();
    // A look at the file (probe, length) locks out no one; the format's own info below
    // takes the locks its metadata needs.
    let storage = crate::driver::open_read_only(&ns, path, true)?;
    let format = match format {
        Some(f) => f,
        None => crate::image::probe(&*storage)?,
    };
    let io = |e| Error::io("reading the file size", e);
    let mut file = ImageInfo::file_node(
        &name,
        storage.len().map_err(io)?,
        host_usage(&*storage).map_err(io)?,
        storage.protocol(),
    );
    file.cluster_size = storage.cluster_size();
    drop(storage);
    let f = (format.driver().info)(&ns, path, force_share)?;
    let mut info = ImageInfo::from_format(&name, format, f, file.clone());
    if format == Format::RAW {
        // As QEMU's raw format: the protocol's cluster size (an RBD object) shows through.
        info.cluster_size = info.cluster_size.or(file.cluster_size);
    }
    add_extent_children(&ns, path, &mut info, force_share)?;
    if let Some(b) = &info.backing_filename {
        info.full_backing_filename = Some(crate::chain::resolve(path, b)?.display().to_string());
    }
    Ok(info)
}

/// Info for every image of the chain of the image at `path` (format `format`, probed when
/// `None`), top first, opened read-only (`force_share`: without locking out writers).
pub fn chain_info(
    path: &std::path::Path,
    format: Option<Format>,
    force_share: bool,
) -> crate::Result<Vec<ImageInfo>> {
    let img = crate::image::open(
        path,
        &crate::image::ImageOptions {
            format,
            read_only: true,
            force_share,
            // As qemu-img: encrypted layers show their header without their secrets.
            metadata_only: true,
            ..Default::default()
        },
    )?;
    img.layers
        .iter()
        .map(|layer| image_info_shared(&layer.path, Some(layer.format), force_share))
        .collect()
}

/// For an image whose extents live in other files (a multi-file VMDK), one child node per
/// such extent file, named `extents.N` after the extent's place in the descriptor and
/// listed last extent first before `file`, as qemu-img lists them; the image's
/// `actual-size` then counts every file.
fn add_extent_children(
    ns: &crate::storage::HostFiles,
    path: &std::path::Path,
    info: &mut ImageInfo,
    force_share: bool,
) -> crate::Result<()> {
    use crate::storage::Namespace;
    let extents = info
        .format_specific
        .as_ref()
        .and_then(|fs| fs.data.get("extents"))
        .and_then(|e| e.as_array())
        .cloned()
        .unwrap_or_default();
    let mut children = Vec::new();
    for (i, extent) in extents.iter().enumerate() {
        let filename = extent
            .get("filename")
            .and_then(|f| f.as_str())
            .unwrap_or("");
        let file_path = std::path::Path::new(filename);
        if filename.is_empty() || ns.same_file(file_path, path) {
            continue;
        }
        let storage = crate::driver::open_read_only(ns, file_path, force_share)?;
        let io = |e| crate::Error::io(format!("reading the size of '{filename}'"), e);
        let node = ImageInfo::file_node(
            filename,
            storage.len().map_err(io)?,
            host_usage(&*storage).map_err(io)?,
            storage.protocol(),
        );
        info.actual_size = info.actual_size.zip(node.actual_size).map(|(a, b)| a + b);
        children.push(Child {
            name: format!("extents.{i}"),
            info: Box::new(node),
        });
    }
    children.reverse();
    children.append(&mut info.children);
    info.children = children;
    Ok(())
}

/// What `snapshot -l` prints for the image at `path`: nothing when it has no internal
/// snapshots (raw and VMDK images never have any), else qemu-img's `Snapshot list:` table.
pub fn snapshot_list_text(
    path: &std::path::Path,
    format: Option<Format>,
    force_share: bool,
) -> crate::Result<String> {
    let info = image_info_shared(path, format, force_share)?;
    if info.snapshots.is_empty() {
        return Ok(String::new());
    }
    Ok(format!(
        "Snapshot list:\n{}",
        snapshot_table_text(&info.snapshots)
    ))
}
