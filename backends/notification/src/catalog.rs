//! What each domain event becomes: who hears of it, in which category, and the words.
//!
//! [`drafts`] maps an event to the notifications it causes (none for most topics). Each
//! [`Kind`] has five templates, rendered with minijinja: an in-app `title` and `body`
//! (plain text), and an email `subject`, `text` part and `html` part. HTML parts are
//! auto-escaped (the template name ends in `.html`), so a product name or a user's display
//! name can never inject markup.

use std::borrow::Cow;

use minijinja::value::Serde;
use minijinja::Environment;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What a notification is about, for preferences: a user can turn a category off per
/// channel, except [`Category::Security`] (password changes, sessions ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// The welcome after registration.
    Account,
    /// Orders confirmed or cancelled.
    Orders,
    /// Payments captured or refunded.
    Payments,
    /// Password changes and sessions ended early: always sent, cannot be turned off.
    Security,
    /// Low stock, to the operators in `ADMIN_EMAILS`.
    Stock,
}

impl Category {
    /// Every category.
    pub const ALL: [Category; 5] = [
        Category::Account,
        Category::Orders,
        Category::Payments,
        Category::Security,
        Category::Stock,
    ];

    /// Its name in URLs, rows and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Account => "account",
            Category::Orders => "orders",
            Category::Payments => "payments",
            Category::Security => "security",
            Category::Stock => "stock",
        }
    }

    /// The category named `s`.
    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether a user may turn it off.
    pub fn optional(self) -> bool {
        self != Category::Security
    }
}

