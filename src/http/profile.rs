//! Parsing and validating profile input (`PUT /v1/user/{id}` and WebSocket `user.update`):
//! every field is checked, problems are collected into one 400, and personal text is sealed
//! with the user's key before it becomes a command.

use std::str::FromStr;

use chrono::{NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use talkamie_aggregates::user::{
    CallDuration, FileRef, Gender, InterestChoice, MetaAction, MetaChange, ProfileChanges,
    Visibility, MAX_METAS, MAX_META_KEY_CHARS,
};
use talkamie_projections::sealing::UserKey;
use talkamie_projections::{with_pool, Db};
use utoipa::ToSchema;

use super::envelope::ApiError;
use super::files::uploaded_file;
use super::validate::{is_plausible_email, Problems};

pub const MAX_BIO_CHARS: usize = 1000;
pub const MAX_META_VALUE_BYTES: usize = 1024;
pub const MAX_INTERESTS: usize = 20;

/// `{"enabled": true}`
#[derive(Debug, Deserialize, ToSchema)]
pub struct PushNotificationBody {
    pub enabled: bool,
}

/// Every field is optional: only the given ones change. Strings may be `""` to clear.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileBody {
    pub name: Option<String>,
    /// `male`, `female` or `unspecified`
    pub gender: Option<String>,
    pub bio: Option<String>,
    pub language: Option<String>,
    /// `public`, `matches`, `volunteers` or `seniors`
    pub visibility: Option<String>,
    /// Where the files named below were uploaded (see `POST /v1/signed/urls`).
    pub file_dir_path: Option<String>,
    pub picture: Option<String>,
    pub video: Option<String>,
    pub certificate: Option<String>,
    pub country: Option<String>,
    pub state: Option<String>,
    pub city: Option<String>,
    /// `YYYY-MM-DD`, in the past
    pub dob: Option<String>,
    /// IANA time zone, e.g. `America/New_York`; `""` clears
    pub timezone: Option<String>,
    /// A code from `GET /v1/specializations`
    pub specialization: Option<String>,
    pub certificate_state: Option<String>,
    pub license_id: Option<String>,
    /// `[{"id": "gardening"}, {"name": "Tango", "emoji": "💃"}]`
    #[schema(value_type = Option<Vec<Object>>)]
    pub interests: Option<Vec<Value>>,
    /// `"unlimited"` or seconds (60..14400)
    #[schema(value_type = Option<Object>)]
    pub max_call_duration: Option<Value>,
    /// Calls per day (1..50)
    pub max_call_count: Option<u32>,
    pub push_notification: Option<PushNotificationBody>,
    pub paypal_email: Option<String>,
    /// `{key: value}` or `{key: {"access": 0..4, "value": v}}`; `null` removes a key
    #[schema(value_type = Option<Object>)]
    pub metas: Option<Map<String, Value>>,
    /// 0 add or update (default), 1 replace all, 2 remove all
    pub meta_action: Option<u8>,
}

/// What a profile request asks for, ready to become commands.
pub struct ProfileRequest {
    pub changes: ProfileChanges,
    pub metas: Option<(MetaAction, Vec<MetaChange>)>,
}

async fn exists(db: &Db, sql: &str, value: &str) -> Result<bool, ApiError> {
    let count: i64 = with_pool!(db, pool => {
        sqlx::query_scalar(sql).bind(value).fetch_one(pool).await?
    });
    Ok(count > 0)
}

fn trimmed(value: &str) -> String {
    value.trim().to_string()
}

