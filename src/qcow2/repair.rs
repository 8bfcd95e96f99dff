//! Repairs for `check -r leaks|all`, and the automatic repair of an image whose dirty bit
//! is set (lazy refcounts after a crash) when it is opened for writing.
//!
//! Order of a pass (see [`check_pass`]): walk the image (`check::Scan`); with `-r all`,
//! first drop L1/L2 entries that point at impossible places and walk again; compare the
//! expected refcounts with the stored ones; then either fix mismatches in place (the
//! refcount structure is sound) or rebuild the whole refcount structure (a cluster in use
//! counted 0, or a broken refcount table entry or block); last, fix COPIED flags of the
//! active tables against the (now correct) stored refcounts.
//!
//! What repair never does, to keep guest data: drop a reference only because it lies in
//! other metadata (QEMU keeps it, and so does vdisk); rewrite bytes of a cluster that has
//! two uses (an L2 table that is also guest data); free clusters that look leaked while an
//! L1 table cannot be read (a broken snapshot entry may still use them).
//!
//! Crash safety: dropping an entry or lowering a refcount can at worst leak; a rebuilt
//! refcount structure is written to clusters that neither the metadata nor the old
//! refcount structure uses, synced, and only then does one write of the header's
//! refcount-table fields switch to it, so a power cut leaves the old or the new structure.

use super::check::{CheckReport, Repair, Scan, REFT_RESERVED_MASK};
use super::entry::{self, L2Entry, COPIED};
use super::entry::{read_refcount, write_refcount};
use super::header::{field, incompat};
use super::refcount_area::{self, TableSize, VecSpace};
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{BigEndian, ByteOrder};
use std::collections::BTreeMap;

fn wio(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io(format!("qcow2 repair: {what}"), e)
}

fn sync<S: Storage>(st: &S) -> Result<()> {
    st.flush().map_err(wio("flushing"))
}

/// Stored refcounts of the clusters the walk saw, and where they live.
struct Stored {
    values: Vec<Option<u32>>,
}

impl Stored {
    fn get<S: Storage>(&self, st: &S, scan: &Scan, c: u64) -> Result<Option<u32>> {
        if let Some(v) = self.values.get(c as usize) {
            return Ok(*v);
        }
        let rb_bits = scan.rb_bits();
        let Some(&raw) = scan.reftable.get((c >> rb_bits) as usize) else {
            return Ok(Some(0));
        };
        let off = raw & !REFT_RESERVED_MASK;
        if off == 0 {
            return Ok(Some(0));
        }
        if off % scan.cs != 0 {
            return Ok(None);
        }
        // Only the 8 bytes holding the entry are read: a hostile L2 table can ask for
        // hundreds of thousands of these, and reading whole (2 MiB) blocks made check
        // take minutes.
        let order = scan.header.refcount_order;
        let idx = (c & ((1 << rb_bits) - 1)) as usize;
        let per_word = 64usize >> order;
        let mut word = [0u8; 8];
        st.read_at(&mut word, off + (idx / per_word) as u64 * 8)
            .map_err(wio("reading a refcount block"))?;
        Ok(Some(
            read_refcount(&word, order, idx % per_word).min(u64::from(u32::MAX)) as u32,
        ))
    }
}