/// How a notification reaches someone: the inbox (`in_app`), `email`, web `push`, or a
/// channel an embedder adds with a [`ChannelSender`](crate::ChannelSender) of its own
/// (`Channel::custom("sms")`). In rows and JSON it is its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "email")]
pub struct Channel(Cow<'static, str>);

impl Channel {
    /// The stored inbox (`GET /notifications`).
    pub const IN_APP: Channel = Channel(Cow::Borrowed("in_app"));
    /// Email, through the outgoing queue.
    pub const EMAIL: Channel = Channel(Cow::Borrowed("email"));
    /// Web push to each of the user's subscribed browsers, through the outgoing queue.
    pub const PUSH: Channel = Channel(Cow::Borrowed("push"));
    /// The channels every service has.
    pub const BUILT_IN: [Channel; 3] = [Channel::IN_APP, Channel::EMAIL, Channel::PUSH];

    /// A channel of the embedder's own, named `name` (lower case, digits and `_`).
    pub const fn custom(name: &'static str) -> Channel {
        Channel(Cow::Borrowed(name))
    }

    /// The channel named `name` as rows and tokens store it.
    pub fn named(name: &str) -> Channel {
        match Channel::BUILT_IN.iter().find(|c| c.as_str() == name) {
            Some(c) => c.clone(),
            None => Channel(Cow::Owned(name.to_owned())),
        }
    }

    /// Its name in rows and JSON.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A kind of notification: its template set and category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// The templates' name (`order_confirmed`), also stored with each row.
    pub name: &'static str,
    /// Its category.
    pub category: Category,
    title: &'static str,
    body: &'static str,
    subject: &'static str,
    text: &'static str,
    html: &'static str,
}

/// Every kind, with its words.
pub const KINDS: &[Kind] = &[
    Kind {
        name: "welcome",
        category: Category::Account,
        title: "Welcome to the shop",
        body: "Your account {{ email }} is ready.",
        subject: "Welcome{% if name %}, {{ name }}{% endif %}",
        text: "Hello{% if name %} {{ name }}{% endif %},\n\nyour account {{ email }} is ready. \
               Happy shopping!\n",
        html: "<p>Hello{% if name %} {{ name }}{% endif %},</p>\
               <p>your account <b>{{ email }}</b> is ready. Happy shopping!</p>",
    },
    Kind {
        name: "password_changed",
        category: Category::Security,
        title: "Your password was changed",
        body: "If this was not you, reset your password now.",
        subject: "Your password was changed",
        text: "Your account's password was changed. If this was not you, reset your password \
               now: every session of yours was signed out except the one that changed it.\n",
        html: "<p>Your account's password was changed.</p><p>If this was not you, reset your \
               password now: every session of yours was signed out except the one that \
               changed it.</p>",
    },
    Kind {
        name: "session_revoked",
        category: Category::Security,
        title: "A session of yours was ended",
        body: "{{ why }}",
        subject: "A session of your account was ended",
        text: "{{ why }}\n\nIf this was not you, change your password now: that signs out \
               every other session.\n",
        html: "<p>{{ why }}</p><p>If this was not you, change your password now: that signs \
               out every other session.</p>",
    },
    Kind {
        name: "order_confirmed",
        category: Category::Orders,
        title: "Order confirmed",
        body: "Your order of {{ total | money(currency) }} is confirmed.",
        subject: "Your order is confirmed",
        text: "Your order {{ order_id }} of {{ total | money(currency) }} is confirmed and \
               paid. We will let you know when it ships.\n",
        html: "<p>Your order <code>{{ order_id }}</code> of <b>{{ total | money(currency) }}</b> \
               is confirmed and paid.</p><p>We will let you know when it ships.</p>",
    },
    Kind {
        name: "order_cancelled",
        category: Category::Orders,
        title: "Order cancelled",
        body: "Your order was cancelled: {{ reason }}.",
        subject: "Your order was cancelled",
        text: "Your order {{ order_id }} was cancelled: {{ reason }}. Nothing was charged, or \
               what was charged is being refunded.\n",
        html: "<p>Your order <code>{{ order_id }}</code> was cancelled: {{ reason }}.</p>\
               <p>Nothing was charged, or what was charged is being refunded.</p>",
    },
    Kind {
        name: "payment_captured",
        category: Category::Payments,
        title: "Payment received",
        body: "We received {{ amount | money(currency) }}.",
        subject: "Payment received: {{ amount | money(currency) }}",
        text: "We received your payment of {{ amount | money(currency) }}\
               {% if order_id %} for order {{ order_id }}{% endif %}. Thank you.\n",
        html: "<p>We received your payment of <b>{{ amount | money(currency) }}</b>\
               {% if order_id %} for order <code>{{ order_id }}</code>{% endif %}.</p>\
               <p>Thank you.</p>",
    },
    Kind {
        name: "payment_refunded",
        category: Category::Payments,
        title: "Refund issued",
        body: "{{ amount | money(currency) }} is on its way back to you.",
        subject: "Refund issued: {{ amount | money(currency) }}",
        text: "We refunded {{ amount | money(currency) }}{% if order_id %} for order \
               {{ order_id }}{% endif %}. It reaches your card within a few days.\n",
        html: "<p>We refunded <b>{{ amount | money(currency) }}</b>{% if order_id %} for order \
               <code>{{ order_id }}</code>{% endif %}.</p><p>It reaches your card within a few \
               days.</p>",
    },
    Kind {
        name: "low_stock",
        category: Category::Stock,
        title: "Low stock: {{ sku }}",
        body: "{{ sku }}: {{ available }} left (threshold {{ threshold }}).",
        subject: "Low stock: {{ sku }} ({{ available }} left)",
        text: "{{ sku }} has {{ available }} units available, below its threshold of \
               {{ threshold }}.\n",
        html: "<p><code>{{ sku }}</code> has <b>{{ available }}</b> units available, below its \
               threshold of {{ threshold }}.</p>",
    },
];

/// The kind named `name`.
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// One notification an event causes.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// Its kind.
    pub kind: &'static Kind,
    /// The user it is for (in-app, and email through their registered address).
    pub user_id: Option<String>,
    /// An address to email directly (operators), when there is no user.
    pub email: Option<String>,
    /// The template context.
    pub data: Value,
}

