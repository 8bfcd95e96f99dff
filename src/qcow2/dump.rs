//! `dump` for qcow2: header, extensions, feature names, L1 and L2 tables, refcount table
//! and blocks, snapshots, the guest-to-host map and the host-cluster usage map.
//!
//! Everything is read from the raw storage (through `check`'s loader), so damaged images
//! that cannot be opened can still be inspected.

use super::check::{self, read_u64s, ClusterUse, Scan};
use super::entry::read_refcount as get_entry;
use super::entry::{self, L2Entry, COPIED};
use super::header::{ext, field, Header};
use crate::driver::{hex, DumpOptions};
use crate::error::Result;
use crate::storage::Storage;
use serde_json::{json, Map, Value};

fn ext_name(kind: u32) -> &'static str {
    match kind {
        ext::BACKING_FORMAT => "backing format",
        ext::FEATURE_TABLE => "feature name table",
        ext::BITMAPS => "bitmaps",
        ext::CRYPTO => "full disk encryption header pointer",
        ext::DATA_FILE => "external data file",
        _ => "unknown",
    }
}

fn header_section(h: &Header) -> Value {
    let mut m = Map::new();
    m.insert("offset".into(), hex(0));
    m.insert(
        field::MAGIC.name.into(),
        hex(u64::from(crate::qcow2::header::QCOW2_MAGIC)),
    );
    m.insert(field::VERSION.name.into(), h.version.into());
    m.insert(
        field::BACKING_FILE_OFFSET.name.into(),
        hex(h.backing_file_offset),
    );
    m.insert(
        field::BACKING_FILE_SIZE.name.into(),
        h.backing_file_size.into(),
    );
    m.insert(field::CLUSTER_BITS.name.into(), h.cluster_bits.into());
    m.insert(field::SIZE.name.into(), h.size.into());
    m.insert(field::CRYPT_METHOD.name.into(), h.crypt_method.into());
    m.insert(field::L1_SIZE.name.into(), h.l1_size.into());
    m.insert(field::L1_TABLE_OFFSET.name.into(), hex(h.l1_table_offset));
    m.insert(
        field::REFCOUNT_TABLE_OFFSET.name.into(),
        hex(h.refcount_table_offset),
    );
    m.insert(
        field::REFCOUNT_TABLE_CLUSTERS.name.into(),
        h.refcount_table_clusters.into(),
    );
    m.insert(field::NB_SNAPSHOTS.name.into(), h.nb_snapshots.into());
    m.insert(field::SNAPSHOTS_OFFSET.name.into(), hex(h.snapshots_offset));
    if h.version >= 3 {
        m.insert(
            field::INCOMPATIBLE_FEATURES.name.into(),
            hex(h.incompatible_features),
        );
        m.insert(
            field::COMPATIBLE_FEATURES.name.into(),
            hex(h.compatible_features),
        );
        m.insert(
            field::AUTOCLEAR_FEATURES.name.into(),
            hex(h.autoclear_features),
        );
        m.insert(field::REFCOUNT_ORDER.name.into(), h.refcount_order.into());
        m.insert(field::HEADER_LENGTH.name.into(), h.header_length.into());
        m.insert(
            field::COMPRESSION_TYPE.name.into(),
            h.compression_type.name().into(),
        );
    }
    if let Some(b) = &h.backing_file {
        m.insert("backing_file".into(), b.clone().into());
    }
    let mut off = u64::from(h.header_length);
    let mut exts = Vec::new();
    for e in &h.extensions {
        let mut x = Map::new();
        x.insert("offset".into(), hex(off));
        x.insert("type".into(), hex(u64::from(e.kind)));
        x.insert("name".into(), ext_name(e.kind).into());
        x.insert("length".into(), e.data.len().into());
        if e.kind == ext::BACKING_FORMAT || e.kind == ext::DATA_FILE {
            x.insert(
                "value".into(),
                String::from_utf8_lossy(&e.data).into_owned().into(),
            );
        }
        exts.push(Value::Object(x));
        off += 8 + (e.data.len() as u64).next_multiple_of(8);
    }
    m.insert("extensions".into(), Value::Array(exts));
    let names: Vec<Value> = h
        .feature_names()
        .iter()
        .map(|f| {
            let kind = match f.kind {
                0 => "incompatible",
                1 => "compatible",
                2 => "autoclear",
                _ => "unknown",
            };
            json!({"type": kind, "bit": f.bit, "name": f.name})
        })
        .collect();
    m.insert("feature_names".into(), Value::Array(names));
    Value::Object(m)
}

