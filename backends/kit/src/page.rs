//! Cursor pagination, one way for every list: `?limit=` (default 20, 1 to 100; anything
//! else is a 422 naming `limit`) and an opaque `?cursor=` (base64url of where the previous
//! page ended; one this API did not issue is a 422 naming `cursor`). Answers are
//! `{"items": [...], "next_cursor": "…" | null}`.
//!
//! A list fetches `limit + 1` rows after the decoded cursor in a stable order; the extra row
//! only says that there is a next page ([`Page::from_rows`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::problem::{FieldError, Problem};

/// The page size when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 20;
/// The largest page size.
pub const MAX_LIMIT: i64 = 100;

/// `?limit=&cursor=` of a list without other filters.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// How many items (default 20, 1 to 100).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Where the previous page ended: its `next_cursor`.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The checked limit.
    pub fn limit(&self) -> Result<i64, Problem> {
        limit(self.limit)
    }

    /// The decoded cursor; `None` for the first page.
    pub fn after(&self) -> Result<Option<String>, Problem> {
        decode_cursor(self.cursor.as_deref())
    }
}

/// `given`, checked: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub fn limit(given: Option<i64>) -> Result<i64, Problem> {
    match given {
        None => Ok(DEFAULT_LIMIT),
        Some(n @ 1..=MAX_LIMIT) => Ok(n),
        Some(_) => Err(invalid("limit", "must be 1 to 100")),
    }
}

/// What a cursor this API issued says; `None` for none (or an empty one).
pub fn decode_cursor(cursor: Option<&str>) -> Result<Option<String>, Problem> {
    match cursor.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c) => URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(Some)
            .ok_or_else(|| invalid("cursor", "is not a cursor this API issued")),
    }
}

/// The opaque cursor of `position`.
pub fn encode_cursor(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position)
}

fn invalid(field: &'static str, message: &str) -> Problem {
    Problem::invalid(vec![FieldError::new(field, message)])
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page from up to `limit + 1` fetched rows (the extra one says there is more);
    /// `position` says where an item stands (encoded into the cursor).
    pub fn from_rows(mut rows: Vec<T>, limit: i64, position: impl Fn(&T) -> String) -> Page<T> {
        let more = rows.len() as i64 > limit;
        rows.truncate(limit.max(0) as usize);
        let next_cursor = if more {
            rows.last().map(|last| encode_cursor(&position(last)))
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_cursors_and_pages() {
        assert_eq!(limit(None).unwrap(), 20);
        assert_eq!(limit(Some(100)).unwrap(), 100);
        for bad in [0, -1, 101] {
            let p = limit(Some(bad)).unwrap_err();
            assert_eq!(p.status, 422, "{bad}");
        }
        assert_eq!(decode_cursor(None).unwrap(), None);
        assert_eq!(decode_cursor(Some("")).unwrap(), None);
        let c = encode_cursor("1700000000:abc");
        assert_eq!(
            decode_cursor(Some(&c)).unwrap().as_deref(),
            Some("1700000000:abc")
        );
        assert_eq!(decode_cursor(Some("!!")).unwrap_err().status, 422);

        let page = Page::from_rows(vec![5, 4, 3], 2, |n| n.to_string());
        assert_eq!(page.items, [5, 4]);
        assert_eq!(
            decode_cursor(page.next_cursor.as_deref())
                .unwrap()
                .as_deref(),
            Some("4")
        );
        let last = Page::from_rows(vec![2, 1], 2, |n| n.to_string());
        assert_eq!(last.next_cursor, None);
    }
}
