//! Cards: checking what a customer typed (Luhn, brand from the IIN, expiry, CVC) and the
//! saved payment methods that replace it. The number and the CVC live only in the request
//! being handled: `Debug` of the types that hold them shows neither, and what is stored is
//! the brand, the last four digits, the expiry, the processor's token and a keyed hash.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hmac::{Hmac, Mac};
use kit::db::{new_id, now_ms};
use kit::openapi::ProblemBody;
use kit::Query;
use kit::{Identity, Json};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use crate::error::{Error, FieldError};
use kit::page::{Page, PageQuery};

use crate::{doc, AppState};

/// A card number that passed the checks: digits only. `Debug` shows only the last four.
#[derive(Clone, PartialEq, Eq)]
pub struct CardNumber(String);

impl CardNumber {
    /// Strips spaces and checks digits, length (12–19) and the Luhn checksum.
    pub fn parse(raw: &str) -> Result<CardNumber, String> {
        let digits: String = raw.chars().filter(|c| *c != ' ').collect();
        if digits.is_empty() {
            return Err("is required".into());
        }
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err("must contain only digits and spaces".into());
        }
        if !(12..=19).contains(&digits.len()) {
            return Err("must have 12 to 19 digits".into());
        }
        if !luhn(&digits) {
            return Err("is not a valid card number".into());
        }
        Ok(CardNumber(digits))
    }

    /// The digits (for the processor and the keyed hash only).
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// The last four digits.
    pub fn last4(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }

    /// The card network, from the issuer identification number.
    pub fn brand(&self) -> Brand {
        brand_of(&self.0)
    }
}

impl std::fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CardNumber(…{})", self.last4())
    }
}

/// Whether `digits` (ASCII digits only) pass the Luhn checksum.
pub fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A card network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Brand {
    /// IIN 4.
    Visa,
    /// IIN 51–55 and 2221–2720.
    Mastercard,
    /// IIN 34 and 37.
    Amex,
    /// IIN 6011, 622126–622925, 644–649, 65.
    Discover,
    /// Anything else.
    Unknown,
}

impl Brand {
    /// The name stored and answered.
    pub fn as_str(self) -> &'static str {
        match self {
            Brand::Visa => "visa",
            Brand::Mastercard => "mastercard",
            Brand::Amex => "amex",
            Brand::Discover => "discover",
            Brand::Unknown => "unknown",
        }
    }
}

/// The brand of a number from its leading digits.
pub fn brand_of(digits: &str) -> Brand {
    let prefix = |n: usize| digits.get(..n).and_then(|p| p.parse::<u32>().ok());
    let in_range = |n: usize, lo: u32, hi: u32| prefix(n).is_some_and(|p| (lo..=hi).contains(&p));
    if digits.starts_with('4') {
        Brand::Visa
    } else if in_range(2, 51, 55) || in_range(4, 2221, 2720) {
        Brand::Mastercard
    } else if in_range(2, 34, 34) || in_range(2, 37, 37) {
        Brand::Amex
    } else if in_range(4, 6011, 6011)
        || in_range(6, 622126, 622925)
        || in_range(3, 644, 649)
        || in_range(2, 65, 65)
    {
        Brand::Discover
    } else {
        Brand::Unknown
    }
}

/// `POST /payment-methods`. `Debug` omits the number and the CVC.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({
    "card_number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2030, "cvc": "123",
    "billing_country": "US"
}))]
pub struct NewCard {
    /// 12 to 19 digits (spaces allowed) passing the Luhn check; never stored or logged.
    card_number: String,
    /// 1 to 12.
    #[schema(minimum = 1, maximum = 12)]
    exp_month: i64,
    /// Four digits; with `exp_month`, not before this month and at most 20 years ahead.
    #[schema(minimum = 2000, maximum = 9999)]
    exp_year: i64,
    /// 4 digits for amex, 3 for other brands; never stored or logged.
    #[schema(pattern = "^[0-9]{3,4}$")]
    cvc: String,
    /// Two-letter ISO 3166-1 country code (upper-cased).
    billing_country: String,
}

impl std::fmt::Debug for NewCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCard")
            .field("exp_month", &self.exp_month)
            .field("exp_year", &self.exp_year)
            .field("billing_country", &self.billing_country)
            .finish_non_exhaustive()
    }
}