fn l1_entries(l1: &[u64]) -> Vec<Value> {
    l1.iter()
        .enumerate()
        .filter(|(_, &raw)| raw != 0)
        .map(|(i, &raw)| {
            json!({
                "index": i,
                "raw": hex(raw),
                "l2_offset": hex(entry::l1_l2_offset(raw)),
                "copied": raw & COPIED != 0,
            })
        })
        .collect()
}

/// Decode entry `raw` (with its subcluster `bitmap` in an extended-L2 image).
fn decode_entry(raw: u64, bitmap: Option<u64>, cb: u32) -> L2Entry {
    match bitmap {
        Some(b) => super::subcluster::decode(raw, b, cb),
        None => L2Entry::decode(raw, cb),
    }
}

fn l2_entry_json(index: String, raw: u64, bitmap: Option<u64>, cb: u32) -> Value {
    let mut m = Map::new();
    m.insert("index".into(), index.into());
    m.insert("raw".into(), hex(raw));
    if let Some(b) = bitmap {
        m.insert("bitmap".into(), hex(b));
    }
    match decode_entry(raw, bitmap, cb) {
        L2Entry::Sub { host, copied, .. } => {
            m.insert("type".into(), "subclusters".into());
            if let Some(h) = host {
                m.insert("host".into(), hex(h));
            }
            m.insert("copied".into(), copied.into());
        }
        L2Entry::Unallocated => {
            m.insert("type".into(), "unallocated".into());
        }
        L2Entry::Zero { host, copied } => {
            m.insert("type".into(), "zero".into());
            if let Some(h) = host {
                m.insert("host".into(), hex(h));
            }
            m.insert("copied".into(), copied.into());
        }
        L2Entry::Normal { host, copied } => {
            m.insert("type".into(), "normal".into());
            m.insert("host".into(), hex(host));
            m.insert("copied".into(), copied.into());
        }
        L2Entry::Compressed { host, len } => {
            m.insert("type".into(), "compressed".into());
            m.insert("host".into(), hex(host));
            m.insert("length".into(), len.into());
        }
    }
    Value::Object(m)
}

/// The entries of one L2 table (the table's u64 words; pairs of entry and subcluster
/// bitmap when `extended`), with runs of unallocated entries collapsed.
fn l2_entries(words: &[u64], cb: u32, extended: bool) -> Vec<Value> {
    let stride = if extended { 2 } else { 1 };
    let n = words.len() / stride;
    let at = |i: usize| (words[i * stride], extended.then(|| words[i * stride + 1]));
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        if at(i) == (0, extended.then_some(0)) {
            let start = i;
            while i < n && at(i) == (0, extended.then_some(0)) {
                i += 1;
            }
            let idx = if i - start == 1 {
                start.to_string()
            } else {
                format!("{start}..{}", i - 1)
            };
            out.push(l2_entry_json(idx, 0, extended.then_some(0), cb));
            continue;
        }
        let (raw, bitmap) = at(i);
        out.push(l2_entry_json(i.to_string(), raw, bitmap, cb));
        i += 1;
    }
    out
}

/// Whether the image of `scan` has extended L2 entries.
fn extended(scan: &Scan) -> bool {
    scan.header.incompatible_features & super::header::incompat::EXTENDED_L2 != 0
}

fn l2_tables<S: Storage>(st: &S, scan: &Scan, l1: &[u64]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let ext = extended(scan);
    let per_l2 = scan.cs / if ext { 16 } else { 8 };
    for (i, &raw) in l1.iter().enumerate() {
        let t = entry::l1_l2_offset(raw);
        if t == 0 {
            continue;
        }
        let table = read_u64s(st, t, (scan.cs / 8) as usize, "an L2 table")?;
        out.push(json!({
            "offset": hex(t),
            "l1_index": i,
            "guest_offset": hex(i as u64 * per_l2 * scan.cs),
            "entries": l2_entries(&table, scan.cb, ext),
        }));
    }
    Ok(out)
}

