//! A small, strict CBOR (RFC 8949) decoder and the few encoders the seal needs.
//!
//! Strict where it matters for signatures: duplicate map keys are an error, nesting is bounded,
//! every length is checked against the bytes actually present before anything is allocated.
//! Byte and text strings borrow from the input unless they were sent in chunks.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

/// Deeper nesting than this is refused (a licence needs 3 levels, a DCC about 6).
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Uint(u64),
    /// A negative integer -1 - n, kept as n so that the full CBOR range fits.
    Nint(u64),
    Bytes(Cow<'a, [u8]>),
    Text(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
    Tag(u64, Box<Value<'a>>),
    Bool(bool),
    Null,
    Undefined,
    Simple(u8),
    Float(f64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CborError {
    pub offset: usize,
    pub reason: &'static str,
}

impl fmt::Display for CborError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CBOR: {} at offset {}", self.reason, self.offset)
    }
}

impl std::error::Error for CborError {}

impl<'a> Value<'a> {
    /// An integer key or value as i64, when it fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Uint(n) => i64::try_from(n).ok(),
            Value::Nint(n) => i64::try_from(n).ok().map(|n| -1 - n),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Value<'a>, Value<'a>)]> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Look up an integer key in a map value.
    pub fn map_get(&self, key: i64) -> Option<&Value<'a>> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_i64() == Some(key))
            .map(|(_, v)| v)
    }

    /// Detach from the input buffer (results outlive the decompressed bytes).
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Uint(n) => Value::Uint(n),
            Value::Nint(n) => Value::Nint(n),
            Value::Bytes(b) => Value::Bytes(Cow::Owned(b.into_owned())),
            Value::Text(t) => Value::Text(Cow::Owned(t.into_owned())),
            Value::Array(a) => Value::Array(a.into_iter().map(Value::into_owned).collect()),
            Value::Map(m) => Value::Map(
                m.into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            ),
            Value::Tag(t, v) => Value::Tag(t, Box::new(v.into_owned())),
            Value::Bool(b) => Value::Bool(b),
            Value::Null => Value::Null,
            Value::Undefined => Value::Undefined,
            Value::Simple(s) => Value::Simple(s),
            Value::Float(f) => Value::Float(f),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Uint(_) => 0,
            Value::Nint(_) => 1,
            Value::Bytes(_) => 2,
            Value::Text(_) => 3,
            Value::Array(_) => 4,
            Value::Map(_) => 5,
            Value::Tag(..) => 6,
            Value::Bool(_) => 7,
            Value::Null => 8,
            Value::Undefined => 9,
            Value::Simple(_) => 10,
            Value::Float(_) => 11,
        }
    }
}

/// A total order on values, used only to find duplicate map keys in O(n log n).
fn total_cmp(a: &Value<'_>, b: &Value<'_>) -> Ordering {
    use Value::*;
    match (a, b) {
        (Uint(x), Uint(y)) | (Nint(x), Nint(y)) => x.cmp(y),
        (Bytes(x), Bytes(y)) => x.cmp(y),
        (Text(x), Text(y)) => x.cmp(y),
        (Array(x), Array(y)) => cmp_seq(x.iter(), y.iter(), x.len(), y.len()),
        (Map(x), Map(y)) => x.len().cmp(&y.len()).then_with(|| {
            x.iter()
                .zip(y)
                .map(|((ka, va), (kb, vb))| total_cmp(ka, kb).then_with(|| total_cmp(va, vb)))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        }),
        (Tag(t, x), Tag(u, y)) => t.cmp(u).then_with(|| total_cmp(x, y)),
        (Bool(x), Bool(y)) => x.cmp(y),
        (Simple(x), Simple(y)) => x.cmp(y),
        (Float(x), Float(y)) => x.total_cmp(y),
        _ => a.rank().cmp(&b.rank()),
    }
}

fn cmp_seq<'x, 'a: 'x>(
    x: impl Iterator<Item = &'x Value<'a>>,
    y: impl Iterator<Item = &'x Value<'a>>,
    nx: usize,
    ny: usize,
) -> Ordering {
    nx.cmp(&ny).then_with(|| {
        x.zip(y)
            .map(|(a, b)| total_cmp(a, b))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    })
}

/// Decode exactly one item that must fill `data` completely.
pub fn decode(data: &[u8]) -> Result<Value<'_>, CborError> {
    let mut d = Decoder { data, pos: 0 };
    let value = d.item(0)?;
    if d.pos != data.len() {
        return Err(d.err("trailing bytes after the item"));
    }
    Ok(value)
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
}

/// The head of an item: major type and argument (None for the indefinite-length marker).
struct Head {
    major: u8,
    info: u8,
    arg: Option<u64>,
}