pub async fn parse(
    db: &Db,
    user_id: &str,
    key: &UserKey,
    body: &ProfileBody,
) -> Result<ProfileRequest, ApiError> {
    let mut p = Problems::default();
    let mut c = ProfileChanges::default();

    if let Some(name) = &body.name {
        p.check_length("name", name, 1, 100);
        c.name = Some(key.seal(&trimmed(name)));
    }
    if let Some(bio) = &body.bio {
        p.check_length("bio", bio, 0, MAX_BIO_CHARS);
        c.bio = Some(key.seal(&trimmed(bio)));
    }
    for (field, value, target) in [
        ("city", &body.city, &mut c.city),
        ("state", &body.state, &mut c.state),
        ("country", &body.country, &mut c.country),
    ] {
        if let Some(value) = value {
            p.check_length(field, value, 0, 100);
            *target = Some(key.seal(&trimmed(value)));
        }
    }
    if let Some(license) = &body.license_id {
        p.check_length("licenseId", license, 0, 64);
        c.license_id = Some(key.seal(&trimmed(license)));
    }
    if let Some(email) = &body.paypal_email {
        let email = email.trim();
        if !email.is_empty() && !is_plausible_email(email) {
            p.add("paypalEmail", "is not a valid email address");
        }
        c.paypal_email = Some(key.seal(email));
    }
    if let Some(dob) = &body.dob {
        let dob = dob.trim();
        if !dob.is_empty() {
            match NaiveDate::parse_from_str(dob, "%Y-%m-%d") {
                Ok(date) if date >= Utc::now().date_naive() => p.add("dob", "must be in the past"),
                Ok(date) if date < NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or(date) => {
                    p.add("dob", "must be after 1900-01-01")
                }
                Ok(_) => {}
                Err(_) => p.add("dob", "must be a date YYYY-MM-DD"),
            }
        }
        c.dob = Some(key.seal(dob));
    }
    if let Some(gender) = &body.gender {
        c.gender = match gender.as_str() {
            "male" => Some(Gender::Male),
            "female" => Some(Gender::Female),
            "unspecified" => Some(Gender::Unspecified),
            _ => {
                p.add("gender", "must be male, female or unspecified");
                None
            }
        };
    }
    if let Some(visibility) = &body.visibility {
        c.visibility = match visibility.as_str() {
            "public" => Some(Visibility::Public),
            "matches" => Some(Visibility::Matches),
            "volunteers" => Some(Visibility::Volunteers),
            "seniors" => Some(Visibility::Seniors),
            _ => {
                p.add(
                    "visibility",
                    "must be public, matches, volunteers or seniors",
                );
                None
            }
        };
    }
    if let Some(language) = &body.language {
        p.check_length("language", language, 1, 35);
        c.language = Some(trimmed(language));
    }
    if let Some(tz) = &body.timezone {
        let tz = tz.trim();
        if !tz.is_empty() && chrono_tz::Tz::from_str(tz).is_err() {
            p.add(
                "timezone",
                "must be an IANA time zone such as America/New_York",
            );
        }
        c.timezone = Some(tz.to_string());
    }
    if let Some(code) = &body.specialization {
        let code = code.trim();
        if !code.is_empty()
            && !exists(
                db,
                "SELECT COUNT(*) FROM specializations WHERE code = $1",
                code,
            )
            .await?
        {
            p.add(
                "specialization",
                "must be a code from GET /v1/specializations",
            );
        }
        c.specialization = Some(code.to_string());
    }
    if let Some(state) = &body.certificate_state {
        p.check_length("certificateState", state, 0, 100);
        c.certificate_state = Some(trimmed(state));
    }
    if let Some(interests) = &body.interests {
        if interests.len() > MAX_INTERESTS {
            p.add("interests", format!("at most {MAX_INTERESTS}"));
        }
        let mut choices = Vec::new();
        for (i, item) in interests.iter().enumerate() {
            let field = format!("interests[{i}]");
            match (
                item.get("id").and_then(Value::as_str),
                item.get("name"),
                item.get("emoji"),
            ) {
                (Some(id), _, _) => {
                    if exists(db, "SELECT COUNT(*) FROM interests WHERE id = $1", id).await? {
                        choices.push(InterestChoice::Catalog { id: id.to_string() });
                    } else {
                        p.add(&field, "unknown interest id (see GET /v1/interests)");
                    }
                }
                (None, Some(Value::String(name)), Some(Value::String(emoji)))
                    if (1..=40).contains(&name.trim().chars().count())
                        && (1..=16).contains(&emoji.chars().count()) =>
                {
                    choices.push(InterestChoice::Custom {
                        name: trimmed(name),
                        emoji: emoji.clone(),
                    })
                }
                _ => p.add(&field, "must be {id} or {name (1-40 chars), emoji}"),
            }
        }
        c.interests = Some(choices);
    }
    if let Some(duration) = &body.max_call_duration {
        c.max_call_duration = match duration {
            Value::String(s) if s == "unlimited" => Some(CallDuration::Unlimited),
            Value::Number(n) => match n.as_u64().filter(|s| (60..=14_400).contains(s)) {
                Some(seconds) => Some(CallDuration::Seconds(seconds as u32)),
                None => {
                    p.add(
                        "maxCallDuration",
                        "must be \"unlimited\" or 60 to 14400 seconds",
                    );
                    None
                }
            },
            _ => {
                p.add(
                    "maxCallDuration",
                    "must be \"unlimited\" or 60 to 14400 seconds",
                );
                None
            }
        };
    }
    if let Some(count) = body.max_call_count {
        if !(1..=50).contains(&count) {
            p.add("maxCallCount", "must be 1 to 50 calls a day");
        }
        c.max_call_count = Some(count);
    }
    if let Some(push) = &body.push_notification {
        c.push_enabled = Some(push.enabled);
    }
    for (field, value, target) in [
        ("picture", &body.picture, &mut c.picture),
        ("video", &body.video, &mut c.video),
        ("certificate", &body.certificate, &mut c.certificate),
    ] {
        let Some(key_name) = value.as_deref().map(str::trim) else {
            continue;
        };
        if key_name.is_empty() {
            *target = Some(FileRef::cleared());
            continue;
        }
        // A file this user uploaded, of the matching object type; anything else is 422.
        match uploaded_file(db, user_id, key_name).await? {
            Some((object_type, file)) if object_type == field => *target = Some(file),
            _ => {
                return Err(ApiError::unprocessable(
                    "unknown_file",
                    format!("{field}: no {field} with this key was uploaded by you"),
                ))
            }
        }
    }

    if let Some(dir) = &body.file_dir_path {
        p.check_length("fileDirPath", dir, 0, 200);
    }
    let metas = parse_metas(&mut p, key, body);
    p.finish()?;
    Ok(ProfileRequest { changes: c, metas })
}

