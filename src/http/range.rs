//! Parsing a `Range` request header (RFC 9110 §14.1.2).

use crate::mirror::ByteRange;

/// The one byte range a header asks for. `None` when there is no usable
/// single range (absent, another unit, several ranges, bad syntax): RFC 9110
/// lets a server ignore such a header and send the whole representation.
pub fn parse_range(v: &str) -> Option<ByteRange> {
    let spec = v.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.len() <= 19 && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    match (a.trim(), b.trim()) {
        ("", n) => num(n).map(ByteRange::Suffix),
        (s, "") => num(s).map(ByteRange::From),
        (s, e) => Some(ByteRange::FromTo(num(s)?, num(e)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(parse_range("bytes=500-1499"), Some(ByteRange::FromTo(500, 1499)));
        assert_eq!(parse_range("bytes=500-"), Some(ByteRange::From(500)));
        assert_eq!(parse_range("bytes=-500"), Some(ByteRange::Suffix(500)));
        assert_eq!(parse_range("bytes=500-0"), Some(ByteRange::FromTo(500, 0)));
        for ignored in ["", "bytes=", "bytes=-", "items=1-2", "bytes=1-2,4-5", "bytes=a-b", "bytes=+1-2", "bytes=99999999999999999999-"] {
            assert_eq!(parse_range(ignored), None, "{ignored}");
        }
    }
}
