//! Mail. The embedded default writes every message as an `.eml` file under `<data dir>/mail/`
//! (lettre's file transport), so a developer (or a test) reads the OTP from disk; SMTP is the
//! production option (`TALKAMIE_MAILER=smtp`, `SMTP_URL`).

use std::path::PathBuf;

use anyhow::Context;
use lettre::message::Mailbox;
use lettre::{FileTransport, Message, SmtpTransport, Transport};

use crate::config::{MailerKind, Settings};

#[async_trait::async_trait]
pub trait Mailer: Send + Sync {
    async fn send(&self, to: &str, subject: &str, body: &str) -> anyhow::Result<()>;

    /// Removes stored copies of mails to `to` (a deleted account). Sent mail cannot be recalled.
    async fn forget(&self, _to: &str) -> anyhow::Result<()> {
        Ok(())
    }
}

pub fn from_settings(settings: &Settings) -> anyhow::Result<Box<dyn Mailer>> {
    let from: Mailbox = settings.mail_from.parse().with_context(|| {
        format!(
            "TALKAMIE_MAIL_FROM is not a mailbox: {}",
            settings.mail_from
        )
    })?;
    Ok(match &settings.mailer {
        MailerKind::File => {
            let dir = settings.mail_dir();
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Box::new(FileMailer { dir, from })
        }
        MailerKind::Smtp(url) => Box::new(SmtpMailer {
            transport: SmtpTransport::from_url(url)
                .context("SMTP_URL is not a valid smtp:// or smtps:// URL")?
                .build(),
            from,
        }),
    })
}

fn message(from: &Mailbox, to: &str, subject: &str, body: &str) -> anyhow::Result<Message> {
    Ok(Message::builder()
        .from(from.clone())
        .to(to.parse().with_context(|| format!("not a mailbox: {to}"))?)
        .subject(subject)
        .body(body.to_string())?)
}

pub struct FileMailer {
    dir: PathBuf,
    from: Mailbox,
}

#[async_trait::async_trait]
impl Mailer for FileMailer {
    async fn send(&self, to: &str, subject: &str, body: &str) -> anyhow::Result<()> {
        let message = message(&self.from, to, subject, body)?;
        let transport = FileTransport::new(&self.dir);
        tokio::task::spawn_blocking(move || transport.send(&message).map(|_| ()))
            .await?
            .context("writing the .eml file")
    }

    async fn forget(&self, to: &str) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let needle = to.trim().to_lowercase();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.to_lowercase().contains(&needle) {
                    std::fs::remove_file(&path)?;
                }
            }
            Ok(())
        })
        .await?
    }
}

pub struct SmtpMailer {
    transport: SmtpTransport,
    from: Mailbox,
}

#[async_trait::async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, to: &str, subject: &str, body: &str) -> anyhow::Result<()> {
        let message = message(&self.from, to, subject, body)?;
        let transport = self.transport.clone();
        tokio::task::spawn_blocking(move || transport.send(&message).map(|_| ()))
            .await?
            .context("sending over SMTP")
    }
}