fn refcount_sections<S: Storage>(st: &S, scan: &Scan) -> Result<(Value, Value)> {
    let h = &scan.header;
    let entries: Vec<Value> = scan
        .reftable
        .iter()
        .enumerate()
        .filter(|(_, &e)| e != 0)
        .map(|(i, &e)| json!({"index": i, "block_offset": hex(e)}))
        .collect();
    let table = json!({
        "offset": hex(h.refcount_table_offset),
        "clusters": h.refcount_table_clusters,
        "entries": entries,
    });
    let rb_bits = scan.rb_bits();
    let per_block = 1usize << rb_bits;
    let mut blocks = Vec::new();
    let mut buf = vec![0u8; scan.cs as usize];
    for (bi, &raw) in scan.reftable.iter().enumerate() {
        let off = raw & !check::REFT_RESERVED_MASK;
        if off == 0 || off % scan.cs != 0 {
            continue;
        }
        st.read_at(&mut buf, off)
            .map_err(|e| crate::Error::io("dump: reading a refcount block", e))?;
        let first = (bi as u64) << rb_bits;
        let mut runs = Vec::new();
        let mut k = 0;
        while k < per_block {
            let v = get_entry(&buf, h.refcount_order, k);
            let start = k;
            while k < per_block && get_entry(&buf, h.refcount_order, k) == v {
                k += 1;
            }
            if v != 0 {
                runs.push(json!({
                    "clusters": format!("{}..{}", first + start as u64, first + k as u64 - 1),
                    "refcount": v,
                }));
            }
        }
        blocks.push(json!({
            "index": bi,
            "offset": hex(off),
            "first_cluster": first,
            "runs": runs,
        }));
    }
    Ok((table, Value::Array(blocks)))
}

fn snapshots_section<S: Storage>(st: &S, scan: &Scan) -> Result<Value> {
    let mut out = Vec::new();
    let mut off = scan.header.snapshots_offset;
    for s in &scan.snapshots {
        let readable = s.validate_l1(scan.cs, scan.file_len).is_ok();
        let l1 = if readable {
            read_u64s(
                st,
                s.l1_table_offset,
                s.l1_size as usize,
                "a snapshot L1 table",
            )?
        } else {
            Vec::new()
        };
        out.push(json!({
            "offset": hex(off),
            "id": s.id,
            "name": s.name,
            "l1_table_offset": hex(s.l1_table_offset),
            "l1_size": s.l1_size,
            "date_sec": s.date_sec,
            "date_nsec": s.date_nsec,
            "vm_clock_nsec": s.vm_clock_nsec,
            "vm_state_size": s.vm_state_size(),
            "disk_size": s.disk_size(),
            "extra_data_size": s.extra.len(),
            "l1": l1_entries(&l1),
        }));
        off += s.encoded_len() as u64;
    }
    Ok(Value::Array(out))
}

/// The guest-to-host map of the active L1, as runs.
fn map_section<S: Storage>(st: &S, scan: &Scan) -> Result<Value> {
    let cs = scan.cs;
    let ext = extended(scan);
    let per_l2 = cs / if ext { 16 } else { 8 };
    let size = scan.header.size;
    let clusters = size.div_ceil(cs);
    let mut runs: Vec<(u64, u64, &'static str, Option<u64>)> = Vec::new();
    let mut push = |g: u64, kind: &'static str, host: Option<u64>| {
        if let Some(last) = runs.last_mut() {
            let contiguous = match (last.3, host) {
                (Some(a), Some(b)) => kind != "compressed" && a + last.1 * cs == b,
                (None, None) => true,
                _ => false,
            };
            if last.2 == kind && contiguous && last.0 + last.1 == g {
                last.1 += 1;
                return;
            }
        }
        runs.push((g, 1, kind, host));
    };
    let mut gc = 0;
    while gc < clusters {
        let l1_index = gc / per_l2;
        let raw = scan.l1.get(l1_index as usize).copied().unwrap_or(0);
        let t = entry::l1_l2_offset(raw);
        let end = ((l1_index + 1) * per_l2).min(clusters);
        if t == 0 {
            for g in gc..end {
                push(g, "unallocated", None);
            }
            gc = end;
            continue;
        }
        let table = read_u64s(st, t, (cs / 8) as usize, "an L2 table")?;
        for g in gc..end {
            let k = (g % per_l2) as usize;
            let e = match ext {
                true => decode_entry(table[2 * k], Some(table[2 * k + 1]), scan.cb),
                false => L2Entry::decode(table[k], scan.cb),
            };
            match e {
                L2Entry::Sub { host, .. } => push(g, "subclusters", host),
                L2Entry::Unallocated => push(g, "unallocated", None),
                L2Entry::Zero { host, .. } => push(g, "zero", host),
                L2Entry::Normal { host, .. } => push(g, "data", Some(host)),
                L2Entry::Compressed { host, .. } => push(g, "compressed", Some(host)),
            }
        }
        gc = end;
    }
    Ok(Value::Array(
        runs.into_iter()
            .map(|(g, n, kind, host)| {
                let mut m = Map::new();
                m.insert("guest".into(), hex(g * cs));
                m.insert("length".into(), (n * cs).min(size - g * cs).into());
                m.insert("type".into(), kind.into());
                if let Some(h) = host {
                    m.insert("host".into(), hex(h));
                }
                Value::Object(m)
            })
            .collect(),
    ))
}

