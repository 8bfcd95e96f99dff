//! The flags most subcommands share, each defined once with one help text: a subcommand
//! takes a group with `#[command(flatten)]`, so `-f`, `-U`, `-o`, `--output`, `-q`, `-p`
//! and `-t` are spelled the same everywhere (as in qemu-img), as are `--object` and
//! `--image-opts` ([`ImageSpecFlags`]).
//!
//! A subcommand whose flag has the same letter but another meaning or long name in
//! qemu-img (convert's `-f/--source-format`, compare's `-f/--a-format`, ...) declares that
//! flag itself, with a comment saying why.

use std::path::{Path, PathBuf};
use vdisk::image::opts::{ImageSpec, Objects};
use vdisk::image::{self, Format};
use vdisk::{Error, Result};

/// `-f/--format FMT`: the image format, probed from the file when absent.
#[derive(clap::Args)]
pub struct FormatFlag {
    /// Image format (raw, qcow2, vmdk); probed from the file when absent.
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    format: Option<String>,
}

impl FormatFlag {
    /// Replace the format given (after `--image-opts` named one).
    pub fn set(&mut self, format: Option<Format>) {
        self.format = format.map(|f| f.name().to_string());
    }

    /// The format given, if any; an unknown name is an error.
    pub fn get(&self) -> Result<Option<Format>> {
        self.format.as_deref().map(str::parse).transpose()
    }

    /// [`get`](Self::get) for a command opening `file`: an unknown name reads as qemu-img
    /// words it (`Could not open 'FILE': Unknown driver 'NAME'`).
    pub fn get_for(&self, file: &Path) -> Result<Option<Format>> {
        self.get().map_err(|_| {
            Error::invalid(format!(
                "Could not open '{}': Unknown driver '{}'",
                file.display(),
                self.format.as_deref().unwrap_or_default()
            ))
        })
    }

    /// The name as given on the command line.
    pub fn name(&self) -> Option<&str> {
        self.format.as_deref()
    }
}

/// `-U/--force-share`: open read-only without taking qemu's write-sharing locks.
#[derive(clap::Args)]
pub struct ForceShareFlag {
    /// Read-only, without locking out other users of the image (as qemu-img -U).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
}

impl ForceShareFlag {
    /// Whether `-U` was given.
    pub fn on(&self) -> bool {
        self.force_share
    }
}

/// `-o/--options KEY=VALUE,...`, which may be repeated (the lists are joined in order).
#[derive(clap::Args)]
pub struct OptionsFlag {
    /// Format options, comma-separated key=value (as qemu-img -o); may be repeated.
    #[arg(short = 'o', long = "options", action = clap::ArgAction::Append)]
    options: Vec<String>,
}

impl OptionsFlag {
    /// Every `key=value` pair, in command-line order.
    pub fn pairs(&self) -> Result<Vec<(String, String)>> {
        image::parse_option_lists(&self.options)
    }
}

/// `--output human|json`.
#[derive(clap::Args)]
pub struct OutputFlag {
    /// Output format: human or json.
    #[arg(long = "output", default_value = "human", value_name = "human|json")]
    output: String,
}

impl OutputFlag {
    /// Whether JSON was asked for; anything but `human` or `json` is qemu-img's usage
    /// error for `command` (clap's own error would read differently).
    pub fn wants_json(&self, command: &str) -> Result<bool> {
        match self.output.as_str() {
            "json" => Ok(true),
            "human" => Ok(false),
            o => Err(usage_error(
                command,
                format!("--output expects 'human' or 'json' not '{o}'"),
            )),
        }
    }
}

/// How an empty file name fails to open, in qemu-img's words.
pub const EMPTY_FILE_NAME: &str = "Could not open '': The 'file' block driver requires a file name";

/// The exit code for an empty file name given as an operand (`vdisk info ''`), which
/// qemu-img refuses as opening it fails: `None` for other parse errors.
pub fn empty_file_name(e: &clap::error::Error) -> Option<u8> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::InvalidValue {
        return None;
    }
    match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) if v.is_empty() => {}
        _ => return None,
    }
    match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) if arg.starts_with('<') => {}
        _ => return None,
    }
    Some(match std::env::args().nth(1).as_deref() {
        Some("compare") => 2,
        _ => 1,
    })
}

