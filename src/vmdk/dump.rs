//! `dump` for VMDK: the descriptor, and for each sparse extent its header, grain
//! directory (and redundant copy) and grain tables.

use super::grain_table::GrainEntry;
use super::header::SparseHeader;
use super::limits::SECTOR_SIZE;
use super::sparse::SparseExtent;
use super::{Extent, ExtentBody, Vmdk};
use crate::driver::{hex, DumpOptions};
use crate::error::Result;
use serde_json::{json, Map, Value};

fn directory(gd: &[u32]) -> Vec<Value> {
    gd.iter()
        .enumerate()
        .filter(|(_, &s)| s != 0)
        .map(|(i, &s)| json!({"index": i, "sector": s, "offset": hex(u64::from(s) * SECTOR_SIZE)}))
        .collect()
}

/// Build the dump document of an open VMDK image.
pub fn document(v: &Vmdk, opts: DumpOptions) -> Result<Value> {
    let opts = opts.or_all();
    let mut doc = Map::new();
    if opts.header {
        doc.insert(
            "descriptor".into(),
            json!({
                "create_type": v.create_type(),
                "cid": hex(u64::from(v.cid)),
                "parent_cid": hex(u64::from(v.parent_cid)),
                "text": v.descriptor_text.lines().collect::<Vec<_>>(),
            }),
        );
    }
    let mut extents = Vec::new();
    for e in &v.extents {
        extents.push(extent(e, opts)?);
    }
    doc.insert("extents".into(), Value::Array(extents));
    Ok(Value::Object(doc))
}

/// One extent: where it lies in the guest and its type; for a sparse extent, what `opts`
/// asks for of its header, grain directories and grain tables.
fn extent(e: &Extent, opts: DumpOptions) -> Result<Value> {
    let mut m = Map::new();
    m.insert("filename".into(), e.filename.clone().into());
    m.insert("guest_offset".into(), hex(e.start));
    m.insert("length".into(), e.length.into());
    let ExtentBody::Sparse(s) = &e.body else {
        m.insert(
            "type".into(),
            match &e.body {
                ExtentBody::Flat(_) => "flat",
                ExtentBody::Zero => "zero",
                _ => "stream",
            }
            .into(),
        );
        return Ok(Value::Object(m));
    };
    m.insert("type".into(), "sparse".into());
    let g = *s.geometry();
    if opts.header {
        if let Some(h) = s.header() {
            m.insert("header".into(), sparse_header(h));
        }
    }
    if opts.l1 {
        m.insert(
            "grain_directory".into(),
            json!({"offset": hex(g.gd_offset), "entries": g.gd_entries, "used": directory(s.directory())}),
        );
        if let (Some(off), Some(r)) = (g.rgd_offset, s.redundant_directory()) {
            m.insert(
                "redundant_grain_directory".into(),
                json!({"offset": hex(off), "entries": g.gd_entries, "used": directory(r)}),
            );
        }
    }
    if opts.l2 || opts.map {
        m.insert("grain_tables".into(), grain_tables(s)?);
    }
    Ok(Value::Object(m))
}

/// The fields of a sparse extent's header.
fn sparse_header(h: &SparseHeader) -> Value {
    json!({
        "offset": hex(0),
        "version": h.version,
        "flags": hex(u64::from(h.flags)),
        "capacity_sectors": h.capacity,
        "grain_sectors": h.grain_size,
        "descriptor_sector": h.descriptor_offset,
        "descriptor_sectors": h.descriptor_size,
        "gtes_per_gt": h.num_gtes_per_gt,
        "rgd_sector": h.rgd_offset,
        "gd_sector": h.gd_offset,
        "overhead_sectors": h.overhead,
        "unclean_shutdown": h.unclean_shutdown,
        "compress_algorithm": h.compress_algorithm,
    })
}

/// Every grain table the directory points at, with its non-zero entries decoded.
fn grain_tables(s: &SparseExtent) -> Result<Value> {
    let g = *s.geometry();
    let mut tables = Vec::new();
    for (i, &sector) in s.directory().iter().enumerate() {
        if sector == 0 {
            continue;
        }
        let table = s.read_table_at(sector)?;
        let entries: Vec<Value> = table
            .iter()
            .enumerate()
            .filter(|(_, &raw)| raw != 0)
            .map(|(j, &raw)| {
                let (kind, off) = match GrainEntry::from_raw(raw, g.zeroed_grain) {
                    GrainEntry::Unallocated => ("unallocated", None),
                    GrainEntry::Zero => ("zero", None),
                    GrainEntry::Allocated(o) => ("allocated", Some(o)),
                };
                let guest = (i as u64 * u64::from(g.gtes_per_gt) + j as u64) * g.grain_bytes();
                json!({"index": j, "raw": raw, "type": kind, "guest": hex(guest), "host": off.map(hex)})
            })
            .collect();
        tables.push(json!({
            "offset": hex(u64::from(sector) * SECTOR_SIZE),
            "gd_index": i,
            "entries": entries,
        }));
    }
    Ok(Value::Array(tables))
}
