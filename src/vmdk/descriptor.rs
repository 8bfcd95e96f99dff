//! The VMDK text descriptor: parsing (with nom) and writing.
//!
//! A descriptor is a small text file, either on its own or embedded in the first sectors
//! of a hosted sparse extent. It has three parts, each a run of lines:
//!
//! * the header: `version=1`, `CID=…`, `parentCID=…`, `createType="…"` and a few optional
//!   keys (`parentFileNameHint`, `isNativeSnapshot`, `encoding`);
//! * the extent description: one line per extent,
//!   `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`, in guest order;
//! * the disk database: `ddb.key = "value"` lines.
//!
//! Comments (`#…`) and blank lines may appear anywhere. Unknown header and ddb keys are
//! kept and written back unchanged. The parser stops at the first NUL byte (embedded
//! descriptors are zero-padded to a whole number of sectors).

use super::limits::{MAX_DESCRIPTOR_VERSION, MAX_EXTENT_NAME_BYTES, MAX_EXTENT_SECTORS};
use crate::error::{Error, Result};
use nom::branch::alt;
use nom::bytes::complete::{is_not, tag, take_till, take_while1};
use nom::character::complete::{char, digit1, space0, space1};
use nom::combinator::{all_consuming, map_res, opt};
use nom::sequence::{delimited, preceded, tuple};
use nom::IResult;
use std::fmt::Write as _;

const STRUCTURE: &str = "VMDK descriptor";

/// The parentCID of an image without a parent.
pub const NO_PARENT_CID: u32 = 0xffff_ffff;

/// How a guest may use an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write.
    ReadWrite,
    /// Read only.
    ReadOnly,
    /// Neither: the guest must not touch it.
    NoAccess,
}

impl Access {
    /// The word used on an extent line.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadWrite => "RW",
            Access::ReadOnly => "RDONLY",
            Access::NoAccess => "NOACCESS",
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        match word {
            "RW" => Some(Access::ReadWrite),
            "RDONLY" => Some(Access::ReadOnly),
            "NOACCESS" => Some(Access::NoAccess),
            _ => None,
        }
    }
}

/// What an extent file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentType {
    /// A hosted sparse extent (KDMV header).
    Sparse,
    /// Raw guest bytes in a file, from a sector offset.
    Flat,
    /// No file: reads as zeros.
    Zero,
    /// An ESX flat extent (raw bytes, offset 0).
    Vmfs,
    /// An ESX sparse extent (COWD header).
    VmfsSparse,
    /// An ESX raw device mapping (raw bytes).
    VmfsRdm,
    /// An ESX space-efficient sparse extent (not supported for I/O).
    SeSparse,
}

impl ExtentType {
    /// The word used on an extent line.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtentType::Sparse => "SPARSE",
            ExtentType::Flat => "FLAT",
            ExtentType::Zero => "ZERO",
            ExtentType::Vmfs => "VMFS",
            ExtentType::VmfsSparse => "VMFSSPARSE",
            ExtentType::VmfsRdm => "VMFSRDM",
            ExtentType::SeSparse => "SESPARSE",
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        Some(match word {
            "SPARSE" => ExtentType::Sparse,
            "FLAT" => ExtentType::Flat,
            "ZERO" => ExtentType::Zero,
            "VMFS" => ExtentType::Vmfs,
            "VMFSSPARSE" => ExtentType::VmfsSparse,
            "VMFSRDM" | "VMFSRAW" => ExtentType::VmfsRdm,
            "SESPARSE" => ExtentType::SeSparse,
            _ => return None,
        })
    }
}

/// One line of the extent description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// How the guest may use the extent.
    pub access: Access,
    /// Guest size of the extent, in sectors.
    pub sectors: u64,
    /// What the extent file holds.
    pub extent_type: ExtentType,
    /// The extent file, relative to the descriptor's directory (`None` only for ZERO).
    pub file_name: Option<String>,
    /// Sector offset of the guest data inside a FLAT extent file.
    pub offset: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `version=`: 1, 2 or 3.
    pub version: u32,
    /// Content ID, changed on the first write after each open.
    pub cid: u32,
    /// The parent's content ID, or [`NO_PARENT_CID`].
    pub parent_cid: u32,
    /// `createType`: the subformat (`monolithicSparse`, `twoGbMaxExtentFlat`, …).
    pub create_type: String,
    /// `parentFileNameHint`, for images with a parent.
    pub parent_file_name_hint: Option<String>,
    /// Other header keys, with their values as written (quotes included).
    pub other_keys: Vec<(String, String)>,
    /// The extents, in guest order.
    pub extents: Vec<ExtentLine>,
    /// Disk database entries (`ddb.` prefix included in the key), values unquoted.
    pub ddb: Vec<(String, String)>,
}