impl<'a> Decoder<'a> {
    fn err(&self, reason: &'static str) -> CborError {
        CborError {
            offset: self.pos,
            reason,
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], CborError> {
        let remaining = self.data.len() - self.pos;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= remaining)
            .ok_or_else(|| self.err("length runs past the end of the input"))?;
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn head(&mut self) -> Result<Head, CborError> {
        let initial = *self
            .data
            .get(self.pos)
            .ok_or_else(|| self.err("unexpected end of input"))?;
        self.pos += 1;
        let (major, info) = (initial >> 5, initial & 0x1f);
        let arg = match info {
            0..=23 => Some(u64::from(info)),
            24..=27 => {
                let bytes = self.take(1 << (info - 24))?;
                Some(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
            }
            31 if matches!(major, 2..=5 | 7) => None,
            _ => return Err(self.err("reserved or invalid additional information")),
        };
        Ok(Head { major, info, arg })
    }

    fn at_break(&mut self) -> Result<bool, CborError> {
        match self.data.get(self.pos) {
            Some(0xff) => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Err(self.err("unexpected end of input in indefinite-length item")),
        }
    }

    /// An upper bound on how many items can still follow (each takes at least one byte).
    fn count(&self, n: u64) -> Result<usize, CborError> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.pos)
            .ok_or_else(|| self.err("item count runs past the end of the input"))
    }

    fn item(&mut self, depth: usize) -> Result<Value<'a>, CborError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        let start = self.pos;
        let head = self.head()?;
        Ok(match (head.major, head.arg) {
            (0, Some(n)) => Value::Uint(n),
            (1, Some(n)) => Value::Nint(n),
            (2, Some(n)) => Value::Bytes(Cow::Borrowed(self.take(n)?)),
            (2, None) => Value::Bytes(Cow::Owned(self.chunks(2)?)),
            (3, Some(n)) => {
                let bytes = self.take(n)?;
                Value::Text(Cow::Borrowed(self.utf8(bytes, start)?))
            }
            (3, None) => {
                let bytes = self.chunks(3)?;
                String::from_utf8(bytes)
                    .map(|s| Value::Text(Cow::Owned(s)))
                    .map_err(|_| CborError {
                        offset: start,
                        reason: "text string is not UTF-8",
                    })?
            }
            (4, n) => {
                let mut items = Vec::with_capacity(self.count(n.unwrap_or(0))?);
                match n {
                    Some(n) => {
                        for _ in 0..n {
                            items.push(self.item(depth + 1)?);
                        }
                    }
                    None => {
                        while !self.at_break()? {
                            items.push(self.item(depth + 1)?);
                        }
                    }
                }
                Value::Array(items)
            }
            (5, n) => {
                let mut entries = Vec::with_capacity(self.count(n.unwrap_or(0))?);
                let next = |d: &mut Self| -> Result<(Value<'a>, Value<'a>), CborError> {
                    Ok((d.item(depth + 1)?, d.item(depth + 1)?))
                };
                match n {
                    Some(n) => {
                        for _ in 0..n {
                            entries.push(next(self)?);
                        }
                    }
                    None => {
                        while !self.at_break()? {
                            entries.push(next(self)?);
                        }
                    }
                }
                if has_duplicate_keys(&entries) {
                    return Err(CborError {
                        offset: start,
                        reason: "duplicate map key",
                    });
                }
                Value::Map(entries)
            }
            (6, Some(tag)) => Value::Tag(tag, Box::new(self.item(depth + 1)?)),
            (7, arg) => self.simple(head.info, arg, start)?,
            _ => return Err(self.err("invalid item")),
        })
    }

    fn simple(&mut self, info: u8, arg: Option<u64>, start: usize) -> Result<Value<'a>, CborError> {
        let bad = |reason| CborError {
            offset: start,
            reason,
        };
        let arg = arg.ok_or_else(|| bad("unexpected break"))?;
        Ok(match info {
            20 => Value::Bool(false),
            21 => Value::Bool(true),
            22 => Value::Null,
            23 => Value::Undefined,
            0..=19 => Value::Simple(info),
            24 if arg >= 32 => Value::Simple(arg as u8),
            24 => return Err(bad("simple value in two-byte form below 32")),
            25 => Value::Float(half_to_f64(arg as u16)),
            26 => Value::Float(f64::from(f32::from_bits(arg as u32))),
            27 => Value::Float(f64::from_bits(arg)),
            _ => return Err(bad("invalid simple value")),
        })
    }

    fn utf8(&self, bytes: &'a [u8], start: usize) -> Result<&'a str, CborError> {
        std::str::from_utf8(bytes).map_err(|_| CborError {
            offset: start,
            reason: "text string is not UTF-8",
        })
    }

    /// Concatenate the definite-length chunks of an indefinite-length string.
    fn chunks(&mut self, major: u8) -> Result<Vec<u8>, CborError> {
        let mut out = Vec::new();
        while !self.at_break()? {
            let head = self.head()?;
            match (head.major, head.arg) {
                (m, Some(n)) if m == major => out.extend_from_slice(self.take(n)?),
                _ => return Err(self.err("bad chunk in indefinite-length string")),
            }
        }
        Ok(out)
    }
}