/// qemu-img's words for a command line missing its file operands (`vdisk info` alone), in
/// place of clap's report; `None` for other parse errors (a missing option keeps clap's).
pub fn missing_operands(e: &clap::error::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::MissingRequiredArgument {
        return None;
    }
    let Some(ContextValue::Strings(missing)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    if !missing.iter().all(|m| m.starts_with('<')) {
        return None;
    }
    let command = std::env::args().nth(1)?;
    let (reason, hint) = match command.as_str() {
        "info" | "check" | "map" | "snapshot" | "commit" | "rebase" | "bench" => {
            ("Expecting one image file name", true)
        }
        "compare" => ("Expecting two image file names", true),
        "resize" => ("Expecting image file name and size", true),
        "bitmap" => ("Expecting filename and bitmap name", false),
        "convert" => ("Must specify image file name", false),
        _ => return None,
    };
    Some(match hint {
        true => usage_error(&command, reason).to_string(),
        false => reason.to_string(),
    })
}

/// A usage error as qemu-img reports one: the reason, then a line pointing at the
/// command's help (`Try 'vdisk map --help' for more info`).
pub fn usage_error(command: &str, reason: impl std::fmt::Display) -> Error {
    Error::invalid(format!(
        "{reason}\nTry 'vdisk {command} --help' for more info"
    ))
}

/// `-q/--quiet`.
#[derive(clap::Args)]
pub struct QuietFlag {
    /// Quiet: print no messages on success (errors still go to stderr).
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
}

impl QuietFlag {
    /// Whether `-q` was given.
    pub fn on(&self) -> bool {
        self.quiet
    }
}

/// `-p/--progress`.
#[derive(clap::Args)]
pub struct ProgressFlag {
    /// Show a progress bar (silenced by -q; accepted and ignored where there is none).
    #[arg(short = 'p', long = "progress")]
    progress: bool,
}

impl ProgressFlag {
    /// Whether `-p` was given.
    pub fn on(&self) -> bool {
        self.progress
    }
}

/// `-t/--cache MODE`: the cache mode of the image written.
#[derive(clap::Args)]
pub struct CacheFlag {
    /// Cache mode (accepted for qemu-img compatibility).
    #[arg(short = 't', long = "cache", value_name = "MODE")]
    cache: Option<String>,
}

impl CacheFlag {
    /// The mode given, if any.
    pub fn get(&self) -> Option<&str> {
        self.cache.as_deref()
    }
}

/// `--object TYPE,id=ID,...`, which may be repeated: objects (secrets) that images may
/// refer to. Parsed before any image is opened, as qemu-img does.
#[derive(clap::Args)]
pub struct ObjectFlag {
    /// Define an object, such as secret,id=ID,data=VALUE|file=PATH (may be repeated).
    #[arg(long = "object", value_name = "OBJECTDEF", action = clap::ArgAction::Append)]
    objects: Vec<String>,
}

impl ObjectFlag {
    /// The objects given, created in command-line order.
    pub fn registry(&self) -> Result<Objects> {
        let mut objects = Objects::default();
        for spec in &self.objects {
            objects.add(spec)?;
        }
        Ok(objects)
    }
}

/// `--image-opts`: the image argument is a `driver=...,file.filename=...` specification.
#[derive(clap::Args)]
pub struct ImageOptsFlag {
    /// Treat the image argument as an option string (driver=qcow2,file.filename=PATH).
    #[arg(long = "image-opts")]
    image_opts: bool,
}

impl ImageOptsFlag {
    /// Whether `--image-opts` was given.
    pub fn on(&self) -> bool {
        self.image_opts
    }

    /// The image `name` names, given the `-f` format.
    pub fn resolve(&self, name: &Path, format: Option<Format>) -> Result<ImageRef> {
        resolve_image(self.image_opts, name, format)
    }
}

/// `--object` and `--image-opts` together, for a subcommand that opens one image.
#[derive(clap::Args)]
pub struct ImageSpecFlags {
    #[command(flatten)]
    pub object: ObjectFlag,
    #[command(flatten)]
    pub image_opts: ImageOptsFlag,
}

impl ImageSpecFlags {
    /// Create the objects, then resolve the image argument `name` (see
    /// [`ImageOptsFlag::resolve`]).
    pub fn resolve(&self, name: &Path, format: Option<Format>) -> Result<ImageRef> {
        self.object.registry()?;
        self.image_opts.resolve(name, format)
    }

    /// [`resolve`](Self::resolve) `file` and `format` in place: a subcommand calls this
    /// first and then reads its arguments as if a plain file name and `-f` had been given.
    /// (`backing=` is honoured by convert only; elsewhere the backing file is opened.)
    pub fn resolve_in_place(&self, file: &mut PathBuf, format: &mut FormatFlag) -> Result<()> {
        let r = self.resolve(file, format.get_for(file)?)?;
        *file = r.path;
        format.set(r.format);
        Ok(())
    }

    /// [`resolve_in_place`](Self::resolve_in_place) for a subcommand that spells its format
    /// flag itself (compare's `-f`/`-F`).
    pub fn resolve_named(&self, file: &mut PathBuf, format: &mut Option<String>) -> Result<()> {
        let parsed = match format.as_deref() {
            Some(name) => Some(name.parse().map_err(|_| {
                Error::invalid(format!(
                    "Could not open '{}': Unknown driver '{name}'",
                    file.display()
                ))
            })?),
            None => None,
        };
        let r = self.resolve(file, parsed)?;
        *file = r.path;
        *format = r.format.map(|f| f.name().to_string());
        Ok(())
    }
}

/// An image argument resolved: the file and its format (`backing=` is honoured by convert
/// only, which resolves its arguments itself).
#[derive(Debug, Clone)]
pub struct ImageRef {
    pub path: PathBuf,
    pub format: Option<Format>,
}

/// The image the argument `name` names (see [`ImageSpec::resolve`]). Warnings about
/// deprecated spellings go to stderr.
pub fn resolve_image(image_opts: bool, name: &Path, format: Option<Format>) -> Result<ImageRef> {
    let spec = ImageSpec::resolve(image_opts, name, format)?;
    for w in &spec.warnings {
        eprintln!("vdisk: warning: {w}");
    }
    Ok(ImageRef {
        path: spec.path,
        format: spec.format,
    })
}
