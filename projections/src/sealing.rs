//! Crypto-shredding: personal fields are sealed with a per-user key (XChaCha20-Poly1305, the
//! user id as associated data). Keys live in `user_keys`, outside the event log; deleting a
//! user destroys the key, and every sealed value of theirs, in the log or in snapshots,
//! becomes unreadable while the log still replays.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use talkamie_aggregates::user::Sealed;

use crate::{with_pool, with_tx, Db, DbTx};

const PREFIX: &str = "x1.";
const NONCE_LEN: usize = 24;

#[derive(Clone)]
pub struct UserKey {
    cipher: XChaCha20Poly1305,
    user_id: String,
}

impl UserKey {
    fn from_hex(user_id: &str, hex_key: &str) -> Option<UserKey> {
        let bytes = hex::decode(hex_key).ok()?;
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes).ok()?;
        Some(UserKey {
            cipher,
            user_id: user_id.to_string(),
        })
    }

    pub fn seal(&self, plaintext: &str) -> Sealed {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: self.user_id.as_bytes(),
        };
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ciphertext = self.cipher.encrypt(&nonce, payload).unwrap_or_default();
        let mut bytes = nonce.to_vec();
        bytes.extend(ciphertext);
        Sealed(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The plaintext, or `None` if the value is not ours or was tampered with.
    pub fn open(&self, sealed: &Sealed) -> Option<String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(sealed.0.strip_prefix(PREFIX)?)
            .ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: self.user_id.as_bytes(),
        };
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let plain = self.cipher.decrypt(&XNonce::from(nonce), payload).ok()?;
        String::from_utf8(plain).ok()
    }
}

/// Creates the user's key (before their first event is written).
pub async fn create_key(db: &Db, user_id: &str) -> Result<UserKey, sqlx::Error> {
    let key = XChaCha20Poly1305::generate_key(&mut OsRng);
    let hex_key = hex::encode(key);
    with_pool!(db, pool => {
        sqlx::query("INSERT INTO user_keys (user_id, key) VALUES ($1, $2)")
            .bind(user_id)
            .bind(&hex_key)
            .execute(pool)
            .await
            .map(|_| ())
    })?;
    UserKey::from_hex(user_id, &hex_key).ok_or(sqlx::Error::RowNotFound)
}

pub async fn key(db: &Db, user_id: &str) -> Result<Option<UserKey>, sqlx::Error> {
    let sql = "SELECT key FROM user_keys WHERE user_id = $1";
    let hex_key: Option<String> = with_pool!(db, pool => {
        sqlx::query_scalar(sql).bind(user_id).fetch_optional(pool).await?
    });
    Ok(hex_key.and_then(|k| UserKey::from_hex(user_id, &k)))
}

pub async fn key_tx(tx: &mut DbTx, user_id: &str) -> Result<Option<UserKey>, sqlx::Error> {
    let sql = "SELECT key FROM user_keys WHERE user_id = $1";
    let hex_key: Option<String> = with_tx!(tx, conn => {
        sqlx::query_scalar(sql).bind(user_id).fetch_optional(conn).await?
    });
    Ok(hex_key.and_then(|k| UserKey::from_hex(user_id, &k)))
}

/// Destroys the key: from now on nothing sealed for this user can be read.
pub async fn destroy_key(db: &Db, user_id: &str) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query("DELETE FROM user_keys WHERE user_id = $1")
            .bind(user_id)
            .execute(pool)
            .await
            .map(|_| ())
    })
}

/// Opens a sealed value with an optional key (a destroyed key reads as `None`).
pub fn open_with(key: Option<&UserKey>, sealed: &Sealed) -> Option<String> {
    key.and_then(|k| k.open(sealed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_users_key() {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let ann = UserKey::from_hex("ann", &hex::encode(key)).unwrap();
        let bob = UserKey::from_hex("bob", &hex::encode(key)).unwrap();
        let sealed = ann.seal("Ann Smith");
        assert!(!sealed.0.contains("Ann"));
        assert_eq!(ann.open(&sealed).as_deref(), Some("Ann Smith"));
        assert_ne!(ann.seal("Ann Smith"), sealed, "random nonces");
        // Same key bytes, other user: the associated data differs.
        assert_eq!(bob.open(&sealed), None);
        let other = UserKey::from_hex(
            "ann",
            &hex::encode(XChaCha20Poly1305::generate_key(&mut OsRng)),
        )
        .unwrap();
        assert_eq!(other.open(&sealed), None);
        // Flip one bit of the ciphertext (not of the base64 text, whose last character may
        // carry only padding bits).
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed.0[PREFIX.len()..]).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        let tampered = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(ann.open(&Sealed(tampered)), None);
        assert_eq!(ann.open(&Sealed("plain".into())), None);
    }
}
