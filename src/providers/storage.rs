//! File storage. The embedded default keeps files on disk under `<data dir>/files/` and hands
//! out HMAC-signed, expiring URLs that this server itself answers: `PUT` to upload (15 min),
//! `GET` to read (7 days). Rendered users carry placeholder URLs (`talkamie-file:`), which are
//! signed here at answer time, so stored pushes and read models never hold expiring URLs.

use std::path::PathBuf;

use chrono::{Duration, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use talkamie_projections::profiles::FILE_URL_SCHEME;

pub const UPLOAD_TTL_MINUTES: i64 = 15;
pub const READ_TTL_DAYS: i64 = 7;
const MB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    Picture,
    Video,
    Certificate,
}

impl ObjectType {
    pub fn parse(raw: &str) -> Option<ObjectType> {
        match raw {
            "picture" => Some(ObjectType::Picture),
            "video" => Some(ObjectType::Video),
            "certificate" => Some(ObjectType::Certificate),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Picture => "picture",
            ObjectType::Video => "video",
            ObjectType::Certificate => "certificate",
        }
    }

    pub fn max_bytes(self) -> u64 {
        match self {
            ObjectType::Picture | ObjectType::Certificate => 10 * MB,
            ObjectType::Video => 100 * MB,
        }
    }

    /// Mime types accepted per object type (contract section 10).
    pub fn accepts(self, mime: &str) -> bool {
        const IMAGES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];
        match self {
            ObjectType::Picture => IMAGES.contains(&mime),
            ObjectType::Video => {
                ["video/mp4", "video/webm", "video/quicktime", "video/ogg"].contains(&mime)
            }
            ObjectType::Certificate => mime == "application/pdf" || IMAGES.contains(&mime),
        }
    }
}

/// Whether the first bytes of an upload look like its declared mime type (checked while
/// streaming, before the rest is accepted).
pub fn magic_matches(mime: &str, head: &[u8]) -> bool {
    match mime {
        "image/png" => head.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => head.starts_with(&[0xFF, 0xD8, 0xFF]),
        "image/gif" => head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a"),
        "image/webp" => head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WEBP",
        "application/pdf" => head.starts_with(b"%PDF-"),
        // Video containers vary too much for a cheap check; players reject bad files.
        _ => true,
    }
}

/// File keys and user ids become path segments: a strict alphabet keeps them inside the store.
pub fn is_safe_segment(segment: &str) -> bool {
    (1..=100).contains(&segment.len())
        && !segment.starts_with('.')
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Query of a signed file URL.
#[derive(Debug, Deserialize)]
pub struct SignedQuery {
    pub exp: i64,
    pub sig: String,
    /// Upload URLs: the mime type and size limit they allow.
    pub mime: Option<String>,
    pub max: Option<u64>,
    /// Read URLs: `sm` for the thumbnail.
    pub variant: Option<String>,
}

pub struct LocalFiles {
    root: PathBuf,
    base_url: String,
    key: Vec<u8>,
}

impl LocalFiles {
    pub fn new(root: PathBuf, base_url: String, key: Vec<u8>) -> LocalFiles {
        LocalFiles {
            root,
            base_url: base_url.trim_end_matches('/').to_string(),
            key,
        }
    }

    fn sign(&self, parts: &[&str]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    pub fn upload_url(&self, user_id: &str, key: &str, mime: &str, max: u64) -> String {
        let exp = (Utc::now() + Duration::minutes(UPLOAD_TTL_MINUTES)).timestamp();
        self.upload_url_until(user_id, key, mime, max, exp)
    }

    /// An upload URL valid until `exp` (unix seconds).
    pub fn upload_url_until(
        &self,
        user_id: &str,
        key: &str,
        mime: &str,
        max: u64,
        exp: i64,
    ) -> String {
        let sig = self.sign(&[
            "put",
            user_id,
            key,
            mime,
            &max.to_string(),
            &exp.to_string(),
        ]);
        let mime_q: String = url_encode(mime);
        format!(
            "{}/v1/files/{user_id}/{key}?exp={exp}&mime={mime_q}&max={max}&sig={sig}",
            self.base_url
        )
    }

    pub fn read_url(&self, user_id: &str, key: &str, small: bool) -> String {
        let exp = (Utc::now() + Duration::days(READ_TTL_DAYS)).timestamp();
        let variant = if small { "sm" } else { "org" };
        let sig = self.sign(&["get", user_id, key, variant, &exp.to_string()]);
        format!(
            "{}/v1/files/{user_id}/{key}?variant={variant}&exp={exp}&sig={sig}",
            self.base_url
        )
    }

    /// `Ok((mime, max))` when an upload URL is genuine and unexpired.
    pub fn verify_upload(
        &self,
        user_id: &str,
        key: &str,
        q: &SignedQuery,
    ) -> Result<(String, u64), &'static str> {
        let (Some(mime), Some(max)) = (&q.mime, q.max) else {
            return Err("not an upload URL");
        };
        let expected = self.sign(&[
            "put",
            user_id,
            key,
            mime,
            &max.to_string(),
            &q.exp.to_string(),
        ]);
        if !constant_time_eq(&expected, &q.sig) {
            return Err("the signature does not match");
        }
        if Utc::now().timestamp() > q.exp {
            return Err("the upload URL has expired");
        }
        Ok((mime.clone(), max))
    }

    /// `Ok(small)` when a read URL is genuine and unexpired.
    pub fn verify_read(
        &self,
        user_id: &str,
        key: &str,
        q: &SignedQuery,
    ) -> Result<bool, &'static str> {
        let variant = q.variant.as_deref().unwrap_or("org");
        let expected = self.sign(&["get", user_id, key, variant, &q.exp.to_string()]);
        if !constant_time_eq(&expected, &q.sig) {
            return Err("the signature does not match");
        }
        if Utc::now().timestamp() > q.exp {
            return Err("the URL has expired");
        }
        Ok(variant == "sm")
    }

    pub fn user_dir(&self, user_id: &str) -> PathBuf {
        self.root.join(user_id)
    }

    pub fn path(&self, user_id: &str, key: &str, small: bool) -> PathBuf {
        let name = if small {
            format!("{key}.sm.png")
        } else {
            key.to_string()
        };
        self.user_dir(user_id).join(name)
    }
}

