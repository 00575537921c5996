//! Path normalization, done once before matching so that no spelling of a path can reach a
//! route the plain spelling would not (and the upstream sees the path that was matched).
//!
//! What it does, in order (RFC 3986 §6.2.2):
//! 1. percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other
//!    percent-encoding is kept with upper-case hex (`%2f` → `%2F`), so an encoded slash stays
//!    data inside one segment and never splits a path;
//! 2. repeated slashes collapse (`//admin` → `/admin`);
//! 3. `.` and `..` segments are removed (`..` never climbs above the root).
//!
//! Case is preserved: paths are case-sensitive, so `/API/users` is not `/api/users`.

use std::borrow::Cow;
use std::fmt;

/// Why a request path cannot be normalized (the request is answered 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/` (origin-form is required).
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::NotAbsolute => f.write_str("the request path must start with '/'"),
            PathError::BadPercentEncoding => {
                f.write_str("the request path has a '%' not followed by two hex digits")
            }
        }
    }
}

impl std::error::Error for PathError {}

/// Normalize a request path (without its query string). Most paths are already normal and
/// come back borrowed.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(raw)?;
    Ok(match remove_dot_segments(&decoded) {
        Some(clean) => Cow::Owned(clean),
        None => decoded,
    })
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.contains('%') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            let next = raw[i..].find('%').map_or(raw.len(), |n| i + n);
            out.push_str(&raw[i..next]);
            i = next;
            continue;
        }
        let (hi, lo) = match (
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) {
            (Some(h), Some(l)) => (h, l),
            _ => return Err(PathError::BadPercentEncoding),
        };
        let value = hi << 4 | lo;
        if is_unreserved(value) {
            out.push(value as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
        }
        i += 3;
    }
    Ok(Cow::Owned(out))
}

/// The path without empty, `.` and `..` segments, or `None` when it has none to remove.
fn remove_dot_segments(path: &str) -> Option<String> {
    if !path.contains("//") && !path.contains("/.") {
        return None;
    }
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = true;
        match segment {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            s => {
                stack.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &stack {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || stack.is_empty() {
        out.push('/');
    }
    // `/.well-known` looks like it has a dot segment but does not.
    (out != path).then_some(out)
}

/// Whether `path` is `prefix` or continues it at a segment boundary (`/api` takes `/api/x`,
/// not `/apix`).
pub fn has_segment_prefix(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len()
            || prefix.ends_with('/')
            || path.as_bytes()[prefix.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_table() {
        let cases = [
            ("/", "/"),
            ("/api/users", "/api/users"),
            ("/api/users/", "/api/users/"),
            ("//admin", "/admin"),
            ("/api//users///1", "/api/users/1"),
            ("/api/./x", "/api/x"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E%2E/admin", "/admin"),
            ("/api/.%2e/admin", "/admin"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/api/users%2F..%2Fadmin", "/api/users%2F..%2Fadmin"),
            ("/api/users%2f1", "/api/users%2F1"),
            ("/%41%50%49/users", "/API/users"),
            ("/api/%7euser", "/api/~user"),
            ("/api/a%20b", "/api/a%20b"),
            ("/API/users", "/API/users"),
            ("/.hidden", "/.hidden"),
            ("/a/..b/c", "/a/..b/c"),
        ];
        for (raw, want) in cases {
            let normal = normalize_path(raw);
            assert_eq!(normal.as_deref(), Ok(want), "normalizing {raw}");
            // A path that is already normal (and has no escapes to look at) is not copied.
            if raw == want && !raw.contains('%') {
                assert!(matches!(normal, Ok(Cow::Borrowed(_))), "{raw} was copied");
            }
        }
    }

    #[test]
    fn malformed_paths_are_errors() {
        assert_eq!(normalize_path("api"), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadPercentEncoding));
    }

    #[test]
    fn segment_prefix() {
        assert!(has_segment_prefix("/api", "/api"));
        assert!(has_segment_prefix("/api/x", "/api"));
        assert!(!has_segment_prefix("/apix", "/api"));
        assert!(has_segment_prefix("/api/x", "/api/"));
        assert!(!has_segment_prefix("/api", "/api/"));
        assert!(has_segment_prefix("/anything", "/"));
    }
}