fn parse_metas(
    p: &mut Problems,
    key: &UserKey,
    body: &ProfileBody,
) -> Option<(MetaAction, Vec<MetaChange>)> {
    let action = match body.meta_action {
        None | Some(0) => MetaAction::Merge,
        Some(1) => MetaAction::Replace,
        Some(2) => MetaAction::Clear,
        Some(_) => {
            p.add(
                "metaAction",
                "must be 0 (add or update), 1 (replace all) or 2 (remove all)",
            );
            return None;
        }
    };
    if body.metas.is_none() && body.meta_action.is_none() {
        return None;
    }
    let metas = body.metas.clone().unwrap_or_default();
    if metas.len() > MAX_METAS {
        p.add("metas", format!("at most {MAX_METAS} metas"));
    }
    let mut changes = Vec::new();
    for (meta_key, raw) in metas {
        let field = format!("metas.{meta_key}");
        let chars = meta_key.chars().count();
        if chars == 0 || chars > MAX_META_KEY_CHARS {
            p.add(
                "metas",
                format!("keys are 1 to {MAX_META_KEY_CHARS} characters"),
            );
            continue;
        }
        let (access, value) = match raw {
            Value::Object(mut wrapped) => {
                let access = wrapped.get("access").and_then(Value::as_u64);
                match (access, wrapped.remove("value")) {
                    (Some(level), Some(value)) if level <= 4 && wrapped.len() == 1 => {
                        (level as u8, value)
                    }
                    _ => {
                        p.add(
                            &field,
                            "must be a value or {\"access\": 0..4, \"value\": v}",
                        );
                        continue;
                    }
                }
            }
            bare => (0, bare),
        };
        if value.is_object() {
            p.add(&field, "a value is a number, string, bool, list or null");
            continue;
        }
        let sealed = if value.is_null() {
            None
        } else {
            let text = value.to_string();
            if text.len() > MAX_META_VALUE_BYTES {
                p.add(&field, format!("at most {MAX_META_VALUE_BYTES} bytes"));
                continue;
            }
            Some(key.seal(&text))
        };
        changes.push(MetaChange {
            key: meta_key,
            access,
            value: sealed,
        });
    }
    Some((action, changes))
}
