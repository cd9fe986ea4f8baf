//! A single byte range of a blob (RFC 9110), resolved against its size.

use super::MirrorError;
use std::ops::Range;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=S-E` (inclusive end).
    FromTo(u64, u64),
    /// `bytes=S-`.
    From(u64),
    /// `bytes=-N`: the last N bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The half-open range to serve from a blob of `size` bytes: an end past
    /// the blob is clamped; a start past it, an empty suffix or a reversed
    /// range cannot be satisfied (416).
    pub fn resolve(self, size: u64) -> Result<Range<u64>, MirrorError> {
        let bad = Err(MirrorError::RangeNotSatisfiable { size });
        match self {
            ByteRange::FromTo(s, e) if s <= e && s < size => Ok(s..e.min(size - 1) + 1),
            ByteRange::From(s) if s < size => Ok(s..size),
            ByteRange::Suffix(n) if n > 0 && size > 0 => Ok(size.saturating_sub(n)..size),
            _ => bad,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_examples() {
        assert_eq!(ByteRange::FromTo(500, 1499).resolve(2048).unwrap(), 500..1500);
        assert_eq!(ByteRange::From(500).resolve(2048).unwrap(), 500..2048);
        assert_eq!(ByteRange::Suffix(500).resolve(2048).unwrap(), 1548..2048);
        assert_eq!(ByteRange::Suffix(5000).resolve(2048).unwrap(), 0..2048);
        assert_eq!(ByteRange::FromTo(2000, 5000).resolve(2048).unwrap(), 2000..2048);
        assert!(ByteRange::FromTo(500, 0).resolve(2048).is_err());
        assert!(ByteRange::FromTo(5000, 10000).resolve(2048).is_err());
        assert!(ByteRange::Suffix(0).resolve(2048).is_err());
        assert!(ByteRange::From(0).resolve(0).is_err());
    }
}
