//! Bencode codec for the ng protocol: zero-copy, allocation-free decoding and a
//! small order-checking encoder that appends to a caller buffer.
//!
//! Why not a crate: `bendy` (the only zero-copy decoder with a depth limit)
//! rejects dictionaries whose keys are not sorted, and RTPEngine's own replies
//! are not sorted (a `query` reply carries `last signal` before `SSRC` and
//! `result` after `totals`), so it cannot read what the daemon sends.
//! `serde_bencode` and `bt_bencode` decode into owned trees through serde and
//! have no nesting limit. The codec is ~400 lines; writing it was cheaper than
//! working around any of them.
//!
//! Decoding validates the whole input once, iteratively (no recursion, so
//! hostile nesting cannot blow the stack), under [`Limits`]. Lists and dicts
//! are then *views* over the validated bytes that iterate lazily, so decoding
//! never allocates. Dict lookups are linear scans, which suits ng replies
//! (a few dozen keys, decoded off the per-packet path).
//!
//! Accepted input is strict bencode except for dict key order: integers
//! without leading zeros or `-0`, string lengths without leading zeros, keys
//! that are byte strings, no trailing bytes. Unsorted and duplicate keys are
//! accepted because real peers send them; [`Dict::get`] returns the first.

use std::fmt;

use thiserror::Error;

/// Limits applied while decoding untrusted input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of lists/dicts allowed (the root container is depth
    /// 1). Values above [`Limits::MAX_DEPTH`] are treated as that maximum.
    pub max_depth: usize,
    /// Most values (scalars, containers and dict keys, all counted) allowed.
    pub max_elements: usize,
}

impl Limits {
    /// Hard ceiling on `max_depth`; the validator tracks one bit per level.
    pub const MAX_DEPTH: usize = 64;
}

impl Default for Limits {
    /// A `query` reply nests about 8 deep and holds a few hundred values;
    /// these defaults leave ample room while bounding the work per datagram.
    fn default() -> Self {
        Limits {
            max_depth: 32,
            max_elements: 16_384,
        }
    }
}

/// Why an input is not acceptable bencode. Positions are byte offsets.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("bencode: unexpected end of input at byte {0}")]
    Eof(usize),
    /// A byte that cannot start or continue a value here.
    #[error("bencode: unexpected byte {byte:#04x} at {pos}")]
    UnexpectedByte {
        /// Offset of the byte.
        pos: usize,
        /// The byte.
        byte: u8,
    },
    /// An integer with no digits, a leading zero, `-0` or a stray character.
    #[error("bencode: malformed integer at {0}")]
    InvalidInt(usize),
    /// An integer that does not fit in `i64`.
    #[error("bencode: integer out of range at {0}")]
    IntOverflow(usize),
    /// A string length with a leading zero, no digits or no `:`.
    #[error("bencode: malformed string length at {0}")]
    InvalidLength(usize),
    /// A string length larger than the rest of the input.
    #[error("bencode: string of {len} bytes at {pos} runs past the end of input")]
    LengthExceedsInput {
        /// Offset of the length prefix.
        pos: usize,
        /// The declared length (saturated at `usize::MAX`).
        len: usize,
    },
    /// A dict key that is an integer, list or dict.
    #[error("bencode: dict key at {0} is not a byte string")]
    NonStringKey(usize),
    /// A dict closed after a key with no value.
    #[error("bencode: dict key without value before {0}")]
    MissingValue(usize),
    /// Nesting deeper than the limit.
    #[error("bencode: nesting deeper than {0}")]
    TooDeep(usize),
    /// More values than the limit.
    #[error("bencode: more than {0} values")]
    TooManyElements(usize),
    /// Bytes after the end of the top-level value.
    #[error("bencode: trailing data at {0}")]
    TrailingData(usize),
}

/// Why an encoding was refused. The output buffer is restored to its length
/// before the failed top-level `write_*` call.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// Dict keys must be written in strictly ascending byte order.
    #[error("bencode: dict key {0:?} written out of order")]
    UnsortedKey(String),
    /// The same dict key written twice.
    #[error("bencode: duplicate dict key {0:?}")]
    DuplicateKey(String),
}

/// A decoded value borrowing the input.
///
/// Equality compares encodings, which for validated input is the same as
/// structural equality with dict order taken into account.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// `i…e`
    Int(i64),
    /// `N:…`
    Bytes(&'a [u8]),
    /// `l…e`
    List(List<'a>),
    /// `d…e`
    Dict(Dict<'a>),
}

/// A validated list; iterating it is lazy and allocation-free.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct List<'a> {
    body: &'a [u8],
}

/// A validated dict, in wire order; iterating it is lazy and allocation-free.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dict<'a> {
    body: &'a [u8],
}

