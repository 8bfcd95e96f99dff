//! `vdisk dump [--json] [--header] [--l1] [--l2] [--refcounts] [--snapshots] [--bitmaps] [--map]
//! [--clusters] FILE`: every on-disk structure with its host offset and decoded values.

use crate::flags::{ForceShareFlag, FormatFlag};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::dump::{self, DumpOptions};
use vdisk::Result;

/// Arguments of `dump`.
#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Header, header extensions and feature names (VMDK: descriptor and sparse header).
    #[arg(long)]
    header: bool,
    /// The L1 table (VMDK: grain directory).
    #[arg(long)]
    l1: bool,
    /// Every L2 table (VMDK: grain tables).
    #[arg(long)]
    l2: bool,
    /// The refcount table and refcount blocks.
    #[arg(long)]
    refcounts: bool,
    /// The snapshot table with each snapshot's L1 table.
    #[arg(long)]
    snapshots: bool,
    /// The guest-to-host map.
    #[arg(long)]
    map: bool,
    /// What each host cluster holds.
    #[arg(long)]
    clusters: bool,
    /// The persistent bitmaps: directory entries and bitmap tables (qcow2).
    #[arg(long)]
    bitmaps: bool,
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    force_share: ForceShareFlag,
    /// Image file.
    file: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let opts = DumpOptions {
        header: a.header,
        l1: a.l1,
        l2: a.l2,
        refcounts: a.refcounts,
        snapshots: a.snapshots,
        map: a.map,
        clusters: a.clusters,
        bitmaps: a.bitmaps,
    };
    let doc = dump::document(&a.file, a.format.get()?, opts, a.force_share.on())?;
    let mut out = std::io::stdout().lock();
    if a.json {
        dump::write_json(&doc, &mut out)?;
    } else {
        dump::write_human(&doc, &mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}
