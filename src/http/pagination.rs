//! The one pagination of every list endpoint: `pageSize` (1..100, default 20) and an opaque
//! `lastEvaluatedKey`. The key carries the last row's sort key, the list it belongs to and
//! a fingerprint of the filters, signed with HMAC: a tampered key, or one from another list or
//! other filters, is a 400 instead of a wrong page.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use talkamie_projections::users::UserRecord;
use utoipa::IntoParams;

use super::envelope::ApiError;

pub const DEFAULT_PAGE_SIZE: i64 = 20;
pub const MAX_PAGE_SIZE: i64 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct PageQuery {
    /// 1..100, default 20
    pub page_size: Option<String>,
    /// `pagination.lastEvaluatedKey` of the previous page
    pub last_evaluated_key: Option<String>,
}

/// Signs and checks cursors of one list.
pub struct Pager<'a> {
    key: &'a [u8],
    list: &'static str,
    fingerprint: String,
    pub page_size: i64,
}

fn mac(key: &[u8], parts: &[&str]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part.as_bytes());
        mac.update(&[0]);
    }
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

impl<'a> Pager<'a> {
    /// `filters` is anything that identifies the query (its parameters), to bind cursors to it.
    pub fn new(
        key: &'a [u8],
        list: &'static str,
        filters: &str,
        query: &PageQuery,
    ) -> Result<Self, ApiError> {
        let page_size = match query.page_size.as_deref() {
            None | Some("") => DEFAULT_PAGE_SIZE,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                .ok_or_else(|| ApiError::invalid(json!({"pageSize": "must be 1 to 100"})))?,
        };
        Ok(Pager {
            key,
            list,
            fingerprint: mac(key, &["filters", filters]),
            page_size,
        })
    }

    /// The sort key in `lastEvaluatedKey`, if one was given and is genuine.
    pub fn after(&self, query: &PageQuery) -> Result<Option<Value>, ApiError> {
        let Some(raw) = query
            .last_evaluated_key
            .as_deref()
            .filter(|k| !k.is_empty())
        else {
            return Ok(None);
        };
        let refused =
            || ApiError::invalid(json!({"lastEvaluatedKey": "is not a key this list handed out"}));
        let (body, signature) = raw.split_once('.').ok_or_else(refused)?;
        if mac(self.key, &["cursor", self.list, &self.fingerprint, body]) != signature {
            return Err(refused());
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| refused())?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| refused())
    }

    fn cursor(&self, sort_key: &Value) -> String {
        let body = URL_SAFE_NO_PAD.encode(sort_key.to_string());
        let signature = mac(self.key, &["cursor", self.list, &self.fingerprint, &body]);
        format!("{body}.{signature}")
    }

    /// Rows are fetched one past the page size: cuts the extra row off and says whether more
    /// rows follow.
    pub fn trim<T>(&self, rows: &mut Vec<T>) -> bool {
        let has_more = rows.len() as i64 > self.page_size;
        rows.truncate(self.page_size as usize);
        has_more
    }

    /// The page's `pagination`: `lastEvaluatedKey` only when more rows follow.
    pub fn pagination(&self, last_sort_key: Option<&Value>, has_more: bool, total: i64) -> Value {
        let mut pagination = json!({ "pageSize": self.page_size, "totalItems": total });
        if let (true, Some(key)) = (has_more, last_sort_key) {
            pagination["lastEvaluatedKey"] = json!(self.cursor(key));
        }
        pagination
    }
}

/// Decodes the `(insertDate, id)` keyset of the user lists.
pub fn user_keyset(key: Option<Value>) -> Result<Option<(DateTime<Utc>, String)>, ApiError> {
    time_id_keyset(key)
}

/// The `[time, id]` keyset of lists ordered by a timestamp and an id.
pub fn time_id_sort_key(at: DateTime<Utc>, id: &str) -> Value {
    json!([at.to_rfc3339_opts(SecondsFormat::Nanos, true), id])
}

/// Decodes a `[time, id]` keyset (the inverse of [`time_id_sort_key`]).
pub fn time_id_keyset(key: Option<Value>) -> Result<Option<(DateTime<Utc>, String)>, ApiError> {
    let Some(key) = key else { return Ok(None) };
    let at = key[0]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    match (at, key[1].as_str()) {
        (Some(at), Some(id)) => Ok(Some((at.with_timezone(&Utc), id.to_string()))),
        _ => Err(ApiError::invalid(
            json!({"lastEvaluatedKey": "is malformed"}),
        )),
    }
}

/// The keyset of a user row (the inverse of [`user_keyset`]).
pub fn user_sort_key(user: &UserRecord) -> Value {
    time_id_sort_key(user.insert_date, &user.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(size: Option<&str>, key: Option<String>) -> PageQuery {
        PageQuery {
            page_size: size.map(str::to_string),
            last_evaluated_key: key,
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_tampering() {
        let pager = Pager::new(b"k", "users", "type=senior", &query(Some("5"), None)).unwrap();
        let sort_key = json!(["2026-11-25T13:30:00Z", "u1"]);
        let cursor = pager.cursor(&sort_key);
        assert_eq!(
            pager.after(&query(None, Some(cursor.clone()))).unwrap(),
            Some(sort_key)
        );
        let mut tampered = cursor.clone();
        tampered.insert(1, 'x');
        assert!(pager.after(&query(None, Some(tampered))).is_err());
        let other_filters =
            Pager::new(b"k", "users", "type=volunteer", &query(None, None)).unwrap();
        assert!(other_filters
            .after(&query(None, Some(cursor.clone())))
            .is_err());
        let other_key = Pager::new(b"k2", "users", "type=senior", &query(None, None)).unwrap();
        assert!(other_key.after(&query(None, Some(cursor))).is_err());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(
            Pager::new(b"k", "l", "", &query(None, None))
                .unwrap()
                .page_size,
            20
        );
        assert_eq!(
            Pager::new(b"k", "l", "", &query(Some("100"), None))
                .unwrap()
                .page_size,
            100
        );
        for bad in ["0", "101", "-1", "ten"] {
            assert!(
                Pager::new(b"k", "l", "", &query(Some(bad), None)).is_err(),
                "{bad}"
            );
        }
    }
}