/// Why an event could not be read: the consumer retries it (and logs this), so it must only
/// happen for a payload that breaks its producer's contract.
#[derive(Debug, thiserror::Error)]
#[error("event {topic}: {why}")]
pub struct Unreadable {
    topic: String,
    why: String,
}

fn field<'a>(event: &'a kit::Event, name: &str) -> Result<&'a Value, Unreadable> {
    event
        .payload
        .get(name)
        .filter(|v| !v.is_null())
        .ok_or_else(|| Unreadable {
            topic: event.topic.clone(),
            why: format!("no {name}"),
        })
}

fn text(event: &kit::Event, name: &str) -> Result<String, Unreadable> {
    field(event, name)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Unreadable {
            topic: event.topic.clone(),
            why: format!("{name} is not a string"),
        })
}

/// The notifications `event` causes; `admins` are the operators' addresses.
pub fn drafts(event: &kit::Event, admins: &[String]) -> Result<Vec<Draft>, Unreadable> {
    let p = &event.payload;
    let for_user = |name: &str, user: String, data: Value| -> Vec<Draft> {
        vec![Draft {
            kind: kind(name).expect("a kind in KINDS"),
            user_id: Some(user),
            email: None,
            data,
        }]
    };
    Ok(match event.topic.as_str() {
        "user.registered" => for_user(
            "welcome",
            text(event, "user_id")?,
            json!({"email": text(event, "email")?, "name": p.get("name")}),
        ),
        "user.password_changed" => for_user("password_changed", text(event, "user_id")?, json!({})),
        "user.session_revoked" => for_user(
            "session_revoked",
            text(event, "user_id")?,
            json!({"why": match text(event, "reason")?.as_str() {
                "refresh_token_reused" => "A sign-in token of yours was used twice, which \
                    happens when someone else holds a copy: its session was ended.",
                _ => "You ended one of your sessions from your account.",
            }}),
        ),
        "order.confirmed" => for_user(
            "order_confirmed",
            text(event, "customer_id")?,
            json!({"order_id": text(event, "order_id")?, "total": field(event, "total")?,
                   "currency": text(event, "currency")?}),
        ),
        "order.cancelled" => for_user(
            "order_cancelled",
            text(event, "customer_id")?,
            json!({"order_id": text(event, "order_id")?,
                   "reason": cancel_reason(&text(event, "reason")?)}),
        ),
        "payment.captured" | "payment.refunded" => for_user(
            if event.topic == "payment.captured" {
                "payment_captured"
            } else {
                "payment_refunded"
            },
            text(event, "customer_id")?,
            json!({"amount": field(event, "amount")?, "currency": text(event, "currency")?,
                   "order_id": p.get("order_id")}),
        ),
        "inventory.low_stock" => admins
            .iter()
            .map(|email| Draft {
                kind: kind("low_stock").expect("a kind in KINDS"),
                user_id: None,
                email: Some(email.clone()),
                data: json!({"sku": p.get("sku"), "available": p.get("available"),
                             "threshold": p.get("threshold")}),
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// The order service's cancel reason (a code) in words a customer reads.
pub fn cancel_reason(code: &str) -> String {
    let (head, detail) = code.split_once(':').unwrap_or((code, ""));
    match head {
        "out_of_stock" => "an item ran out of stock".into(),
        "cancelled_by_customer" | "cancelled_by_customer_after_confirmation" => {
            "it was cancelled at your request".into()
        }
        "cancelled_by_admin" => "the shop cancelled it; everything you paid is refunded".into(),
        "payment_failed" => match detail {
            "card_declined" | "do_not_honor" => "the card was declined".into(),
            "insufficient_funds" => "the card has insufficient funds".into(),
            "expired_card" => "the card has expired".into(),
            "fraud_blocked" => "the payment was refused by our fraud checks".into(),
            _ => "the payment did not go through".into(),
        },
        "deadline_exceeded" => "it could not be completed in time".into(),
        _ => "it could not be completed".into(),
    }
}

/// The parts of an email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// Subject line.
    pub subject: String,
    /// The text/plain part.
    pub text: String,
    /// The text/html part (a whole document).
    pub html: String,
}

/// The templates, compiled once.
pub struct Templates {
    env: Environment<'static>,
}

const LAYOUT: &str = "<!doctype html><html><body style=\"font-family: sans-serif\">\
    {% block content %}{% endblock %}\
    {% if unsubscribe_url %}<hr><p style=\"font-size: small\">You get these as {{ category }} \
    notifications. <a href=\"{{ unsubscribe_url }}\">Unsubscribe</a> from them by email.</p>\
    {% endif %}</body></html>";

impl Default for Templates {
    fn default() -> Templates {
        let mut env = Environment::new();
        env.add_filter("money", money);
        env.add_template("layout.html", LAYOUT)
            .expect("the layout compiles");
        for k in KINDS {
            let html = format!(
                "{{% extends \"layout.html\" %}}{{% block content %}}{}{{% endblock %}}",
                k.html
            );
            for (part, source) in [
                ("title.txt", k.title.to_owned()),
                ("body.txt", k.body.to_owned()),
                ("subject.txt", k.subject.to_owned()),
                ("text.txt", k.text.to_owned()),
                ("html.html", html),
            ] {
                env.add_template_owned(format!("{}/{part}", k.name), source)
                    .unwrap_or_else(|e| panic!("template {}/{part}: {e}", k.name));
            }
        }
        Templates { env }
    }
}

/// A template failed to render (a context the template does not expect).
#[derive(Debug, thiserror::Error)]
#[error("template {0}: {1}")]
pub struct RenderError(String, #[source] minijinja::Error);

impl Templates {
    fn render(&self, kind: &Kind, part: &str, data: &Value) -> Result<String, RenderError> {
        let name = format!("{}/{part}", kind.name);
        self.env
            .get_template(&name)
            .and_then(|t| t.render(Serde(data)))
            .map(|s| s.trim().to_owned())
            .map_err(|e| RenderError(name, e))
    }

    /// The in-app (title, body).
    pub fn in_app(&self, kind: &Kind, data: &Value) -> Result<(String, String), RenderError> {
        Ok((
            self.render(kind, "title.txt", data)?,
            self.render(kind, "body.txt", data)?,
        ))
    }

    /// The email; `data` may carry `unsubscribe_url` (shown in the footer).
    pub fn email(&self, kind: &Kind, data: &Value) -> Result<Email, RenderError> {
        let mut data = data.clone();
        if let Some(o) = data.as_object_mut() {
            o.insert("category".into(), kind.category.as_str().into());
        }
        Ok(Email {
            subject: self.render(kind, "subject.txt", &data)?,
            text: self.render(kind, "text.txt", &data)? + "\n",
            html: self.render(kind, "html.html", &data)?,
        })
    }
}

/// `money(amount, currency)`: minor units as a decimal amount and its code, `2500` EUR →
/// `25.00 EUR` (ISO 4217 exponents: 0 for the currencies listed, else 2).
fn money(amount: i64, currency: String) -> String {
    const NO_MINOR_UNIT: &[&str] = &["JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF"];
    if NO_MINOR_UNIT.contains(&currency.as_str()) {
        return format!("{amount} {currency}");
    }
    let sign = if amount < 0 { "-" } else { "" };
    let a = amount.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", a / 100, a % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str, payload: Value) -> kit::Event {
        kit::Event {
            id: "e1".into(),
            topic: topic.into(),
            occurred_at: 0,
            payload,
            traceparent: None,
        }
    }

    #[test]
    fn every_kind_renders_with_what_its_event_gives() {
        let t = Templates::default();
        let admins = vec!["ops@example.com".to_owned()];
        let events = [
            event(
                "user.registered",
                json!({"user_id": "u1", "email": "a@example.com", "name": null, "at": 1}),
            ),
            event("user.password_changed", json!({"user_id": "u1", "at": 1})),
            event(
                "user.session_revoked",
                json!({"user_id": "u1", "session_id": "s1", "reason": "refresh_token_reused",
                       "at": 1}),
            ),
            event(
                "order.confirmed",
                json!({"order_id": "o1", "customer_id": "u1", "total": 2500, "currency": "EUR",
                       "payment_intent_id": "p1"}),
            ),
            event(
                "order.cancelled",
                json!({"order_id": "o1", "customer_id": "u1", "reason": "payment_failed:card_declined"}),
            ),
            event(
                "payment.captured",
                json!({"payment_intent_id": "p1", "customer_id": "u1", "order_id": null,
                       "status": "succeeded", "amount": 999, "currency": "USD", "reason": null,
                       "refund_id": null, "at": 1}),
            ),
            event(
                "payment.refunded",
                json!({"payment_intent_id": "p1", "customer_id": "u1", "order_id": "o1",
                       "status": "succeeded", "amount": 100, "currency": "JPY", "reason": null,
                       "refund_id": "r1", "at": 1}),
            ),
            event(
                "inventory.low_stock",
                json!({"sku": "MUG-1", "available": 2, "threshold": 5, "at": 1}),
            ),
        ];
        let mut seen = Vec::new();
        for e in &events {
            let drafts = drafts(e, &admins).unwrap();
            assert_eq!(drafts.len(), 1, "{}", e.topic);
            let d = &drafts[0];
            let (title, body) = t.in_app(d.kind, &d.data).unwrap();
            let mail = t.email(d.kind, &d.data).unwrap();
            assert!(!title.is_empty() && !body.is_empty() && !mail.subject.is_empty());
            seen.push(d.kind.name);
            match d.kind.name {
                "order_confirmed" => assert_eq!(body, "Your order of 25.00 EUR is confirmed."),
                "session_revoked" => assert!(body.contains("used twice"), "{body}"),
                "order_cancelled" => {
                    assert_eq!(body, "Your order was cancelled: the card was declined.")
                }
                "payment_captured" => assert!(!mail.text.contains("for order"), "{}", mail.text),
                "payment_refunded" => assert_eq!(mail.subject, "Refund issued: 100 JPY"),
                "low_stock" => assert_eq!(d.email.as_deref(), Some("ops@example.com")),
                _ => {}
            }
        }
        let all: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        assert_eq!(seen, all, "every kind has an event that causes it");
        assert!(drafts(&event("product.created", json!({})), &admins)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn html_parts_escape_what_users_typed_and_text_parts_keep_it() {
        let t = Templates::default();
        let data = json!({"email": "a@example.com", "name": "<script>x</script> & co"});
        let mail = t.email(kind("welcome").unwrap(), &data).unwrap();
        assert!(
            mail.html
                .contains("&lt;script&gt;x&lt;&#x2f;script&gt; &amp; co"),
            "{}",
            mail.html
        );
        assert!(!mail.html.contains("<script>"));
        assert!(mail.text.contains("<script>x</script> & co"));
    }

    #[test]
    fn a_payload_missing_what_the_kind_needs_is_unreadable() {
        let e = event(
            "order.confirmed",
            json!({"order_id": "o1", "total": 1, "currency": "EUR"}),
        );
        assert_eq!(
            drafts(&e, &[]).unwrap_err().to_string(),
            "event order.confirmed: no customer_id"
        );
    }

    #[test]
    fn money_has_the_currencys_minor_unit() {
        assert_eq!(money(2500, "EUR".into()), "25.00 EUR");
        assert_eq!(money(5, "USD".into()), "0.05 USD");
        assert_eq!(money(-1999, "USD".into()), "-19.99 USD");
        assert_eq!(money(1000, "JPY".into()), "1000 JPY");
    }
}
