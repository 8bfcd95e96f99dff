//! [`RbdName`]: an image on Ceph RBD named the way qemu-img names it,
//! `rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT][:KEY=VALUE]...`.
//!
//! A backslash takes the next character literally, so a value may hold `:`, `/`, `@` or
//! `=` (`mon_host=127.0.0.1\:3300`). The options after the image are, in order: `conf=FILE`
//! (a Ceph configuration file to read), `id=USER` (the client to connect as, without its
//! `client.` prefix), and any other Ceph setting (`keyring=FILE`, `mon_host=...`), which is
//! handed to librados as it is. `key=` is refused: a secret in an image name would show in
//! process lists and messages; a keyring file holds it instead.

use std::io;
use std::path::Path;

/// The prefix that marks an RBD image name.
pub const PREFIX: &str = "rbd:";

/// The longest image name accepted, in bytes: far more than pool, image, snapshot and a
/// few settings need, and a bound on what is copied before librados sees any of it.
pub const MAX_NAME_LEN: usize = 4096;

/// An RBD image (or one of its snapshots) and how to reach its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdName {
    /// The RADOS pool.
    pub pool: String,
    /// The RADOS namespace inside the pool, if any.
    pub namespace: Option<String>,
    /// The image.
    pub image: String,
    /// The snapshot to open instead of the image head (read-only).
    pub snapshot: Option<String>,
    /// `key=value` settings after the image, in order (`conf`, `id` and Ceph options).
    pub options: Vec<(String, String)>,
}

/// Whether `path` names an RBD image (starts with `rbd:`), as qemu-img decides it: a
/// host file whose name starts so is reached as `./rbd:...`.
pub fn is_rbd_name(path: &Path) -> bool {
    path.as_os_str()
        .as_encoded_bytes()
        .starts_with(PREFIX.as_bytes())
}

impl RbdName {
    /// Parse `rbd:...`; the error names what is wrong without quoting option values.
    pub fn parse(name: &str) -> io::Result<RbdName> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_string());
        if name.len() > MAX_NAME_LEN {
            return Err(bad(&format!(
                "rbd image name is longer than {MAX_NAME_LEN} bytes"
            )));
        }
        let rest = name
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad("File name must start with 'rbd:'"))?;
        let mut fields = split_unescaped(rest, ':').into_iter();
        let target = fields.next().unwrap_or_default();
        let (path, snapshot) = match split_once_unescaped(&target, '@') {
            Some((p, s)) => (p, Some(nonempty(unescape(&s), "snapshot name")?)),
            None => (target, None),
        };
        let parts = split_unescaped(&path, '/');
        let (pool, namespace, image) = match parts.as_slice() {
            [pool, image] => (pool, None, image),
            [pool, ns, image] => (pool, Some(nonempty(unescape(ns), "namespace")?), image),
            [_] => return Err(bad("rbd image name needs POOL/IMAGE")),
            _ => {
                return Err(bad(
                    "rbd image name has too many '/' (POOL[/NAMESPACE]/IMAGE)",
                ))
            }
        };
        let mut options = Vec::new();
        for field in fields {
            let (k, v) = split_once_unescaped(&field, '=')
                .ok_or_else(|| bad(&format!("conf option {} has no value", unescape(&field))))?;
            let (k, v) = (unescape(&k), unescape(&v));
            if k == "key" {
                return Err(bad(
                    "a key in an rbd image name is refused (it would show in process lists); name a keyring file with :keyring=FILE",
                ));
            }
            options.push((nonempty(k, "conf option name")?, v));
        }
        Ok(RbdName {
            pool: nonempty(unescape(pool), "pool name")?,
            namespace,
            image: nonempty(unescape(image), "image name")?,
            snapshot,
            options,
        })
    }

    /// The value of the last `key=` option, if any.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `POOL[/NAMESPACE]/IMAGE[@SNAPSHOT]`: what the name points at, whatever the settings
    /// used to reach it (two names are the same image when these are equal).
    pub fn identity(&self) -> String {
        let mut s = self.pool.clone();
        if let Some(ns) = &self.namespace {
            s = format!("{s}/{ns}");
        }
        s = format!("{s}/{}", self.image);
        if let Some(snap) = &self.snapshot {
            s = format!("{s}@{snap}");
        }
        s
    }
}

fn nonempty(s: String, what: &str) -> io::Result<String> {
    if s.is_empty() {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("rbd {what} is empty"),
        ))
    } else {
        Ok(s)
    }
}