/// Decodes one complete value with [`Limits::default`].
pub fn decode(input: &[u8]) -> Result<Value<'_>, DecodeError> {
    decode_with(input, Limits::default())
}

/// Decodes one complete value (no trailing bytes) under `limits`.
pub fn decode_with(input: &[u8], limits: Limits) -> Result<Value<'_>, DecodeError> {
    validate(input, limits)?;
    // Validation proved the shape, so the split cannot fail; the error arm
    // only keeps this path panic-free should the two ever disagree.
    match split_value(input) {
        Some((v, [])) => Ok(v),
        _ => Err(DecodeError::Eof(input.len())),
    }
}

/// Walks `input` once, checking syntax and limits without recursion.
fn validate(input: &[u8], limits: Limits) -> Result<(), DecodeError> {
    let max_depth = limits.max_depth.min(Limits::MAX_DEPTH);
    // Bit `d - 1` set when the container at depth `d` is a dict. Containers
    // are only ever values, never keys, so the only per-level state needed is
    // whether the innermost dict expects a key next (`expect_key`): on
    // returning to a dict its pending item was always a value.
    let mut dict_bits: u64 = 0;
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut elements = 0usize;
    let mut pos = 0usize;
    let in_dict = |bits: u64, depth: usize| depth > 0 && bits & (1u64 << (depth - 1)) != 0;

    loop {
        let b = *input.get(pos).ok_or(DecodeError::Eof(pos))?;
        if b == b'e' && depth > 0 {
            if in_dict(dict_bits, depth) && !expect_key {
                return Err(DecodeError::MissingValue(pos));
            }
            dict_bits &= !(1u64 << (depth - 1));
            depth -= 1;
            pos += 1;
            if depth == 0 {
                break;
            }
            expect_key = in_dict(dict_bits, depth);
            continue;
        }
        elements += 1;
        if elements > limits.max_elements {
            return Err(DecodeError::TooManyElements(limits.max_elements));
        }
        let is_key = in_dict(dict_bits, depth) && expect_key;
        match b {
            b'0'..=b'9' => {
                let (_, next) = parse_bytes(input, pos)?;
                pos = next;
            }
            b'i' | b'l' | b'd' if is_key => return Err(DecodeError::NonStringKey(pos)),
            b'i' => {
                let (_, next) = parse_int(input, pos)?;
                pos = next;
            }
            b'l' | b'd' => {
                if depth >= max_depth {
                    return Err(DecodeError::TooDeep(max_depth));
                }
                depth += 1;
                if b == b'd' {
                    dict_bits |= 1u64 << (depth - 1);
                }
                expect_key = b == b'd';
                pos += 1;
                continue;
            }
            _ => return Err(DecodeError::UnexpectedByte { pos, byte: b }),
        }
        // A scalar completed.
        if depth == 0 {
            break;
        }
        if in_dict(dict_bits, depth) {
            expect_key = !expect_key;
        }
    }
    if pos != input.len() {
        return Err(DecodeError::TrailingData(pos));
    }
    Ok(())
}

/// Parses `i…e` starting at `start` (which holds `i`); returns the value and
/// the offset after `e`.
fn parse_int(input: &[u8], start: usize) -> Result<(i64, usize), DecodeError> {
    let mut pos = start + 1;
    let neg = input.get(pos) == Some(&b'-');
    if neg {
        pos += 1;
    }
    let digits_start = pos;
    // Accumulate negatively so that i64::MIN parses without overflow.
    let mut acc: i64 = 0;
    loop {
        let b = *input.get(pos).ok_or(DecodeError::Eof(pos))?;
        match b {
            b'0'..=b'9' => {
                if pos > digits_start && input.get(digits_start) == Some(&b'0') {
                    return Err(DecodeError::InvalidInt(start));
                }
                acc = acc
                    .checked_mul(10)
                    .and_then(|a| a.checked_sub(i64::from(b - b'0')))
                    .ok_or(DecodeError::IntOverflow(start))?;
                pos += 1;
            }
            b'e' => break,
            _ => return Err(DecodeError::InvalidInt(start)),
        }
    }
    if pos == digits_start || (neg && acc == 0) {
        return Err(DecodeError::InvalidInt(start));
    }
    let v = if neg {
        acc
    } else {
        acc.checked_neg().ok_or(DecodeError::IntOverflow(start))?
    };
    Ok((v, pos + 1))
}