fn has_duplicate_keys(entries: &[(Value<'_>, Value<'_>)]) -> bool {
    if entries.len() < 2 {
        return false;
    }
    let mut keys: Vec<&Value<'_>> = entries.iter().map(|(k, _)| k).collect();
    keys.sort_by(|a, b| total_cmp(a, b));
    keys.windows(2).any(|w| total_cmp(w[0], w[1]).is_eq())
}

fn half_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let mant = f64::from(h & 0x3ff);
    sign * match exp {
        0 => mant * 2f64.powi(-24),
        31 if mant == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + mant / 1024.0) * 2f64.powi(exp - 15),
    }
}

/// Deterministic encoders (RFC 8949 §4.2.1 preferred serialisation for what we write).
pub mod enc {
    pub fn head(out: &mut Vec<u8>, major: u8, n: u64) {
        let m = major << 5;
        match n {
            0..=23 => out.push(m | n as u8),
            24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
            0x100..=0xffff => {
                out.push(m | 25);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(m | 26);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            _ => {
                out.push(m | 27);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    pub fn int(out: &mut Vec<u8>, n: i64) {
        if n >= 0 {
            head(out, 0, n as u64);
        } else {
            head(out, 1, (-1 - n) as u64);
        }
    }

    pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        head(out, 2, b.len() as u64);
        out.extend_from_slice(b);
    }

    pub fn text(out: &mut Vec<u8>, t: &str) {
        head(out, 3, t.len() as u64);
        out.extend_from_slice(t.as_bytes());
    }

    pub fn array(out: &mut Vec<u8>, len: usize) {
        head(out, 4, len as u64);
    }

    pub fn map(out: &mut Vec<u8>, len: usize) {
        head(out, 5, len as u64);
    }

    pub fn tag(out: &mut Vec<u8>, tag: u64) {
        head(out, 6, tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn basic_items() {
        assert_eq!(decode(&hex("1903e8")).unwrap(), Value::Uint(1000));
        assert_eq!(decode(&hex("3a00010000")).unwrap().as_i64(), Some(-65537));
        assert_eq!(decode(&hex("f93c00")).unwrap(), Value::Float(1.0));
        assert_eq!(decode(&hex("6449455446")).unwrap().as_text(), Some("IETF"));
        assert_eq!(
            decode(&hex("5f42010243030405ff")).unwrap().as_bytes(),
            Some(&[1u8, 2, 3, 4, 5][..])
        );
        let indefinite = hex("bf61610161629f0203ffff");
        assert_eq!(decode(&indefinite).unwrap().as_map().unwrap().len(), 2);
    }

    #[test]
    fn refusals() {
        // Duplicate keys, also across different encodings of the same integer.
        assert_eq!(
            decode(&hex("a201010102")).unwrap_err().reason,
            "duplicate map key"
        );
        assert_eq!(
            decode(&hex("a2010118010102")).unwrap_err().reason,
            "duplicate map key"
        );
        assert!(decode(&hex("a2")).is_err());
        assert!(decode(&hex("5affffffff00")).is_err());
        assert!(decode(&hex("9bffffffffffffffff")).is_err());
        assert!(decode(&hex("0101")).is_err());
        assert!(decode(&hex("62c328")).is_err());
        assert!(decode(&hex("1c")).is_err());
        assert!(decode(&hex("ff")).is_err());
        let deep = [vec![0x81u8; 100], vec![0x01]].concat();
        assert_eq!(decode(&deep).unwrap_err().reason, "nesting too deep");
    }

    #[test]
    fn encoder_roundtrip() {
        let mut out = Vec::new();
        enc::map(&mut out, 2);
        enc::int(&mut out, 1);
        enc::text(&mut out, "CN");
        enc::int(&mut out, -65537);
        enc::bytes(&mut out, &[0xaa; 300]);
        let v = decode(&out).unwrap();
        assert_eq!(v.map_get(1).and_then(Value::as_text), Some("CN"));
        assert_eq!(
            v.map_get(-65537).and_then(Value::as_bytes).map(<[u8]>::len),
            Some(300)
        );
    }
}
