//! zlib (RFC 1950) with a hard output limit, so a zlib bomb is refused before it inflates.

use miniz_oxide::inflate::{decompress_to_vec_zlib_with_limit, TINFLStatus};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// The output would exceed the limit (whatever the stream claims about itself).
    TooLarge,
    /// Not a valid zlib stream (header, deflate data or Adler-32 check).
    Corrupt(&'static str),
}

pub fn compress(data: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec_zlib(data, 9)
}

/// Inflate at most `limit` bytes; stops as soon as more output would be needed.
pub fn inflate_limited(data: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    decompress_to_vec_zlib_with_limit(data, limit).map_err(|e| match e.status {
        TINFLStatus::HasMoreOutput => InflateError::TooLarge,
        TINFLStatus::FailedCannotMakeProgress => InflateError::Corrupt("truncated zlib stream"),
        TINFLStatus::Adler32Mismatch => InflateError::Corrupt("zlib checksum mismatch"),
        _ => InflateError::Corrupt("not a valid zlib stream"),
    })
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
        let mut bad_sum = good.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        assert!(inflate_limited(&bad_sum, 1024).is_err());
    }
}