/// Parses `N:bytes` starting at `start`; returns the bytes and the offset
/// after them.
fn parse_bytes(input: &[u8], start: usize) -> Result<(&[u8], usize), DecodeError> {
    let mut pos = start;
    let mut len: usize = 0;
    let mut overflow = false;
    loop {
        let b = *input.get(pos).ok_or(DecodeError::Eof(pos))?;
        match b {
            b'0'..=b'9' => {
                if pos > start && input.get(start) == Some(&b'0') {
                    return Err(DecodeError::InvalidLength(start));
                }
                // Keep scanning on overflow so the error names the real cause
                // (the string cannot fit) rather than a syntax problem.
                match len
                    .checked_mul(10)
                    .and_then(|l| l.checked_add(usize::from(b - b'0')))
                {
                    Some(l) => len = l,
                    None => {
                        overflow = true;
                        len = usize::MAX;
                    }
                }
                pos += 1;
            }
            b':' => break,
            _ => return Err(DecodeError::InvalidLength(start)),
        }
    }
    if pos == start {
        return Err(DecodeError::InvalidLength(start));
    }
    let data_start = pos + 1;
    let end = match data_start.checked_add(len) {
        Some(end) if !overflow && end <= input.len() => end,
        _ => return Err(DecodeError::LengthExceedsInput { pos: start, len }),
    };
    let data = input
        .get(data_start..end)
        .ok_or(DecodeError::LengthExceedsInput { pos: start, len })?;
    Ok((data, end))
}

/// Splits the first value off already-validated bytes. Returns `None` instead
/// of panicking if the bytes are not valid after all.
fn split_value(buf: &[u8]) -> Option<(Value<'_>, &[u8])> {
    match *buf.first()? {
        b'i' => {
            let (v, next) = parse_int(buf, 0).ok()?;
            Some((Value::Int(v), buf.get(next..)?))
        }
        b'0'..=b'9' => {
            let (v, next) = parse_bytes(buf, 0).ok()?;
            Some((Value::Bytes(v), buf.get(next..)?))
        }
        c @ (b'l' | b'd') => {
            let end = container_end(buf)?;
            let body = buf.get(1..end)?;
            let rest = buf.get(end + 1..)?;
            let v = if c == b'l' {
                Value::List(List { body })
            } else {
                Value::Dict(Dict { body })
            };
            Some((v, rest))
        }
        _ => None,
    }
}

/// Offset of the `e` closing the container that starts at `buf[0]`.
fn container_end(buf: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut pos = 0usize;
    loop {
        match *buf.get(pos)? {
            b'l' | b'd' => {
                depth += 1;
                pos += 1;
            }
            b'e' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(pos);
                }
                pos += 1;
            }
            b'i' => pos = memchr::memchr(b'e', buf.get(pos..)?)? + pos + 1,
            b'0'..=b'9' => pos = parse_bytes(buf, pos).ok()?.1,
            _ => return None,
        }
    }
}

impl<'a> Value<'a> {
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match *self {
            Value::Int(v) => Some(v),
            _ => None,
        }
    }

    /// The byte string, if this is one.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The byte string as UTF-8, if this is a byte string holding UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The list, if this is one.
    pub fn as_list(&self) -> Option<List<'a>> {
        match *self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The dict, if this is one.
    pub fn as_dict(&self) -> Option<Dict<'a>> {
        match *self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Appends this value's encoding to `out`. Dict order is kept as decoded,
    /// so decode → encode reproduces the input byte for byte.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Value::Int(v) => write_int(out, v),
            Value::Bytes(b) => write_bytes(out, b),
            Value::List(l) => {
                out.push(b'l');
                out.extend_from_slice(l.body);
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                out.extend_from_slice(d.body);
                out.push(b'e');
            }
        }
    }
}

impl<'a> List<'a> {
    /// The elements, in order.
    pub fn iter(&self) -> ListIter<'a> {
        ListIter { rest: self.body }
    }

    /// Number of elements (walks the list).
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when the list has no elements.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The element at `index` (walks the list).
    pub fn get(&self, index: usize) -> Option<Value<'a>> {
        self.iter().nth(index)
    }
}

impl<'a> IntoIterator for List<'a> {
    type Item = Value<'a>;
    type IntoIter = ListIter<'a>;
    fn into_iter(self) -> ListIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`List`].
#[derive(Clone)]
pub struct ListIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ListIter<'a> {
    type Item = Value<'a>;
    fn next(&mut self) -> Option<Value<'a>> {
        let (v, rest) = split_value(self.rest)?;
        self.rest = rest;
        Some(v)
    }
}

