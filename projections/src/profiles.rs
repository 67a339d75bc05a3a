//! The contract's user shapes (section 2): `basic_user`, `full_user` and `extended_user`,
//! rendered from a `users` row for a given reader.

use std::collections::HashMap;

use chrono::{Datelike, NaiveDate, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use crate::relations::{Counters, Relation};
use crate::users::UserRecord;

/// Who is looking, and what they may see (contract section 13 meta levels).
#[derive(Debug, Clone, Default)]
pub struct Reader {
    pub id: Option<String>,
    pub is_admin: bool,
    /// The reader's relation to the users being rendered (see `relations::relations`).
    pub relations: HashMap<String, Relation>,
}

impl Reader {
    pub fn user(id: &str, is_admin: bool) -> Reader {
        Reader {
            id: Some(id.to_string()),
            is_admin,
            relations: HashMap::new(),
        }
    }

    pub fn with_relations(mut self, relations: HashMap<String, Relation>) -> Reader {
        self.relations = relations;
        self
    }

    fn relation(&self, user_id: &str) -> Option<&Relation> {
        self.relations.get(user_id)
    }

    pub fn connected_with(&self, user_id: &str) -> bool {
        self.relation(user_id).is_some_and(|r| r.connected)
    }

    fn is(&self, user_id: &str) -> bool {
        self.id.as_deref() == Some(user_id)
    }

    /// 0 anyone, 1 signed in, 2 connected, 3 yourself, 4 admins.
    pub fn meta_level(&self, user_id: &str) -> u8 {
        if self.is_admin {
            4
        } else if self.is(user_id) {
            3
        } else if self.connected_with(user_id) {
            2
        } else if self.id.is_some() {
            1
        } else {
            0
        }
    }
}

fn iso(at: chrono::DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Whole years between `dob` and `today`.
pub fn age_on(dob: NaiveDate, today: NaiveDate) -> Option<u32> {
    let mut years = today.year() - dob.year();
    if (today.month(), today.day()) < (dob.month(), dob.day()) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

impl UserRecord {
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    pub fn is_volunteer(&self) -> bool {
        self.user_type == "volunteer"
    }

    pub fn age(&self) -> Option<u32> {
        let dob = NaiveDate::parse_from_str(self.dob.as_deref()?, "%Y-%m-%d").ok()?;
        age_on(dob, Utc::now().date_naive())
    }

    /// `basic`: email verified, and for volunteers a complete profile (name, dob,
    /// specialization, license id, certificate).
    pub fn verification_basic(&self) -> &'static str {
        if !self.is_volunteer() {
            return if self.email_verified {
                "complete"
            } else {
                "pending"
            };
        }
        let profile = [
            self.name.is_some(),
            self.dob.is_some(),
            self.specialization.is_some(),
            self.license_id.is_some(),
            self.certificate_file.is_some(),
        ];
        if self.email_verified && profile.iter().all(|x| *x) {
            "complete"
        } else if self.email_verified || profile.iter().any(|x| *x) {
            "in-progress"
        } else {
            "pending"
        }
    }

    /// Volunteers: all three steps complete. Others: a verified email.
    pub fn verified(&self) -> bool {
        let basic = self.verification_basic() == "complete";
        if self.is_volunteer() {
            basic
                && self.verification_admin == "complete"
                && self.verification_background == "complete"
        } else {
            basic
        }
    }

    fn metas_for(&self, level: u8) -> Value {
        let mut out = Map::new();
        if let Some(metas) = &self.metas {
            for meta in metas.0.as_array().into_iter().flatten() {
                let access = meta["access"].as_u64().unwrap_or(0);
                if access <= u64::from(level) {
                    if let Some(key) = meta["key"].as_str() {
                        out.insert(key.to_string(), meta["value"].clone());
                    }
                }
            }
        }
        Value::Object(out)
    }

    /// The reader's relation to this user: `{id, chat?, connectRequest?, review?}`.
    fn viewer(&self, reader: &Reader) -> Value {
        let Some(id) = &reader.id else {
            return Value::Null;
        };
        let mut viewer = json!({ "id": id });
        if let Some(relation) = reader.relation(&self.id) {
            if let Some(chat) = &relation.chat {
                viewer["chat"] = chat.clone();
            }
            if let Some(request) = &relation.connect_request {
                viewer["connectRequest"] = request.clone();
            }
            if let Some(review_id) = &relation.review_id {
                viewer["review"] = json!({ "id": review_id });
            }
        }
        viewer
    }

    /// `basic_user`, as `reader` sees it.
    pub fn basic(&self, reader: &Reader, online: bool) -> Value {
        if self.is_deleted() {
            return json!({
                "id": self.id, "name": "Deleted user", "type": self.user_type,
                "gender": "unspecified", "age": null, "bio": null,
                "location": {"city": null, "state": null, "country": null},
                "picture": null, "rating": 0, "totalReviews": 0, "specialization": null,
                "interests": [], "language": null, "online": false,
                "verification": {"verified": false}, "viewer": self.viewer(reader),
                "deleted": true
            });
        }
        json!({
            "id": self.id,
            "name": self.name,
            "type": self.user_type,
            "gender": self.gender.as_deref().unwrap_or("unspecified"),
            "age": self.age(),
            "bio": self.bio,
            "location": {"city": self.city, "state": self.state, "country": self.country},
            "picture": file_json(&self.id, &self.picture_file),
            "rating": crate::reviews::mean_rating(self.rate_sum, self.total_reviews),
            "totalReviews": self.total_reviews,
            "specialization": self.specialization.as_ref().map(|code| json!({"area": code})),
            "interests": self.interests.as_ref().map(|j| j.0.clone()).unwrap_or_else(|| json!([])),
            "language": self.language,
            "online": online,
            "verification": {"verified": self.verified()},
            "viewer": self.viewer(reader),
        })
    }

    /// `full_user`: `basic_user` plus the profile details; email only to self and admins.
    pub fn full(&self, reader: &Reader, online: bool) -> Value {
        let mut user = self.basic(reader, online);
        let sees_email = reader.is(&self.id) || reader.is_admin;
        let extra = json!({
            "dob": self.dob,
            "email": if sees_email { json!(self.email) } else { Value::Null },
            "availability": {
                "custom": {}, "weekly": {},
                "bookedSlots": {"custom": {}, "weekly": {}}
            },
            "video": file_json(&self.id, &self.video_file),
            "license": self.license_id.as_ref().map(|id| json!({"id": id})),
            "certificate": if self.certificate_file.is_some() || self.certificate_state.is_some() {
                json!({"file": file_json(&self.id, &self.certificate_file), "state": self.certificate_state})
            } else {
                Value::Null
            },
            "visibility": self.visibility,
            "totalConnections": reader.relation(&self.id).map_or(0, |r| r.total_connections),
            "metas": self.metas_for(reader.meta_level(&self.id)),
            "insertDate": iso(self.insert_date),
            "lastLoginDate": self.last_login_date.map(iso),
        });
        merge(&mut user, extra);
        user
    }

    /// `extended_user`: what a user sees of themself.
    pub fn extended(&self, online: bool, counters: &Counters) -> Value {
        let reader = Reader::user(&self.id, self.user_type == "admin");
        let mut user = self.full(&reader, online);
        let max_duration = match self.max_call_duration {
            Some(seconds) => json!(seconds),
            None => json!("unlimited"),
        };
        let extra = json!({
            "ledger": {
                "coins": {"balance": counters.coins_balance},
                "paypal": self.paypal_email.as_ref().map(|email| json!({"email": email}))
            },
            "preferences": {
                "call": {"maxCount": self.max_call_count, "maxDuration": max_duration},
                "notifications": {"push": {"enabled": self.push_enabled}}
            },
            "dailyInfo": {"totalCalls": counters.total_calls_today},
            "timezoneOffset": self.timezone_offset.unwrap_or(0),
            "timezone": self.timezone,
            "totalConnections": counters.total_connections,
            "totalPendingRequests": counters.total_pending_requests,
            "totalUnreadAlerts": counters.total_unread_alerts,
            "totalUnreadChats": counters.total_unread_chats,
            "verification": {
                "verified": self.verified(),
                "basic": {"status": self.verification_basic()},
                "admin": {"status": self.verification_admin},
                "background": {"status": self.verification_background}
            },
            "support": {"ticket": counters.open_ticket.as_ref().map(|id| json!({
                "id": id, "status": "open", "user": {"id": self.id}
            }))}
        });
        merge(&mut user, extra);
        user
    }
}

/// Placeholder URLs of files: `talkamie-file:<user>/<key>` (and `#sm` for the thumbnail). The
/// service swaps them for signed, expiring URLs when it answers (see `providers::storage`).
pub const FILE_URL_SCHEME: &str = "talkamie-file:";

/// `{sm?, org: {url, mimeType}}` of a stored file reference.
pub fn file_json(user_id: &str, file: &Option<sqlx::types::Json<Value>>) -> Value {
    let Some(file) = file.as_ref().map(|f| &f.0) else {
        return Value::Null;
    };
    let (Some(key), Some(mime)) = (file["key"].as_str(), file["mimeType"].as_str()) else {
        return Value::Null;
    };
    let mut out =
        json!({"org": {"url": format!("{FILE_URL_SCHEME}{user_id}/{key}"), "mimeType": mime}});
    if file["thumbnail"].as_bool() == Some(true) {
        out["sm"] =
            json!({"url": format!("{FILE_URL_SCHEME}{user_id}/{key}#sm"), "mimeType": "image/png"});
    }
    out
}

/// Adds the keys of `extra` to the object `target` (both JSON objects).
pub fn merge(target: &mut Value, extra: Value) {
    if let (Value::Object(target), Value::Object(extra)) = (target, extra) {
        for (k, v) in extra {
            target.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_counts_whole_years() {
        let dob = NaiveDate::from_ymd_opt(1950, 6, 15).unwrap();
        assert_eq!(
            age_on(dob, NaiveDate::from_ymd_opt(2026, 6, 14).unwrap()),
            Some(75)
        );
        assert_eq!(
            age_on(dob, NaiveDate::from_ymd_opt(2026, 6, 15).unwrap()),
            Some(76)
        );
        assert_eq!(
            age_on(dob, NaiveDate::from_ymd_opt(1940, 1, 1).unwrap()),
            None
        );
    }

    #[test]
    fn meta_levels() {
        let anyone = Reader::default();
        assert_eq!(anyone.meta_level("u"), 0);
        assert_eq!(Reader::user("x", false).meta_level("u"), 1);
        let connected = Reader::user("x", false).with_relations(HashMap::from([(
            "u".to_string(),
            Relation {
                connected: true,
                ..Relation::default()
            },
        )]));
        assert_eq!(connected.meta_level("u"), 2);
        assert_eq!(Reader::user("u", false).meta_level("u"), 3);
        assert_eq!(Reader::user("a", true).meta_level("u"), 4);
    }
}
