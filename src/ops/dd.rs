//! `dd`: copy an image's guest bytes into a new image, in blocks, as qemu-img dd does:
//! operands `if=`, `of=`, `bs=` (default 512), `count=` and `skip=` (in blocks).
//!
//! The output image is created with the size of what is copied. As in qemu-img, `count`
//! limits the input to its first `count` blocks *before* `skip` blocks are skipped, so
//! `bs=64k skip=3 count=2` copies nothing; skipping to or past the end of the input makes an
//! empty output, with a warning (not an error). Every block is written, zeros included,
//! so the output is as allocated as qemu-img's.

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::image::{self, Format, ImageOptions, NewFiles};
use crate::size::{parse_int_arg, parse_size_arg};
use std::path::Path;

/// The default block size (`bs=`), as in dd(1).
pub const DEFAULT_BLOCK_SIZE: u64 = 512;

/// The largest block size qemu-img takes (a C `int`).
pub const MAX_BLOCK_SIZE: u64 = i32::MAX as u64;

/// The operands of one `dd` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdOperands {
    /// `if=`: the input image.
    pub input: Option<String>,
    /// `of=`: the output image to create.
    pub output: Option<String>,
    /// `bs=`: bytes per block.
    pub block_size: u64,
    /// `count=`: blocks of input to consider, from its start.
    pub count: Option<u64>,
    /// `skip=`: blocks of input to skip.
    pub skip: Option<u64>,
}

impl Default for DdOperands {
    fn default() -> Self {
        DdOperands {
            input: None,
            output: None,
            block_size: DEFAULT_BLOCK_SIZE,
            count: None,
            skip: None,
        }
    }
}

impl DdOperands {
    /// Parse `NAME=VALUE` operands in order, as qemu-img does: the last of a name wins,
    /// and the first bad operand is refused with qemu-img's message.
    pub fn parse<S: AsRef<str>>(operands: &[S]) -> Result<DdOperands> {
        let mut ops = DdOperands::default();
        for operand in operands {
            let operand = operand.as_ref();
            let (name, value) = operand
                .split_once('=')
                .ok_or_else(|| unrecognized(operand))?;
            let blocks = |what| parse_int_arg(value, what, 0, i64::MAX).map(|n| n as u64);
            match name {
                "bs" => ops.block_size = parse_size_arg(value, "bs", 1, MAX_BLOCK_SIZE)?,
                "count" => ops.count = Some(blocks("count")?),
                "skip" => ops.skip = Some(blocks("skip")?),
                "if" => ops.input = Some(value.to_string()),
                "of" => ops.output = Some(value.to_string()),
                _ => return Err(unrecognized(name)),
            }
        }
        Ok(ops)
    }

    /// The input and output names, which qemu-img requires.
    pub fn files(&self) -> Result<(&str, &str)> {
        match (&self.input, &self.output) {
            (Some(i), Some(o)) => Ok((i, o)),
            _ => Err(Error::invalid("Must specify both input and output files")),
        }
    }
}

fn unrecognized(operand: &str) -> Error {
    Error::invalid(format!("unrecognized operand {operand}"))
}

/// What a `dd` copies from an input of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DdPlan {
    /// Guest offset in the input where copying starts.
    pub input_start: u64,
    /// Guest offset in the input where copying ends (exclusive).
    pub input_end: u64,
    /// `skip` reaches past the end of what `count` leaves: the output is empty and qemu-img
    /// warns "cannot skip to specified offset".
    pub skip_past_end: bool,
}

impl DdPlan {
    /// The plan for `ops` over an input of `input_size` bytes (qemu-img's arithmetic).
    pub fn new(ops: &DdOperands, input_size: u64) -> DdPlan {
        let bs = u128::from(ops.block_size);
        let mut end = u128::from(input_size);
        if let Some(count) = ops.count {
            end = end.min(u128::from(count) * bs);
        }
        let skip = ops.skip.map_or(0, |s| u128::from(s) * bs);
        // Bounds: end <= input_size, so both fit in u64 on this path.
        if skip > end {
            return DdPlan {
                input_start: end as u64,
                input_end: end as u64,
                skip_past_end: true,
            };
        }
        DdPlan {
            input_start: skip as u64,
            input_end: end as u64,
            skip_past_end: false,
        }
    }

    /// The size of the output image.
    pub fn output_size(&self) -> u64 {
        self.input_end - self.input_start
    }
}