impl<'a> Dict<'a> {
    /// The entries, in wire order.
    pub fn iter(&self) -> DictIter<'a> {
        DictIter { rest: self.body }
    }

    /// Number of entries (walks the dict).
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when the dict has no entries.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The value of the first entry with this key.
    pub fn get(&self, key: &[u8]) -> Option<Value<'a>> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The value of `key` if it is a byte string.
    pub fn get_bytes(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.get(key)?.as_bytes()
    }

    /// The value of `key` if it is a UTF-8 byte string.
    pub fn get_str(&self, key: &[u8]) -> Option<&'a str> {
        self.get(key)?.as_str()
    }

    /// The value of `key` if it is an integer.
    pub fn get_int(&self, key: &[u8]) -> Option<i64> {
        self.get(key)?.as_int()
    }

    /// The value of `key` if it is a list.
    pub fn get_list(&self, key: &[u8]) -> Option<List<'a>> {
        self.get(key)?.as_list()
    }

    /// The value of `key` if it is a dict.
    pub fn get_dict(&self, key: &[u8]) -> Option<Dict<'a>> {
        self.get(key)?.as_dict()
    }
}

impl<'a> IntoIterator for Dict<'a> {
    type Item = (&'a [u8], Value<'a>);
    type IntoIter = DictIter<'a>;
    fn into_iter(self) -> DictIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`Dict`]'s `(key, value)` entries.
#[derive(Clone)]
pub struct DictIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for DictIter<'a> {
    type Item = (&'a [u8], Value<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        let (k, rest) = split_value(self.rest)?;
        let (v, rest) = split_value(rest)?;
        self.rest = rest;
        Some((k.as_bytes()?, v))
    }
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Bytes(b) => write!(f, "b\"{}\"", b.escape_ascii()),
            Value::List(l) => l.fmt(f),
            Value::Dict(d) => d.fmt(f),
        }
    }
}

impl fmt::Debug for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl fmt::Debug for Dict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (Value::Bytes(k), v)))
            .finish()
    }
}

// ---------------------------------------------------------------- encoding

/// Appends `i<v>e`.
pub fn write_int(out: &mut Vec<u8>, v: i64) {
    out.push(b'i');
    push_decimal_i64(out, v);
    out.push(b'e');
}

/// Appends `<len>:<bytes>`.
pub fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    push_decimal_u64(out, b.len() as u64);
    out.push(b':');
    out.extend_from_slice(b);
}