/// One classified descriptor line.
enum Line<'a> {
    Blank,
    KeyValue(&'a str, &'a str),
    Extent(ExtentLine),
}

impl Descriptor {
    /// Parse descriptor text. `base` is the file offset of the text, for error messages.
    pub fn parse(bytes: &[u8], base: u64) -> Result<Descriptor> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = std::str::from_utf8(&bytes[..end]).map_err(|e| {
            Error::corrupt(
                STRUCTURE,
                base + e.valid_up_to() as u64,
                "descriptor is not valid UTF-8 text",
            )
        })?;
        let mut version = None;
        let mut cid = None;
        let mut parent_cid = None;
        let mut create_type = None;
        let mut parent_file_name_hint = None;
        let mut other_keys = Vec::new();
        let mut extents = Vec::new();
        let mut ddb = Vec::new();
        let mut line_start = 0usize;
        for (index, raw) in text.split('\n').enumerate() {
            let offset = base + line_start as u64;
            line_start += raw.len() + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let bad = |msg: String| {
                Error::corrupt(STRUCTURE, offset, format!("line {}: {msg}", index + 1))
            };
            match classify(line).map_err(bad)? {
                Line::Blank => {}
                Line::Extent(extent) => extents.push(extent),
                Line::KeyValue(key, value) if key.starts_with("ddb.") => {
                    ddb.push((key.to_string(), unquote(value).to_string()))
                }
                Line::KeyValue(key, value) => match key {
                    "version" => {
                        let v: u32 = unquote(value)
                            .parse()
                            .map_err(|_| bad(format!("invalid version '{value}'")))?;
                        if v == 0 {
                            return Err(bad("version 0 is not valid".into()));
                        }
                        if v > MAX_DESCRIPTOR_VERSION {
                            return Err(Error::unsupported(format!(
                                "VMDK descriptor version {v} (at most {MAX_DESCRIPTOR_VERSION} is supported)"
                            )));
                        }
                        version = Some(v);
                    }
                    "CID" => cid = Some(parse_cid(value).map_err(|m| bad(format!("CID: {m}")))?),
                    "parentCID" => {
                        parent_cid =
                            Some(parse_cid(value).map_err(|m| bad(format!("parentCID: {m}")))?)
                    }
                    "createType" => create_type = Some(unquote(value).to_string()),
                    "parentFileNameHint" => {
                        parent_file_name_hint = Some(unquote(value).to_string())
                    }
                    _ => other_keys.push((key.to_string(), value.to_string())),
                },
            }
        }
        let create_type = create_type.ok_or_else(|| {
            Error::corrupt(
                STRUCTURE,
                base,
                "invalid VMDK image descriptor: no createType",
            )
        })?;
        Ok(Descriptor {
            version: version.unwrap_or(1),
            cid: cid.ok_or_else(|| Error::corrupt(STRUCTURE, base, "no CID line"))?,
            parent_cid: parent_cid.unwrap_or(NO_PARENT_CID),
            create_type,
            parent_file_name_hint,
            other_keys,
            extents,
            ddb,
        })
    }

    /// The value of a ddb key (`ddb.adapterType`, …).
    pub fn ddb_value(&self, key: &str) -> Option<&str> {
        self.ddb
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The descriptor as text, laid out as qemu-img writes it.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s.push_str("# Disk DescriptorFile\n");
        let _ = writeln!(s, "version={}", self.version);
        let _ = writeln!(s, "CID={:x}", self.cid);
        let _ = writeln!(s, "parentCID={:x}", self.parent_cid);
        let _ = writeln!(s, "createType=\"{}\"", self.create_type);
        if let Some(hint) = &self.parent_file_name_hint {
            let _ = writeln!(s, "parentFileNameHint=\"{hint}\"");
        }
        for (key, value) in &self.other_keys {
            let _ = writeln!(s, "{key}={value}");
        }
        s.push_str("\n# Extent description\n");
        for e in &self.extents {
            let _ = write!(
                s,
                "{} {} {}",
                e.access.as_str(),
                e.sectors,
                e.extent_type.as_str()
            );
            if let Some(name) = &e.file_name {
                let _ = write!(s, " \"{name}\"");
                if e.extent_type == ExtentType::Flat {
                    let _ = write!(s, " {}", e.offset);
                }
            }
            s.push('\n');
        }
        s.push_str("\n# The Disk Data Base\n#DDB\n\n");
        for (key, value) in &self.ddb {
            let _ = writeln!(s, "{key} = \"{value}\"");
        }
        s
    }
}