fn clusters_section<S: Storage>(st: &S, cs: u64) -> Result<Value> {
    let usage = check::cluster_usage(st)?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < usage.len() {
        let u = usage[i];
        let start = i;
        while i < usage.len() && usage[i] == u {
            i += 1;
        }
        out.push(json!({
            "host": hex(start as u64 * cs),
            "clusters": i - start,
            "use": u.name(),
        }));
    }
    let _ = ClusterUse::Free;
    Ok(Value::Array(out))
}

/// The bitmap directory and each bitmap's table (as runs of entries of one kind), or the
/// error that makes them unreadable.
fn bitmaps_section<S: Storage>(st: &S, scan: &Scan) -> Value {
    let dir = match super::bitmap::read_directory(st, &scan.header, scan.file_len) {
        Ok(d) => d,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    let x = super::bitmap::directory::read_ext(&scan.header)
        .ok()
        .flatten();
    let entries: Vec<Value> = dir
        .iter()
        .map(|e| {
            let table = read_u64s(st, e.table_offset, e.table_size as usize, "a bitmap table");
            json!({
                "name": e.name,
                "flags": e.flag_names(),
                "granularity": 1u64 << e.granularity_bits,
                "table_offset": hex(e.table_offset),
                "table_size": e.table_size,
                "table": match table {
                    Ok(t) => Value::Array(bitmap_table_runs(&t)),
                    Err(err) => json!({ "error": err.to_string() }),
                },
            })
        })
        .collect();
    json!({
        "directory_offset": hex(x.map_or(0, |x| x.dir_offset)),
        "directory_size": x.map_or(0, |x| x.dir_size),
        "entries": entries,
    })
}

/// A bitmap table as runs: clean (0), all dirty (1), or data clusters (one entry each).
fn bitmap_table_runs(table: &[u64]) -> Vec<Value> {
    let kind = |t: u64| match t {
        0 => "clean",
        1 => "dirty",
        _ => "data",
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < table.len() {
        let k = kind(table[i]);
        let start = i;
        i += 1;
        if k == "data" {
            out.push(json!({"index": start, "type": k, "host": hex(table[start] & !0x1ff)}));
            continue;
        }
        while i < table.len() && kind(table[i]) == k {
            i += 1;
        }
        out.push(json!({"index": format!("{start}..{}", i - 1), "type": k}));
    }
    out
}

/// Build the dump document of the qcow2 image in `st`.
pub fn document<S: Storage>(st: &S, opts: DumpOptions) -> Result<Value> {
    let opts = opts.or_all();
    let scan = Scan::load(st)?;
    let mut doc = Map::new();
    if opts.header {
        doc.insert("header".into(), header_section(&scan.header));
    }
    if opts.l1 {
        doc.insert(
            "l1_table".into(),
            json!({
                "offset": hex(scan.header.l1_table_offset),
                "size": scan.header.l1_size,
                "entries": l1_entries(&scan.l1),
            }),
        );
    }
    if opts.l2 {
        doc.insert(
            "l2_tables".into(),
            Value::Array(l2_tables(st, &scan, &scan.l1)?),
        );
    }
    if opts.refcounts {
        let (table, blocks) = refcount_sections(st, &scan)?;
        doc.insert("refcount_table".into(), table);
        doc.insert("refcount_blocks".into(), blocks);
    }
    if opts.snapshots {
        doc.insert("snapshots".into(), snapshots_section(st, &scan)?);
    }
    if opts.map {
        doc.insert("map".into(), map_section(st, &scan)?);
    }
    if opts.clusters {
        doc.insert("clusters".into(), clusters_section(st, scan.cs)?);
    }
    if opts.bitmaps && super::bitmap::has_persistent_bitmaps(&scan.header) {
        doc.insert("bitmaps".into(), bitmaps_section(st, &scan));
    }
    Ok(Value::Object(doc))
}
