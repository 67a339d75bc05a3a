//! The S3-compatible file store (`TALKAMIE_STORAGE=s3`): clients upload and read straight from
//! the bucket with presigned URLs (rusty-s3 signs them, SigV4). The server checks an upload when
//! a profile first uses it (size, type, first bytes), makes the picture thumbnail and stores it
//! next to the original.

use std::time::Duration;

use anyhow::{bail, Context};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::config::S3Settings;

/// S3 presigned URLs live at most 7 days.
const READ_TTL: Duration = Duration::from_secs(7 * 24 * 3600 - 60);
const UPLOAD_TTL: Duration = Duration::from_secs(15 * 60);
/// Server-side requests (check, thumbnail, delete) are signed for a short while only.
const OWN_TTL: Duration = Duration::from_secs(60);

pub struct S3Files {
    bucket: Bucket,
    credentials: Credentials,
    http: reqwest::Client,
}

pub fn object_name(user_id: &str, key: &str, small: bool) -> String {
    if small {
        format!("users/{user_id}/{key}.sm.png")
    } else {
        format!("users/{user_id}/{key}")
    }
}

impl S3Files {
    pub fn new(settings: &S3Settings) -> anyhow::Result<S3Files> {
        let style = if settings.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let endpoint = settings
            .endpoint
            .parse()
            .context("S3_ENDPOINT is not a URL")?;
        let bucket = Bucket::new(
            endpoint,
            style,
            settings.bucket.clone(),
            settings.region.clone(),
        )
        .context("S3_BUCKET is not a valid bucket name")?;
        Ok(S3Files {
            bucket,
            credentials: Credentials::new(
                settings.access_key_id.clone(),
                settings.secret_access_key.clone(),
            ),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    /// A presigned PUT that only accepts the declared Content-Type.
    pub fn upload_url(&self, user_id: &str, key: &str, mime: &str) -> String {
        let name = object_name(user_id, key, false);
        let mut action = self.bucket.put_object(Some(&self.credentials), &name);
        action
            .headers_mut()
            .insert("content-type", mime.to_string());
        action.sign(UPLOAD_TTL).to_string()
    }

    pub fn read_url(&self, user_id: &str, key: &str, small: bool) -> String {
        let name = object_name(user_id, key, small);
        self.bucket
            .get_object(Some(&self.credentials), &name)
            .sign(READ_TTL)
            .to_string()
    }

    /// `(size, content type)` of an uploaded object, `None` when it is not there (yet).
    pub async fn head(&self, name: &str) -> anyhow::Result<Option<(u64, String)>> {
        let url = self
            .bucket
            .head_object(Some(&self.credentials), name)
            .sign(OWN_TTL);
        let response = self.http.head(url).send().await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            bail!("HEAD {name}: {}", response.status());
        }
        // Read the header: for HEAD, reqwest's `content_length()` is the (empty) body's size.
        let size = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok(Some((size, content_type)))
    }

    pub async fn get(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let url = self
            .bucket
            .get_object(Some(&self.credentials), name)
            .sign(OWN_TTL);
        let response = self.http.get(url).send().await?.error_for_status()?;
        Ok(response.bytes().await?.to_vec())
    }

    pub async fn put(&self, name: &str, bytes: Vec<u8>, mime: &str) -> anyhow::Result<()> {
        let mut action = self.bucket.put_object(Some(&self.credentials), name);
        action
            .headers_mut()
            .insert("content-type", mime.to_string());
        let url = action.sign(OWN_TTL);
        self.http
            .put(url)
            .header("content-type", mime)
            .body(bytes)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    pub async fn delete(&self, name: &str) -> anyhow::Result<()> {
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), name)
            .sign(OWN_TTL);
        let response = self.http.delete(url).send().await?;
        if !(response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND)
        {
            bail!("DELETE {name}: {}", response.status());
        }
        Ok(())
    }

    /// Creates the bucket if it does not exist (start-up convenience for local S3 servers).
    pub async fn ensure_bucket(&self) -> anyhow::Result<()> {
        let head = self
            .bucket
            .head_bucket(Some(&self.credentials))
            .sign(OWN_TTL);
        if self.http.head(head).send().await?.status().is_success() {
            return Ok(());
        }
        let create = self.bucket.create_bucket(&self.credentials).sign(OWN_TTL);
        self.http
            .put(create)
            .header("content-length", "0")
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}
