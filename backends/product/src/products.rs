//! The catalogue: create, read, list, replace and (softly) delete products.
//!
//! Reads are public and `GET /products/{id}` goes through the [`crate::cache`]; writes need
//! the `admin` role or the `products:write` permission and announce themselves as
//! `product.*` events, which is also what evicts the cache.
//!
//! Listing pages by keyset on `(created_at, id)` (ids are UUIDv7, so that is creation
//! order): the opaque cursor is base64url of the last row's `created_at:id`, so a page never
//! repeats or skips a row whatever is inserted meanwhile. Text search (`q`) is a
//! case-insensitive substring match (`LIKE '%q%'` on a lowercased copy of name and
//! description); it scans, which is fine for a catalogue of thousands, not millions.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kit::db::{new_id, now_ms};
use kit::openapi::ProblemBody;
use kit::page::Page;
use kit::Query;
use kit::{DbError, Identity, Json};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

use crate::cache::product_key;
use crate::error::{Error, Fields};
use crate::{events, require, AppState, WRITE_PRODUCTS};

/// A price: minor units of an ISO-4217 currency (`{"amount": 1999, "currency": "EUR"}` is
/// €19.99). Never a float.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"amount": 1999, "currency": "EUR"}))]
pub struct Price {
    /// Minor units (cents), at least 0.
    pub amount: i64,
    /// Three uppercase letters.
    pub currency: String,
}

/// A product as every reader sees it (stock is not part of it: see `GET /inventory/{sku}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5f2-7c1e-7a4b-9c2d-3e4f5a6b7c8d", "sku": "MUG-001", "name": "Enamel mug",
    "description": "Blue, 350 ml", "category": "kitchen",
    "price": {"amount": 1250, "currency": "EUR"}, "low_stock_threshold": 5,
    "created_at": 1733400000000_i64, "updated_at": 1733400000000_i64
}))]
pub struct Product {
    /// UUIDv7.
    pub id: String,
    /// Stock-keeping unit, unique for ever.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Longer text, optional.
    pub description: Option<String>,
    /// Exact-match filter of the listing.
    pub category: String,
    /// Unit price.
    pub price: Price,
    /// `inventory.low_stock` fires when available stock drops below this.
    pub low_stock_threshold: i64,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

/// `POST /products`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "sku": "MUG-001", "name": "Enamel mug", "description": "Blue, 350 ml",
    "category": "kitchen", "price": {"amount": 1250, "currency": "EUR"}, "initial_stock": 50
}))]
pub struct NewProduct {
    /// 1 to 64 of `A-Z a-z 0-9 - _ .`; unique for ever.
    sku: String,
    /// 1 to 200 characters.
    name: String,
    /// Up to 5 000 characters.
    #[serde(default)]
    description: Option<String>,
    /// 1 to 100 characters.
    category: String,
    price: Price,
    /// Units on hand at creation (default 0).
    #[serde(default)]
    initial_stock: Option<i64>,
    /// Default: the service's `low_stock_threshold` setting.
    #[serde(default)]
    low_stock_threshold: Option<i64>,
}

/// `PUT /products/{id}`: replaces name, description (absent = none), category and price;
/// `low_stock_threshold` absent = unchanged; `sku` may be sent but cannot change.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "name": "Enamel mug", "description": "Red, 350 ml", "category": "kitchen",
    "price": {"amount": 1350, "currency": "EUR"}
}))]
pub struct ProductUpdate {
    /// May be sent; must equal the product's.
    #[serde(default)]
    sku: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    category: String,
    price: Price,
    #[serde(default)]
    low_stock_threshold: Option<i64>,
}

const COLUMNS: &str = "id, sku, name, description, category, price_amount, currency, \
                       low_stock_threshold, created_at, updated_at";

fn from_row(r: &AnyRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: r.try_get("id")?,
        sku: r.try_get("sku")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        category: r.try_get("category")?,
        price: Price {
            amount: r.try_get("price_amount")?,
            currency: r.try_get("currency")?,
        },
        low_stock_threshold: r.try_get("low_stock_threshold")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// The text `q` searches: lowercased here (not with SQL `lower()`, which is ASCII-only on
/// SQLite) so both databases match the same way.
fn search_text(name: &str, description: Option<&str>) -> String {
    format!("{} {}", name, description.unwrap_or("")).to_lowercase()
}

fn check_sku(f: &mut Fields, sku: &str) {
    let ok = !sku.is_empty()
        && sku.len() <= 64
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        f.push("sku", "must be 1 to 64 of A-Z a-z 0-9 - _ .");
    }
}