/// A card that passed every check. `Debug` shows only the last four digits.
#[derive(Debug, Clone)]
pub struct ValidCard {
    /// The number.
    pub number: CardNumber,
    /// 1–12.
    pub exp_month: i64,
    /// Four digits.
    pub exp_year: i64,
    /// Two upper-case letters (ISO 3166-1 alpha-2).
    pub billing_country: String,
}

impl NewCard {
    /// Checks every field against `today` (year, month) and collects every problem.
    pub fn validate(&self, today: (i64, i64)) -> Result<ValidCard, Error> {
        let mut errors = Vec::new();
        let mut bad = |field, message: &str| errors.push(FieldError::new(field, message));
        let number = CardNumber::parse(&self.card_number)
            .map_err(|m| bad("card_number", &m))
            .ok();
        if !(1..=12).contains(&self.exp_month) {
            bad("exp_month", "must be 1 to 12");
        }
        let (year, month) = today;
        if !(2000..=9999).contains(&self.exp_year) {
            bad("exp_year", "must be a four-digit year");
        } else if (self.exp_year, self.exp_month) < (year, month) {
            bad("exp_year", "the card has expired");
        } else if self.exp_year > year + 20 {
            bad("exp_year", "is more than 20 years ahead");
        }
        // The brand from the typed digits, so that a mistyped amex number is not also
        // told its CVC is wrong.
        let typed: String = self
            .card_number
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let cvc_len = match brand_of(&typed) {
            Brand::Amex => 4,
            _ => 3,
        };
        if self.cvc.len() != cvc_len || !self.cvc.bytes().all(|b| b.is_ascii_digit()) {
            bad("cvc", &format!("must be {cvc_len} digits"));
        }
        let country = self.billing_country.trim().to_ascii_uppercase();
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            bad("billing_country", "must be a two-letter country code");
        }
        match number {
            Some(number) if errors.is_empty() => Ok(ValidCard {
                number,
                exp_month: self.exp_month,
                exp_year: self.exp_year,
                billing_country: country,
            }),
            _ => Err(Error::Invalid(errors)),
        }
    }
}

/// The (year, month) of a Unix-ms time, UTC.
pub fn year_month(ms: i64) -> (i64, i64) {
    // Howard Hinnant's days-to-civil.
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// The keyed hash of a number that stands for the card in velocity rules: the same card
/// has the same fingerprint, and without the key the fingerprint says nothing about it.
pub fn fingerprint(key: &[u8], number: &CardNumber) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(number.digits().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A saved card as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5f2-7c1e-7a4b-9c2d-3e4f5a6b7c8d", "brand": "visa", "last4": "4242",
    "exp_month": 12, "exp_year": 2030, "country": "US", "billing_country": "US",
    "created_at": 1733400000000_i64
}))]
pub struct PaymentMethod {
    /// Its id, used in payment intents.
    pub id: String,
    /// Card network: `visa`, `mastercard`, `amex`, `discover` or `unknown`.
    pub brand: String,
    /// Last four digits.
    pub last4: String,
    /// Expiry month.
    pub exp_month: i64,
    /// Expiry year.
    pub exp_year: i64,
    /// The card's issuing country.
    pub country: String,
    /// The billing address's country.
    pub billing_country: String,
    /// Unix ms.
    pub created_at: i64,
}

impl PaymentMethod {
    fn from_row(r: &AnyRow) -> Result<PaymentMethod, sqlx::Error> {
        Ok(PaymentMethod {
            id: r.try_get("id")?,
            brand: r.try_get("brand")?,
            last4: r.try_get("last4")?,
            exp_month: r.try_get("exp_month")?,
            exp_year: r.try_get("exp_year")?,
            country: r.try_get("country")?,
            billing_country: r.try_get("billing_country")?,
            created_at: r.try_get("created_at")?,
        })
    }
}

