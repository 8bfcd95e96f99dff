//! `vdisk snapshot [-l | -c NAME | -a ID_OR_NAME | -d NAME] FILE`, and the retention policy
//! `vdisk snapshot --prune --keep-last N [--keep-within DURATION] [--dry-run] FILE`.

use crate::flags::{ForceShareFlag, FormatFlag, ImageSpecFlags, QuietFlag};
use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::{self, Format};
use vdisk::qcow2::driver::SharedQcow2;
use vdisk::qcow2::SnapshotTime;
use vdisk::{Error, Result};

/// Arguments of `snapshot`.
#[derive(clap::Args)]
pub struct Args {
    // Must be qcow2 when given.
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    spec: ImageSpecFlags,
    /// List snapshots.
    #[arg(short = 'l', long = "list", group = "action")]
    list: bool,
    /// Create a snapshot.
    #[arg(short = 'c', long = "create", group = "action", value_name = "NAME")]
    create: Option<String>,
    /// Apply (roll back to) a snapshot, found by ID or else by name.
    #[arg(
        short = 'a',
        long = "apply",
        group = "action",
        value_name = "ID_OR_NAME"
    )]
    apply: Option<String>,
    /// Delete a snapshot, found by name (the first of that name).
    #[arg(short = 'd', long = "delete", group = "action", value_name = "NAME")]
    delete: Option<String>,
    /// Delete the snapshots outside the retention policy, oldest first.
    #[arg(long, group = "action")]
    prune: bool,
    /// Keep the N newest snapshots (with --prune).
    #[arg(long, value_name = "N")]
    keep_last: Option<usize>,
    /// Also keep snapshots younger than DURATION, e.g. 7d, 12h, 30m, 2w (with --prune).
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<String>,
    /// Print what --prune would delete without deleting.
    #[arg(long)]
    dry_run: bool,
    // Only with -l (or --prune --dry-run).
    #[command(flatten)]
    force_share: ForceShareFlag,
    #[command(flatten)]
    quiet: QuietFlag,
    /// Image file.
    file: PathBuf,
}

/// Parse `7d`, `12h`, `30m`, `45s`, `2w` (or plain seconds).
pub fn parse_duration(s: &str) -> Result<u64> {
    let bad = || {
        Error::invalid(format!(
            "invalid duration '{s}' (expected e.g. 30m, 12h, 7d, 2w)"
        ))
    };
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        'w' => 7 * 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

fn open(a: &Args, read_only: bool) -> Result<SharedQcow2> {
    if let Some(f) = a.format.get()? {
        if f != Format::QCOW2 {
            return Err(Error::unsupported(format!(
                "snapshots on {f} images (only qcow2 has internal snapshots)"
            )));
        }
    }
    image::open_qcow2_alone(
        &a.file,
        read_only,
        a.force_share.on() && read_only,
        "only qcow2 has internal snapshots",
    )
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    a.spec.resolve_in_place(&mut a.file, &mut a.format)?;
    let _ = a.quiet.on();
    let list =
        a.list || (a.create.is_none() && a.apply.is_none() && a.delete.is_none() && !a.prune);
    if a.force_share.on() && !list && !(a.prune && a.dry_run) {
        return Err(Error::invalid(
            "-U/--force-share opens the image read-only: it can only be used with -l",
        ));
    }
    if list {
        let format = a.format.get()?;
        out!(
            "{}",
            vdisk::ops::info::snapshot_list_text(&a.file, format, a.force_share.on())?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if a.prune {
        return prune(&a);
    }
    let mut img = open(&a, false)?;
    // The lookups and messages are qemu-img's: -a takes an ID or else a name, -d a name only
    // (never an ID); -c keeps at most 255 bytes of the name (qemu-img's name buffer).
    if let Some(name) = &a.create {
        let name = truncate_name(name);
        img.snapshot_create(name, SnapshotTime::now())
            .map_err(|e| Error::invalid(format!("Could not create snapshot '{name}': {e}")))?;
    } else if let Some(name) = &a.apply {
        if img.find_snapshot(name).is_none() {
            return Err(Error::invalid(format!(
                "Could not apply snapshot '{name}': Failed to load snapshot: No such file or directory"
            )));
        }
        img.snapshot_apply(name)
            .map_err(|e| Error::invalid(format!("Could not apply snapshot '{name}': {e}")))?;
    } else if let Some(name) = &a.delete {
        if img.find_snapshot_by_name(name).is_none() {
            return Err(Error::invalid(format!(
                "Could not delete snapshot '{name}': snapshot not found"
            )));
        }
        img.snapshot_delete(&[name.as_str()])
            .map_err(|e| Error::invalid(format!("Could not delete snapshot '{name}': {e}")))?;
    }
    vdisk::BlockDevice::close(&mut img)?;
    Ok(ExitCode::SUCCESS)
}

/// The first 255 bytes of `name` (cut at a character boundary), as qemu-img stores it.
fn truncate_name(name: &str) -> &str {
    let mut end = name.len().min(255);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn prune(a: &Args) -> Result<ExitCode> {
    let keep_last = a
        .keep_last
        .ok_or_else(|| Error::invalid("--prune needs --keep-last N"))?;
    let within = a.keep_within.as_deref().map(parse_duration).transpose()?;
    let mut img = open(a, a.dry_run)?;
    let now = SnapshotTime::now().sec as u64;
    // Newest first by date (then by table order).
    let mut order: Vec<usize> = (0..img.snapshots().len()).collect();
    order.sort_by_key(|&i| {
        let s = &img.snapshots()[i];
        std::cmp::Reverse((s.date_sec, s.date_nsec, i))
    });
    let mut doomed: Vec<usize> = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        let s = &img.snapshots()[i];
        let young = within.is_some_and(|w| now.saturating_sub(u64::from(s.date_sec)) <= w);
        if rank >= keep_last && !young {
            doomed.push(i);
        }
    }
    doomed.reverse(); // oldest first
    let ids: Vec<String> = doomed
        .iter()
        .map(|&i| img.snapshots()[i].id.clone())
        .collect();
    let names: Vec<String> = doomed
        .iter()
        .map(|&i| img.snapshots()[i].name.clone())
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let gain = if refs.is_empty() {
        0
    } else {
        img.snapshot_delete_gain(&refs)?
    };
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    for (id, name) in ids.iter().zip(&names) {
        outln!("{verb} snapshot {id} ({name})")?;
    }
    if !refs.is_empty() && !a.dry_run {
        img.snapshot_delete_by_id(&refs)?;
        vdisk::BlockDevice::close(&mut img)?;
    }
    outln!(
        "{} {} snapshot(s), {} kept; space given back: {} ({} bytes)",
        verb,
        refs.len(),
        img.snapshots().len() - if a.dry_run { refs.len() } else { 0 },
        vdisk::size::human_size(gain),
        gain
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("7d").unwrap(), 604800);
        assert_eq!(parse_duration("2w").unwrap(), 1209600);
        assert!(parse_duration("7y").is_err());
        assert!(parse_duration("").is_err());
    }
}
