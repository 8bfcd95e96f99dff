//! QEMU's `key=value,key=value` option strings as `--image-opts` and `--object` take them:
//! splitting (`,,` stands for a comma), the image specification they describe (driver,
//! file name, backing), and the registry of `secret` objects that encrypted images will
//! read their keys from.
//!
//! Only what vdisk can honour is accepted; any other key is refused with the message
//! qemu-img prints for a key the driver does not know. Secret values are never printed:
//! [`Secret`]'s `Debug` shows only its ID, and no error message quotes a value.

use crate::driver::Format;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One `key=value` item of an option string; `value` is `None` for a bare word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The key (or the bare word).
    pub key: String,
    /// The value after the first `=`, with `,,` read as `,`.
    pub value: Option<String>,
}

/// Split `s` at commas that are not doubled; `,,` stands for one comma, empty items are
/// dropped (a trailing comma is harmless, as in QEMU).
pub fn split(s: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut push = |cur: &mut String| {
        if !cur.is_empty() {
            let text = std::mem::take(cur);
            items.push(match text.split_once('=') {
                Some((k, v)) => Item {
                    key: k.to_string(),
                    value: Some(v.to_string()),
                },
                None => Item {
                    key: text,
                    value: None,
                },
            });
        }
    };
    while let Some(c) = chars.next() {
        if c == ',' && chars.peek() == Some(&',') {
            chars.next();
            cur.push(',');
        } else if c == ',' {
            push(&mut cur);
        } else {
            cur.push(c);
        }
    }
    push(&mut cur);
    items
}

/// An image given as `--image-opts` options instead of a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The file holding the image (`file.filename`, or `filename` with `driver=file`).
    pub path: PathBuf,
    /// The format (`driver`); `None` probes it. `driver=file` reads the file as raw.
    pub format: Option<Format>,
    /// `backing=` (empty): open without the backing file.
    pub no_backing: bool,
    /// Warnings qemu-img prints for this specification (deprecated spellings).
    pub warnings: Vec<String>,
    /// `encrypt.key-secret`: the ID of the secret that unlocks an encrypted image.
    pub key_secret: Option<String>,
    /// `backing.encrypt.key-secret`, `backing.backing.encrypt.key-secret`, ...: the
    /// secrets of the backing files, nearest first (`None` for a level given none).
    pub backing_key_secrets: Vec<Option<String>>,
}

impl ImageSpec {
    /// Parse an `--image-opts` specification. Errors carry qemu-img's text after its
    /// "Could not open 'SPEC': " prefix, which this adds.
    pub fn parse(spec: &str) -> Result<ImageSpec> {
        Self::parse_items(spec)
            .map_err(|why| Error::invalid(format!("Could not open '{spec}': {why}")))
    }

    fn parse_items(spec: &str) -> std::result::Result<ImageSpec, String> {
        let mut warnings = Vec::new();
        let mut keys: BTreeMap<String, String> = BTreeMap::new();
        for (i, item) in split(spec).into_iter().enumerate() {
            let value = match item.value {
                Some(v) => v,
                // A bare first word names a block device node, which vdisk has none of.
                None if i == 0 => {
                    let k = &item.key;
                    return Err(format!("Cannot find device='{k}' nor node-name='{k}'"));
                }
                None => {
                    warnings.push(format!(
                        "short-form boolean option '{}' deprecated\nPlease use {}=on instead",
                        item.key, item.key
                    ));
                    "on".to_string()
                }
            };
            // A repeated key: the last one counts, as in QEMU.
            keys.insert(item.key, value);
        }
        let driver = keys.remove("driver");
        let (path, format) = match driver.as_deref() {
            Some("file") if !keys.contains_key("filename") => {
                return Err("The 'file' block driver requires a file name".into())
            }
            Some("file") => (keys.remove("filename"), Some(Format::RAW)),
            Some(d) => {
                let format = d
                    .parse::<Format>()
                    .map_err(|_| format!("Unknown driver '{d}'"))?;
                if keys.contains_key("filename") && !keys.contains_key("file.filename") {
                    return Err("A block device must be specified for \"file\"".into());
                }
                (keys.remove("file.filename"), Some(format))
            }
            None if keys.contains_key("file.filename") => (keys.remove("file.filename"), None),
            None => return Err("Must specify either driver or file".into()),
        };
        match keys.remove("file.driver").as_deref() {
            None | Some("file") => {}
            Some(d) => return Err(format!("Unknown protocol driver '{d}'")),
        }
        let key_secret = take_encryption_keys(&mut keys, driver.as_deref())?;
        let backing_key_secrets = take_backing_secrets(&mut keys);
        let no_backing = match keys.remove("backing").as_deref() {
            None => false,
            Some("") => {
                warnings.push(
                    "Use of \"backing\": \"\" is deprecated; use \"backing\": null instead".into(),
                );
                true
            }
            Some(node) => {
                return Err(format!(
                "Could not open backing file: Cannot find device='{node}' nor node-name='{node}'"
            ))
            }
        };
        if let Some(key) = keys.keys().next() {
            return Err(match key.strip_prefix("file.") {
                Some(k) => format!("Block protocol 'file' doesn't support the option '{k}'"),
                None if driver.as_deref() == Some("file") => {
                    format!("Block protocol 'file' doesn't support the option '{key}'")
                }
                None => {
                    // Without a driver, qemu-img names the format it probed.
                    let probed = match (&driver, &path) {
                        (Some(d), _) => d.clone(),
                        (None, Some(p)) => super::probe_path(std::path::Path::new(p), true)
                            .map_or_else(|_| "raw".to_string(), |f| f.name().to_string()),
                        (None, None) => "raw".to_string(),
                    };
                    format!("Block format '{probed}' does not support the option '{key}'")
                }
            });
        }
        let path =
            path.ok_or_else(|| "A block device must be specified for \"file\"".to_string())?;
        Ok(ImageSpec {
            path: PathBuf::from(path),
            format,
            no_backing,
            warnings,
            key_secret,
            backing_key_secrets,
        })
    }
}