/// `POST /payment-methods`: saves a card for the caller.
///
/// Checks the number (Luhn, 12 to 19 digits), the expiry and the CVC, and keeps only the
/// brand, the last four digits, the expiry, the countries and the processor's token. Needs
/// an `Idempotency-Key` header, as every POST of this service.
#[utoipa::path(post, path = "/payment-methods", operation_id = "createPaymentMethod", tag = "cards",
    summary = "Save a card for the caller",
    security(("bearer" = [])),
    params(kit::openapi::IdempotencyKey),
    request_body = NewCard,
    responses(
        (status = 201, description = "Saved (a retry with the same key gets this answer again)", body = PaymentMethod),
        (status = 400, description = doc::BAD_KEY_OR_JSON, body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = doc::TOO_LARGE, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A field failed validation (`errors` names each: number, expiry, CVC, country), or the `Idempotency-Key` was used with a different request", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = doc::PROCESSOR, body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = doc::KEYS_UNAVAILABLE, body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    id: Identity,
    Json(body): Json<NewCard>,
) -> Result<impl IntoResponse, Error> {
    let card = body.validate(year_month(now_ms()))?;
    let tokenized = state.processor.tokenize(&card.number).await?;
    let method = PaymentMethod {
        id: new_id(),
        brand: card.number.brand().as_str().to_owned(),
        last4: card.number.last4().to_owned(),
        exp_month: card.exp_month,
        exp_year: card.exp_year,
        country: tokenized.country,
        billing_country: card.billing_country,
        created_at: now_ms(),
    };
    sqlx::query(
        "INSERT INTO payment_methods (id, customer_id, brand, last4, exp_month, exp_year, \
         country, billing_country, fingerprint, processor_token, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&method.id)
    .bind(&id.user_id)
    .bind(&method.brand)
    .bind(&method.last4)
    .bind(method.exp_month)
    .bind(method.exp_year)
    .bind(&method.country)
    .bind(&method.billing_country)
    .bind(fingerprint(&state.fingerprint_key, &card.number))
    .bind(&tokenized.token)
    .bind(method.created_at)
    .execute(state.db.pool())
    .await?;
    tracing::info!(payment_method = %method.id, brand = %method.brand, "card saved");
    Ok((StatusCode::CREATED, Json(method)))
}

/// `GET /payment-methods`: the caller's cards, newest first.
#[utoipa::path(get, path = "/payment-methods", operation_id = "listPaymentMethods", tag = "cards",
    summary = "List the caller's cards, newest first, a page at a time",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "One page", body = Page<PaymentMethod>),
        (status = 400, description = "The query does not parse (e.g. a `limit` that is not a number)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "`limit` is not 1 to 100, or `cursor` is not one this API issued", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = doc::KEYS_UNAVAILABLE, body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<AppState>,
    id: Identity,
    query: Query<PageQuery>,
) -> Result<Json<Page<PaymentMethod>>, Error> {
    let Query(q) = query;
    let limit = q.limit()?;
    let rows = sqlx::query(
        "SELECT * FROM payment_methods WHERE customer_id = $1 AND ($2 = '' OR id < $2) \
         ORDER BY id DESC LIMIT $3",
    )
    .bind(&id.user_id)
    .bind(q.after()?.unwrap_or_default())
    .bind(limit + 1)
    .fetch_all(state.db.pool())
    .await?;
    let items = rows
        .iter()
        .map(PaymentMethod::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(items, limit, |m| m.id.clone())))
}

/// What an intent needs of a payment method.
#[derive(Debug, Clone)]
pub struct MethodFacts {
    /// Whose card it is.
    pub customer_id: String,
    /// The processor's token for it.
    pub processor_token: String,
    /// The keyed hash of the number.
    pub fingerprint: String,
    /// Issuing country.
    pub country: String,
    /// Billing country.
    pub billing_country: String,
}

/// Loads a payment method's facts, `None` when there is no such method.
pub async fn facts(db: &kit::Db, id: &str) -> Result<Option<MethodFacts>, Error> {
    let row = sqlx::query(
        "SELECT customer_id, processor_token, fingerprint, country, billing_country \
         FROM payment_methods WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    row.map(|r| {
        Ok(MethodFacts {
            customer_id: r.try_get("customer_id")?,
            processor_token: r.try_get("processor_token")?,
            fingerprint: r.try_get("fingerprint")?,
            country: r.try_get("country")?,
            billing_country: r.try_get("billing_country")?,
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn year_month_of_known_times() {
        assert_eq!(year_month(0), (1970, 1));
        // 2024-02-29T12:00:00Z
        assert_eq!(year_month(1_709_208_000_000), (2024, 2));
        // 2025-12-31T23:59:59Z
        assert_eq!(year_month(1_767_225_599_000), (2025, 12));
    }

    #[test]
    fn brands_from_iin_ranges() {
        for (n, b) in [
            ("4242424242424242", Brand::Visa),
            ("5555555555554444", Brand::Mastercard),
            ("2223003122003222", Brand::Mastercard),
            ("378282246310005", Brand::Amex),
            ("6011111111111117", Brand::Discover),
            ("6221260000000000", Brand::Discover),
            ("3056930009020004", Brand::Unknown),
        ] {
            assert_eq!(brand_of(n), b, "{n}");
        }
    }
}
