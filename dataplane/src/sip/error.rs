//! Errors of the SIP parser and writer.
//!
//! Both enums are `Copy` and carry no heap data, so the hot path can return
//! them freely. Their `Display` text is short and safe to put in a `Warning`
//! header of a locally generated 400 (no quotes, no control characters).

use super::header::HeaderName;

/// Why a message could not be framed, or why one of its headers is unusable.
///
/// `parse()` returns only the framing variants (start line, header lines,
/// Content-Length/body, limits). Header-level variants come from the typed
/// accessors and `validate_request()`, so a proxy can still answer 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The datagram was empty or held only line breaks (a keep-alive).
    #[error("empty message")]
    Empty,
    /// Larger than [`super::parse::MAX_MESSAGE_LEN`].
    #[error("message too large")]
    TooLarge,
    /// A line lacks its line terminator: the datagram was cut short.
    #[error("message truncated")]
    Truncated,
    /// The request line is not `Method SP Request-URI SP SIP-Version`.
    #[error("malformed request line")]
    BadRequestLine,
    /// The status line is not `SIP-Version SP 3DIGIT SP Reason-Phrase`.
    #[error("malformed status line")]
    BadStatusLine,
    /// A SIP version other than SIP/2.0.
    #[error("unsupported SIP version")]
    UnsupportedVersion,
    /// A header line without a colon, with an empty or non-token name, or a
    /// continuation line with no header before it.
    #[error("malformed header line")]
    BadHeaderLine,
    /// One header (with its continuation lines) exceeds
    /// [`super::parse::MAX_HEADER_LEN`].
    #[error("header line too long")]
    HeaderTooLong,
    /// More than [`super::parse::MAX_HEADERS`] header lines.
    #[error("too many headers")]
    TooManyHeaders,
    /// Content-Length is not a decimal number within range.
    #[error("bad Content-Length")]
    BadContentLength,
    /// Several Content-Length headers with different values.
    #[error("conflicting Content-Length headers")]
    ConflictingContentLength,
    /// Content-Length announces more bytes than the datagram holds.
    #[error("body shorter than Content-Length")]
    BodyTruncated,
    /// A mandatory header is absent.
    #[error("missing {0} header")]
    Missing(HeaderName),
    /// A header that must appear once appears several times.
    #[error("duplicate {0} header")]
    Duplicate(HeaderName),
    /// The Via value does not follow RFC 3261 §20.42.
    #[error("bad Via header")]
    BadVia,
    /// The Via branch is empty or only the magic cookie (RFC 4475 §3.2.1).
    #[error("bad Via branch")]
    BadBranch,
    /// CSeq is not `number SP method`, or the number is 2**31 or more.
    #[error("bad CSeq header")]
    BadCSeq,
    /// The CSeq method differs from the request method.
    #[error("CSeq method does not match request method")]
    CSeqMethodMismatch,
    /// Call-ID is empty or contains whitespace.
    #[error("bad Call-ID header")]
    BadCallId,
    /// Max-Forwards is not a number from 0 to 255.
    #[error("bad Max-Forwards header")]
    BadMaxForwards,
    /// The From value is not a valid name-addr or addr-spec.
    #[error("bad From header")]
    BadFrom,
    /// The To value is not a valid name-addr or addr-spec.
    #[error("bad To header")]
    BadTo,
    /// A name-addr / addr-spec value (Contact, Route, ...) is malformed.
    #[error("bad address")]
    BadNameAddr,
    /// A URI is malformed (scheme, host, port or forbidden characters).
    #[error("bad URI")]
    BadUri,
    /// The URI scheme is neither sip, sips nor tel (answer 416).
    #[error("unsupported URI scheme")]
    UnsupportedScheme,
    /// The Request-URI carries `?headers`, which RFC 3261 §19.1.1 forbids there.
    #[error("headers not allowed in Request-URI")]
    HeadersInRequestUri,
    /// `validate_request()` was called on a response.
    #[error("not a request")]
    NotARequest,
    /// `validate_response()` was called on a request.
    #[error("not a response")]
    NotAResponse,
}

/// Why a message could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Max-Forwards is 0: the caller should answer 483 Too Many Hops.
    #[error("too many hops")]
    TooManyHops,
    /// A request was expected.
    #[error("not a request")]
    NotARequest,
    /// A response was expected.
    #[error("not a response")]
    NotAResponse,
    /// `ack_for` / `cancel_for` need the INVITE they refer to.
    #[error("not an INVITE")]
    NotAnInvite,
    /// The message has no Via header to copy or pop.
    #[error("no Via header")]
    NoVia,
    /// `pop_routes` asks for more Route entries than the request has.
    #[error("fewer Route entries than requested to pop")]
    RouteUnderflow,
    /// Status codes are 100..=699.
    #[error("bad status code")]
    BadStatusCode,
    /// A header needed for writing is missing or malformed.
    #[error(transparent)]
    Parse(#[from] ParseError),
}