/// One check pass; repairs what `repair` allows. Counts in the result are what is left
/// after repairing; `*_fixed` count the repairs.
///
/// After a rebuild of the refcount structure the image is walked again from scratch, and
/// with `-r all` entries the first walk had to leave alone (inside a table that was also a
/// refcount block) are dropped then. A table that lay past the end of the file (a
/// truncated image) is counted once the rebuild has grown the file over it, which takes
/// one more rebuild; a third one means the rebuilt structure is wrong.
pub(crate) fn check_pass<S: Storage>(st: &S, repair: Repair) -> Result<CheckReport> {
    let mut before: Option<CheckReport> = None;
    for _ in 0..3 {
        let mut r = CheckReport {
            messages: before
                .as_mut()
                .map(|b| std::mem::take(&mut b.messages))
                .unwrap_or_default(),
            ..Default::default()
        };
        let mut scan = Scan::load(st)?;
        scan.walk(st, &mut r)?;
        if repair == Repair::All && !scan.bad.is_empty() {
            r = drop_bad_entries(st, &mut scan, r)?;
        }
        let stored = compare(st, &mut scan, &mut r, repair)?;
        if let Some(b) = &before {
            // Count what the rebuild and this round fixed together.
            r.corruptions_fixed +=
                b.corruptions_fixed + b.corruptions.saturating_sub(r.corruptions);
            r.leaks_fixed += b.leaks_fixed + b.leaks.saturating_sub(r.leaks);
        }
        if r.failed.is_some() {
            return Ok(r);
        }
        let Some(stored) = stored else {
            before = Some(r);
            continue;
        };
        let fix_copied = match repair {
            Repair::All => true,
            Repair::Leaks => r.check_errors == 0 && r.corruptions == 0 && r.leaks == 0,
            Repair::None => false,
        };
        check_copied(st, &scan, &stored, &mut r, fix_copied)?;
        return Ok(r);
    }
    Err(Error::invalid(
        "the rebuilt refcount structure is still broken",
    ))
}

/// Rewrite the entries `scan.bad` names, then walk again (the dropped entries no longer
/// count). Returns the new walk's report, carrying `r`'s messages and fix counts.
fn drop_bad_entries<S: Storage>(
    st: &S,
    scan: &mut Scan,
    mut r: CheckReport,
) -> Result<CheckReport> {
    let dropped = scan.bad.len() as u64;
    for (&at, &replacement) in &scan.bad {
        r.msg(format!(
            "Repairing: entry at {at:#x} replaced by {replacement:#x}"
        ));
    }
    write_entries(st, &scan.bad)?;
    sync(st)?;
    let mut again = CheckReport {
        messages: std::mem::take(&mut r.messages),
        ..Default::default()
    };
    *scan = Scan::load(st)?;
    scan.walk(st, &mut again)?;
    again.corruptions_fixed =
        r.corruptions_fixed + r.corruptions.saturating_sub(again.corruptions).max(dropped);
    again.leaks_fixed = r.leaks_fixed;
    Ok(again)
}

/// Write table entries (host offset → value), one write per run of adjacent entries.
fn write_entries<S: Storage>(st: &S, entries: &BTreeMap<u64, u64>) -> Result<()> {
    let mut run: Vec<u8> = Vec::new();
    let mut run_start = 0u64;
    for (&at, &value) in entries {
        if !run.is_empty() && run_start + run.len() as u64 != at {
            st.write_at(&run, run_start)
                .map_err(wio("rewriting bad table entries"))?;
            run.clear();
        }
        if run.is_empty() {
            run_start = at;
        }
        run.extend_from_slice(&value.to_be_bytes());
    }
    if !run.is_empty() {
        st.write_at(&run, run_start)
            .map_err(wio("rewriting bad table entries"))?;
    }
    Ok(())
}

