//! The on-disk spool: rows that could not be written to the database, in
//! order, until it is back.
//!
//! File layout: an 8-byte header `SVACCJ01`, then records
//! `[len: u32 LE][crc32 of payload: u32 LE][payload: len bytes]`. A payload
//! is one row tagged with the stream and sequence number it was given when it
//! was built:
//!
//! ```text
//! stream u64 | seq u64 | table u8 | ncols u16 | ncols × (name_len u16, name, kind u8, value)
//! value: kind 0 text (len u32, UTF-8) | 1 time (unix ms u64) | 2 real (f64 bits u64)
//! ```
//!
//! (all integers little-endian). Opening the file checks every record; the
//! first one that is cut short or fails its CRC ends the journal there (the
//! file is truncated at it, and what followed is counted as lost): a crash
//! while appending costs at most the rows being appended.
//!
//! The journal itself does not know what the database holds: the writer
//! skips rows whose (stream, seq) the database already has (see
//! `writer.rs`). Once every record has been handed over and committed, the
//! file is cut back to its header.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::row::{Row, Table, Value};

/// First bytes of a journal file (format version 1).
pub const MAGIC: &[u8; 8] = b"SVACCJ01";
/// Bytes of a record's frame (length and CRC) before its payload.
pub const FRAME: usize = 8;
/// Largest payload accepted when decoding; bigger lengths mean corruption.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// A spooled row and where it belongs in its stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The writer instance that built the row (random per process start).
    pub stream: u64,
    /// Its position in that stream, from 0, without gaps.
    pub seq: u64,
    pub row: Row,
}

/// What decoding found at the start of a buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// A record and the bytes it took.
    Record(Record, usize),
    /// Too few bytes for the record the frame announces (a cut tail).
    Incomplete,
    /// Not a valid record (bad CRC, impossible length, bad contents).
    Corrupt(&'static str),
}