/// Copy the planned range of `src` to the start of `dst` in blocks of `block_size` bytes.
pub fn copy(
    src: &mut dyn BlockDevice,
    dst: &mut dyn BlockDevice,
    plan: &DdPlan,
    block_size: u64,
) -> Result<()> {
    let len = block_size.min(plan.output_size());
    let mut buf = Vec::new();
    let len_usize = usize::try_from(len).map_err(|_| Error::invalid("Out of memory"))?;
    buf.try_reserve_exact(len_usize)
        .map_err(|_| Error::invalid("Out of memory"))?;
    buf.resize(len_usize, 0);
    let mut pos = plan.input_start;
    while pos < plan.input_end {
        let n = (plan.input_end - pos).min(block_size) as usize;
        let block = &mut buf[..n];
        src.read_at(block, pos).map_err(|e| {
            Error::invalid(format!("error while reading from input image file: {e}"))
        })?;
        dst.write_at(block, pos - plan.input_start).map_err(|e| {
            Error::invalid(format!("error while writing to output image file: {e}"))
        })?;
        pos += n as u64;
    }
    Ok(())
}

/// How `dd` opens and creates its images, as named on the command line (the names are
/// checked where qemu-img checks them: after the operands, the input's once it is opened).
#[derive(Debug, Clone, Copy)]
pub struct DdFormats<'a> {
    /// The input's format (`-f`), probed when `None`.
    pub input: Option<&'a str>,
    /// The output's format (`-O`, default raw).
    pub output: &'a str,
    /// Read the input without locking out other users (`-U`).
    pub force_share: bool,
}

/// Run `dd` as qemu-img does: open the input, create the output with the size of what is
/// copied, copy. A skip past the end is reported through `warn` (qemu-img's message, as a
/// warning), and the empty output is still made. A failure removes the output it created.
pub fn dd(ops: &DdOperands, how: &DdFormats<'_>, warn: &mut dyn FnMut(&str)) -> Result<()> {
    let (input, output) = ops.files()?;
    let mut src = image::open(
        Path::new(input),
        &ImageOptions {
            format: match how.input {
                Some(name) => Some(name.parse().map_err(|_| {
                    Error::invalid(format!("Could not open '{input}': Unknown driver '{name}'"))
                })?),
                None => None,
            },
            read_only: true,
            force_share: how.force_share,
            ..Default::default()
        },
    )?;
    let format: Format = how
        .output
        .parse()
        .map_err(|_| Error::invalid("Unknown file format"))?;
    let plan = DdPlan::new(ops, src.device.virtual_size());
    let output = Path::new(output);
    let files = NewFiles::before_create(output, format, plan.output_size(), &[]);
    let mut dst = image::create(output, format, Some(plan.output_size()), &[]).map_err(|e| {
        Error::invalid(format!(
            "{}: error while creating output image: {}",
            crate::storage::display_name(output),
            super::create::qemu_words(&e)
        ))
    })?;
    if plan.skip_past_end {
        warn(&format!("{input}: cannot skip to specified offset"));
    }
    copy(src.device.as_mut(), dst.as_mut(), &plan, ops.block_size)?;
    dst.close()?;
    files.keep();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(ops: &[&str], size: u64) -> DdPlan {
        DdPlan::new(&DdOperands::parse(ops).expect("operands"), size)
    }

    #[test]
    fn count_limits_the_input_before_skip_is_applied() {
        let p = plan(&["bs=64k", "skip=3", "count=5"], 1 << 20);
        assert_eq!((p.input_start, p.input_end), (3 << 16, 5 << 16));
        let p = plan(&["bs=64k", "skip=3", "count=2"], 1 << 20);
        assert!(p.skip_past_end);
        assert_eq!(p.output_size(), 0);
    }

    #[test]
    fn skipping_exactly_to_the_end_is_an_empty_copy_without_warning() {
        let p = plan(&["skip=2048"], 1 << 20);
        assert_eq!(p.output_size(), 0);
        assert!(!p.skip_past_end);
    }

    #[test]
    fn operands_are_refused_with_qemu_img_messages() {
        let err = |ops: &[&str]| DdOperands::parse(ops).unwrap_err().to_string();
        assert_eq!(err(&["foo=1"]), "unrecognized operand foo");
        assert_eq!(err(&["x.raw"]), "unrecognized operand x.raw");
        assert_eq!(
            err(&["bs=0"]),
            "Invalid bs specified. Must be between 1 and 2147483647."
        );
        assert_eq!(err(&["count=1k"]), "Invalid count specified: '1k'.");
        assert_eq!(
            DdOperands::default().files().unwrap_err().to_string(),
            "Must specify both input and output files"
        );
    }
}
