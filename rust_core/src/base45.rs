//! Base45 exactly per RFC 9285, strict: no lowercase, no characters outside the alphabet, no
//! length ≡ 1 (mod 3), no triple above 65535 and no pair above 255.

use std::fmt;

const ALPHABET: &[u8; 45] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";
const INVALID: u8 = 0xff;

/// Character value per byte, INVALID outside the alphabet (built at compile time).
const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base45Error {
    /// A character that is not in the alphabet, with its byte offset.
    InvalidChar { offset: usize, ch: char },
    /// The length leaves one dangling character.
    BadLength(usize),
    /// A group decodes above 65535 (triple) or 255 (pair), at this byte offset.
    Overflow { offset: usize },
}

impl fmt::Display for Base45Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Base45Error::InvalidChar { offset, ch } => {
                write!(
                    f,
                    "character {ch:?} at offset {offset} is not in the Base45 alphabet"
                )
            }
            Base45Error::BadLength(n) => write!(f, "length {n} is not a valid Base45 length"),
            Base45Error::Overflow { offset } => {
                write!(
                    f,
                    "the group at offset {offset} encodes a value out of range"
                )
            }
        }
    }
}

impl std::error::Error for Base45Error {}

pub fn encode(data: &[u8]) -> String {
    let mut out = Vec::with_capacity(data.len().div_ceil(2) * 3);
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        let mut n = (usize::from(pair[0]) << 8) | usize::from(pair[1]);
        for _ in 0..3 {
            out.push(ALPHABET[n % 45]);
            n /= 45;
        }
    }
    if let [last] = chunks.remainder() {
        let n = usize::from(*last);
        out.push(ALPHABET[n % 45]);
        out.push(ALPHABET[n / 45]);
    }
    // Every byte pushed comes from the ASCII alphabet.
    String::from_utf8(out).expect("Base45 alphabet is ASCII")
}

pub fn decode(text: &str) -> Result<Vec<u8>, Base45Error> {
    let bytes = text.as_bytes();
    if bytes.len() % 3 == 1 {
        return Err(Base45Error::BadLength(bytes.len()));
    }
    let value = |offset: usize| -> Result<u32, Base45Error> {
        match DECODE[bytes[offset] as usize] {
            INVALID => Err(Base45Error::InvalidChar {
                offset,
                ch: text[offset..].chars().next().unwrap_or('\u{fffd}'),
            }),
            v => Ok(u32::from(v)),
        }
    };
    let mut out = Vec::with_capacity(bytes.len() / 3 * 2 + 1);
    let mut offset = 0;
    while offset + 3 <= bytes.len() {
        let n = value(offset)? + value(offset + 1)? * 45 + value(offset + 2)? * 45 * 45;
        if n > 0xffff {
            return Err(Base45Error::Overflow { offset });
        }
        out.extend_from_slice(&(n as u16).to_be_bytes());
        offset += 3;
    }
    if offset < bytes.len() {
        let n = value(offset)? + value(offset + 1)? * 45;
        if n > 0xff {
            return Err(Base45Error::Overflow { offset });
        }
        out.push(n as u8);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9285_examples() {
        for (plain, coded) in [
            (&b"AB"[..], "BB8"),
            (b"Hello!!", "%69 VD92EX0"),
            (b"base-45", "UJCLQE7W581"),
            (b"ietf!", "QED8WEX0"),
            (b"", ""),
        ] {
            assert_eq!(encode(plain), coded);
            assert_eq!(decode(coded).unwrap(), plain);
        }
    }

    #[test]
    fn strictness() {
        assert_eq!(decode("GGW"), Err(Base45Error::Overflow { offset: 0 }));
        assert_eq!(decode(":::"), Err(Base45Error::Overflow { offset: 0 }));
        assert_eq!(decode("AAA::"), Err(Base45Error::Overflow { offset: 3 }));
        assert_eq!(decode("BB8A"), Err(Base45Error::BadLength(4)));
        assert!(matches!(
            decode("bb8"),
            Err(Base45Error::InvalidChar { offset: 0, .. })
        ));
        assert!(matches!(
            decode("B\u{e9}"),
            Err(Base45Error::InvalidChar { offset: 1, .. })
        ));
    }

    #[test]
    fn roundtrip_all_lengths() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in 0..data.len() {
            assert_eq!(decode(&encode(&data[..n])).unwrap(), &data[..n]);
        }
    }
}