/// Replace the value of the `CID=` line in descriptor `text`, keeping everything else.
/// Returns `None` when the text has no CID line.
pub fn replace_cid(text: &str, cid: u32) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if !found && trimmed.starts_with("CID") {
            let rest = trimmed[3..].trim_start();
            if rest.starts_with('=') {
                let eol = if line.ends_with("\r\n") {
                    "\r\n"
                } else if line.ends_with('\n') {
                    "\n"
                } else {
                    ""
                };
                let _ = write!(out, "CID={cid:x}{eol}");
                found = true;
                continue;
            }
        }
        out.push_str(line);
    }
    found.then_some(out)
}

fn parse_cid(value: &str) -> std::result::Result<u32, String> {
    let v = unquote(value);
    u32::from_str_radix(v, 16).map_err(|_| format!("'{v}' is not a 32-bit hexadecimal number"))
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// Classify one line (without its line ending).
fn classify(line: &str) -> std::result::Result<Line<'_>, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(Line::Blank);
    }
    let first_word = trimmed.split_ascii_whitespace().next().unwrap_or("");
    if Access::from_word(first_word).is_some() {
        return parse_extent_line(trimmed)
            .map(Line::Extent)
            .map_err(|m| format!("invalid extent line '{trimmed}': {m}"));
    }
    match key_value(trimmed) {
        Ok((_, (key, value))) => Ok(Line::KeyValue(key, value.trim_end())),
        Err(_) => Err(format!("unrecognised descriptor line '{trimmed}'")),
    }
}

/// `key = value`, where the key is made of letters, digits, `.`, `_` and `-`.
fn key_value(input: &str) -> IResult<&str, (&str, &str)> {
    let key = take_while1(|c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let (rest, (key, _, _, _)) = tuple((key, space0, char('='), space0))(input)?;
    Ok(("", (key, rest)))
}

/// The raw fields of an extent line, before they are checked.
struct RawExtent<'a> {
    access: &'a str,
    sectors: u64,
    kind: &'a str,
    file: Option<&'a str>,
    offset: Option<u64>,
}

fn number(input: &str) -> IResult<&str, u64> {
    map_res(digit1, str::parse::<u64>)(input)
}

fn word(input: &str) -> IResult<&str, &str> {
    take_till(|c: char| c.is_ascii_whitespace())(input)
}

fn quoted(input: &str) -> IResult<&str, &str> {
    delimited(char('"'), alt((is_not("\"\r\n"), tag(""))), char('"'))(input)
}

fn raw_extent(input: &str) -> IResult<&str, RawExtent<'_>> {
    let (input, (access, _, sectors, _, kind)) =
        tuple((word, space1, number, space1, word))(input)?;
    let (input, file) = opt(preceded(space1, quoted))(input)?;
    let (input, offset) = if file.is_some() {
        opt(preceded(space1, number))(input)?
    } else {
        (input, None)
    };
    let (input, _) = all_consuming(space0)(input)?;
    Ok((
        input,
        RawExtent {
            access,
            sectors,
            kind,
            file,
            offset,
        },
    ))
}