/// Trims `value`; notes an error when it is empty or longer than `max` characters.
fn required_text(f: &mut Fields, field: &'static str, value: &str, max: usize) -> String {
    let v = value.trim();
    if v.is_empty() {
        f.push(field, "is required");
    } else if v.chars().count() > max {
        f.push(field, format!("must be at most {max} characters"));
    }
    v.to_owned()
}

fn optional_text(
    f: &mut Fields,
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> Option<String> {
    let v = value.map(str::trim).filter(|v| !v.is_empty())?;
    if v.chars().count() > max {
        f.push(field, format!("must be at most {max} characters"));
    }
    Some(v.to_owned())
}

fn check_price(f: &mut Fields, price: &Price) {
    if price.amount < 0 {
        f.push("price.amount", "must be at least 0 (minor units)");
    }
    if !(price.currency.len() == 3 && price.currency.bytes().all(|b| b.is_ascii_uppercase())) {
        f.push(
            "price.currency",
            "must be an ISO-4217 code: three uppercase letters",
        );
    }
}

fn check_threshold(f: &mut Fields, t: Option<i64>) {
    if t.is_some_and(|t| t < 0) {
        f.push("low_stock_threshold", "must be at least 0");
    }
}

/// The fields every write validates the same way.
struct Checked {
    name: String,
    description: Option<String>,
    category: String,
}

fn check_common(
    f: &mut Fields,
    name: &str,
    description: Option<&str>,
    category: &str,
    price: &Price,
    threshold: Option<i64>,
) -> Checked {
    let checked = Checked {
        name: required_text(f, "name", name, 200),
        description: optional_text(f, "description", description, 5000),
        category: required_text(f, "category", category, 100),
    };
    check_price(f, price);
    check_threshold(f, threshold);
    checked
}

/// `POST /products` → 201 with the product; a taken sku is 409 (decided by the unique
/// index, so of two racing creations one wins).
#[utoipa::path(post, path = "/products", operation_id = "createProduct", tag = "catalog",
    summary = "Create a product (admin or products:write)",
    security(("bearer" = [])),
    request_body = NewProduct,
    responses(
        (status = 201, description = "Created", body = Product),
        (status = 409, description = "The sku is taken", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(s): State<AppState>,
    id: Identity,
    Json(req): Json<NewProduct>,
) -> Result<Response, Error> {
    require(&id, WRITE_PRODUCTS)?;
    let mut f = Fields::default();
    check_sku(&mut f, &req.sku);
    let c = check_common(
        &mut f,
        &req.name,
        req.description.as_deref(),
        &req.category,
        &req.price,
        req.low_stock_threshold,
    );
    let stock = req.initial_stock.unwrap_or(0);
    if stock < 0 {
        f.push("initial_stock", "must be at least 0");
    }
    f.finish()?;
    let now = now_ms();
    let product = Product {
        id: new_id(),
        sku: req.sku,
        name: c.name,
        description: c.description,
        category: c.category,
        price: req.price,
        low_stock_threshold: req
            .low_stock_threshold
            .unwrap_or(s.settings.low_stock_threshold),
        created_at: now,
        updated_at: now,
    };
    let mut tx = s.db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO products (id, sku, name, description, category, price_amount, currency, \
         low_stock_threshold, search_text, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
    )
    .bind(&product.id)
    .bind(&product.sku)
    .bind(&product.name)
    .bind(&product.description)
    .bind(&product.category)
    .bind(product.price.amount)
    .bind(&product.price.currency)
    .bind(product.low_stock_threshold)
    .bind(search_text(&product.name, product.description.as_deref()))
    .bind(now)
    .execute(&mut *tx)
    .await;
    match inserted.map_err(DbError::from) {
        Err(DbError::Conflict) => return Err(Error::SkuTaken),
        other => other?,
    };
    sqlx::query(
        "INSERT INTO inventory (sku, on_hand, reserved, updated_at) VALUES ($1, $2, 0, $3)",
    )
    .bind(&product.sku)
    .bind(stock)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    events::record(&mut tx, "product.created", &product).await?;
    tx.commit().await?;
    s.outbox.wake();
    Ok((StatusCode::CREATED, Json(product)).into_response())
}

/// The live (not deleted) product `id`, from the database.
pub async fn load(db: &kit::Db, id: &str) -> Result<Option<Product>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM products WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

/// `GET /products/{id}` (public), through the read cache.
#[utoipa::path(get, path = "/products/{id}", operation_id = "getProduct", tag = "catalog", summary = "Read a product",
    params(("id" = String, Path, description = "The product's id")),
    responses((status = 200, description = "The product", body = Product)))]
