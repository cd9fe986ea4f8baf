//! Repository names, tags and references, validated by the grammars of the
//! OCI distribution spec.

use super::{Digest, DigestError};
use std::fmt;

/// A repository name such as `library/alpine`: lowercase components joined by
/// `/`, at most 255 characters. No component can be `.` or `..`, and no
/// character outside `[a-z0-9._/-]` is possible, so it is safe in paths and
/// SQL alike.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

/// What a manifest request names: a mutable tag or an immutable digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

/// Why a name, tag or reference was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("repository name {0:?} is invalid: lowercase letters, digits and separators (. _ __ -) between path components, at most 255 characters")]
    Repo(String),
    #[error("tag {0:?} is invalid: letters, digits, '_', '.', '-', at most 128 characters, not starting with '.' or '-'")]
    Tag(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

impl RepoName {
    pub fn parse(s: &str) -> Result<RepoName, NameError> {
        if s.len() > 255 || s.is_empty() || !s.split('/').all(valid_component) {
            return Err(NameError::Repo(shorten(s)));
        }
        Ok(RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name with Docker Hub's rule for official images applied:
    /// `alpine` becomes `library/alpine`.
    pub fn with_library_prefix(self) -> RepoName {
        if self.0.contains('/') {
            self
        } else {
            RepoName(format!("library/{}", self.0))
        }
    }
}

impl Tag {
    pub fn parse(s: &str) -> Result<Tag, NameError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter().all(|&x| x.is_ascii_alphanumeric() || b"_.-".contains(&x));
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(NameError::Tag(shorten(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Reference {
    /// A digest if the string contains `:`, else a tag (tags cannot contain `:`).
    pub fn parse(s: &str) -> Result<Reference, NameError> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        for ok in ["alpine", "library/alpine", "a/b/c", "my-org/my_app", "a__b", "a---b", "a.b", "ghcr.io/org/x", "0"] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "a/",
            "/a",
            "A",
            "a//b",
            "a/../b",
            "..",
            ".",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "a_",
            "a b",
            "a%2fb",
            "a\\b",
            "a\0b",
            &"a".repeat(256),
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(RepoName::parse("alpine").unwrap().with_library_prefix().as_str(), "library/alpine");
        assert_eq!(RepoName::parse("a/b").unwrap().with_library_prefix().as_str(), "a/b");
    }

    #[test]
    fn tags_and_references() {
        for ok in ["latest", "3.19", "_x", "A-b.c_d", &"a".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "a b", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(Reference::parse("3.19"), Ok(Reference::Tag(_))));
        assert!(matches!(Reference::parse("sha256:xyz"), Err(NameError::Digest(_))));
    }
}