/// Most backing levels whose secret an option string may name.
const MAX_BACKING_SECRET_DEPTH: usize = 16;

/// Remove `backing.encrypt.key-secret` and its deeper forms (`backing.backing.`...) from
/// `keys`: the secret of each backing level, nearest first.
fn take_backing_secrets(keys: &mut BTreeMap<String, String>) -> Vec<Option<String>> {
    let mut secrets: Vec<Option<String>> = (1..=MAX_BACKING_SECRET_DEPTH)
        .map(|depth| keys.remove(&format!("{}encrypt.key-secret", "backing.".repeat(depth))))
        .collect();
    while secrets.last().is_some_and(Option::is_none) {
        secrets.pop();
    }
    secrets
}

/// Remove the encryption keys (`encrypt.key-secret`, `encrypt.format`) from `keys` and
/// return the secret's ID. They belong to qcow2 (named, or probed); with another driver
/// they stay, to be refused as options it does not know.
fn take_encryption_keys(
    keys: &mut BTreeMap<String, String>,
    driver: Option<&str>,
) -> std::result::Result<Option<String>, String> {
    if !matches!(driver, None | Some("qcow2")) {
        return Ok(None);
    }
    match keys.remove("encrypt.format").as_deref() {
        None | Some("luks" | "aes") => {}
        Some(f) => {
            return Err(format!(
                "Parameter 'encrypt.format' does not accept value '{f}'"
            ))
        }
    }
    Ok(keys.remove("encrypt.key-secret"))
}

impl ImageSpec {
    /// The image a command-line argument `name` names: a plain file name with the `-f`
    /// `format`, or with `image_opts` (`--image-opts`) an option string, which is refused
    /// together with a `-f` format as qemu-img does. The caller prints the warnings.
    pub fn resolve(image_opts: bool, name: &Path, format: Option<Format>) -> Result<ImageSpec> {
        if !image_opts {
            return Ok(ImageSpec {
                path: name.to_path_buf(),
                format,
                no_backing: false,
                warnings: Vec::new(),
                key_secret: None,
                backing_key_secrets: Vec::new(),
            });
        }
        if format.is_some() {
            return Err(Error::invalid(
                "--image-opts and --format are mutually exclusive",
            ));
        }
        let spec = ImageSpec::parse(&name.to_string_lossy())?;
        for id in spec
            .key_secret
            .iter()
            .chain(spec.backing_key_secrets.iter().flatten())
        {
            crate::crypto::keyring::secret(id).map_err(|e| {
                Error::invalid(format!("Could not open '{}': {e}", name.to_string_lossy()))
            })?;
        }
        // The driver opening a file asks the keyring for its passphrase; a backing file's
        // is passed down when the chain is opened.
        if let Some(id) = &spec.key_secret {
            crate::crypto::keyring::bind_image(&spec.path, id);
        }
        if !spec.backing_key_secrets.is_empty() {
            crate::crypto::keyring::bind_backing_chain(&spec.path, &spec.backing_key_secrets);
        }
        Ok(spec)
    }
}

/// A `secret` object: key material for encrypted images, looked up by ID.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    id: String,
    /// The bytes as given (`data=`) or read (`file=`), before any base64 decoding; wiped
    /// when dropped.
    value: zeroize::Zeroizing<Vec<u8>>,
    /// `format=base64`: `value` is base64 text.
    base64: bool,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("id", &self.id)
            .field("value", &"<hidden>")
            .field("base64", &self.base64)
            .finish()
    }
}

