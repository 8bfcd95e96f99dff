//! The NBD wire format: magic numbers, flags, option and command codes, and pure codecs for
//! the messages of the handshake (options and their replies) and of the transmission phase
//! (requests, simple replies, structured reply chunks).
//!
//! Every multi-byte field is big-endian ("network byte order"). Nothing here does I/O: the
//! decoders take byte slices whose length the caller read from the fixed-size header, and
//! the encoders append to a `Vec<u8>`. The names are the protocol document's, without the
//! `NBD_` prefix.

use byteorder::{BigEndian, ByteOrder};

/// `NBDMAGIC`: the first eight bytes the server sends.
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: sent by the server after [`INIT_MAGIC`], and before every client option.
pub const OPTS_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server): fixed newstyle, and zero padding may be left out.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags: the same two bits; any other bit set is a reason to hang up.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
pub const CLIENT_FLAGS_KNOWN: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

/// Transmission flags: what the export can do.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Option codes.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types; errors have bit 31 set.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub const REP_ERR_POLICY: u32 = REP_ERR | 2;
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub const REP_ERR_TLS_REQD: u32 = REP_ERR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR | 7;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;

/// Information types of `NBD_REP_INFO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command types.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply chunk flag: the last chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply chunk types.
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

/// `base:allocation` extent flags.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// Error values (the protocol's, which are Linux errno numbers).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// The largest payload of one request (a WRITE) or one READ reply: 32 MiB, qemu-nbd's limit.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// The largest option a client may send (an export name and a few meta context queries fit
/// many times over); longer ones are refused with `NBD_REP_ERR_TOO_BIG` after being skipped.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// The longest string (export name, context query) the protocol allows.
pub const MAX_STRING: usize = 4096;

/// Length of a request header on the wire.
pub const REQUEST_LEN: usize = 28;
/// Length of an option header (magic, option, length) on the wire.
pub const OPTION_HEADER_LEN: usize = 16;

/// The header of one option sent by the client during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub magic: u64,
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    /// Decode the 16 bytes that start every option.
    pub fn parse(b: &[u8; OPTION_HEADER_LEN]) -> OptionHeader {
        OptionHeader {
            magic: BigEndian::read_u64(&b[0..8]),
            option: BigEndian::read_u32(&b[8..12]),
            length: BigEndian::read_u32(&b[12..16]),
        }
    }
}