/// Compare expected and stored refcounts; fix in place what `repair` allows, or rebuild.
/// Returns the stored refcounts as they are afterwards, or `None` after a rebuild.
fn compare<S: Storage>(
    st: &S,
    scan: &mut Scan,
    r: &mut CheckReport,
    repair: Repair,
) -> Result<Option<Stored>> {
    let n = scan.refs.len();
    let mut values = scan.stored_refcounts(st, n)?;
    let mismatches = find_mismatches(scan, &values, r);
    if repair == Repair::All && scan.blocks_outside {
        scan.rebuild = true;
    }
    // A snapshot whose L1 table cannot be read may still use what looks leaked: freeing
    // it would lose that snapshot's data for good, so leaks stay (a rebuild keeps their
    // stored counts too).
    let free_leaks = repair.leaks_ok() && scan.unreadable_l1s.is_empty();
    if repair != Repair::None && !free_leaks && mismatches.iter().any(|&(_, s, e)| s > e) {
        r.msg(format!(
            "Leaked clusters are kept: {} cannot be read and may still use them",
            scan.unreadable_l1s.join(", ")
        ));
    }
    let in_place = repair != Repair::None && !scan.rebuild;
    if in_place {
        // As qemu-img: every mismatch is reported as found, then again as repaired.
        for &(i, s, e) in &mismatches {
            let tag = if s < e { "ERROR" } else { "Leaked" };
            r.msg(format!("{tag} cluster {i} refcount={s} reference={e}"));
        }
    }
    for &(i, s, e) in &mismatches {
        let fixable = in_place && ((s > e && free_leaks) || (s < e && repair == Repair::All));
        let tag = if fixable {
            "Repairing"
        } else if s < e {
            "ERROR"
        } else {
            "Leaked"
        };
        r.msg(format!("{tag} cluster {i} refcount={s} reference={e}"));
        match (fixable, s < e) {
            (true, true) => r.corruptions_fixed += 1,
            (true, false) => r.leaks_fixed += 1,
            (false, true) => r.corruptions += 1,
            (false, false) => r.leaks += 1,
        }
    }
    if scan.rebuild && repair == Repair::All {
        rebuild_and_report(st, scan, r, free_leaks, &mismatches)?;
        return Ok(None);
    }
    if scan.rebuild && repair != Repair::None {
        r.msg("ERROR need to rebuild refcount structures".into());
        r.check_errors += 1;
        r.failed = Some("Input/output error".into());
        return Ok(Some(Stored { values }));
    }
    if in_place {
        let fixes: Vec<(usize, u32)> = mismatches
            .iter()
            .filter(|&&(_, s, e)| (s > e && free_leaks) || (s < e && repair == Repair::All))
            .map(|&(i, _, e)| (i, e))
            .collect();
        set_refcounts(st, scan, &fixes)?;
        for (i, e) in fixes {
            values[i] = Some(e);
        }
    }
    Ok(Some(Stored { values }))
}

/// Every cluster whose stored refcount differs from the expected one, as (cluster, stored,
/// expected); a cluster in use but counted 0 asks for a rebuild. Also sets the report's
/// image end offset, and reports clusters whose refcount cannot be read.
fn find_mismatches(
    scan: &mut Scan,
    values: &[Option<u32>],
    r: &mut CheckReport,
) -> Vec<(usize, u32, u32)> {
    let mut highest = 0usize;
    let mut mismatches = Vec::new();
    let mut unreadable = 0u64;
    for (i, v) in values.iter().enumerate() {
        let Some(s) = *v else {
            unreadable += 1;
            if unreadable <= 10 {
                r.msg(format!(
                    "Can't get refcount for cluster {i}: Input/output error"
                ));
            }
            r.check_errors += 1;
            continue;
        };
        let e = scan.refs[i];
        if s > 0 || e > 0 {
            highest = i;
        }
        if s != e {
            if s == 0 {
                scan.rebuild = true;
            }
            mismatches.push((i, s, e));
        }
    }
    r.image_end_offset = (highest as u64 + 1) * scan.cs;
    mismatches
}

/// Rebuild the refcount structure (keeping leaked counts when leaks may not be freed) and
/// report, as qemu-img does, the abandoned old structure as leaks repaired at once.
fn rebuild_and_report<S: Storage>(
    st: &S,
    scan: &mut Scan,
    r: &mut CheckReport,
    free_leaks: bool,
    mismatches: &[(usize, u32, u32)],
) -> Result<()> {
    if !free_leaks {
        for &(i, s, e) in mismatches {
            if s > e {
                scan.refs[i] = s;
            }
        }
    }
    r.msg("Rebuilding refcount structure".into());
    rebuild(st, scan)?;
    let mut old = old_structure_clusters(scan);
    old.sort_unstable();
    old.dedup();
    for c in old {
        if let Some(&refs) = scan.refs.get(c as usize).filter(|&&n| n > 0) {
            let left = refs - 1;
            r.msg(format!(
                "Repairing cluster {c} refcount={refs} reference={left}"
            ));
        }
    }
    Ok(())
}