fn parse_extent_line(line: &str) -> std::result::Result<ExtentLine, String> {
    let (_, raw) = raw_extent(line)
        .map_err(|_| "expected ACCESS SECTORS TYPE [\"FILE\" [OFFSET]]".to_string())?;
    let access = Access::from_word(raw.access).ok_or("unknown access mode")?;
    let extent_type = ExtentType::from_word(raw.kind)
        .ok_or_else(|| format!("unknown extent type '{}'", raw.kind))?;
    if raw.sectors > MAX_EXTENT_SECTORS {
        return Err(format!("extent of {} sectors is too large", raw.sectors));
    }
    match (extent_type, raw.file, raw.offset) {
        (ExtentType::Zero, None, None) => {}
        (ExtentType::Zero, _, _) => return Err("a ZERO extent has no file".into()),
        (_, None, _) => return Err("missing file name".into()),
        (ExtentType::Flat, Some(_), None) => return Err("a FLAT extent needs an offset".into()),
        (ExtentType::Flat, Some(_), Some(_)) => {}
        (_, Some(_), Some(_)) => {
            return Err(format!("a {} extent takes no offset", extent_type.as_str()))
        }
        (_, Some(_), None) => {}
    }
    if let Some(name) = raw.file {
        if name.is_empty() {
            return Err("empty file name".into());
        }
        if name.len() > MAX_EXTENT_NAME_BYTES {
            return Err("file name too long".into());
        }
    }
    let offset = raw.offset.unwrap_or(0);
    if offset > MAX_EXTENT_SECTORS {
        return Err(format!("offset {offset} is too large"));
    }
    Ok(ExtentLine {
        access,
        sectors: raw.sectors,
        extent_type,
        file_name: raw.file.map(str::to_string),
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor as qemu-img 10 writes for `-o subformat=monolithicFlat` (5 MiB).
    const QEMU_FLAT: &str = "# Disk DescriptorFile\n\
version=1\n\
CID=7de731eb\n\
parentCID=ffffffff\n\
createType=\"monolithicFlat\"\n\
\n\
# Extent description\n\
RW 10240 FLAT \"monolithicFlat-flat.vmdk\" 0\n\
\n\
# The Disk Data Base\n\
#DDB\n\
\n\
ddb.virtualHWVersion = \"4\"\n\
ddb.geometry.cylinders = \"10\"\n\
ddb.geometry.heads = \"16\"\n\
ddb.geometry.sectors = \"63\"\n\
ddb.adapterType = \"ide\"\n\
ddb.toolsVersion = \"2147483647\"\n";

    fn parse(text: &str) -> Result<Descriptor> {
        Descriptor::parse(text.as_bytes(), 0)
    }

    #[test]
    fn a_qemu_flat_descriptor_parses_into_its_fields() {
        let d = parse(QEMU_FLAT).unwrap();
        assert_eq!(d.version, 1);
        assert_eq!(d.cid, 0x7de731eb);
        assert_eq!(d.parent_cid, NO_PARENT_CID);
        assert_eq!(d.create_type, "monolithicFlat");
        assert_eq!(
            d.extents,
            vec![ExtentLine {
                access: Access::ReadWrite,
                sectors: 10240,
                extent_type: ExtentType::Flat,
                file_name: Some("monolithicFlat-flat.vmdk".into()),
                offset: 0,
            }]
        );
        assert_eq!(d.ddb_value("ddb.adapterType"), Some("ide"));
        assert_eq!(d.ddb.len(), 6);
    }

    #[test]
    fn writing_a_parsed_qemu_descriptor_gives_back_the_same_text() {
        assert_eq!(parse(QEMU_FLAT).unwrap().to_text(), QEMU_FLAT);
    }

    #[test]
    fn unknown_header_and_ddb_keys_survive_a_round_trip() {
        let text = QEMU_FLAT.replace(
            "createType=\"monolithicFlat\"\n",
            "createType=\"monolithicFlat\"\nisNativeSnapshot=\"no\"\n",
        ) + "ddb.uuid.image = \"60 00 C2 9d\"\n";
        let d = parse(&text).unwrap();
        assert_eq!(
            d.other_keys,
            vec![("isNativeSnapshot".into(), "\"no\"".into())]
        );
        assert_eq!(d.ddb_value("ddb.uuid.image"), Some("60 00 C2 9d"));
        assert_eq!(parse(&d.to_text()).unwrap(), d);
    }

    #[test]
    fn crlf_line_endings_and_trailing_nul_padding_are_accepted() {
        let mut bytes = QEMU_FLAT.replace('\n', "\r\n").into_bytes();
        bytes.extend_from_slice(&[0; 600]);
        let d = Descriptor::parse(&bytes, 0).unwrap();
        assert_eq!(d.extents.len(), 1);
        assert_eq!(
            d.extents[0].file_name.as_deref(),
            Some("monolithicFlat-flat.vmdk")
        );
    }

    /// The shape of a descriptor written by VMware ESXi for a thick disk.
    #[test]
    fn an_esxi_vmfs_descriptor_parses_with_its_extra_keys() {
        let text = "# Disk DescriptorFile\r\nversion=1\r\nencoding=\"UTF-8\"\r\nCID=fffffffe\r\n\
parentCID=ffffffff\r\nisNativeSnapshot=\"no\"\r\ncreateType=\"vmfs\"\r\n\r\n\
# Extent description\r\nRW 41943040 VMFS \"My Disk-flat.vmdk\"\r\n\r\n\
# The Disk Data Base\r\n#DDB\r\n\r\nddb.adapterType = \"lsilogic\"\r\n\
ddb.uuid = \"60 00 C2 9d 6b 4e 6e 0a-1c 4e 3b 96 06 3d 2c 5a\"\r\n\
ddb.virtualHWVersion = \"13\"\r\n";
        let d = parse(text).unwrap();
        assert_eq!(d.create_type, "vmfs");
        assert_eq!(d.cid, 0xfffffffe);
        assert_eq!(d.extents[0].extent_type, ExtentType::Vmfs);
        assert_eq!(d.extents[0].file_name.as_deref(), Some("My Disk-flat.vmdk"));
        assert_eq!(d.other_keys.len(), 2);
        assert_eq!(d.ddb_value("ddb.virtualHWVersion"), Some("13"));
    }

    #[test]
    fn every_extent_type_and_access_mode_parses() {
        let text = "CID=1\ncreateType=\"custom\"\n\
RW 100 SPARSE \"a.vmdk\"\n\
RDONLY 200 FLAT \"b.vmdk\" 7\n\
NOACCESS 300 ZERO\n\
RW 400 VMFS \"c.vmdk\"\n\
RW 500 VMFSSPARSE \"d.vmdk\"\n";
        let d = parse(text).unwrap();
        let kinds: Vec<_> = d.extents.iter().map(|e| e.extent_type).collect();
        assert_eq!(
            kinds,
            [
                ExtentType::Sparse,
                ExtentType::Flat,
                ExtentType::Zero,
                ExtentType::Vmfs,
                ExtentType::VmfsSparse
            ]
        );
        assert_eq!(d.extents[1].access, Access::ReadOnly);
        assert_eq!(d.extents[1].offset, 7);
        assert_eq!(d.extents[2].file_name, None);
    }

    #[test]
    fn malformed_extent_lines_are_refused_with_the_line_number() {
        for line in [
            "RW abc FLAT \"x\" 0",
            "RW 100 FLAT \"x\"",
            "RW 100 SPARSE \"x\" 5",
            "RW 100 SPARSE x.vmdk",
            "RW 100 SPARSE \"unterminated",
            "RW 100 BOGUS \"x\"",
            "RW 100 SPARSE \"\"",
            "RW 100 ZERO \"x\"",
            "RW 99999999999999999999999 FLAT \"x\" 0",
        ] {
            let text = format!("CID=1\ncreateType=\"custom\"\n{line}\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("line 3"), "{line}: {err}");
            assert!(err.contains("extent line"), "{line}: {err}");
        }
    }

    #[test]
    fn a_descriptor_version_above_three_is_unsupported() {
        let err = parse(&QEMU_FLAT.replace("version=1", "version=4")).unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err}");
    }

    #[test]
    fn a_descriptor_without_create_type_or_cid_is_refused() {
        assert!(parse("version=1\nCID=1\n").is_err());
        assert!(parse("version=1\ncreateType=\"x\"\n").is_err());
        assert!(parse("CID=zz\ncreateType=\"x\"\n").is_err());
    }

    #[test]
    fn binary_junk_is_refused_rather_than_misread() {
        assert!(Descriptor::parse(b"\xff\xfe garbage", 0).is_err());
        assert!(parse("hello world\n").is_err());
    }

    #[test]
    fn replacing_the_cid_keeps_every_other_line() {
        let out = replace_cid(QEMU_FLAT, 0x1234).unwrap();
        assert_eq!(out, QEMU_FLAT.replace("CID=7de731eb", "CID=1234"));
        assert!(out.contains("parentCID=ffffffff"));
        assert_eq!(replace_cid("version=1\n", 1), None);
    }
}
