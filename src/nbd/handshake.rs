//! The handshake: the server's greeting, the client's flags, then option haggling until the
//! client picks the export (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`) or leaves.
//!
//! Options this server does not know get `NBD_REP_ERR_UNSUP` and haggling goes on, as fixed
//! newstyle requires. Option data is read in full only up to [`proto::MAX_OPTION_LEN`];
//! longer options are skipped and refused, so a client cannot make the server allocate
//! more than that.

use super::proto::{self, BadOption, InfoRequest, MetaContextRequest, OptionHeader};
use super::Export;
use std::io::{self, Read, Write};

/// A metadata context a client can select for `NBD_CMD_BLOCK_STATUS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaContext {
    /// `base:allocation`: holes and zeros.
    BaseAllocation,
    /// `qemu:allocation-depth`: which layer of the backing chain holds each range.
    AllocationDepth,
    /// `qemu:dirty-bitmap:NAME`: which ranges the export's dirty bitmap marks changed.
    DirtyBitmap,
}

impl MetaContext {
    /// The context's name on the wire (`export` names its dirty bitmap).
    pub fn name(self, export: &Export) -> String {
        match self {
            MetaContext::BaseAllocation => "base:allocation".into(),
            MetaContext::AllocationDepth => "qemu:allocation-depth".into(),
            MetaContext::DirtyBitmap => export.dirty_context_name().unwrap_or_default(),
        }
    }

    /// The id this server gives the context (fixed for the life of the server).
    pub fn id(self) -> u32 {
        match self {
            MetaContext::BaseAllocation => 1,
            MetaContext::AllocationDepth => 2,
            MetaContext::DirtyBitmap => 3,
        }
    }
}

/// What a finished handshake agreed on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// The client asked for structured replies.
    pub structured: bool,
    /// The metadata contexts selected with `NBD_OPT_SET_META_CONTEXT`.
    pub contexts: Vec<MetaContext>,
}

/// How option haggling ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The client chose the export: go on to transmission.
    Transmission(Negotiated),
    /// The client asked for TLS and was told yes: start the TLS session on the socket,
    /// then haggle again inside it with [`Tls::Active`].
    StartTls,
    /// The client aborted, or broke a rule that ends the session.
    Closed,
}

/// Where a haggling session stands with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// The server has no TLS credentials: `NBD_OPT_STARTTLS` is refused.
    Off,
    /// The server requires TLS and it has not started: every option but `STARTTLS` and
    /// `ABORT` is refused with `NBD_REP_ERR_TLS_REQD`.
    Required,
    /// Inside the TLS session.
    Active,
}

/// The state of one haggling session.
struct Haggle<'a> {
    export: &'a Export,
    fixed: bool,
    no_zeroes: bool,
    tls: Tls,
    negotiated: Negotiated,
}

/// Run the whole handshake on `stream` for `export`, without TLS.
pub fn handshake<S: Read + Write>(stream: &mut S, export: &Export) -> io::Result<Outcome> {
    match greet(stream)? {
        Some(flags) => haggle(stream, export, flags, Tls::Off),
        None => Ok(Outcome::Closed),
    }
}

/// Send the greeting and read the client's flags; `None` when the client sets a flag this
/// server does not know (the session must end).
pub fn greet<S: Read + Write>(stream: &mut S) -> io::Result<Option<u32>> {
    stream.write_all(&proto::greeting())?;
    stream.flush()?;
    let mut flags = [0u8; 4];
    stream.read_exact(&mut flags)?;
    let client_flags = u32::from_be_bytes(flags);
    if client_flags & !proto::CLIENT_FLAGS_KNOWN != 0 {
        return Ok(None);
    }
    Ok(Some(client_flags))
}

/// Haggle over options on `stream` (after [`greet`] returned `client_flags`).
pub fn haggle<S: Read + Write>(
    stream: &mut S,
    export: &Export,
    client_flags: u32,
    tls: Tls,
) -> io::Result<Outcome> {
    let mut h = Haggle {
        export,
        fixed: client_flags & proto::FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: client_flags & proto::FLAG_C_NO_ZEROES != 0,
        tls,
        negotiated: Negotiated::default(),
    };
    loop {
        let mut header = [0u8; proto::OPTION_HEADER_LEN];
        stream.read_exact(&mut header)?;
        let opt = OptionHeader::parse(&header);
        if opt.magic != proto::OPTS_MAGIC {
            return Ok(Outcome::Closed);
        }
        if opt.length > proto::MAX_OPTION_LEN {
            skip(stream, u64::from(opt.length))?;
            reply_error(
                stream,
                opt.option,
                proto::REP_ERR_TOO_BIG,
                "option too long",
            )?;
            continue;
        }
        let mut data = vec![0u8; opt.length as usize];
        stream.read_exact(&mut data)?;
        if let Some(outcome) = h.option(stream, opt.option, &data)? {
            return Ok(outcome);
        }
    }
}