impl Repair {
    fn leaks_ok(self) -> bool {
        self != Repair::None
    }
}

/// Write new refcounts into the existing refcount blocks (which must be sound).
fn set_refcounts<S: Storage>(st: &S, scan: &Scan, fixes: &[(usize, u32)]) -> Result<()> {
    let rb_bits = scan.rb_bits();
    let order = scan.header.refcount_order;
    let mut by_block: BTreeMap<usize, Vec<(usize, u32)>> = BTreeMap::new();
    for &(c, v) in fixes {
        by_block.entry(c >> rb_bits).or_default().push((c, v));
    }
    let mut block = vec![0u8; scan.cs as usize];
    for (bi, list) in by_block {
        let off = scan.reftable[bi] & !REFT_RESERVED_MASK;
        st.read_at(&mut block, off)
            .map_err(wio("reading a refcount block"))?;
        for (c, v) in list {
            write_refcount(&mut block, order, c & ((1 << rb_bits) - 1), u64::from(v));
        }
        st.write_at(&block, off)
            .map_err(wio("writing a refcount block"))?;
    }
    sync(st)
}

/// Build a new refcount structure from the expected refcounts (laid out by the
/// refcount-area planner) and switch the header to it.
fn rebuild<S: Storage>(st: &S, scan: &Scan) -> Result<()> {
    let cb = scan.cb;
    let order = scan.header.refcount_order;
    let geo = super::Geometry::new(cb, order);
    let (refs, reserved) = rebuild_counts(scan);
    let mut space = VecSpace::new(0, refs, reserved, 0, geo);
    let plan = refcount_area::plan(&mut space, cb, 1, TableSize::Exact)?;
    let new_table = plan.table_entries(&[], cb);
    let max = geo.max_refcount();
    refcount_area::write_area(st, &plan, cb, &new_table, |bi| {
        Ok(space.block_bytes(bi, order, scan.cs, max))
    })?;
    let mut head = [0u8; field::REFCOUNT_TABLE.end];
    field::REFCOUNT_TABLE_OFFSET.put(&mut head, plan.table << cb);
    field::REFCOUNT_TABLE_CLUSTERS.put(&mut head, u64::from(plan.table_clusters as u32));
    refcount_area::switch_header(st, &head, field::REFCOUNT_TABLE)
}

/// The clusters of the refcount table and blocks the header points at: what a rebuild
/// abandons.
fn old_structure_clusters(scan: &Scan) -> Vec<u64> {
    let cb = scan.cb;
    let h = &scan.header;
    let mut old: Vec<u64> = Vec::new();
    let rt_len = scan.reftable.len() as u64 * 8;
    if rt_len > 0 {
        let first = h.refcount_table_offset >> cb;
        let last = (h.refcount_table_offset + rt_len - 1) >> cb;
        old.extend(first..=last);
    }
    for &raw in &scan.reftable {
        let off = raw & !REFT_RESERVED_MASK;
        if off != 0 && raw & REFT_RESERVED_MASK == 0 && off % scan.cs == 0 {
            old.push(off >> cb);
        }
    }
    old
}

