//! SIP messages: zero-copy parsing, typed header access and writing.
//!
//! [`parse`] frames a datagram into a [`Message`] that borrows it; typed
//! accessors ([`Message::top_via`], [`Message::cseq`], ...) interpret header
//! values on demand; [`build`] writes forwarded requests and responses,
//! local replies, ACK and CANCEL into caller-provided buffers. Nothing here
//! allocates on the per-packet path.

pub mod auth;
pub mod build;
mod chars;
pub mod error;
pub mod header;
pub mod method;
pub mod overload;
pub mod parse;
pub mod uri;

pub use error::{BuildError, ParseError};
pub use header::{param, parse_ip, split_comma, CSeq, HeaderName, NameAddr, SplitComma, Via};
pub use method::Method;
pub use parse::{parse, DialogInfo, Header, Message, RequestInfo, StartLine, Values};
pub use uri::Uri;