/// One transmission request header (a WRITE's payload follows it on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub magic: u32,
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// Decode a 28-byte request header.
    pub fn parse(b: &[u8; REQUEST_LEN]) -> Request {
        Request {
            magic: BigEndian::read_u32(&b[0..4]),
            flags: BigEndian::read_u16(&b[4..6]),
            kind: BigEndian::read_u16(&b[6..8]),
            cookie: BigEndian::read_u64(&b[8..16]),
            offset: BigEndian::read_u64(&b[16..24]),
            length: BigEndian::read_u32(&b[24..28]),
        }
    }

    /// Encode the header (clients and tests).
    pub fn write(&self, out: &mut Vec<u8>) {
        put_u32(out, self.magic);
        put_u16(out, self.flags);
        put_u16(out, self.kind);
        put_u64(out, self.cookie);
        put_u64(out, self.offset);
        put_u32(out, self.length);
    }
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`: an export name and the information types the
/// client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub name: String,
    pub queries: Vec<String>,
}

/// Why option data could not be decoded (answered with `NBD_REP_ERR_INVALID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOption(pub &'static str);

/// A cursor over option data that refuses to read past its end.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], BadOption> {
        if self.data.len() < n {
            return Err(BadOption(what));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, BadOption> {
        Ok(BigEndian::read_u16(self.take(2, what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, BadOption> {
        Ok(BigEndian::read_u32(self.take(4, what)?))
    }
    /// A string prefixed by its 32-bit length.
    fn string(&mut self, what: &'static str) -> Result<String, BadOption> {
        let len = self.u32(what)? as usize;
        if len > MAX_STRING {
            return Err(BadOption("string longer than 4096 bytes"));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| BadOption("string is not UTF-8"))
    }
    fn finish(&self) -> Result<(), BadOption> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(BadOption("trailing bytes after the option data"))
        }
    }
}

impl InfoRequest {
    /// Decode `NBD_OPT_INFO`/`GO` data: name length, name, count, then 16-bit info types.
    pub fn parse(data: &[u8]) -> Result<InfoRequest, BadOption> {
        let mut c = Cursor { data };
        let name = c.string("export name")?;
        let count = c.u16("number of information requests")?;
        let mut requests = Vec::with_capacity(usize::from(count).min(data.len() / 2));
        for _ in 0..count {
            requests.push(c.u16("information request")?);
        }
        c.finish()?;
        Ok(InfoRequest { name, requests })
    }
}

impl MetaContextRequest {
    /// Decode meta context option data: export name, query count, then queries.
    pub fn parse(data: &[u8]) -> Result<MetaContextRequest, BadOption> {
        let mut c = Cursor { data };
        let name = c.string("export name")?;
        let count = c.u32("number of queries")?;
        let mut queries = Vec::new();
        for _ in 0..count {
            queries.push(c.string("query")?);
        }
        c.finish()?;
        Ok(MetaContextRequest { name, queries })
    }
}

/// The server's greeting: both magics and the handshake flags.
pub fn greeting() -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    put_u64(&mut out, INIT_MAGIC);
    put_u64(&mut out, OPTS_MAGIC);
    put_u16(&mut out, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    out
}

/// An option reply: magic, the option answered, reply type, data.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    put_u64(&mut out, REP_MAGIC);
    put_u32(&mut out, option);
    put_u32(&mut out, reply);
    put_u32(&mut out, data.len() as u32);
    out.extend_from_slice(data);
    out
}

/// `NBD_REP_SERVER` data: one export name, then its description as the free-form details.
pub fn rep_server(name: &str, description: Option<&str>) -> Vec<u8> {
    let details = description.unwrap_or("");
    let mut out = Vec::with_capacity(4 + name.len() + details.len());
    put_u32(&mut out, name.len() as u32);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(details.as_bytes());
    out
}

/// `NBD_INFO_EXPORT` data: size and transmission flags.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    put_u16(&mut out, INFO_EXPORT);
    put_u64(&mut out, size);
    put_u16(&mut out, flags);
    out
}

/// `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION` data: the type and the text.
pub fn info_text(kind: u16, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + text.len());
    put_u16(&mut out, kind);
    out.extend_from_slice(text.as_bytes());
    out
}

/// `NBD_INFO_BLOCK_SIZE` data: minimum, preferred and maximum block sizes.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    put_u16(&mut out, INFO_BLOCK_SIZE);
    put_u32(&mut out, min);
    put_u32(&mut out, preferred);
    put_u32(&mut out, max);
    out
}

/// `NBD_REP_META_CONTEXT` data: the context id and its name.
pub fn rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    put_u32(&mut out, id);
    out.extend_from_slice(name.as_bytes());
    out
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zero bytes unless the client
/// asked for none.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(134);
    put_u64(&mut out, size);
    put_u16(&mut out, flags);
    if !no_zeroes {
        out.resize(out.len() + 124, 0);
    }
    out
}

/// A simple reply header (a READ's data follows it).
pub fn simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    put_u32(out, SIMPLE_REPLY_MAGIC);
    put_u32(out, error);
    put_u64(out, cookie);
}

/// A structured reply chunk header; `length` is the length of the chunk's payload.
pub fn chunk_header(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, length: u32) {
    put_u32(out, STRUCTURED_REPLY_MAGIC);
    put_u16(out, flags);
    put_u16(out, kind);
    put_u64(out, cookie);
    put_u32(out, length);
}

/// The header and offset of an `OFFSET_DATA` chunk carrying `data_len` bytes at `offset`.
pub fn offset_data_header(out: &mut Vec<u8>, flags: u16, cookie: u64, offset: u64, data_len: u32) {
    chunk_header(out, flags, REPLY_TYPE_OFFSET_DATA, cookie, 8 + data_len);
    put_u64(out, offset);
}

/// A whole `OFFSET_HOLE` chunk: `length` zero bytes at `offset`.
pub fn offset_hole(out: &mut Vec<u8>, flags: u16, cookie: u64, offset: u64, length: u32) {
    chunk_header(out, flags, REPLY_TYPE_OFFSET_HOLE, cookie, 12);
    put_u64(out, offset);
    put_u32(out, length);
}