pub async fn get(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, Error> {
    let key = product_key(&id);
    let body = match s.cache.get(&key).await {
        Some(hit) => hit,
        None => {
            let generation = s.cache.generation();
            let product = load(&s.db, &id)
                .await?
                .ok_or(Error::NotFound("no such product"))?;
            let body = serde_json::to_string(&product)
                .map_err(|e| Error::Db(DbError::Other(sqlx::Error::Decode(e.into()))))?;
            s.cache.put(&key, &body, generation).await;
            body
        }
    };
    s.views.seen(&id);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `PUT /products/{id}` → 200 with the product; 404 when unknown or deleted.
#[utoipa::path(put, path = "/products/{id}", operation_id = "updateProduct", tag = "catalog",
    summary = "Replace a product (admin or products:write)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The product's id")),
    request_body = ProductUpdate,
    responses((status = 200, description = "The product as stored", body = Product)))]
pub async fn update(
    State(s): State<AppState>,
    id: Identity,
    Path(product_id): Path<String>,
    Json(req): Json<ProductUpdate>,
) -> Result<Json<Product>, Error> {
    require(&id, WRITE_PRODUCTS)?;
    let mut f = Fields::default();
    let c = check_common(
        &mut f,
        &req.name,
        req.description.as_deref(),
        &req.category,
        &req.price,
        req.low_stock_threshold,
    );
    f.finish()?;
    // $8 < 0 (never a valid threshold) means "leave it as it is".
    let sql = format!(
        "UPDATE products SET name = $1, description = $2, category = $3, price_amount = $4, \
         currency = $5, search_text = $6, updated_at = $7, \
         low_stock_threshold = CASE WHEN $8 < 0 THEN low_stock_threshold ELSE $8 END \
         WHERE id = $9 AND deleted_at IS NULL RETURNING {COLUMNS}"
    );
    let mut tx = s.db.begin().await?;
    let row = sqlx::query(&sql)
        .bind(&c.name)
        .bind(&c.description)
        .bind(&c.category)
        .bind(req.price.amount)
        .bind(&req.price.currency)
        .bind(search_text(&c.name, c.description.as_deref()))
        .bind(now_ms())
        .bind(req.low_stock_threshold.unwrap_or(-1))
        .bind(&product_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::NotFound("no such product"))?;
    let product = from_row(&row)?;
    if req.sku.as_ref().is_some_and(|sku| *sku != product.sku) {
        return Err(Error::field("sku", "cannot be changed"));
    }
    events::record(&mut tx, "product.updated", &product).await?;
    tx.commit().await?;
    s.outbox.wake();
    Ok(Json(product))
}

