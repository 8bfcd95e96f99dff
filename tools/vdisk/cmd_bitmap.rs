//! `vdisk bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
//! [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY] [-f FMT] FILE BITMAP`: change a
//! persistent dirty bitmap of a qcow2 image, as qemu-img bitmap does. The operations run
//! in the order given.

use crate::flags::{FormatFlag, ImageSpecFlags};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk::ops::bitmap::{self, Action, Request};
use vdisk::Result;

/// Arguments of `bitmap`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    format: FormatFlag,
    #[command(flatten)]
    spec: ImageSpecFlags,
    /// Create an enabled bitmap.
    #[arg(long, action = clap::ArgAction::Count)]
    add: u8,
    /// Delete the bitmap.
    #[arg(long, action = clap::ArgAction::Count)]
    remove: u8,
    /// Mark every bit clean.
    #[arg(long, action = clap::ArgAction::Count)]
    clear: u8,
    /// Start tracking guest writes.
    #[arg(long, action = clap::ArgAction::Count)]
    enable: u8,
    /// Stop tracking guest writes.
    #[arg(long, action = clap::ArgAction::Count)]
    disable: u8,
    /// Set the bits that bitmap SOURCE has set (of this image, or of -b SOURCE_FILE).
    #[arg(long, value_name = "SOURCE")]
    merge: Vec<String>,
    /// The image holding the --merge source.
    #[arg(short = 'b', value_name = "SOURCE_FILE")]
    source_file: Option<PathBuf>,
    /// Format of SOURCE_FILE.
    #[arg(short = 'F', value_name = "SOURCE_FMT")]
    source_format: Option<String>,
    /// Bytes per bit of a new bitmap (k, M suffixes); default: the cluster size, from 4 KiB
    /// to 64 KiB.
    #[arg(short = 'g', value_name = "GRANULARITY")]
    granularity: Option<String>,
    /// Image file.
    file: PathBuf,
    /// Bitmap name.
    bitmap: String,
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    a.spec.resolve_in_place(&mut a.file, &mut a.format)?;
    let granularity = a
        .granularity
        .as_deref()
        .map(|g| vdisk::size::parse_size_arg(g, "granularity", 0, i64::MAX as u64))
        .transpose()?;
    let source_format = a.source_format.as_deref().map(str::parse).transpose()?;
    let req = Request {
        actions: actions_in_order(&a, std::env::args_os().skip(1)),
        granularity,
        source_file: a.source_file.as_deref(),
        source_format,
    };
    bitmap::run(&a.file, a.format.get_for(&a.file)?, &a.bitmap, &req)?;
    Ok(ExitCode::SUCCESS)
}

/// The operations in command-line order. clap's derived arguments keep each flag's values
/// but not the order between different flags, so the order is read from the words of the
/// command line, and checked against what clap counted.
fn actions_in_order(a: &Args, argv: impl Iterator<Item = OsString>) -> Vec<Action> {
    let words: Vec<String> = argv.map(|w| w.to_string_lossy().into_owned()).collect();
    let mut merges = a.merge.iter();
    let mut out = Vec::new();
    for w in words.iter().take_while(|w| *w != "--") {
        let act = match w.as_str() {
            "--add" => Action::Add,
            "--remove" => Action::Remove,
            "--clear" => Action::Clear,
            "--enable" => Action::Enable,
            "--disable" => Action::Disable,
            m if m == "--merge" || m.starts_with("--merge=") => match merges.next() {
                Some(src) => Action::Merge(src.clone()),
                None => continue,
            },
            _ => continue,
        };
        out.push(act);
    }
    let counted = usize::from(a.add)
        + usize::from(a.remove)
        + usize::from(a.clear)
        + usize::from(a.enable)
        + usize::from(a.disable)
        + a.merge.len();
    if out.len() != counted {
        // A word clap read as a value (a file named "--add"?): fall back to a fixed order.
        out = fixed_order(a);
    }
    out
}

fn fixed_order(a: &Args) -> Vec<Action> {
    let mut out = Vec::new();
    out.extend(std::iter::repeat_n(Action::Add, a.add.into()));
    out.extend(a.merge.iter().cloned().map(Action::Merge));
    out.extend(std::iter::repeat_n(Action::Clear, a.clear.into()));
    out.extend(std::iter::repeat_n(Action::Enable, a.enable.into()));
    out.extend(std::iter::repeat_n(Action::Disable, a.disable.into()));
    out.extend(std::iter::repeat_n(Action::Remove, a.remove.into()));
    out
}
