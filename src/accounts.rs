//! Creating an account, shared by sign-up and `talkamie admin create`: claim the email
//! (one account per email, race-free), create the user's sealing key, register the user.

use chrono::Utc;
use talkamie_aggregates::email_claim::{EmailClaim, EmailClaimCommand, EmailClaimError};
use talkamie_aggregates::user::{User, UserCommand, UserType};
use talkamie_projections::{sealing, users};
use uuid::Uuid;

use crate::auth::otp::keyed_hash;
use crate::auth::password;
use crate::http::auth::user_rejected;
use crate::http::envelope::ApiError;
use crate::store::{Metadata, Store};

pub struct NewAccount<'a> {
    pub email: &'a str,
    pub password: String,
    pub name: &'a str,
    pub user_type: UserType,
}

/// The claim id of an email: a keyed hash, so no plaintext email sits in an aggregate id.
pub fn email_claim_id(hash_key: &[u8], email: &str) -> String {
    keyed_hash(hash_key, "email", &[&users::normalize_email(email)])
}

/// Creates the account and returns its id; 409 `already_exists` when the email is taken.
pub async fn create_account(
    store: &Store,
    hash_key: &[u8],
    account: NewAccount<'_>,
    metadata: Metadata,
) -> Result<String, ApiError> {
    let password_hash = password::hash(account.password).await.map_err(|error| {
        tracing::error!(%error, "password hashing failed");
        ApiError::internal()
    })?;
    let user_id = Uuid::new_v4().to_string();
    let claim = EmailClaimCommand::Claim {
        user_id: user_id.clone(),
    };
    store
        .execute::<EmailClaim>(
            &email_claim_id(hash_key, account.email),
            claim,
            metadata.clone(),
        )
        .await
        .map_err(|e| {
            ApiError::from_command(e, |EmailClaimError::AlreadyClaimed| {
                ApiError::conflict(
                    "already_exists",
                    "an account with this email already exists",
                )
            })
        })?;
    let key = sealing::create_key(&store.db, &user_id).await?;
    let register = UserCommand::Register {
        email: key.seal(account.email),
        name: key.seal(account.name),
        user_type: account.user_type,
        password_hash: key.seal(&password_hash),
        at: Utc::now(),
    };
    store
        .execute::<User>(&user_id, register, metadata)
        .await
        .map_err(|e| ApiError::from_command(e, user_rejected))?;
    Ok(user_id)
}

/// `talkamie admin create`: an admin account with a verified email.
pub async fn create_admin(
    store: &Store,
    email: &str,
    password: String,
    name: &str,
) -> Result<String, ApiError> {
    let mut problems = crate::http::validate::Problems::default();
    problems.check_email("email", email);
    if let Err(p) = password::check_length(&password) {
        problems.add("password", p);
    }
    problems.check_length("name", name, 1, 100);
    problems.finish()?;
    let hash_key = crate::store::secret(&store.db, "hash").await?;
    let account = NewAccount {
        email,
        password,
        name,
        user_type: UserType::Admin,
    };
    let user_id = create_account(store, hash_key.as_bytes(), account, Metadata::new()).await?;
    store
        .execute::<User>(
            &user_id,
            UserCommand::VerifyEmail { at: Utc::now() },
            Metadata::new(),
        )
        .await
        .map_err(|e| ApiError::from_command(e, user_rejected))?;
    Ok(user_id)
}