/// `name` fit to show in a message: for an `rbd:` name, the value of every `key=` setting
/// replaced by `<redacted>` (such a name is refused, but the refusal quotes the name it
/// was given); any other name as it is.
pub fn redacted(name: &str) -> String {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return name.to_string();
    };
    let fields: Vec<String> = split_unescaped(rest, ':')
        .into_iter()
        .enumerate()
        .map(|(i, field)| match split_once_unescaped(&field, '=') {
            Some((k, _)) if i > 0 && unescape(&k) == "key" => format!("{k}=<redacted>"),
            _ => field,
        })
        .collect();
    format!("{PREFIX}{}", fields.join(":"))
}

/// Split at every `sep` that no backslash escapes; the pieces keep their escapes.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Split at the first unescaped `sep`.
fn split_once_unescaped(s: &str, sep: char) -> Option<(String, String)> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == sep => return Some((s[..i].to_string(), s[i + c.len_utf8()..].to_string())),
            _ => {}
        }
    }
    None
}

/// Drop the escaping backslashes (`\x` → `x`; a trailing lone backslash stays).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().unwrap_or('\\')),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_image_snapshot_and_settings_are_read_as_qemu_img_reads_them() {
        let n = RbdName::parse(
            r"rbd:rbd/disk@snap1:conf=/tmp/c.conf:id=admin:mon_host=127.0.0.1\:3300",
        )
        .unwrap();
        assert_eq!(n.pool, "rbd");
        assert_eq!(n.namespace, None);
        assert_eq!(n.image, "disk");
        assert_eq!(n.snapshot.as_deref(), Some("snap1"));
        assert_eq!(n.option("conf"), Some("/tmp/c.conf"));
        assert_eq!(n.option("id"), Some("admin"));
        assert_eq!(n.option("mon_host"), Some("127.0.0.1:3300"));
        assert_eq!(n.identity(), "rbd/disk@snap1");
    }

    #[test]
    fn a_namespace_sits_between_pool_and_image() {
        let n = RbdName::parse("rbd:pool/ns/img").unwrap();
        assert_eq!(
            (n.pool.as_str(), n.namespace.as_deref(), n.image.as_str()),
            ("pool", Some("ns"), "img")
        );
        assert_eq!(n.snapshot, None);
        assert!(n.options.is_empty());
    }

    #[test]
    fn escaped_separators_stay_in_names() {
        let n = RbdName::parse(r"rbd:p/a\:b\@c").unwrap();
        assert_eq!(n.image, "a:b@c");
        assert_eq!(n.snapshot, None);
    }

    #[test]
    fn malformed_names_are_refused_with_what_is_wrong() {
        let msg = |s: &str| RbdName::parse(s).unwrap_err().to_string();
        assert!(msg("rbd:pool").contains("POOL/IMAGE"));
        assert!(msg("rbd:/img").contains("pool name is empty"));
        assert!(msg("rbd:p/").contains("image name is empty"));
        assert!(msg("rbd:p/i@").contains("snapshot name is empty"));
        assert!(msg("rbd:a/b/c/d").contains("too many"));
        assert!(msg("rbd:p/i:conf").contains("conf option conf has no value"));
        assert!(msg("file.raw").contains("must start with 'rbd:'"));
        let long = format!("rbd:p/{}", "x".repeat(MAX_NAME_LEN));
        assert!(msg(&long).contains("longer than"));
    }

    #[test]
    fn a_key_in_the_name_is_refused_without_echoing_it() {
        let e = RbdName::parse("rbd:p/i:key=AQBsecretsecret==").unwrap_err();
        assert!(!e.to_string().contains("AQBsecret"));
        assert!(e.to_string().contains("keyring"));
    }

    #[test]
    fn a_key_typed_into_a_name_is_redacted_for_messages() {
        assert_eq!(
            redacted("rbd:pool/img:id=admin:key=AQBsecret==:mon_host=a\\:1"),
            "rbd:pool/img:id=admin:key=<redacted>:mon_host=a\\:1"
        );
        assert_eq!(
            redacted("rbd:pool/img:k\\ey=S"),
            "rbd:pool/img:k\\ey=<redacted>"
        );
        assert_eq!(redacted("rbd:pool/key=img"), "rbd:pool/key=img");
        assert_eq!(redacted("disk.qcow2:key=x"), "disk.qcow2:key=x");
    }

    #[test]
    fn only_names_starting_with_the_prefix_are_rbd_names() {
        assert!(is_rbd_name(Path::new("rbd:p/i")));
        assert!(!is_rbd_name(Path::new("./rbd:p/i")));
        assert!(!is_rbd_name(Path::new("/tmp/disk.raw")));
    }
}