/// `DELETE /products/{id}` → 204; the row stays (orders and events name it) but reads and
/// reservations no longer see it. A second delete is 404.
#[utoipa::path(delete, path = "/products/{id}", operation_id = "deleteProduct", tag = "catalog",
    summary = "Delete a product (admin or products:write)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The product's id")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete(
    State(s): State<AppState>,
    id: Identity,
    Path(product_id): Path<String>,
) -> Result<StatusCode, Error> {
    require(&id, WRITE_PRODUCTS)?;
    let now = now_ms();
    let mut tx = s.db.begin().await?;
    let row = sqlx::query(
        "UPDATE products SET deleted_at = $1, updated_at = $1 \
         WHERE id = $2 AND deleted_at IS NULL RETURNING sku",
    )
    .bind(now)
    .bind(&product_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound("no such product"))?;
    let sku: String = row.try_get("sku")?;
    let fact = events::ProductDeleted {
        id: &product_id,
        sku: &sku,
        at: now,
    };
    events::record(&mut tx, "product.deleted", &fact).await?;
    tx.commit().await?;
    s.outbox.wake();
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /products` query. Numbers arrive as text so a bad one is a 422 naming the field.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Exactly this sku.
    sku: Option<String>,
    /// Exactly this category.
    category: Option<String>,
    /// Price amount at least this (minor units, any currency).
    #[param(value_type = Option<i64>)]
    min_price: Option<String>,
    /// Price amount at most this (minor units, any currency).
    #[param(value_type = Option<i64>)]
    max_price: Option<String>,
    /// Text in the name or description (case-insensitive).
    q: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// The default page size.
pub const DEFAULT_LIMIT: i64 = kit::page::DEFAULT_LIMIT;
/// The largest page size (a larger `limit` is a 422, as on every list of the platform).
pub const MAX_LIMIT: i64 = kit::page::MAX_LIMIT;

fn position(p: &Product) -> String {
    format!("{}:{}", p.created_at, p.id)
}

fn decode_cursor(c: &str) -> Option<(i64, String)> {
    let raw = kit::page::decode_cursor(Some(c)).ok()??;
    let (at, id) = raw.split_once(':')?;
    Some((at.parse().ok()?, id.to_owned()))
}

enum Bind {
    Int(i64),
    Text(String),
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn like_pattern(q: &str) -> String {
    let mut out = String::from("%");
    for ch in q.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

/// The page's SQL and binds from a checked query.
fn list_sql(q: &ListQuery, f: &mut Fields) -> (String, Vec<Bind>, i64) {
    let mut clauses = vec!["deleted_at IS NULL".to_owned()];
    let mut binds = Vec::new();
    let int = |f: &mut Fields, field: &'static str, v: Option<&String>| -> Option<i64> {
        let v = v.map(|v| v.trim()).filter(|v| !v.is_empty())?;
        match v.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                f.push(field, "must be an integer");
                None
            }
        }
    };
    let min = int(f, "min_price", q.min_price.as_ref());
    let max = int(f, "max_price", q.max_price.as_ref());
    let limit = int(f, "limit", q.limit.as_ref()).unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        f.push("limit", "must be 1 to 100");
    }
    if let Some(sku) = q.sku.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        binds.push(Bind::Text(sku.to_owned()));
        clauses.push(format!("sku = ${}", binds.len()));
    }
    if let Some(c) = q
        .category
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        binds.push(Bind::Text(c.to_owned()));
        clauses.push(format!("category = ${}", binds.len()));
    }
    if let Some(min) = min {
        binds.push(Bind::Int(min));
        clauses.push(format!("price_amount >= ${}", binds.len()));
    }
    if let Some(max) = max {
        binds.push(Bind::Int(max));
        clauses.push(format!("price_amount <= ${}", binds.len()));
    }
    if let Some(text) = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        binds.push(Bind::Text(like_pattern(text)));
        clauses.push(format!("search_text LIKE ${} ESCAPE '\\'", binds.len()));
    }
    if let Some(c) = q.cursor.as_deref().filter(|c| !c.is_empty()) {
        match decode_cursor(c) {
            Some((at, id)) => {
                binds.push(Bind::Int(at));
                let n = binds.len();
                binds.push(Bind::Text(id));
                clauses.push(format!(
                    "(created_at > ${n} OR (created_at = ${n} AND id > ${}))",
                    n + 1
                ));
            }
            None => f.push("cursor", "is not a cursor this service issued"),
        }
    }
    let limit = limit.clamp(1, MAX_LIMIT); // refused above when outside; SQL stays sane
    binds.push(Bind::Int(limit + 1));
    let sql = format!(
        "SELECT {COLUMNS} FROM products WHERE {} ORDER BY created_at, id LIMIT ${}",
        clauses.join(" AND "),
        binds.len()
    );
    (sql, binds, limit)
}

/// `GET /products?sku=&category=&min_price=&max_price=&q=&limit=&cursor=` (public; `sku` is
/// an exact match, how the order service prices a line). Prices
/// filter on `amount` whatever the currency. `limit` is 1 to 100 (default 20).
#[utoipa::path(get, path = "/products", operation_id = "listProducts", tag = "catalog",
    summary = "List products, newest last, a page at a time",
    params(ListQuery),
    responses((status = 200, description = "One page", body = Page<Product>)))]
pub async fn list(
    State(s): State<AppState>,
    query: Query<ListQuery>,
) -> Result<Json<Page<Product>>, Error> {
    let Query(q) = query;
    let mut f = Fields::default();
    let (sql, binds, limit) = list_sql(&q, &mut f);
    f.finish()?;
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = match b {
            Bind::Int(n) => query.bind(n),
            Bind::Text(t) => query.bind(t),
        };
    }
    let rows = query.fetch_all(s.db.pool()).await?;
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(items, limit, position)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let p = Product {
            id: "0190-abc".into(),
            sku: "A".into(),
            name: "n".into(),
            description: None,
            category: "c".into(),
            price: Price {
                amount: 1,
                currency: "EUR".into(),
            },
            low_stock_threshold: 5,
            created_at: 1_700_000_000_123,
            updated_at: 0,
        };
        assert_eq!(
            decode_cursor(&kit::page::encode_cursor(&position(&p))),
            Some((1_700_000_000_123, "0190-abc".to_owned()))
        );
        for bad in ["", "!!", "bm90LWEtY3Vyc29y"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("50%_Off\\"), "%50\\%\\_off\\\\%");
    }
}