impl Secret {
    /// The object's ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret's bytes as stored (`format=base64` values are still base64 text).
    pub fn stored_value(&self) -> &[u8] {
        &self.value
    }

    /// Whether the stored value is base64 text.
    pub fn is_base64(&self) -> bool {
        self.base64
    }

    /// The secret's bytes (base64 decoded), as a passphrase.
    pub fn passphrase(&self) -> Result<crate::crypto::Passphrase> {
        use base64::Engine;
        if !self.base64 {
            return Ok(crate::crypto::Passphrase::new(self.value.to_vec()));
        }
        let text: Vec<u8> = self
            .value
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(crate::crypto::Passphrase::new)
            .map_err(|_| Error::invalid("Invalid base64 data in secret"))
    }
}

/// The objects created with `--object`, by ID.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    secrets: BTreeMap<String, Secret>,
}

/// The keys a `secret` object takes.
const SECRET_KEYS: &[&str] = &["qom-type", "id", "data", "file", "format", "keyid", "iv"];

impl Objects {
    /// Create the object `spec` describes (`secret,id=ID,data=...|file=PATH[,format=raw|
    /// base64]`), refusing what qemu-img refuses with its messages.
    pub fn add(&mut self, spec: &str) -> Result<()> {
        let err = |m: String| Error::invalid(m);
        let mut keys: BTreeMap<String, String> = BTreeMap::new();
        for (i, item) in split(spec).into_iter().enumerate() {
            match (i, item.value) {
                (0, None) => keys.insert("qom-type".into(), item.key),
                (_, None) => keys.insert(item.key, "on".into()),
                (_, Some(v)) => keys.insert(item.key, v),
            };
        }
        let kind = keys
            .get("qom-type")
            .ok_or_else(|| err("Parameter 'qom-type' is missing".into()))?;
        if kind != "secret" {
            return Err(err(format!(
                "Parameter 'qom-type' does not accept value '{kind}'"
            )));
        }
        let id = keys
            .get("id")
            .ok_or_else(|| err("Parameter 'id' is missing".into()))?
            .clone();
        if !is_identifier(&id) {
            return Err(err("Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.".into()));
        }
        if let Some(k) = keys.keys().find(|k| !SECRET_KEYS.contains(&k.as_str())) {
            return Err(err(format!("Parameter '{k}' is unexpected")));
        }
        let base64 = match keys.get("format").map(String::as_str) {
            None | Some("raw") => false,
            Some("base64") => true,
            Some(f) => {
                return Err(err(format!(
                    "Parameter 'format' does not accept value '{f}'"
                )))
            }
        };
        if self.secrets.contains_key(&id) {
            return Err(err(format!(
                "attempt to add duplicate property '{id}' to object (type 'container')"
            )));
        }
        let value = zeroize::Zeroizing::new(match (keys.get("data"), keys.get("file")) {
            (Some(_), Some(_)) => {
                return Err(err("'file' and 'data' are mutually exclusive".into()))
            }
            (None, None) => return Err(err("Either 'file' or 'data' must be provided".into())),
            (Some(d), None) => d.clone().into_bytes(),
            (None, Some(f)) => std::fs::read(f).map_err(|e| {
                err(format!(
                    "Unable to read {f}: Failed to open file \u{201c}{f}\u{201d}: {}",
                    crate::error::strerror(&e)
                ))
            })?,
        });
        if let Some(k) = keys.get("keyid") {
            if !self.secrets.contains_key(k) {
                return Err(err(format!("No secret with id '{k}'")));
            }
            return Err(Error::unsupported(
                "secrets encrypted with another secret (keyid=) are not supported",
            ));
        }
        let secret = Secret { id, value, base64 };
        crate::crypto::keyring::add_secret(&secret.id, secret.passphrase()?);
        self.secrets.insert(secret.id.clone(), secret);
        Ok(())
    }

    /// The secret with ID `id`.
    pub fn secret(&self, id: &str) -> Option<&Secret> {
        self.secrets.get(id)
    }
}

