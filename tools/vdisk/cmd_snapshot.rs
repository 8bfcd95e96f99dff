//! `vdisk snapshot [-l | -c NAME | -a ID_OR_NAME | -d NAME] FILE`, and the retention policy
//! `vdisk snapshot --prune --keep-last N [--keep-within DURATION] [--dry-run] FILE`.

use crate::flags::{ForceShareFlag, FormatFlag, ImageSpecFlags, QuietFlag};
use crate::output::{out, outln};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::image::Format;
use vdisk::ops::snapshot::{self, Action, Retention};
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
    let format = a.format.get_for(&a.file)?;
    if list {
        out!(
            "{}",
            vdisk::ops::info::snapshot_list_text(&a.file, format, a.force_share.on())?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if a.prune {
        return prune(&a, format);
    }
    let action = match (&a.create, &a.apply, &a.delete) {
        (Some(name), _, _) => Action::Create(name),
        (_, Some(name), _) => Action::Apply(name),
        (_, _, Some(name)) => Action::Delete(name),
        // `list` is true when no action was given.
        (None, None, None) => return Ok(ExitCode::SUCCESS),
    };
    snapshot::change(&a.file, format, action)?;
    Ok(ExitCode::SUCCESS)
}

fn prune(a: &Args, format: Option<Format>) -> Result<ExitCode> {
    let keep_last = a
        .keep_last
        .ok_or_else(|| Error::invalid("--prune needs --keep-last N"))?;
    let policy = Retention {
        keep_last,
        keep_within: a.keep_within.as_deref().map(parse_duration).transpose()?,
    };
    let plan = snapshot::plan_prune(&a.file, format, policy, a.dry_run, a.force_share.on())?;
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    for (id, name) in &plan.doomed {
        outln!("{verb} snapshot {id} ({name})")?;
    }
    let (deleted, kept, gain) = (plan.doomed.len(), plan.kept, plan.gain);
    if !a.dry_run {
        plan.apply()?;
    }
    outln!(
        "{} {} snapshot(s), {} kept; space given back: {} ({} bytes)",
        verb,
        deleted,
        kept,
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