/// A whole `ERROR` chunk with `message` (cut to the protocol's string limit).
pub fn error_chunk(out: &mut Vec<u8>, cookie: u64, error: u32, message: &str) {
    let mut end = message.len().min(MAX_STRING);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &message.as_bytes()[..end];
    chunk_header(
        out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    );
    put_u32(out, error);
    put_u16(out, msg.len() as u16);
    out.extend_from_slice(msg);
}

/// A whole `BLOCK_STATUS` chunk: the context id, then (length, flags) per extent.
pub fn block_status_chunk(
    out: &mut Vec<u8>,
    flags: u16,
    cookie: u64,
    context: u32,
    extents: &[(u32, u32)],
) {
    let len = 4 + 8 * extents.len() as u32;
    chunk_header(out, flags, REPLY_TYPE_BLOCK_STATUS, cookie, len);
    put_u32(out, context);
    for &(length, state) in extents {
        put_u32(out, length);
        put_u32(out, state);
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_is_both_magics_then_fixed_newstyle_and_no_zeroes() {
        assert_eq!(
            greeting(),
            [
                b'N', b'B', b'D', b'M', b'A', b'G', b'I', b'C', // INIT_MAGIC
                b'I', b'H', b'A', b'V', b'E', b'O', b'P', b'T', // OPTS_MAGIC
                0x00, 0x03, // FIXED_NEWSTYLE | NO_ZEROES
            ]
        );
    }

    #[test]
    fn request_header_decodes_every_field_big_endian() {
        let bytes: [u8; REQUEST_LEN] = [
            0x25, 0x60, 0x95, 0x13, // magic
            0x00, 0x01, // flags: FUA
            0x00, 0x01, // type: WRITE
            1, 2, 3, 4, 5, 6, 7, 8, // cookie
            0, 0, 0, 0, 0, 0, 0x10, 0x00, // offset 4096
            0, 0, 0x02, 0x00, // length 512
        ];
        let r = Request::parse(&bytes);
        assert_eq!(
            r,
            Request {
                magic: REQUEST_MAGIC,
                flags: CMD_FLAG_FUA,
                kind: CMD_WRITE,
                cookie: 0x0102_0304_0506_0708,
                offset: 4096,
                length: 512,
            }
        );
        let mut again = Vec::new();
        r.write(&mut again);
        assert_eq!(again, bytes);
    }

    #[test]
    fn option_header_decodes_magic_option_and_length() {
        let bytes: [u8; OPTION_HEADER_LEN] = [
            b'I', b'H', b'A', b'V', b'E', b'O', b'P', b'T', // magic
            0, 0, 0, 7, // NBD_OPT_GO
            0, 0, 0, 6, // length
        ];
        assert_eq!(
            OptionHeader::parse(&bytes),
            OptionHeader {
                magic: OPTS_MAGIC,
                option: OPT_GO,
                length: 6
            }
        );
    }

    #[test]
    fn go_data_decodes_name_and_info_requests() {
        let data = [
            0, 0, 0, 2, b'h', b'd', // name "hd"
            0, 2, // two requests
            0, 3, // BLOCK_SIZE
            0, 2, // DESCRIPTION
        ];
        assert_eq!(
            InfoRequest::parse(&data),
            Ok(InfoRequest {
                name: "hd".into(),
                requests: vec![INFO_BLOCK_SIZE, INFO_DESCRIPTION]
            })
        );
    }

    #[test]
    fn go_data_with_a_name_longer_than_the_option_is_refused() {
        let data = [0, 0, 0, 9, b'h', b'd', 0, 0];
        assert!(InfoRequest::parse(&data).is_err());
    }

    #[test]
    fn go_data_claiming_more_requests_than_it_holds_is_refused() {
        let data = [0, 0, 0, 0, 0xff, 0xff, 0, 1];
        assert!(InfoRequest::parse(&data).is_err());
    }

    #[test]
    fn go_data_with_trailing_bytes_is_refused() {
        let data = [0, 0, 0, 0, 0, 0, 9];
        assert!(InfoRequest::parse(&data).is_err());
    }

    #[test]
    fn meta_context_data_decodes_name_and_queries() {
        let mut data = vec![0, 0, 0, 0]; // name ""
        data.extend_from_slice(&[0, 0, 0, 2]); // two queries
        data.extend_from_slice(&[0, 0, 0, 5]);
        data.extend_from_slice(b"base:");
        data.extend_from_slice(&[0, 0, 0, 21]);
        data.extend_from_slice(b"qemu:allocation-depth");
        assert_eq!(
            MetaContextRequest::parse(&data),
            Ok(MetaContextRequest {
                name: String::new(),
                queries: vec!["base:".into(), "qemu:allocation-depth".into()]
            })
        );
    }

    #[test]
    fn meta_context_data_claiming_billions_of_queries_fails_without_allocating_them() {
        let data = [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(MetaContextRequest::parse(&data).is_err());
    }

    #[test]
    fn strings_over_4096_bytes_are_refused() {
        let mut data = vec![0, 0, 0x10, 0x01];
        data.resize(4 + 4097 + 2, b'a');
        assert!(InfoRequest::parse(&data).is_err());
    }

    #[test]
    fn option_reply_carries_magic_option_type_and_length() {
        assert_eq!(
            option_reply(OPT_LIST, REP_ERR_UNSUP, b"x"),
            [
                0, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, // REP_MAGIC
                0, 0, 0, 3, // NBD_OPT_LIST
                0x80, 0, 0, 1, // NBD_REP_ERR_UNSUP
                0, 0, 0, 1, // length
                b'x',
            ]
        );
    }

    #[test]
    fn rep_server_is_the_name_then_the_description() {
        assert_eq!(
            rep_server("hd", Some("disk")),
            [0, 0, 0, 2, b'h', b'd', b'd', b'i', b's', b'k']
        );
    }

    #[test]
    fn info_export_is_type_size_and_flags() {
        assert_eq!(
            info_export(0x1_0000_0000, FLAG_HAS_FLAGS | FLAG_READ_ONLY),
            [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 3]
        );
    }

    #[test]
    fn export_name_reply_pads_with_124_zeroes_unless_told_not_to() {
        assert_eq!(export_name_reply(1, 1, false).len(), 8 + 2 + 124);
        assert_eq!(
            export_name_reply(512, 1, true),
            [0, 0, 0, 0, 0, 0, 2, 0, 0, 1]
        );
    }

    #[test]
    fn simple_reply_is_magic_error_and_cookie() {
        let mut out = Vec::new();
        simple_reply(&mut out, EPERM, 7);
        assert_eq!(
            out,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7]
        );
    }

    #[test]
    fn offset_hole_chunk_has_a_12_byte_payload() {
        let mut out = Vec::new();
        offset_hole(&mut out, REPLY_FLAG_DONE, 9, 4096, 512);
        assert_eq!(
            out,
            [
                0x66, 0x8e, 0x33, 0xef, // magic
                0, 1, // DONE
                0, 2, // OFFSET_HOLE
                0, 0, 0, 0, 0, 0, 0, 9, // cookie
                0, 0, 0, 12, // payload length
                0, 0, 0, 0, 0, 0, 0x10, 0, // offset
                0, 0, 2, 0, // hole length
            ]
        );
    }

    #[test]
    fn block_status_chunk_lists_context_then_extents() {
        let mut out = Vec::new();
        block_status_chunk(&mut out, 0, 1, 2, &[(4096, STATE_HOLE | STATE_ZERO)]);
        assert_eq!(
            &out[4..],
            [
                0, 0, // flags
                0, 5, // BLOCK_STATUS
                0, 0, 0, 0, 0, 0, 0, 1, // cookie
                0, 0, 0, 12, // payload length
                0, 0, 0, 2, // context id
                0, 0, 0x10, 0, 0, 0, 0, 3, // one extent
            ]
        );
    }

    #[test]
    fn error_chunk_cuts_long_messages_on_a_character_boundary() {
        let mut out = Vec::new();
        let long = "é".repeat(3000);
        error_chunk(&mut out, 1, EIO, &long);
        let msg_len = u16::from_be_bytes([out[24], out[25]]) as usize;
        assert!(msg_len <= MAX_STRING);
        assert!(std::str::from_utf8(&out[26..26 + msg_len]).is_ok());
        assert_eq!(out.len(), 26 + msg_len);
    }
}
