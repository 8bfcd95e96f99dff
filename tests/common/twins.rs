//! Running qemu-img and vdisk side by side on identical copies of the same input, and
//! comparing what they did: exit codes, error text, resulting files.
//!
//! The two copies live in sibling directories (`qemu/` and `vdisk/`) under the same file
//! names, so that messages naming a file compare equal once the directory is masked. Error
//! lines are compared without the `qemu-img: ` / `vdisk: ` prefix, with the tool's own
//! name in hints ("You can use 'qemu-img rebase'") read as the other's.

use super::*;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Identical inputs for the two tools, in `qemu/` and `vdisk/` under one temporary
/// directory.
pub struct Twins {
    dir: TempDir,
}

/// Which tool a path or a run is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// qemu-img, the reference.
    Qemu,
    /// vdisk.
    Vdisk,
}

impl Twins {
    /// Empty `qemu/`, `vdisk/` and `work/` directories (the last for building inputs).
    pub fn new() -> Twins {
        let dir = tempdir();
        for sub in ["qemu", "vdisk", "work"] {
            std::fs::create_dir(dir.path().join(sub)).expect("creating a test directory");
        }
        Twins { dir }
    }

    /// The directory of `tool`'s copies.
    pub fn side(&self, tool: Tool) -> PathBuf {
        self.dir.path().join(match tool {
            Tool::Qemu => "qemu",
            Tool::Vdisk => "vdisk",
        })
    }

    /// `name` in `tool`'s directory.
    pub fn path(&self, tool: Tool, name: &str) -> PathBuf {
        self.side(tool).join(name)
    }

    /// A scratch path shared by nobody (for building inputs).
    pub fn work(&self, name: &str) -> PathBuf {
        self.dir.path().join("work").join(name)
    }

    /// Copy `from` into both directories as `name`.
    pub fn put(&self, name: &str, from: &Path) {
        for tool in [Tool::Qemu, Tool::Vdisk] {
            std::fs::copy(from, self.path(tool, name)).expect("copying a test image");
        }
    }

    /// Run `args` with each tool; an argument `@NAME` (or `KEY=@NAME`) stands for the file
    /// NAME in that tool's directory. Returns (qemu-img's output, vdisk's output).
    pub fn run(&self, args: &[&str]) -> (Output, Output) {
        let args_for = |tool| -> Vec<String> {
            args.iter()
                .map(|a| match (a.strip_prefix('@'), a.split_once("=@")) {
                    (Some(name), _) => s(&self.path(tool, name)).to_string(),
                    // `if=@NAME` (dd's operands).
                    (None, Some((key, name))) => {
                        format!("{key}={}", s(&self.path(tool, name)))
                    }
                    (None, None) => a.to_string(),
                })
                .collect()
        };
        (qemu_img(args_for(Tool::Qemu)), vdisk(args_for(Tool::Vdisk)))
    }

    /// [`run`](Self::run), then require the same exit code and the same error text.
    #[track_caller]
    pub fn same_outcome(&self, args: &[&str]) -> (Output, Output) {
        let (q, v) = self.run(args);
        let what = args.join(" ");
        let both = format!(
            "{}\n{}",
            describe(&format!("qemu-img {what}"), &q),
            describe(&format!("vdisk {what}"), &v)
        );
        assert_eq!(
            q.status.code(),
            v.status.code(),
            "exit codes differ\n{both}"
        );
        if !q.status.success() {
            assert_eq!(
                self.error_text(Tool::Qemu, &q),
                self.error_text(Tool::Vdisk, &v),
                "error messages differ\n{both}"
            );
        }
        (q, v)
    }

    /// `out`'s stderr without the tool prefix, with the tool's directory masked and
    /// "qemu-img" read as "vdisk".
    pub fn error_text(&self, tool: Tool, out: &Output) -> String {
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let side = s(&self.side(tool)).to_string();
        text.lines()
            .map(|l| {
                let l = l
                    .strip_prefix("qemu-img: ")
                    .or_else(|| l.strip_prefix("vdisk: "))
                    .unwrap_or(l);
                l.replace(&side, "<dir>").replace("qemu-img", "vdisk")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Both copies of `name` hold the same guest data, and when qemu-img's copy checks
    /// clean (`qemu-img check` supports the format and finds nothing), vdisk's does too.
    #[track_caller]
    pub fn same_image(&self, name: &str) {
        let (q, v) = (self.path(Tool::Qemu, name), self.path(Tool::Vdisk, name));
        assert_qemu_compare_identical(&q, &v);
        let out = qemu_img([OsStr::new("check"), q.as_os_str()]);
        let clean = String::from_utf8_lossy(&out.stdout).contains("No errors were found");
        if out.status.success() && clean {
            assert_qemu_check_clean(&v);
        }
    }

    /// [`same_outcome`](Self::same_outcome), and when it succeeded the same image `out`.
    #[track_caller]
    pub fn same_convert(&self, args: &[&str], out: &str) {
        let (q, _) = self.same_outcome(args);
        if q.status.success() {
            self.same_image(out);
        }
    }

    /// Require both copies of `name` to be byte-identical to `original`.
    #[track_caller]
    pub fn assert_unchanged(&self, name: &str, original: &Path) {
        let want = read(original);
        for tool in [Tool::Qemu, Tool::Vdisk] {
            assert_bytes_eq(
                &format!("{tool:?}'s copy of {name} after a refused command"),
                &read(&self.path(tool, name)),
                &want,
            );
        }
    }
}

/// Run `program args` with writes limited to files of `kib` KiB: a longer write fails
/// with EFBIG (SIGXFSZ is ignored), as a full disk fails with ENOSPC.
pub fn with_file_size_limit(kib: u64, program: &str, args: &[&str]) -> Output {
    let script = format!("trap '' XFSZ; ulimit -f {kib}; exec \"$@\"");
    std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("bash")
        .arg(program)
        .args(args)
        .output()
        .expect("running bash")
}