/// The refcounts the rebuilt structure must record, and the clusters it must not be placed
/// on though they count 0: the old refcount structure (abandoned, not overwritten, so a
/// power cut before the switch leaves it intact; it ends up free in the new one) and the
/// tables the header points at, even where they lie past the end of the file.
fn rebuild_counts(scan: &Scan) -> (Vec<u64>, Vec<bool>) {
    let cs = scan.cs;
    let cb = scan.cb;
    let mut refs: Vec<u64> = scan.refs.iter().map(|&v| u64::from(v)).collect();
    let mut reserved = vec![false; refs.len()];
    let h = &scan.header;
    let old = old_structure_clusters(scan);
    let mut fixed = vec![
        (h.l1_table_offset, u64::from(h.l1_size) * 8),
        (h.snapshots_offset, scan.snapshots_size),
    ];
    for s in &scan.snapshots {
        if s.validate_l1(cs, u64::MAX).is_ok() {
            fixed.push((s.l1_table_offset, u64::from(s.l1_size) * 8));
        }
    }
    let mut keep: Vec<u64> = Vec::new();
    for (off, len) in fixed {
        if len > 0 && off <= super::limits::MAX_HOST_OFFSET {
            keep.extend((off >> cb)..=((off + len - 1) >> cb));
        }
    }
    // The new structure needs far fewer clusters than there are: nothing beyond this can
    // be chosen for it.
    let reach = refs.len() * 2 + 64;
    for &c in old.iter().chain(&keep) {
        let c = c as usize;
        if c >= reserved.len() {
            if c > reach {
                continue;
            }
            reserved.resize(c + 1, false);
            refs.resize(c + 1, 0);
        }
        reserved[c] = true;
    }
    for c in old {
        if let Some(v) = refs.get_mut(c as usize) {
            *v = v.saturating_sub(1);
        }
    }
    (refs, reserved)
}

/// Check (and with `fix`, correct) the COPIED flags of the active L1 table and its L2
/// tables against the stored refcounts.
fn check_copied<S: Storage>(
    st: &S,
    scan: &Scan,
    stored: &Stored,
    r: &mut CheckReport,
    fix: bool,
) -> Result<()> {
    let cs = scan.cs;
    let cb = scan.cb;
    let l1_off = scan.header.l1_table_offset;
    let mut wrote = false;
    for (i, &raw) in scan.l1.iter().enumerate() {
        let l2 = entry::l1_l2_offset(raw);
        if l2 == 0 {
            continue;
        }
        let Some(rc) = stored.get(st, scan, l2 >> cb)? else {
            continue;
        };
        // Bytes of a cluster that is also something else (the L1 table is guest data, ...)
        // are not rewritten: the other user would see the change.
        let sound = fix && l2 % cs == 0 && l2 < scan.file_len;
        let l1_writable = sound && !scan.contested.contains(&((l1_off + i as u64 * 8) >> cb));
        let writable = sound && !scan.contested.contains(&(l2 >> cb));
        if (rc == 1) != (raw & COPIED != 0) {
            let tag = if l1_writable { "Repairing" } else { "ERROR" };
            r.msg(format!(
                "{tag} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={raw:x} refcount={rc}"
            ));
            if l1_writable {
                let new = if rc == 1 { raw | COPIED } else { raw & !COPIED };
                let mut e = [0u8; 8];
                BigEndian::write_u64(&mut e, new);
                st.write_at(&e, l1_off + i as u64 * 8)
                    .map_err(wio("writing an L1 entry"))?;
                wrote = true;
                r.corruptions_fixed += 1;
            } else {
                r.corruptions += 1;
            }
        }
        let mut table = super::check::read_u64s(st, l2, (cs / 8) as usize, "an L2 table")?;
        let mut dirty = false;
        // Extended entries are pairs (entry, subcluster bitmap): only entries change.
        let ext = scan.extended_l2();
        let entries = table
            .iter_mut()
            .enumerate()
            .filter(|(k, _)| !scan.external_data() && (!ext || k % 2 == 0));
        for (_, e) in entries {
            let host = match L2Entry::decode(*e, cb) {
                L2Entry::Normal { host, .. }
                | L2Entry::Zero {
                    host: Some(host), ..
                } => host,
                // An extended entry's zero flag is unused: any host cluster counts.
                L2Entry::Zero { host: None, .. } | L2Entry::Unallocated
                    if ext && *e & entry::OFFSET_MASK != 0 =>
                {
                    *e & entry::OFFSET_MASK
                }
                _ => continue,
            };
            let Some(rc) = stored.get(st, scan, host >> cb)? else {
                continue;
            };
            if (rc == 1) != (*e & COPIED != 0) {
                let tag = if writable { "Repairing" } else { "ERROR" };
                r.msg(format!(
                    "{tag} OFLAG_COPIED data cluster: l2_entry={:x} refcount={rc}",
                    *e
                ));
                if writable {
                    *e = if rc == 1 { *e | COPIED } else { *e & !COPIED };
                    dirty = true;
                    r.corruptions_fixed += 1;
                } else {
                    r.corruptions += 1;
                }
            }
        }
        if dirty {
            let mut buf = vec![0u8; cs as usize];
            BigEndian::write_u64_into(&table, &mut buf);
            st.write_at(&buf, l2).map_err(wio("writing an L2 table"))?;
            wrote = true;
        }
    }
    if wrote {
        sync(st)?;
    }
    Ok(())
}