impl Haggle<'_> {
    /// Answer one option; `Some` when haggling is over.
    fn option<S: Write>(
        &mut self,
        s: &mut S,
        option: u32,
        data: &[u8],
    ) -> io::Result<Option<Outcome>> {
        if self.tls == Tls::Required && option != proto::OPT_STARTTLS {
            return match option {
                proto::OPT_EXPORT_NAME => Ok(Some(Outcome::Closed)),
                proto::OPT_ABORT => self.option_anyway(s, option, data),
                _ => reply_error(s, option, proto::REP_ERR_TLS_REQD, "TLS is required")
                    .map(|()| None),
            };
        }
        self.option_anyway(s, option, data)
    }

    /// Answer one option, TLS requirements aside.
    fn option_anyway<S: Write>(
        &mut self,
        s: &mut S,
        option: u32,
        data: &[u8],
    ) -> io::Result<Option<Outcome>> {
        if option == proto::OPT_EXPORT_NAME {
            return self.export_name(s, data).map(Some);
        }
        if !self.fixed {
            // Plain newstyle knows no other option and cannot be told so.
            return Ok(Some(Outcome::Closed));
        }
        match option {
            proto::OPT_ABORT => {
                // The reply is a courtesy: the client may already have hung up.
                let _ = send(s, &proto::option_reply(option, proto::REP_ACK, &[]));
                Ok(Some(Outcome::Closed))
            }
            proto::OPT_LIST => self.list(s, data).map(|()| None),
            proto::OPT_INFO | proto::OPT_GO => self.info_or_go(s, option, data),
            proto::OPT_STRUCTURED_REPLY => self.structured_reply(s, data).map(|()| None),
            proto::OPT_LIST_META_CONTEXT | proto::OPT_SET_META_CONTEXT => {
                self.meta_context(s, option, data).map(|()| None)
            }
            proto::OPT_STARTTLS => self.starttls(s, data),
            _ => {
                reply_error(s, option, proto::REP_ERR_UNSUP, "option not supported").map(|()| None)
            }
        }
    }

    fn starttls<S: Write>(&mut self, s: &mut S, data: &[u8]) -> io::Result<Option<Outcome>> {
        let option = proto::OPT_STARTTLS;
        let refuse = |s: &mut S, reply, why| reply_error(s, option, reply, why).map(|()| None);
        match self.tls {
            Tls::Off => refuse(s, proto::REP_ERR_POLICY, "TLS is not configured"),
            Tls::Active => refuse(s, proto::REP_ERR_INVALID, "TLS is already active"),
            Tls::Required if !data.is_empty() => refuse(s, proto::REP_ERR_INVALID, "data sent"),
            Tls::Required => {
                send(s, &proto::option_reply(option, proto::REP_ACK, &[]))?;
                Ok(Some(Outcome::StartTls))
            }
        }
    }

    fn export_name<S: Write>(&mut self, s: &mut S, data: &[u8]) -> io::Result<Outcome> {
        if data != self.export.config.name.as_bytes() {
            // No way to say no to NBD_OPT_EXPORT_NAME but hanging up.
            return Ok(Outcome::Closed);
        }
        let flags = self.export.transmission_flags(self.negotiated.structured);
        let reply = proto::export_name_reply(self.export.size, flags, self.no_zeroes);
        send(s, &reply)?;
        Ok(Outcome::Transmission(self.negotiated.clone()))
    }

    fn list<S: Write>(&self, s: &mut S, data: &[u8]) -> io::Result<()> {
        if !data.is_empty() {
            return reply_error(s, proto::OPT_LIST, proto::REP_ERR_INVALID, "data sent");
        }
        let config = &self.export.config;
        let server = proto::rep_server(&config.name, config.description.as_deref());
        s.write_all(&proto::option_reply(
            proto::OPT_LIST,
            proto::REP_SERVER,
            &server,
        ))?;
        send(
            s,
            &proto::option_reply(proto::OPT_LIST, proto::REP_ACK, &[]),
        )
    }

    fn structured_reply<S: Write>(&mut self, s: &mut S, data: &[u8]) -> io::Result<()> {
        let option = proto::OPT_STRUCTURED_REPLY;
        if !data.is_empty() {
            return reply_error(s, option, proto::REP_ERR_INVALID, "data sent");
        }
        if self.negotiated.structured {
            return reply_error(s, option, proto::REP_ERR_INVALID, "already negotiated");
        }
        self.negotiated.structured = true;
        send(s, &proto::option_reply(option, proto::REP_ACK, &[]))
    }

    fn info_or_go<S: Write>(
        &mut self,
        s: &mut S,
        option: u32,
        data: &[u8],
    ) -> io::Result<Option<Outcome>> {
        let req = match InfoRequest::parse(data) {
            Ok(r) => r,
            Err(BadOption(why)) => {
                return reply_error(s, option, proto::REP_ERR_INVALID, why).map(|()| None)
            }
        };
        let config = &self.export.config;
        if req.name != config.name {
            let msg = format!("export '{}' not present", req.name);
            return reply_error(s, option, proto::REP_ERR_UNKNOWN, &msg).map(|()| None);
        }
        let info = |data: &[u8]| proto::option_reply(option, proto::REP_INFO, data);
        if req.requests.contains(&proto::INFO_NAME) {
            s.write_all(&info(&proto::info_text(proto::INFO_NAME, &config.name)))?;
        }
        if let Some(d) = &config.description {
            if req.requests.contains(&proto::INFO_DESCRIPTION) {
                s.write_all(&info(&proto::info_text(proto::INFO_DESCRIPTION, d)))?;
            }
        }
        let block = proto::info_block_size(1, 4096, proto::MAX_PAYLOAD);
        s.write_all(&info(&block))?;
        let flags = self.export.transmission_flags(self.negotiated.structured);
        s.write_all(&info(&proto::info_export(self.export.size, flags)))?;
        send(s, &proto::option_reply(option, proto::REP_ACK, &[]))?;
        if option == proto::OPT_GO {
            return Ok(Some(Outcome::Transmission(self.negotiated.clone())));
        }
        Ok(None)
    }

    fn meta_context<S: Write>(&mut self, s: &mut S, option: u32, data: &[u8]) -> io::Result<()> {
        if !self.negotiated.structured {
            let why = "structured replies are not negotiated";
            return reply_error(s, option, proto::REP_ERR_INVALID, why);
        }
        let req = match MetaContextRequest::parse(data) {
            Ok(r) => r,
            Err(BadOption(why)) => return reply_error(s, option, proto::REP_ERR_INVALID, why),
        };
        if req.name != self.export.config.name {
            let msg = format!("export '{}' not present", req.name);
            return reply_error(s, option, proto::REP_ERR_UNKNOWN, &msg);
        }
        let listing = option == proto::OPT_LIST_META_CONTEXT;
        let available = self.available();
        let chosen = select_contexts(&available, &req.queries, listing);
        for c in &chosen {
            let name = available.iter().find(|(a, _)| a == c).map(|(_, n)| n);
            let body = proto::rep_meta_context(c.id(), name.map_or("", String::as_str));
            s.write_all(&proto::option_reply(option, proto::REP_META_CONTEXT, &body))?;
        }
        if !listing {
            self.negotiated.contexts = chosen;
        }
        send(s, &proto::option_reply(option, proto::REP_ACK, &[]))
    }

    /// The contexts this export offers, with their names.
    fn available(&self) -> Vec<(MetaContext, String)> {
        let mut v = vec![MetaContext::BaseAllocation];
        if self.export.config.allocation_depth {
            v.push(MetaContext::AllocationDepth);
        }
        if self.export.dirty_context_name().is_some() {
            v.push(MetaContext::DirtyBitmap);
        }
        v.into_iter().map(|c| (c, c.name(self.export))).collect()
    }
}