/// Appends a list whose elements `f` writes. On error `out` is restored.
pub fn write_list(
    out: &mut Vec<u8>,
    f: impl FnOnce(&mut ListWriter<'_>),
) -> Result<(), EncodeError> {
    let start = out.len();
    let mut w = ListWriter::begin(out);
    f(&mut w);
    let r = w.end();
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Appends a dict whose entries `f` writes in ascending key order. On error
/// (keys out of order or repeated) `out` is restored.
pub fn write_dict(
    out: &mut Vec<u8>,
    f: impl FnOnce(&mut DictWriter<'_>),
) -> Result<(), EncodeError> {
    let start = out.len();
    let mut w = DictWriter::begin(out);
    f(&mut w);
    let r = w.end();
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Writes list elements; see [`write_list`]. The first error is kept and
/// reported when the outermost `write_*` returns.
pub struct ListWriter<'o> {
    out: &'o mut Vec<u8>,
    error: Option<EncodeError>,
}

impl<'o> ListWriter<'o> {
    fn begin(out: &'o mut Vec<u8>) -> Self {
        out.push(b'l');
        ListWriter { out, error: None }
    }

    fn end(self) -> Result<(), EncodeError> {
        self.out.push(b'e');
        self.error.map_or(Ok(()), Err)
    }

    /// Appends an integer element.
    pub fn int(&mut self, v: i64) -> &mut Self {
        write_int(self.out, v);
        self
    }

    /// Appends a byte-string element.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        write_bytes(self.out, b);
        self
    }

    /// Appends an already-decoded value verbatim.
    pub fn value(&mut self, v: &Value<'_>) -> &mut Self {
        v.encode(self.out);
        self
    }

    /// Appends a nested list.
    pub fn list(&mut self, f: impl FnOnce(&mut ListWriter<'_>)) -> &mut Self {
        let mut w = ListWriter::begin(self.out);
        f(&mut w);
        let r = w.end();
        keep_first(&mut self.error, r);
        self
    }

    /// Appends a nested dict.
    pub fn dict(&mut self, f: impl FnOnce(&mut DictWriter<'_>)) -> &mut Self {
        let mut w = DictWriter::begin(self.out);
        f(&mut w);
        let r = w.end();
        keep_first(&mut self.error, r);
        self
    }
}

/// Writes dict entries; see [`write_dict`]. Keys must come in strictly
/// ascending byte order, as bencode requires; the writer checks this against
/// the previous key already in the output buffer, so it needs no storage.
pub struct DictWriter<'o> {
    out: &'o mut Vec<u8>,
    last_key: Option<(usize, usize)>,
    error: Option<EncodeError>,
}

impl<'o> DictWriter<'o> {
    fn begin(out: &'o mut Vec<u8>) -> Self {
        out.push(b'd');
        DictWriter {
            out,
            last_key: None,
            error: None,
        }
    }

    fn end(self) -> Result<(), EncodeError> {
        self.out.push(b'e');
        self.error.map_or(Ok(()), Err)
    }

    fn key(&mut self, key: &[u8]) {
        if let Some((s, e)) = self.last_key {
            let prev = self.out.get(s..e).unwrap_or_default();
            if self.error.is_none() {
                match prev.cmp(key) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        self.error = Some(EncodeError::DuplicateKey(lossy(key)));
                    }
                    std::cmp::Ordering::Greater => {
                        self.error = Some(EncodeError::UnsortedKey(lossy(key)));
                    }
                }
            }
        }
        write_bytes(self.out, key);
        let end = self.out.len();
        self.last_key = Some((end - key.len(), end));
    }

    /// Writes `key` → integer.
    pub fn int(&mut self, key: &[u8], v: i64) -> &mut Self {
        self.key(key);
        write_int(self.out, v);
        self
    }

    /// Writes `key` → byte string.
    pub fn bytes(&mut self, key: &[u8], v: &[u8]) -> &mut Self {
        self.key(key);
        write_bytes(self.out, v);
        self
    }

    /// Writes `key` → an already-decoded value, verbatim.
    pub fn value(&mut self, key: &[u8], v: &Value<'_>) -> &mut Self {
        self.key(key);
        v.encode(self.out);
        self
    }

    /// Writes `key` → list.
    pub fn list(&mut self, key: &[u8], f: impl FnOnce(&mut ListWriter<'_>)) -> &mut Self {
        self.key(key);
        let mut w = ListWriter::begin(self.out);
        f(&mut w);
        let r = w.end();
        keep_first(&mut self.error, r);
        self
    }

    /// Writes `key` → dict.
    pub fn dict(&mut self, key: &[u8], f: impl FnOnce(&mut DictWriter<'_>)) -> &mut Self {
        self.key(key);
        let mut w = DictWriter::begin(self.out);
        f(&mut w);
        let r = w.end();
        keep_first(&mut self.error, r);
        self
    }
}

fn keep_first(slot: &mut Option<EncodeError>, r: Result<(), EncodeError>) {
    if let (None, Err(e)) = (&slot, r) {
        *slot = Some(e);
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn push_decimal_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_decimal_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_decimal_u64(out, v.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scalars() {
        assert_eq!(decode(b"i42e").unwrap(), Value::Int(42));
        assert_eq!(decode(b"i-42e").unwrap(), Value::Int(-42));
        assert_eq!(decode(b"i0e").unwrap(), Value::Int(0));
        assert_eq!(
            decode(b"i9223372036854775807e").unwrap(),
            Value::Int(i64::MAX)
        );
        assert_eq!(
            decode(b"i-9223372036854775808e").unwrap(),
            Value::Int(i64::MIN)
        );
        assert_eq!(decode(b"4:spam").unwrap(), Value::Bytes(b"spam"));
        assert_eq!(decode(b"0:").unwrap(), Value::Bytes(b""));
    }

    #[test]
    fn spec_examples() {
        // BEP 3's examples.
        let l = decode(b"l4:spam4:eggse").unwrap().as_list().unwrap();
        let items: Vec<_> = l.iter().map(|v| v.as_bytes().unwrap()).collect();
        assert_eq!(items, vec![&b"spam"[..], b"eggs"]);
        let d = decode(b"d3:cow3:moo4:spam4:eggse")
            .unwrap()
            .as_dict()
            .unwrap();
        assert_eq!(d.get_bytes(b"cow"), Some(&b"moo"[..]));
        assert_eq!(d.get_bytes(b"spam"), Some(&b"eggs"[..]));
        assert_eq!(d.len(), 2);
        let d = decode(b"d4:spaml1:a1:bee").unwrap().as_dict().unwrap();
        assert_eq!(d.get_list(b"spam").unwrap().len(), 2);
        assert!(decode(b"le").unwrap().as_list().unwrap().is_empty());
        assert!(decode(b"de").unwrap().as_dict().unwrap().is_empty());
    }

    #[test]
    fn real_rtpengine_reply_with_unsorted_keys() {
        let reply: &[u8] = b"d7:createdi1795458898e11:last signali1795458898e4:SSRCde\
6:totalsd3:RTPd7:packetsi0e5:bytesi0e6:errorsi0eee6:result2:oke";
        let d = decode(reply).unwrap().as_dict().unwrap();
        assert_eq!(d.get_str(b"result"), Some("ok"));
        assert_eq!(d.get_int(b"created"), Some(1795458898));
        let rtp = d.get_dict(b"totals").unwrap().get_dict(b"RTP").unwrap();
        assert_eq!(rtp.get_int(b"packets"), Some(0));
        assert!(d.get_dict(b"SSRC").unwrap().is_empty());
        assert_eq!(d.get(b"missing"), None);
    }

    #[test]
    fn malformed_integers() {
        for (input, want) in [
            (&b"i-0e"[..], DecodeError::InvalidInt(0)),
            (b"i03e", DecodeError::InvalidInt(0)),
            (b"i-03e", DecodeError::InvalidInt(0)),
            (b"i00e", DecodeError::InvalidInt(0)),
            (b"ie", DecodeError::InvalidInt(0)),
            (b"i-e", DecodeError::InvalidInt(0)),
            (b"i1-2e", DecodeError::InvalidInt(0)),
            (b"i+1e", DecodeError::InvalidInt(0)),
            (b"i 1e", DecodeError::InvalidInt(0)),
            (b"i9223372036854775808e", DecodeError::IntOverflow(0)),
            (b"i-9223372036854775809e", DecodeError::IntOverflow(0)),
            (b"i99999999999999999999999999e", DecodeError::IntOverflow(0)),
            (b"i12", DecodeError::Eof(3)),
            (b"i", DecodeError::Eof(1)),
        ] {
            assert_eq!(
                decode(input),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn malformed_strings() {
        assert_eq!(decode(b"04:spam"), Err(DecodeError::InvalidLength(0)));
        assert_eq!(decode(b"00:"), Err(DecodeError::InvalidLength(0)));
        assert_eq!(decode(b"4spam"), Err(DecodeError::InvalidLength(0)));
        assert_eq!(decode(b"4"), Err(DecodeError::Eof(1)));
        assert_eq!(
            decode(b"5:spam"),
            Err(DecodeError::LengthExceedsInput { pos: 0, len: 5 })
        );
        assert_eq!(
            decode(b"18446744073709551615:x"),
            Err(DecodeError::LengthExceedsInput {
                pos: 0,
                len: usize::MAX
            })
        );
        assert!(matches!(
            decode(b"99999999999999999999999999999:x"),
            Err(DecodeError::LengthExceedsInput { .. })
        ));
        assert!(matches!(
            decode(b"l1000000:abce"),
            Err(DecodeError::LengthExceedsInput { pos: 1, .. })
        ));
    }

    #[test]
    fn malformed_structure() {
        assert_eq!(decode(b""), Err(DecodeError::Eof(0)));
        assert_eq!(decode(b"l"), Err(DecodeError::Eof(1)));
        assert_eq!(decode(b"li1e"), Err(DecodeError::Eof(4)));
        assert_eq!(decode(b"d3:cow"), Err(DecodeError::Eof(6)));
        assert_eq!(decode(b"d3:cowe"), Err(DecodeError::MissingValue(6)));
        assert_eq!(decode(b"di1ei2ee"), Err(DecodeError::NonStringKey(1)));
        assert_eq!(decode(b"dlei2ee"), Err(DecodeError::NonStringKey(1)));
        assert_eq!(
            decode(b"d1:ad1:bdi1ei2eeee"),
            Err(DecodeError::NonStringKey(9))
        );
        assert_eq!(
            decode(b"e"),
            Err(DecodeError::UnexpectedByte { pos: 0, byte: b'e' })
        );
        assert_eq!(
            decode(b"x"),
            Err(DecodeError::UnexpectedByte { pos: 0, byte: b'x' })
        );
        assert_eq!(decode(b"i1ei2e"), Err(DecodeError::TrailingData(3)));
        assert_eq!(decode(b"lee"), Err(DecodeError::TrailingData(2)));
        assert_eq!(decode(b"4:spam "), Err(DecodeError::TrailingData(6)));
        // After a nested container closes, the outer dict needs a key again.
        assert_eq!(decode(b"d1:alei1ee"), Err(DecodeError::NonStringKey(6)));
        assert!(decode(b"d1:ale1:bi1ee").is_ok());
    }

    #[test]
    fn hostile_depth_is_refused_without_recursion() {
        let mut deep = vec![b'l'; 1_000_000];
        deep.extend(vec![b'e'; 1_000_000]);
        assert_eq!(decode(&deep), Err(DecodeError::TooDeep(32)));
        // Exactly at the limit is fine, one more is not.
        let at = |n: usize| {
            let mut v = vec![b'l'; n];
            v.extend(vec![b'e'; n]);
            v
        };
        assert!(decode(&at(32)).is_ok());
        assert_eq!(decode(&at(33)), Err(DecodeError::TooDeep(32)));
        // Limits above the hard ceiling are clamped.
        let l = Limits {
            max_depth: 10_000,
            max_elements: usize::MAX,
        };
        assert!(decode_with(&at(64), l).is_ok());
        assert_eq!(decode_with(&at(65), l), Err(DecodeError::TooDeep(64)));
        // Deep dicts too, and unclosed deep input.
        let mut dd = Vec::new();
        for _ in 0..40 {
            dd.extend_from_slice(b"d1:k");
        }
        assert_eq!(decode(&dd), Err(DecodeError::TooDeep(32)));
    }

    #[test]
    fn element_limit() {
        let mut many = vec![b'l'];
        for _ in 0..100 {
            many.extend_from_slice(b"i1e");
        }
        many.push(b'e');
        let l = Limits {
            max_depth: 4,
            max_elements: 50,
        };
        assert_eq!(decode_with(&many, l), Err(DecodeError::TooManyElements(50)));
        let l = Limits {
            max_depth: 4,
            max_elements: 101,
        };
        assert_eq!(decode_with(&many, l).unwrap().as_list().unwrap().len(), 100);
    }

    #[test]
    fn strings_containing_structure_bytes() {
        let v = decode(b"d1:el2:ee1:iee").unwrap();
        let d = v.as_dict().unwrap();
        let l = d.get_list(b"e").unwrap();
        assert_eq!(l.get(0).unwrap().as_bytes(), Some(&b"ee"[..]));
        assert_eq!(l.get(1).unwrap().as_bytes(), Some(&b"i"[..]));
        assert_eq!(l.get(2), None);
        let mut out = Vec::new();
        v.encode(&mut out);
        assert_eq!(out, b"d1:el2:ee1:iee");
    }

    #[test]
    fn writer_builds_sorted_dicts() {
        let mut out = Vec::new();
        let r = write_dict(&mut out, |d| {
            d.bytes(b"b", b"").bytes(b"a", b"");
        });
        assert_eq!(r, Err(EncodeError::UnsortedKey("a".into())));
        assert!(out.is_empty(), "buffer restored on error");
        out.extend_from_slice(b"XY ");
        let r = write_dict(&mut out, |d| {
            d.dict(b"x", |d| {
                d.int(b"k", 1).int(b"k", 2);
            });
        });
        assert_eq!(r, Err(EncodeError::DuplicateKey("k".into())));
        assert_eq!(out, b"XY ", "only the failed value is removed");

        let mut out = Vec::new();
        write_dict(&mut out, |d| {
            d.bytes(b"call-id", b"abc")
                .dict(b"codec", |c| {
                    c.list(b"mask", |l| {
                        l.bytes(b"all");
                    });
                })
                .bytes(b"command", b"offer")
                .list(b"flags", |l| {
                    l.bytes(b"trust-address").int(-7).list(|_| {});
                })
                .int(b"z", 0);
        })
        .unwrap();
        assert_eq!(
            out,
            &b"d7:call-id3:abc5:codecd4:maskl3:allee7:command5:offer\
5:flagsl13:trust-addressi-7elee1:zi0ee"[..]
        );
        assert!(decode(&out).is_ok());
    }

    #[test]
    fn writer_rejects_unsorted_nested_in_list() {
        let mut out = Vec::new();
        let r = write_list(&mut out, |l| {
            l.int(1).dict(|d| {
                d.int(b"b", 1).int(b"a", 2);
            });
        });
        assert!(matches!(r, Err(EncodeError::UnsortedKey(_))));
        assert!(out.is_empty());
    }

    #[test]
    fn debug_is_readable() {
        let v = decode(b"d3:sdp3:v=03:seql1:ai3eee").unwrap();
        assert_eq!(format!("{v:?}"), r#"{b"sdp": b"v=0", b"seq": [b"a", 3]}"#);
    }

    // ---- property tests

    /// An owned model of a bencode value; dict keys sorted and unique.
    #[derive(Clone, Debug)]
    enum Model {
        Int(i64),
        Bytes(Vec<u8>),
        List(Vec<Model>),
        Dict(std::collections::BTreeMap<Vec<u8>, Model>),
    }

    fn model() -> impl Strategy<Value = Model> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Model::Int),
            prop::collection::vec(any::<u8>(), 0..12).prop_map(Model::Bytes),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Model::List),
                prop::collection::btree_map(prop::collection::vec(any::<u8>(), 0..6), inner, 0..6)
                    .prop_map(Model::Dict),
            ]
        })
    }

    fn write_model_list(l: &mut ListWriter<'_>, m: &Model) {
        match m {
            Model::Int(v) => {
                l.int(*v);
            }
            Model::Bytes(b) => {
                l.bytes(b);
            }
            Model::List(items) => {
                l.list(|l| items.iter().for_each(|m| write_model_list(l, m)));
            }
            Model::Dict(entries) => {
                l.dict(|d| entries.iter().for_each(|(k, m)| write_model_dict(d, k, m)));
            }
        }
    }

    fn write_model_dict(d: &mut DictWriter<'_>, k: &[u8], m: &Model) {
        match m {
            Model::Int(v) => {
                d.int(k, *v);
            }
            Model::Bytes(b) => {
                d.bytes(k, b);
            }
            Model::List(items) => {
                d.list(k, |l| items.iter().for_each(|m| write_model_list(l, m)));
            }
            Model::Dict(entries) => {
                d.dict(k, |d| {
                    entries.iter().for_each(|(k, m)| write_model_dict(d, k, m))
                });
            }
        }
    }

    fn encode_model(m: &Model) -> Vec<u8> {
        // Wrap in a list so scalars and containers share one writer path,
        // then strip the wrapper.
        let mut out = Vec::new();
        write_list(&mut out, |l| write_model_list(l, m)).unwrap();
        out[1..out.len() - 1].to_vec()
    }

    fn same(m: &Model, v: &Value<'_>) -> bool {
        match (m, v) {
            (Model::Int(a), Value::Int(b)) => a == b,
            (Model::Bytes(a), Value::Bytes(b)) => a.as_slice() == *b,
            (Model::List(a), Value::List(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(m, v)| same(m, &v))
            }
            (Model::Dict(a), Value::Dict(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b.iter())
                        .all(|((mk, mv), (k, v))| mk.as_slice() == k && same(mv, &v))
            }
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn round_trip(m in model()) {
            let bytes = encode_model(&m);
            let v = decode_with(&bytes, Limits { max_depth: 64, max_elements: usize::MAX })
                .unwrap();
            prop_assert!(same(&m, &v), "{m:?} vs {v:?}");
            let mut again = Vec::new();
            v.encode(&mut again);
            prop_assert_eq!(again, bytes);
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(v) = decode(&bytes) {
                // Anything accepted must re-encode to exactly the input.
                let mut again = Vec::new();
                v.encode(&mut again);
                prop_assert_eq!(again, bytes);
            }
        }

        #[test]
        fn decode_never_panics_on_bencode_alphabet(
            bytes in prop::collection::vec(
                prop::sample::select(b"ilde0123456789:-x".to_vec()), 0..128)
        ) {
            if let Ok(v) = decode(&bytes) {
                let mut again = Vec::new();
                v.encode(&mut again);
                prop_assert_eq!(again, bytes);
            }
        }

        #[test]
        fn mutated_valid_input_never_panics(
            m in model(), idx in any::<prop::sample::Index>(), byte in any::<u8>(),
            cut in any::<prop::sample::Index>()
        ) {
            let mut bytes = encode_model(&m);
            let i = idx.index(bytes.len());
            bytes[i] = byte;
            if let Ok(v) = decode(&bytes) {
                walk(&v);
            }
            let c = cut.index(bytes.len());
            if let Ok(v) = decode(&bytes[..c]) {
                walk(&v);
            }
        }
    }

    /// Touches every node, so lazy iteration is exercised on odd inputs.
    fn walk(v: &Value<'_>) -> usize {
        match v {
            Value::List(l) => l.iter().map(|v| walk(&v)).sum::<usize>() + 1,
            Value::Dict(d) => d.iter().map(|(_, v)| walk(&v)).sum::<usize>() + 1,
            _ => 1,
        }
    }
}
