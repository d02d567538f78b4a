//! zlib (RFC 1950) with a hard output limit, so a zlib bomb is refused before it inflates.

use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_COMPUTE_ADLER32, TINFL_FLAG_PARSE_ZLIB_HEADER,
    TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{decompress, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// The output would exceed the limit (whatever the stream claims about itself).
    TooLarge,
    /// Not a valid zlib stream (header, deflate data, Adler-32 check, or bytes after its end).
    Corrupt(&'static str),
}

pub fn compress(data: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec_zlib(data, 9)
}

/// Inflate at most `limit` bytes: the output buffer grows only while the stream keeps
/// producing, and never past the limit, so a bomb costs at most `limit` bytes of work.
pub fn inflate_limited(data: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let flags = TINFL_FLAG_PARSE_ZLIB_HEADER
        | TINFL_FLAG_COMPUTE_ADLER32
        | TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let mut state = Box::<DecompressorOxide>::default();
    let mut out = vec![0u8; data.len().saturating_mul(4).clamp(64, limit.max(1))];
    let (mut in_pos, mut out_pos) = (0, 0);
    loop {
        let (status, consumed, written) =
            decompress(&mut state, &data[in_pos..], &mut out, out_pos, flags);
        in_pos += consumed;
        out_pos += written;
        match status {
            TINFLStatus::Done if in_pos == data.len() => {
                out.truncate(out_pos);
                return Ok(out);
            }
            TINFLStatus::Done => {
                return Err(InflateError::Corrupt(
                    "bytes after the end of the zlib stream",
                ))
            }
            TINFLStatus::HasMoreOutput if out.len() >= limit => return Err(InflateError::TooLarge),
            TINFLStatus::HasMoreOutput => out.resize(out.len().saturating_mul(2).min(limit), 0),
            TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => {
                return Err(InflateError::Corrupt("truncated zlib stream"))
            }
            TINFLStatus::Adler32Mismatch => {
                return Err(InflateError::Corrupt("zlib checksum mismatch"))
            }
            _ => return Err(InflateError::Corrupt("not a valid zlib stream")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let data = b"licence seal".repeat(20);
        assert_eq!(inflate_limited(&compress(&data), 1 << 16).unwrap(), data);
    }

    #[test]
    fn bomb_is_refused_at_the_limit() {
        let bomb = compress(&vec![0u8; 50 << 20]);
        assert!(bomb.len() < 100 << 10);
        assert_eq!(inflate_limited(&bomb, 1 << 16), Err(InflateError::TooLarge));
    }

    #[test]
    fn exact_limit_is_accepted() {
        let data = vec![7u8; 1 << 16];
        assert_eq!(
            inflate_limited(&compress(&data), 1 << 16).unwrap().len(),
            1 << 16
        );
    }

    #[test]
    fn garbage_and_truncation() {
        assert!(matches!(
            inflate_limited(b"not zlib", 1024),
            Err(InflateError::Corrupt(_))
        ));
        let good = compress(b"hello hello hello");
        assert!(inflate_limited(&good[..good.len() - 3], 1024).is_err());
        let trailing = [good.as_slice(), b"x"].concat();
        assert!(inflate_limited(&trailing, 1024).is_err());
        let mut bad_sum = good.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        assert!(inflate_limited(&bad_sum, 1024).is_err());
    }
}