/// The configured store: the local one, or an S3-compatible bucket.
pub enum FileStore {
    Local(LocalFiles),
    S3(super::s3::S3Files),
}

impl FileStore {
    pub fn upload_url(&self, user_id: &str, key: &str, mime: &str, max: u64) -> String {
        match self {
            FileStore::Local(local) => local.upload_url(user_id, key, mime, max),
            FileStore::S3(s3) => s3.upload_url(user_id, key, mime),
        }
    }

    pub fn read_url(&self, user_id: &str, key: &str, small: bool) -> String {
        match self {
            FileStore::Local(local) => local.read_url(user_id, key, small),
            FileStore::S3(s3) => s3.read_url(user_id, key, small),
        }
    }

    /// Replaces placeholder file URLs anywhere in `value` with signed read URLs.
    pub fn sign_urls(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                if let Some(rest) = s.strip_prefix(FILE_URL_SCHEME) {
                    let (path, small) = match rest.strip_suffix("#sm") {
                        Some(path) => (path, true),
                        None => (rest, false),
                    };
                    if let Some((user_id, key)) = path.split_once('/') {
                        *s = self.read_url(user_id, key, small);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.sign_urls(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.sign_urls(v)),
            _ => {}
        }
    }

    pub fn local(&self) -> Option<&LocalFiles> {
        match self {
            FileStore::Local(local) => Some(local),
            FileStore::S3(_) => None,
        }
    }
}

/// A PNG thumbnail of at most `px` on each side.
pub fn thumbnail_png(bytes: &[u8], px: u32) -> Result<Vec<u8>, image::ImageError> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::load_from_memory(bytes)?
        .thumbnail(px, px)
        .write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> LocalFiles {
        LocalFiles::new(PathBuf::from("/tmp/x"), "http://h:1/".into(), b"k".to_vec())
    }

    fn query_of(url: &str) -> SignedQuery {
        let q = url.split_once('?').unwrap().1;
        let mut sq = SignedQuery {
            exp: 0,
            sig: String::new(),
            mime: None,
            max: None,
            variant: None,
        };
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap();
            let v = v.replace("%2F", "/");
            match k {
                "exp" => sq.exp = v.parse().unwrap(),
                "sig" => sq.sig = v,
                "mime" => sq.mime = Some(v),
                "max" => sq.max = Some(v.parse().unwrap()),
                "variant" => sq.variant = Some(v),
                _ => {}
            }
        }
        sq
    }

    #[test]
    fn signed_urls_verify_and_refuse_changes() {
        let s = store();
        let up = s.upload_url("u1", "me.png", "image/png", 10);
        assert!(up.starts_with("http://h:1/v1/files/u1/me.png?"));
        let q = query_of(&up);
        assert_eq!(
            s.verify_upload("u1", "me.png", &q),
            Ok(("image/png".into(), 10))
        );
        assert!(s.verify_upload("u2", "me.png", &q).is_err());
        let bigger = SignedQuery {
            max: Some(11),
            ..query_of(&up)
        };
        assert!(s.verify_upload("u1", "me.png", &bigger).is_err());
        let expired = SignedQuery {
            exp: 1,
            ..query_of(&up)
        };
        assert!(s.verify_upload("u1", "me.png", &expired).is_err());
        let read = s.read_url("u1", "me.png", true);
        assert_eq!(s.verify_read("u1", "me.png", &query_of(&read)), Ok(true));
        assert!(s.verify_read("u1", "other.png", &query_of(&read)).is_err());
    }

    #[test]
    fn placeholders_are_signed_everywhere() {
        let s = FileStore::Local(store());
        let mut v = serde_json::json!({"a": [{"url": "talkamie-file:u1/me.png#sm"}], "b": "plain"});
        s.sign_urls(&mut v);
        let url = v["a"][0]["url"].as_str().unwrap();
        assert!(url.contains("/v1/files/u1/me.png?variant=sm"), "{url}");
        assert_eq!(v["b"], "plain");
    }

    #[test]
    fn segments_and_types() {
        assert!(is_safe_segment("me.png") && is_safe_segment("a-b_c"));
        for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(101)] {
            assert!(!is_safe_segment(bad), "{bad}");
        }
        assert!(
            ObjectType::Picture.accepts("image/png") && !ObjectType::Picture.accepts("video/mp4")
        );
        assert!(ObjectType::Certificate.accepts("application/pdf"));
        assert!(
            magic_matches("image/png", b"\x89PNG\r\n\x1a\nrest")
                && !magic_matches("image/png", b"GIF89a")
        );
    }
}