/// Clear the dirty and corrupt bits (after a repair left the image consistent).
pub(crate) fn mark_clean<S: Storage>(st: &S) -> Result<()> {
    let bits = field::INCOMPATIBLE_FEATURES;
    let mut b = [0u8; field::INCOMPATIBLE_FEATURES.len];
    st.read_at(&mut b, bits.file_offset())
        .map_err(wio("reading the feature bits"))?;
    let mut v = [0u8; field::VERSION.len];
    st.read_at(&mut v, field::VERSION.file_offset())
        .map_err(wio("reading the version"))?;
    if BigEndian::read_u32(&v) < 3 {
        return Ok(());
    }
    let f = BigEndian::read_u64(&b);
    let clean = f & !(incompat::DIRTY | incompat::CORRUPT);
    if clean != f {
        BigEndian::write_u64(&mut b, clean);
        st.write_at(&b, bits.file_offset())
            .map_err(wio("clearing the dirty and corrupt bits"))?;
        sync(st)?;
    }
    Ok(())
}

/// Before a writable open: if the dirty bit is set (and the corrupt bit is not), repair
/// the refcounts as QEMU does, and clear the bit. An image that cannot be made consistent
/// is refused.
pub(crate) fn repair_if_dirty<S: Storage>(st: &S) -> Result<()> {
    let mut head = [0u8; field::INCOMPATIBLE_FEATURES.end()];
    st.read_at(&mut head, 0)
        .map_err(wio("reading the header"))?;
    if field::MAGIC.get(&head) != u64::from(super::header::QCOW2_MAGIC)
        || field::VERSION.get(&head) < 3
    {
        return Ok(());
    }
    let f = field::INCOMPATIBLE_FEATURES.get(&head);
    if f & incompat::DIRTY == 0 || f & incompat::CORRUPT != 0 {
        return Ok(());
    }
    let report = check(st, Repair::All)?;
    // As QEMU, which checks a dirty image when it opens it for writing, say what was
    // found and repaired (on stderr, whatever the command's -q).
    for m in &report.messages {
        eprintln!("{m}");
    }
    if report.failed.is_some() || report.check_errors > 0 || report.corruptions > 0 {
        return Err(Error::corrupt(
            "qcow2 image",
            0,
            "could not repair dirty image (run 'vdisk check -r all' for details)",
        ));
    }
    Ok(())
}

/// Check the qcow2 image in `st`, repairing what `repair` allows. When something was
/// repaired the image is checked again and the report holds the second check's findings
/// with the first one's repair counts, as qemu-img reports it.
pub fn check<S: Storage>(st: &S, repair: Repair) -> Result<CheckReport> {
    let first = check_pass(st, repair)?;
    if repair == Repair::None || first.failed.is_some() {
        return Ok(first);
    }
    let out = if first.corruptions_fixed > 0 || first.leaks_fixed > 0 {
        let mut second = check_pass(st, Repair::None)?;
        second.corruptions_fixed = first.corruptions_fixed;
        second.leaks_fixed = first.leaks_fixed;
        let mut msgs = first.messages;
        msgs.append(&mut second.messages);
        second.messages = msgs;
        second
    } else {
        first
    };
    if out.check_errors == 0 && out.corruptions == 0 && out.failed.is_none() {
        mark_clean(st)?;
    }
    Ok(out)
}