/// Appends the framed record to `out`.
pub fn encode(rec: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    out.extend_from_slice(&rec.stream.to_le_bytes());
    out.extend_from_slice(&rec.seq.to_le_bytes());
    out.push(rec.row.table.code());
    out.extend_from_slice(&(rec.row.cols.len().min(u16::MAX as usize) as u16).to_le_bytes());
    for (name, v) in rec.row.cols.iter().take(u16::MAX as usize) {
        let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        match v {
            Value::Text(s) => {
                out.push(0);
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Time(ms) => {
                out.push(1);
                out.extend_from_slice(&ms.to_le_bytes());
            }
            Value::Real(x) => {
                out.push(2);
                out.extend_from_slice(&x.to_bits().to_le_bytes());
            }
        }
    }
    let payload = &out[start + FRAME..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < FRAME {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt("record length out of range");
    }
    let Some(payload) = buf.get(FRAME..FRAME + len) else {
        return Decoded::Incomplete;
    };
    if crc32fast::hash(payload) != crc {
        return Decoded::Corrupt("CRC mismatch");
    }
    match payload_of(payload) {
        Some(rec) => Decoded::Record(rec, FRAME + len),
        None => Decoded::Corrupt("malformed record"),
    }
}

fn payload_of(p: &[u8]) -> Option<Record> {
    let mut r = Reader(p);
    let stream = r.u64()?;
    let seq = r.u64()?;
    let table = Table::from_code(r.u8()?)?;
    let n = r.u16()?;
    let mut cols = Vec::with_capacity(usize::from(n).min(64));
    for _ in 0..n {
        let name_len = usize::from(r.u16()?);
        let name: Arc<str> = std::str::from_utf8(r.take(name_len)?).ok()?.into();
        let v = match r.u8()? {
            0 => {
                let l = r.u32()? as usize;
                Value::Text(std::str::from_utf8(r.take(l)?).ok()?.into())
            }
            1 => Value::Time(r.u64()?),
            2 => Value::Real(f64::from_bits(r.u64()?)),
            _ => return None,
        };
        cols.push((name, v));
    }
    r.0.is_empty().then_some(Record {
        stream,
        seq,
        row: Row { table, cols },
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// What [`Journal::open`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Valid records waiting to be written.
    pub records: u64,
    /// Bytes cut off the end because they did not form valid records.
    pub truncated_bytes: u64,
}

/// The spool file: appended at its end, consumed from a read position.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// End of the valid data.
    len: u64,
    /// Start of the first record not yet handed to the database.
    read_pos: u64,
    /// Records between `read_pos` and `len`.
    waiting: u64,
    max_bytes: u64,
    buf: Vec<u8>,
}

impl Journal {
    /// Opens (creating it and its directory if needed) the journal at
    /// `path`, which may grow to `max_bytes` (header included). Every record
    /// is checked; an invalid tail is cut off.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<(Journal, OpenReport)> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let mut report = OpenReport::default();
        let mut end = MAGIC.len();
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            if !data.is_empty() {
                // Not ours, or a header cut short: nothing in it can be trusted.
                report.truncated_bytes = data.len() as u64;
            }
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(MAGIC)?;
            file.sync_data()?;
        } else {
            while end < data.len() {
                match decode(&data[end..]) {
                    Decoded::Record(_, n) => {
                        end += n;
                        report.records += 1;
                    }
                    Decoded::Incomplete | Decoded::Corrupt(_) => break,
                }
            }
            if end < data.len() {
                report.truncated_bytes = (data.len() - end) as u64;
                file.set_len(end as u64)?;
                file.sync_data()?;
            }
        }
        Ok((
            Journal {
                path: path.to_owned(),
                file,
                len: end as u64,
                read_pos: MAGIC.len() as u64,
                waiting: report.records,
                max_bytes: max_bytes.max(MAGIC.len() as u64),
                buf: Vec::new(),
            },
            report,
        ))
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file (valid data).
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Records not yet handed over and committed.
    pub fn waiting(&self) -> u64 {
        self.waiting
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting == 0
    }

    /// Appends records in order until one would grow the file past
    /// `max_bytes`; that one and every later one are refused (a gap in the
    /// middle would reorder rows). Returns how many were appended; the rest
    /// are the caller's to count as dropped. Data reaches the disk with the
    /// next [`sync`](Self::sync).
    pub fn append(&mut self, recs: &[Record]) -> io::Result<usize> {
        self.buf.clear();
        let mut n = 0;
        for r in recs {
            let before = self.buf.len();
            encode(r, &mut self.buf);
            if self.len + self.buf.len() as u64 > self.max_bytes {
                self.buf.truncate(before);
                break;
            }
            n += 1;
        }
        if !self.buf.is_empty() {
            self.file.seek(SeekFrom::Start(self.len))?;
            if let Err(e) = self.file.write_all(&self.buf) {
                // Whatever part landed is cut off again: the file stays valid.
                let _ = self.file.set_len(self.len);
                return Err(e);
            }
            self.len += self.buf.len() as u64;
            self.waiting += n as u64;
        }
        Ok(n)
    }

    /// Flushes appended records to the disk.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Up to `max` records from the read position, with the position after
    /// each; nothing is consumed until [`consumed`](Self::consumed). A record
    /// that no longer decodes ends the journal there: it and everything after
    /// it are cut off, and `lost` tells how many records that was.
    pub fn peek(&mut self, max: usize) -> io::Result<Peeked> {
        let mut out = Peeked::default();
        if self.is_empty() || max == 0 {
            return Ok(out);
        }
        // Read a window; records larger than it are read whole below.
        let want = (self.len - self.read_pos).min(256 * 1024) as usize;
        let mut data = vec![0; want];
        self.file.seek(SeekFrom::Start(self.read_pos))?;
        self.file.read_exact(&mut data)?;
        let mut off = 0usize;
        while out.records.len() < max && (self.read_pos + off as u64) < self.len {
            match decode(&data[off..]) {
                Decoded::Record(rec, n) => {
                    off += n;
                    out.records.push((rec, self.read_pos + off as u64));
                }
                Decoded::Incomplete if !out.records.is_empty() => break,
                Decoded::Incomplete if data.len() < (self.len - self.read_pos) as usize => {
                    // One record bigger than the window: read it whole.
                    let frame_len = data
                        .get(..4)
                        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
                    let whole = (FRAME + frame_len.min(MAX_PAYLOAD))
                        .min((self.len - self.read_pos) as usize);
                    data = vec![0; whole];
                    self.file.seek(SeekFrom::Start(self.read_pos))?;
                    self.file.read_exact(&mut data)?;
                }
                Decoded::Incomplete | Decoded::Corrupt(_) => {
                    let at = self.read_pos + off as u64;
                    out.lost = self.waiting.saturating_sub(out.records.len() as u64);
                    self.file.set_len(at)?;
                    self.len = at;
                    self.waiting = out.records.len() as u64;
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Marks the records up to `pos` (a position [`peek`](Self::peek)
    /// returned) as written, `n` of them. When nothing waits any more the
    /// file is cut back to its header.
    pub fn consumed(&mut self, pos: u64, n: u64) -> io::Result<()> {
        self.read_pos = pos.min(self.len);
        self.waiting = self.waiting.saturating_sub(n);
        if self.read_pos >= self.len {
            self.waiting = 0;
            self.file.set_len(MAGIC.len() as u64)?;
            self.file.sync_data()?;
            self.len = MAGIC.len() as u64;
            self.read_pos = self.len;
        }
        Ok(())
    }
}

/// Records [`Journal::peek`] returned.
#[derive(Debug, Default)]
pub struct Peeked {
    /// Records with the file position just after each.
    pub records: Vec<(Record, u64)>,
    /// Records lost to corruption found while reading.
    pub lost: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(stream: u64, seq: u64) -> Record {
        Record {
            stream,
            seq,
            row: Row {
                table: if seq.is_multiple_of(2) {
                    Table::Acc
                } else {
                    Table::Missed
                },
                cols: vec![
                    ("method".into(), Value::Text("INVITE".into())),
                    ("callid".into(), Value::Text(format!("call-{seq}-ü").into())),
                    ("time".into(), Value::Time(1_700_000_000_000 + seq)),
                    ("duration".into(), Value::Real(seq as f64 / 3.0)),
                ],
            },
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("sipvane-acc-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn codec_round_trips_and_rejects_damage() {
        let mut buf = Vec::new();
        encode(&rec(7, 3), &mut buf);
        let n = buf.len();
        assert_eq!(decode(&buf), Decoded::Record(rec(7, 3), n));
        assert_eq!(decode(&buf[..n - 1]), Decoded::Incomplete);
        assert_eq!(decode(&buf[..3]), Decoded::Incomplete);
        let mut bad = buf.clone();
        bad[n - 2] ^= 0x40;
        assert_eq!(decode(&bad), Decoded::Corrupt("CRC mismatch"));
        let mut huge = buf.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&huge),
            Decoded::Corrupt("record length out of range")
        );
    }

    #[test]
    fn replays_in_order_across_reopen_and_empties() {
        let d = dir("order");
        let path = d.join("acc.spool");
        let (mut j, rep) = Journal::open(&path, 1 << 20).unwrap();
        assert_eq!(rep, OpenReport::default());
        let recs: Vec<Record> = (0..10).map(|i| rec(1, i)).collect();
        assert_eq!(j.append(&recs[..6]).unwrap(), 6);
        assert_eq!(j.append(&recs[6..]).unwrap(), 4);
        j.sync().unwrap();
        drop(j);

        let (mut j, rep) = Journal::open(&path, 1 << 20).unwrap();
        assert_eq!(rep.records, 10);
        let p = j.peek(4).unwrap();
        let seqs: Vec<u64> = p.records.iter().map(|(r, _)| r.seq).collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
        // Not consumed: the same four again.
        let again = j.peek(4).unwrap();
        assert_eq!(again.records.len(), 4);
        j.consumed(p.records[3].1, 4).unwrap();
        assert_eq!(j.waiting(), 6);
        let p = j.peek(100).unwrap();
        let seqs: Vec<u64> = p.records.iter().map(|(r, _)| r.seq).collect();
        assert_eq!(seqs, [4, 5, 6, 7, 8, 9]);
        assert_eq!(p.records[5].0, recs[9]);
        j.consumed(p.records[5].1, 6).unwrap();
        assert!(j.is_empty());
        assert_eq!(j.bytes(), MAGIC.len() as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), MAGIC.len() as u64);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_or_cut_tail_is_dropped_on_open() {
        let d = dir("tail");
        let path = d.join("acc.spool");
        let (mut j, _) = Journal::open(&path, 1 << 20).unwrap();
        let recs: Vec<Record> = (0..5).map(|i| rec(2, i)).collect();
        j.append(&recs).unwrap();
        let good = j.bytes();
        drop(j);

        // A crash in the middle of an append: half a record at the end.
        let mut half = Vec::new();
        encode(&rec(2, 5), &mut half);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&half[..half.len() / 2]).unwrap();
        drop(f);
        let (j, rep) = Journal::open(&path, 1 << 20).unwrap();
        assert_eq!(rep.records, 5);
        assert_eq!(rep.truncated_bytes, (half.len() / 2) as u64);
        assert_eq!(j.bytes(), good);
        drop(j);

        // A flipped byte in the fourth record: it and the fifth are lost.
        let mut data = std::fs::read(&path).unwrap();
        let mut one = Vec::new();
        encode(&rec(2, 0), &mut one);
        let fourth = MAGIC.len() + 3 * one.len() + FRAME + 20;
        data[fourth] ^= 1;
        std::fs::write(&path, &data).unwrap();
        let (mut j, rep) = Journal::open(&path, 1 << 20).unwrap();
        assert_eq!(rep.records, 3);
        assert!(rep.truncated_bytes > 0);
        let seqs: Vec<u64> = j
            .peek(10)
            .unwrap()
            .records
            .iter()
            .map(|(r, _)| r.seq)
            .collect();
        assert_eq!(seqs, [0, 1, 2]);

        // Not a journal at all: emptied, reported.
        std::fs::write(&path, b"garbage!garbage").unwrap();
        let (j, rep) = Journal::open(&path, 1 << 20).unwrap();
        assert_eq!((rep.records, rep.truncated_bytes), (0, 15));
        assert!(j.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_bound_refuses_the_rest_in_order() {
        let d = dir("bound");
        let path = d.join("acc.spool");
        let mut one = Vec::new();
        encode(&rec(3, 0), &mut one);
        let max = MAGIC.len() as u64 + 3 * one.len() as u64 + 5;
        let (mut j, _) = Journal::open(&path, max).unwrap();
        let recs: Vec<Record> = (0..5).map(|i| rec(3, i)).collect();
        assert_eq!(j.append(&recs).unwrap(), 3);
        assert_eq!(j.append(&recs[3..]).unwrap(), 0);
        assert!(j.bytes() <= max);
        // Once drained there is room again.
        let p = j.peek(10).unwrap();
        j.consumed(p.records.last().unwrap().1, 3).unwrap();
        assert_eq!(j.append(&recs[3..]).unwrap(), 2);
        let _ = std::fs::remove_dir_all(&d);
    }
}