/// QEMU's identifier rule: a letter, then letters, digits, `-`, `.` and `_`.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> Item {
        Item {
            key: k.into(),
            value: Some(v.into()),
        }
    }

    #[test]
    fn split_reads_doubled_commas_as_one_and_drops_empty_items() {
        assert_eq!(
            split("driver=qcow2,file.filename=a,,b.qcow2,"),
            vec![kv("driver", "qcow2"), kv("file.filename", "a,b.qcow2")]
        );
        assert_eq!(split("a=x=y"), vec![kv("a", "x=y")]);
        let bare = split("secret,id=s");
        assert_eq!(bare[0].value, None);
        assert_eq!(
            split(",,,"),
            vec![Item {
                key: ",".into(),
                value: None
            }]
        );
        assert!(split("").is_empty());
    }

    #[test]
    fn image_spec_maps_driver_file_name_and_backing() {
        let s = ImageSpec::parse("driver=qcow2,file.driver=file,file.filename=x,,y.qcow2").unwrap();
        assert_eq!(s.path, PathBuf::from("x,y.qcow2"));
        assert_eq!(s.format, Some(Format::QCOW2));
        assert!(!s.no_backing);
        let s = ImageSpec::parse("file.filename=x").unwrap();
        assert_eq!(s.format, None);
        let s = ImageSpec::parse("driver=file,filename=x").unwrap();
        assert_eq!(s.format, Some(Format::RAW));
        let s = ImageSpec::parse("driver=qcow2,file.filename=x,backing=").unwrap();
        assert!(s.no_backing);
        assert_eq!(s.warnings.len(), 1);
        let s = ImageSpec::parse("driver=qcow2,file.filename=x,encrypt.key-secret=sec0").unwrap();
        assert_eq!(s.key_secret.as_deref(), Some("sec0"));
        let e = ImageSpec::parse("driver=raw,file.filename=x,encrypt.key-secret=s").unwrap_err();
        assert!(e
            .to_string()
            .contains("does not support the option 'encrypt.key-secret'"));
    }

    #[test]
    fn image_spec_refuses_unknown_keys_with_qemu_img_messages() {
        let e = |spec: &str| ImageSpec::parse(spec).unwrap_err().to_string();
        assert_eq!(
            e("driver=qcow2,file.filename=x,bogus=1"),
            "Could not open 'driver=qcow2,file.filename=x,bogus=1': Block format 'qcow2' does not support the option 'bogus'"
        );
        assert!(e("driver=qcow2,file.filename=x,file.bogus=1")
            .ends_with("Block protocol 'file' doesn't support the option 'bogus'"));
        assert!(e("filename=x").ends_with("Must specify either driver or file"));
        assert!(
            e("driver=qcow2,filename=x").ends_with("A block device must be specified for \"file\"")
        );
        assert!(e("driver=bogus,file.filename=x").ends_with("Unknown driver 'bogus'"));
        assert!(e("driver=file,file.filename=x")
            .ends_with("The 'file' block driver requires a file name"));
        assert!(e("x.qcow2").ends_with("Cannot find device='x.qcow2' nor node-name='x.qcow2'"));
        assert!(
            e("driver=qcow2,,file.filename=x").ends_with("Unknown driver 'qcow2,file.filename=x'")
        );
    }

    #[test]
    fn secrets_are_kept_by_id_and_never_shown() {
        let mut o = Objects::default();
        o.add("secret,id=sec0,data=hunter,,2").unwrap();
        let s = o.secret("sec0").unwrap();
        assert_eq!(s.stored_value(), b"hunter,2");
        assert!(!format!("{s:?}").contains("hunter"));
        let e = o.add("secret,id=sec0,data=x").unwrap_err().to_string();
        assert!(e.contains("duplicate property 'sec0'") && !e.contains("hunter"));
        o.add("qom-type=secret,id=b,data=eA==,format=base64")
            .unwrap();
        assert!(o.secret("b").unwrap().is_base64());
    }

    #[test]
    fn objects_refuse_what_qemu_img_refuses() {
        let e = |spec: &str| Objects::default().add(spec).unwrap_err().to_string();
        assert_eq!(
            e("foo,id=x"),
            "Parameter 'qom-type' does not accept value 'foo'"
        );
        assert_eq!(e("id=x,data=y"), "Parameter 'qom-type' is missing");
        assert_eq!(e("secret,data=y"), "Parameter 'id' is missing");
        assert_eq!(e("secret,id=s"), "Either 'file' or 'data' must be provided");
        assert_eq!(
            e("secret,id=s,data=a,file=b"),
            "'file' and 'data' are mutually exclusive"
        );
        assert_eq!(
            e("secret,id=s,data=a,bogus=1"),
            "Parameter 'bogus' is unexpected"
        );
        assert_eq!(
            e("secret,id=s,data=a,format=bin"),
            "Parameter 'format' does not accept value 'bin'"
        );
        assert!(e("secret,id=1x,data=a").starts_with("Parameter 'id' expects an identifier"));
        assert_eq!(e("secret,id=s,data=a,keyid=k"), "No secret with id 'k'");
        let missing = e("secret,id=s,file=/nonexistent/secret");
        assert!(missing.starts_with("Unable to read /nonexistent/secret: Failed to open file"));
    }
}
