//! Secrets generated on first start and kept in the database (in the data dir for the embedded
//! store), so every instance sharing a PostgreSQL database signs and hashes with the same keys.

use rand::RngCore;
use talkamie_projections::{with_pool, Db};

/// The secret named `name`, generated (32 random bytes, hex) the first time it is asked for.
pub async fn secret(db: &Db, name: &str) -> Result<String, sqlx::Error> {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let fresh = hex::encode(bytes);
    with_pool!(db, pool => {
        // Two instances starting at once: the first insert wins, both read the winner.
        sqlx::query("INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(&fresh)
            .execute(pool)
            .await?;
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(pool)
            .await
    })
}
