//! JWTs (HS256): access tokens live 15 minutes, refresh tokens 30 days. Both name their
//! session (`sid`), so ending a session stops both; a refresh token also carries its own id
//! (`jti`), which rotates on every refresh.

use chrono::{Duration, Utc};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub const ACCESS_TTL_MINUTES: i64 = 15;
pub const REFRESH_TTL_DAYS: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Access,
    Refresh,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: String,
    pub typ: TokenKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        // Only HS256: a token claiming `alg: none` or another algorithm is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn access(&self, user_id: &str, session_id: &str) -> anyhow::Result<String> {
        self.sign(
            user_id,
            session_id,
            TokenKind::Access,
            None,
            Duration::minutes(ACCESS_TTL_MINUTES),
        )
    }

    pub fn refresh(&self, user_id: &str, session_id: &str, jti: &str) -> anyhow::Result<String> {
        self.sign(
            user_id,
            session_id,
            TokenKind::Refresh,
            Some(jti.to_string()),
            Duration::days(REFRESH_TTL_DAYS),
        )
    }

    fn sign(
        &self,
        user_id: &str,
        session_id: &str,
        typ: TokenKind,
        jti: Option<String>,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        let now = Utc::now();
        let claims = Claims {
            sub: user_id.to_string(),
            sid: session_id.to_string(),
            typ,
            jti,
            iat: now.timestamp(),
            exp: (now + ttl).timestamp(),
        };
        Ok(encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Checks signature, algorithm, expiry and kind.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Option<Claims> {
        let claims = decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()?
            .claims;
        (claims.typ == kind).then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn tokens_verify_only_as_their_kind_and_with_their_key() {
        let keys = TokenKeys::new(b"secret-one");
        let access = keys.access("u1", "s1").unwrap();
        let claims = keys.verify(&access, TokenKind::Access).unwrap();
        assert_eq!((claims.sub.as_str(), claims.sid.as_str()), ("u1", "s1"));
        assert!(keys.verify(&access, TokenKind::Refresh).is_none());
        assert!(TokenKeys::new(b"secret-two")
            .verify(&access, TokenKind::Access)
            .is_none());
        let refresh = keys.refresh("u1", "s1", "j1").unwrap();
        assert_eq!(
            keys.verify(&refresh, TokenKind::Refresh)
                .unwrap()
                .jti
                .as_deref(),
            Some("j1")
        );
    }

    #[test]
    fn an_unsigned_token_is_refused() {
        let keys = TokenKeys::new(b"secret");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64.encode(
            format!(
                r#"{{"sub":"u1","sid":"s1","typ":"access","iat":0,"exp":{}}}"#,
                i64::MAX / 2
            )
            .as_bytes(),
        );
        assert!(keys
            .verify(&format!("{header}.{payload}."), TokenKind::Access)
            .is_none());
    }
}
