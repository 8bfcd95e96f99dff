//! New VHDX images with qemu-img's options, defaults and layout: file identifier, two
//! headers, two copies of the region table, the log after the header section, the BAT
//! after the log, 1 MiB of metadata after the BAT, payload from 5 MiB past the BAT.
//! Differencing images (which qemu-img cannot make) add a parent locator.

use super::bat::{Entry, Geometry, PayloadState};
use super::header::{file_identifier, Guid, Header, HEADER_OFFSETS, HEADER_SECTION_END, MIB};
use super::metadata::{Metadata, MAX_BLOCK_SIZE, MAX_DISK_SIZE};
use super::region::{RegionTable, TABLE_OFFSETS};
use crate::driver;
use crate::error::{Error, Result};
use crate::storage::Storage;
use byteorder::{ByteOrder, LittleEndian as LE};

/// What `-o` asks of a new image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// `subformat=fixed`.
    pub fixed: bool,
    /// `block_size` (0: chosen from the size, as qemu-img does).
    pub block_size: u64,
    /// `log_size`.
    pub log_size: u64,
    /// `block_state_zero` (on by default).
    pub block_state_zero: bool,
    /// `backing_file`: makes a differencing image.
    pub backing_file: Option<String>,
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(Error::invalid(format!(
            "Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

/// Parse and check the options, rounding sizes up as qemu-img does.
pub fn parse_options(options: &driver::Options) -> Result<CreateOptions> {
    let mut o = CreateOptions {
        fixed: false,
        block_size: 0,
        log_size: MIB,
        block_state_zero: true,
        backing_file: None,
    };
    for (k, v) in options {
        match k.as_str() {
            "size" | "nocow" | "extent_size_hint" | "preallocation" => {}
            "subformat" => {
                o.fixed = match v.as_str() {
                    "dynamic" => false,
                    "fixed" => true,
                    _ => {
                        return Err(Error::invalid(format!(
                            "Parameter 'subformat' does not accept value '{v}'"
                        )))
                    }
                }
            }
            "block_size" => {
                o.block_size = crate::size::parse_size(v)?
                    .next_multiple_of(MIB)
                    .min(u64::from(MAX_BLOCK_SIZE))
            }
            "log_size" => o.log_size = crate::size::parse_size(v)?.next_multiple_of(MIB),
            "block_state_zero" => o.block_state_zero = parse_bool(k, v)?,
            "backing_file" => o.backing_file = Some(v.clone()),
            "backing_fmt" if v == "vhdx" => {}
            "backing_fmt" => {
                return Err(Error::unsupported(format!(
                    "a VHDX differencing image needs a VHDX parent, not '{v}'"
                )))
            }
            _ => return Err(driver::invalid_option("vhdx", k)),
        }
    }
    if o.log_size > u64::from(u32::MAX) {
        return Err(Error::invalid("Log size must be smaller than 4 GB"));
    }
    if o.log_size < MIB {
        return Err(Error::invalid("Log size must be a multiple of 1 MB"));
    }
    if o.block_size != 0 && !o.block_size.is_power_of_two() {
        return Err(Error::invalid("Block size must be a power of two"));
    }
    Ok(o)
}

/// qemu-img's block size for a disk of `size` bytes when none is given.
fn default_block_size(size: u64) -> u64 {
    if size > 32 << 40 {
        64 * MIB
    } else if size > 100 << 30 {
        32 * MIB
    } else if size > 1 << 30 {
        16 * MIB
    } else {
        8 * MIB
    }
}

/// The parent of a differencing image: its data write GUID and its names.
pub struct ParentLink {
    /// The parent's data write GUID.
    pub data_write_guid: Guid,
    /// The name as given (relative to the new image's directory, or absolute).
    pub name: String,
    /// The parent's absolute host path.
    pub absolute: String,
}

/// A GUID in its text form with braces, from its on-disk bytes.
pub fn guid_text(g: &Guid) -> String {
    let tail: String = g[8..].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{{{:08x}-{:04x}-{:04x}-{}-{}}}",
        LE::read_u32(g),
        LE::read_u16(&g[4..]),
        LE::read_u16(&g[6..]),
        &tail[..4],
        &tail[4..]
    )
}

fn locator(parent: &ParentLink) -> Vec<(String, String)> {
    let win = |s: &str| s.replace('/', "\\");
    let relative = if parent.name.starts_with('/') {
        win(&parent.name)
    } else {
        format!(".\\{}", win(&parent.name))
    };
    vec![
        ("parent_linkage".into(), guid_text(&parent.data_write_guid)),
        ("relative_path".into(), relative),
        ("absolute_win32_path".into(), win(&parent.absolute)),
    ]
}

/// Write a new image of `size` bytes into the empty `storage`.
pub fn create(
    storage: &dyn Storage,
    size: u64,
    o: &CreateOptions,
    parent: Option<&ParentLink>,
) -> Result<()> {
    let size = size.next_multiple_of(512);
    if size > MAX_DISK_SIZE {
        return Err(Error::invalid("Image size too large; max of 64TB"));
    }
    let block_size = if o.block_size == 0 {
        default_block_size(size)
    } else {
        o.block_size
    };
    if !block_size.is_power_of_two() {
        return Err(Error::invalid("Block size must be a power of two"));
    }
    let fixed = o.fixed && parent.is_none();
    let md = Metadata::new(
        size,
        block_size as u32,
        fixed,
        parent.map(locator).unwrap_or_default(),
    );
    let g = Geometry::new(&md);
    let regions = RegionTable::for_new_image(HEADER_SECTION_END + o.log_size, g.entries * 8);
    let data_start = regions.bat.offset + u64::from(regions.bat.length) + 5 * MIB;
    let io = |e| Error::io("vhdx: creating", e);
    let version = format!("vdisk v{}", env!("CARGO_PKG_VERSION"));
    storage
        .write_at(&file_identifier(&version), 0)
        .map_err(io)?;
    let mut h = Header::new(o.log_size as u32);
    h.sequence_number = u64::from(u32::from_le_bytes(
        crate::uuid::random_uuid()[..4]
            .try_into()
            .unwrap_or_default(),
    ));
    storage
        .write_at(&h.write(), HEADER_OFFSETS[0])
        .map_err(io)?;
    h.sequence_number += 1;
    storage
        .write_at(&h.write(), HEADER_OFFSETS[1])
        .map_err(io)?;
    let end = if fixed { data_start + size } else { data_start };
    storage.set_len(end).map_err(io)?;
    if (fixed || o.block_state_zero) && parent.is_none() {
        let state = if o.block_state_zero {
            PayloadState::Zero
        } else {
            PayloadState::FullyPresent
        };
        let mut bat = vec![0u8; (g.entries * 8) as usize];
        for block in 0..g.data_blocks {
            let at = (data_start + block * block_size).next_multiple_of(MIB);
            LE::write_u64(
                &mut bat[(g.payload_index(block) * 8) as usize..],
                Entry::payload(state, at).0,
            );
        }
        storage.write_at(&bat, regions.bat.offset).map_err(io)?;
    }
    let table = regions.write();
    for at in TABLE_OFFSETS {
        storage.write_at(&table, at).map_err(io)?;
    }
    storage
        .write_at(&md.write(), regions.metadata.offset)
        .map_err(io)?;
    storage.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_swaps_the_first_three_fields() {
        let g = super::super::region::guid(
            0x0102_0304,
            0x0506,
            0x0708,
            [9, 10, 11, 12, 13, 14, 15, 16],
        );
        assert_eq!(guid_text(&g), "{01020304-0506-0708-090a-0b0c0d0e0f10}");
    }

    #[test]
    fn options_round_up_as_qemu_img_does() {
        let o = parse_options(&[
            ("block_size".into(), "1500k".into()),
            ("log_size".into(), "1500k".into()),
        ])
        .unwrap();
        assert_eq!((o.block_size, o.log_size), (2 * MIB, 2 * MIB));
        assert!(parse_options(&[("subformat".into(), "sparse".into())]).is_err());
    }
}
