//! The email channel: lettre over SMTP (plain, STARTTLS or implicit TLS, with credentials
//! from the URL or the settings), or, with no server configured, `.eml` files under the
//! data folder (the embedded default: platform mode sends "mail" with no mail server).
//!
//! Each message has a `Message-ID` made from its delivery id, so a retry after a crash
//! between the server's acceptance and our bookkeeping is the same message downstream, and,
//! for the categories a user may turn off, RFC 8058 `List-Unsubscribe` and
//! `List-Unsubscribe-Post` headers with a signed one-click link.

use std::path::PathBuf;
use std::sync::Arc;

use lettre::message::header::{HeaderName, HeaderValue, MessageId};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::catalog::{kind, Channel, Templates};
use crate::channel::ChannelSender;
use crate::queue::{Delivery, Outcome};
use crate::unsubscribe::{Signer, Unsubscribe};

/// Where email goes.
#[derive(Debug, Clone)]
pub enum MailTarget {
    /// An SMTP server: `smtp://host:25`, `smtp://host:587?tls=required` (STARTTLS),
    /// `smtps://host:465` (implicit TLS), credentials as `user:password@` or in the settings.
    Smtp {
        /// The URL.
        url: String,
        /// User and password, when not in the URL.
        credentials: Option<(String, String)>,
    },
    /// `.eml` files in a folder.
    Files(PathBuf),
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(AsyncFileTransport<Tokio1Executor>),
}

/// Email through lettre.
pub struct EmailSender {
    transport: Transport,
    from: Mailbox,
    /// The domain of `Message-ID`s (the sender's).
    domain: String,
    /// Where links point (the gateway's public address).
    public_url: String,
    templates: Arc<Templates>,
    signer: Signer,
}

/// A configuration the email channel cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum MailConfigError {
    /// `MAIL_FROM` is not an address.
    #[error("MAIL_FROM {0:?} is not an email address (e.g. \"Shop <no-reply@shop.example>\")")]
    From(String),
    /// `SMTP_URL` cannot be used.
    #[error("SMTP_URL: {0}")]
    Smtp(#[source] lettre::transport::smtp::Error),
    /// The folder for `.eml` files cannot be made.
    #[error("cannot create the mail folder {0}: {1}")]
    Folder(PathBuf, #[source] std::io::Error),
}

impl EmailSender {
    /// A sender to `target`, from `from`, with links to `public_url`.
    pub fn new(
        target: &MailTarget,
        from: &str,
        public_url: &str,
        templates: Arc<Templates>,
        signer: Signer,
    ) -> Result<EmailSender, MailConfigError> {
        let from: Mailbox = from
            .parse()
            .map_err(|_| MailConfigError::From(from.to_owned()))?;
        let transport = match target {
            MailTarget::Smtp { url, credentials } => {
                let mut b = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(MailConfigError::Smtp)?;
                if let Some((user, password)) = credentials {
                    b = b.credentials(Credentials::new(user.clone(), password.clone()));
                }
                Transport::Smtp(b.build())
            }
            MailTarget::Files(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| MailConfigError::Folder(dir.clone(), e))?;
                Transport::Files(AsyncFileTransport::new(dir))
            }
        };
        Ok(EmailSender {
            transport,
            domain: from.email.domain().to_owned(),
            from,
            public_url: public_url.trim_end_matches('/').to_owned(),
            templates,
            signer,
        })
    }

    /// The message for `d`, or why there is none.
    pub fn message(&self, d: &Delivery) -> Result<Message, Outcome> {
        let kind = kind(&d.kind).ok_or_else(|| Outcome::Dropped(format!("no kind {}", d.kind)))?;
        let to: Mailbox = d
            .recipient
            .parse()
            .map_err(|_| Outcome::Permanent(format!("{:?} is not an address", d.recipient)))?;
        let unsubscribe = match (&d.user_id, kind.category.optional()) {
            (Some(user_id), true) => Some(format!(
                "{}/api/notifications/unsubscribe?token={}",
                self.public_url,
                self.signer.token(&Unsubscribe {
                    user_id: user_id.clone(),
                    category: kind.category,
                    channel: Channel::EMAIL,
                })
            )),
            _ => None,
        };
        let mut data = d.data.clone();
        if let (Some(o), Some(url)) = (data.as_object_mut(), &unsubscribe) {
            o.insert("unsubscribe_url".into(), url.clone().into());
        }
        let mail = self
            .templates
            .email(kind, &data)
            .map_err(|e| Outcome::Dropped(e.to_string()))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject)
            .header(MessageId::from(format!("<{}@{}>", d.id, self.domain)));
        if let Some(url) = unsubscribe {
            builder = builder
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe"),
                    format!("<{url}>"),
                ))
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                    "List-Unsubscribe=One-Click".to_owned(),
                ));
        }
        builder
            .multipart(MultiPart::alternative_plain_html(mail.text, mail.html))
            .map_err(|e| Outcome::Dropped(format!("cannot build the message: {e}")))
    }
}

#[async_trait::async_trait]
impl ChannelSender for EmailSender {
    fn channel(&self) -> Channel {
        Channel::EMAIL
    }

    async fn send(&self, d: &Delivery) -> Outcome {
        let message = match self.message(d) {
            Ok(m) => m,
            Err(outcome) => return outcome,
        };
        match &self.transport {
            Transport::Smtp(t) => match t.send(message).await {
                Ok(_) => Outcome::Sent,
                // 5xx: the server refuses this message or recipient for good.
                Err(e) if e.is_permanent() => Outcome::Permanent(e.to_string()),
                Err(e) => Outcome::Retry(e.to_string()),
            },
            Transport::Files(t) => match t.send(message).await {
                Ok(_) => Outcome::Sent,
                Err(e) => Outcome::Retry(e.to_string()),
            },
        }
    }
}
