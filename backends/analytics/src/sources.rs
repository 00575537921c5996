//! Write keys: how a server or a site sends events without a user's token (Segment's
//! model: HTTP Basic with the key as the user name). Admins make, list and delete them;
//! only a key's SHA-256 is kept, so the key is shown once, when it is made.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use kit::db::{new_id, now_ms};
use kit::page::{Page, PageQuery};
use kit::Query;
use kit::{Identity, Json};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use utoipa::ToSchema;

use crate::error::Error;
use crate::AppState;

/// A source, as listed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "019aee5e-04a3-7d62-8a36-54d3c0c1d8b2", "name": "storefront",
    "created_at": 1796486619894_i64}))]
pub struct Source {
    /// Its id: events it sends are deduplicated within it.
    pub id: String,
    /// What it is.
    pub name: String,
    /// Unix ms.
    pub created_at: i64,
}

/// A new source, with its key (shown this once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewSource {
    /// The source.
    #[serde(flatten)]
    pub source: Source,
    /// The write key: `Authorization: Basic base64(key + ":")`.
    pub write_key: String,
}

/// `POST /analytics/sources`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"name": "storefront"}))]
pub struct CreateSource {
    /// 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

fn hash(key: &str) -> String {
    kit::hex(&Sha256::digest(key.as_bytes()))
}

/// The source whose write key is `key`.
pub async fn by_key(db: &kit::Db, key: &str) -> Result<Option<String>, kit::DbError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM sources WHERE key_hash = $1")
            .bind(hash(key))
            .fetch_optional(db.pool())
            .await?,
    )
}

/// Admins only (or a token with `analytics:admin`).
pub fn require_admin(id: &Identity) -> Result<(), Error> {
    if id.has_permission("analytics:admin") {
        return Ok(());
    }
    Ok(id.require_role("admin")?)
}

/// `POST /analytics/sources` → 201 with the key.
#[utoipa::path(post, path = "/analytics/sources", operation_id = "createSource", tag = "ingest",
    summary = "Make a source and its write key (admins)", security(("bearer" = [])),
    request_body = CreateSource,
    responses((status = 201, description = "The source and its write key, shown only now",
        body = NewSource)))]
pub async fn create(
    State(s): State<AppState>,
    id: Identity,
    Json(body): Json<CreateSource>,
) -> Result<(StatusCode, Json<NewSource>), Error> {
    require_admin(&id)?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Error::field("name", "must be 1 to 100 characters"));
    }
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!(
        "wk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let source = Source {
        id: new_id(),
        name: name.to_owned(),
        created_at: now_ms(),
    };
    sqlx::query("INSERT INTO sources (id, name, key_hash, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&source.id)
        .bind(&source.name)
        .bind(hash(&key))
        .bind(source.created_at)
        .execute(s.db.pool())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewSource {
            source,
            write_key: key,
        }),
    ))
}

/// `GET /analytics/sources`.
#[utoipa::path(get, path = "/analytics/sources", operation_id = "listSources", tag = "ingest",
    summary = "List sources (admins)", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, description = "One page, oldest first", body = Page<Source>)))]
pub async fn list(
    State(s): State<AppState>,
    id: Identity,
    page: Query<PageQuery>,
) -> Result<Json<Page<Source>>, Error> {
    require_admin(&id)?;
    let Query(page) = page;
    let limit = page.limit()?;
    let after = page.after()?.unwrap_or_default();
    let rows =
        sqlx::query("SELECT id, name, created_at FROM sources WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(&after)
            .bind(limit + 1)
            .fetch_all(s.db.pool())
            .await?;
    let sources = rows
        .iter()
        .map(|r| {
            Ok(Source {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Json(Page::from_rows(sources, limit, |s| s.id.clone())))
}

/// `DELETE /analytics/sources/{id}` → 204; its key stops working at once.
#[utoipa::path(delete, path = "/analytics/sources/{id}", operation_id = "deleteSource",
    tag = "ingest", summary = "Delete a source (admins)", security(("bearer" = [])),
    params(("id" = String, Path, description = "The source's id")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete(
    State(s): State<AppState>,
    id: Identity,
    Path(source): Path<String>,
) -> Result<StatusCode, Error> {
    require_admin(&id)?;
    let done = sqlx::query("DELETE FROM sources WHERE id = $1")
        .bind(&source)
        .execute(s.db.pool())
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound("no such source"));
    }
    Ok(StatusCode::NO_CONTENT)
}
