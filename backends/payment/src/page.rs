//! Pagination: `?limit=` (default 20, at most 100) and an opaque `?cursor=`; answers are
//! `{"items": [...], "next_cursor": "…" | null}`, newest first.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The query of a list endpoint.
#[derive(Debug, Default, Deserialize)]
pub struct Page {
    /// How many items (default 20, 1–100).
    pub limit: Option<i64>,
    /// Where the previous page ended (its `next_cursor`).
    pub cursor: Option<String>,
}

impl Page {
    /// The limit, checked.
    pub fn limit(&self) -> Result<i64, Error> {
        match self.limit {
            None => Ok(20),
            Some(n @ 1..=100) => Ok(n),
            Some(_) => Err(Error::field("limit", "must be 1 to 100")),
        }
    }
}

/// One page of a list.
#[derive(Debug, Serialize)]
pub struct Items<T> {
    /// The items, newest first.
    pub items: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

impl<T> Items<T> {
    /// A page from up to `limit + 1` fetched rows (the extra one says there is more).
    pub fn new(mut items: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Items<T> {
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next_cursor = if more {
            items.last().map(cursor_of)
        } else {
            None
        };
        Items { items, next_cursor }
    }
}