/// The contexts among `available` that `queries` select: a full name selects itself, a
/// namespace (`base:`, `qemu:`) every context in it. No query at all selects every context
/// when listing, and none when setting. Each context is chosen at most once.
pub fn select_contexts(
    available: &[(MetaContext, String)],
    queries: &[String],
    listing: bool,
) -> Vec<MetaContext> {
    if queries.is_empty() {
        return if listing {
            available.iter().map(|(c, _)| *c).collect()
        } else {
            Vec::new()
        };
    }
    let mut chosen = Vec::new();
    for q in queries {
        for (c, name) in available {
            let c = *c;
            let matches = name == q || (q.ends_with(':') && name.starts_with(q.as_str()));
            if matches && !chosen.contains(&c) {
                chosen.push(c);
            }
        }
    }
    chosen
}

/// An error reply with a human-readable message.
fn reply_error<S: Write>(s: &mut S, option: u32, reply: u32, message: &str) -> io::Result<()> {
    send(s, &proto::option_reply(option, reply, message.as_bytes()))
}

fn send<S: Write>(s: &mut S, bytes: &[u8]) -> io::Result<()> {
    s.write_all(bytes)?;
    s.flush()
}

/// Read and drop `len` bytes.
fn skip<R: Read>(r: &mut R, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(len), &mut io::sink())?;
    if copied < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::ExportConfig;
    use crate::raw::Raw;
    use crate::storage::MemStorage;

    fn export(config: ExportConfig) -> Export {
        let dev = Raw::open(MemStorage::from_vec(vec![0; 4096]), false).unwrap();
        Export::new(Box::new(dev), config)
    }

    /// A scripted client: what it sends, and everything the server answered.
    struct Script {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn option(opt: u32, data: &[u8]) -> Vec<u8> {
        let mut v = proto::OPTS_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&opt.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn run(export: &Export, client_flags: u32, options: &[Vec<u8>]) -> (Outcome, Vec<u8>) {
        let mut input = client_flags.to_be_bytes().to_vec();
        for o in options {
            input.extend_from_slice(o);
        }
        let mut s = Script {
            input: std::io::Cursor::new(input),
            output: Vec::new(),
        };
        let outcome = handshake(&mut s, export).unwrap_or(Outcome::Closed);
        (outcome, s.output)
    }

    /// The reply types in `out` after the greeting, in order.
    fn reply_types(out: &[u8]) -> Vec<u32> {
        let mut types = Vec::new();
        let mut rest = &out[18..];
        while rest.len() >= 20 {
            types.push(u32::from_be_bytes(rest[12..16].try_into().unwrap()));
            let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
            rest = &rest[20 + len..];
        }
        types
    }

    #[test]
    fn unknown_options_are_refused_and_haggling_continues_to_go() {
        let e = export(ExportConfig::default());
        let go = option(proto::OPT_GO, &[0, 0, 0, 0, 0, 0]);
        let (outcome, out) = run(&e, 1, &[option(42, b"junk"), go]);
        assert_eq!(outcome, Outcome::Transmission(Negotiated::default()));
        assert_eq!(
            reply_types(&out),
            [
                proto::REP_ERR_UNSUP,
                proto::REP_INFO,
                proto::REP_INFO,
                proto::REP_ACK
            ]
        );
    }

    fn run_tls(export: &Export, tls: Tls, options: &[Vec<u8>]) -> (Outcome, Vec<u8>) {
        let mut input = Vec::new();
        for o in options {
            input.extend_from_slice(o);
        }
        let mut s = Script {
            input: std::io::Cursor::new(input),
            output: vec![0; 18], // where the greeting would be
        };
        let outcome = haggle(&mut s, export, 1, tls).unwrap_or(Outcome::Closed);
        (outcome, s.output)
    }

    #[test]
    fn when_tls_is_required_options_are_refused_until_starttls() {
        let e = export(ExportConfig::default());
        let go = option(proto::OPT_GO, &[0, 0, 0, 0, 0, 0]);
        let start = option(proto::OPT_STARTTLS, &[]);
        let (outcome, out) = run_tls(
            &e,
            Tls::Required,
            &[go, option(proto::OPT_LIST, &[]), start],
        );
        assert_eq!(outcome, Outcome::StartTls);
        assert_eq!(
            reply_types(&out),
            [
                proto::REP_ERR_TLS_REQD,
                proto::REP_ERR_TLS_REQD,
                proto::REP_ACK
            ]
        );
        let name = option(proto::OPT_EXPORT_NAME, &[]);
        assert_eq!(run_tls(&e, Tls::Required, &[name]).0, Outcome::Closed);
    }

    #[test]
    fn starttls_is_refused_without_credentials_and_once_active() {
        let e = export(ExportConfig::default());
        let start = || option(proto::OPT_STARTTLS, &[]);
        let abort = || option(proto::OPT_ABORT, &[]);
        let (_, out) = run_tls(&e, Tls::Off, &[start(), abort()]);
        assert_eq!(reply_types(&out), [proto::REP_ERR_POLICY, proto::REP_ACK]);
        let (_, out) = run_tls(&e, Tls::Active, &[start(), abort()]);
        assert_eq!(reply_types(&out), [proto::REP_ERR_INVALID, proto::REP_ACK]);
    }

    #[test]
    fn unknown_client_flags_close_the_session() {
        let e = export(ExportConfig::default());
        let (outcome, _) = run(&e, 1 << 7, &[]);
        assert_eq!(outcome, Outcome::Closed);
    }

    #[test]
    fn go_for_another_name_is_unknown() {
        let e = export(ExportConfig::default());
        let go = option(proto::OPT_GO, &[0, 0, 0, 1, b'x', 0, 0]);
        let (_, out) = run(&e, 1, &[go, option(proto::OPT_ABORT, &[])]);
        assert_eq!(reply_types(&out), [proto::REP_ERR_UNKNOWN, proto::REP_ACK]);
    }

    #[test]
    fn oversized_options_are_skipped_and_refused() {
        let e = export(ExportConfig::default());
        let big = option(99, &vec![0; proto::MAX_OPTION_LEN as usize + 1]);
        let (_, out) = run(&e, 1, &[big, option(proto::OPT_ABORT, &[])]);
        assert_eq!(reply_types(&out), [proto::REP_ERR_TOO_BIG, proto::REP_ACK]);
    }

    #[test]
    fn set_meta_context_needs_structured_replies_first() {
        let e = export(ExportConfig::default());
        let mut q = vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5];
        q.extend_from_slice(b"base:");
        let set = option(proto::OPT_SET_META_CONTEXT, &q);
        let (_, out) = run(
            &e,
            1,
            &[
                set.clone(),
                option(proto::OPT_STRUCTURED_REPLY, &[]),
                set,
                option(proto::OPT_GO, &[0, 0, 0, 0, 0, 0]),
            ],
        );
        assert_eq!(
            reply_types(&out)[..4],
            [
                proto::REP_ERR_INVALID,
                proto::REP_ACK,
                proto::REP_META_CONTEXT,
                proto::REP_ACK
            ]
        );
    }

    #[test]
    fn namespace_queries_select_every_context_in_them_once() {
        let all = [
            (MetaContext::BaseAllocation, "base:allocation".to_string()),
            (MetaContext::AllocationDepth, "qemu:allocation-depth".into()),
        ];
        let q = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            select_contexts(&all, &q(&["qemu:", "qemu:allocation-depth"]), false),
            [MetaContext::AllocationDepth]
        );
        assert_eq!(
            select_contexts(&all, &[], true),
            [MetaContext::BaseAllocation, MetaContext::AllocationDepth]
        );
        assert!(select_contexts(&all, &[], false).is_empty());
        assert!(select_contexts(&all, &q(&["base:allocationX"]), false).is_empty());
        assert!(select_contexts(&all[..1], &q(&["qemu:"]), false).is_empty());
    }

    #[test]
    fn a_dirty_bitmap_is_listed_and_selected_by_its_name_or_namespace() {
        let source = crate::nbd::dirty::StaticRanges::new("b0", Vec::new());
        let e = export(ExportConfig::default()).with_dirty_bitmap(Box::new(source));
        let query = |q: &[&str]| {
            let mut d = vec![0, 0, 0, 0];
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            for s in q {
                d.extend_from_slice(&(s.len() as u32).to_be_bytes());
                d.extend_from_slice(s.as_bytes());
            }
            d
        };
        let options = [
            option(proto::OPT_STRUCTURED_REPLY, &[]),
            option(proto::OPT_LIST_META_CONTEXT, &query(&[])),
            option(proto::OPT_SET_META_CONTEXT, &query(&["qemu:dirty-bitmap:"])),
            option(proto::OPT_GO, &[0, 0, 0, 0, 0, 0]),
        ];
        let (outcome, out) = run(&e, 1, &options);
        let Outcome::Transmission(n) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(n.contexts, [MetaContext::DirtyBitmap]);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("qemu:dirty-bitmap:b0").count(), 2, "{text}");
        let id3 = [0, 0, 0, 3, b'q', b'e', b'm', b'u'];
        assert!(out.windows(8).any(|w| w == id3));
    }

    #[test]
    fn export_name_with_no_zeroes_answers_size_and_flags_only() {
        let e = export(ExportConfig::default());
        let (outcome, out) = run(&e, 3, &[option(proto::OPT_EXPORT_NAME, &[])]);
        assert!(matches!(outcome, Outcome::Transmission(_)));
        assert_eq!(out.len(), 18 + 10);
        assert_eq!(&out[18..26], 4096u64.to_be_bytes());
    }

    #[test]
    fn export_name_for_another_name_hangs_up() {
        let e = export(ExportConfig::default());
        let (outcome, out) = run(&e, 3, &[option(proto::OPT_EXPORT_NAME, b"nope")]);
        assert_eq!(outcome, Outcome::Closed);
        assert_eq!(out.len(), 18);
    }
}
