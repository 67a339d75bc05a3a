//! Read models `reviews` (the live reviews) and `user_ratings` (each user's review count and sum
//! of rates, so `rating` is their mean), from the Review streams.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::FromRow;
use talkamie_aggregates::review::{Review, ReviewEvent};

use crate::bind_all;
use crate::db::{exec, Bind, Source};
use crate::relations::iso;
use crate::{with_source, DbTx, ProjectionError, StoredEvent};
use Bind::{Int, Text, Time};

pub const TABLES: &[&str] = &["reviews", "user_ratings"];

pub fn is_review_event(event: &StoredEvent) -> bool {
    event.aggregate_type == <Review as cqrs_es::Aggregate>::TYPE
}

/// The mean of `rate_sum` over `total`, to two decimals (0 without reviews).
pub fn mean_rating(rate_sum: i64, total: i64) -> f64 {
    if total <= 0 {
        return 0.0;
    }
    (rate_sum as f64 / total as f64 * 100.0).round() / 100.0
}

/// Adds `count` reviews with `rate_delta` to the user's totals.
async fn adjust_rating(
    tx: &mut DbTx,
    user_id: &str,
    count: i64,
    rate_delta: i64,
) -> Result<(), ProjectionError> {
    exec(
        tx,
        "INSERT INTO user_ratings (user_id, total_reviews, rate_sum) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE
            SET total_reviews = user_ratings.total_reviews + $2,
                rate_sum = user_ratings.rate_sum + $3",
        &[Text(user_id), Int(count), Int(rate_delta)],
    )
    .await?;
    Ok(())
}

pub async fn apply(tx: &mut DbTx, event: &StoredEvent) -> Result<(), ProjectionError> {
    if !is_review_event(event) {
        return Ok(());
    }
    match event.decode::<ReviewEvent>()? {
        ReviewEvent::Written {
            review_id,
            rater,
            ratee,
            rate,
            text,
            at,
        } => {
            let inserted = exec(
                tx,
                "INSERT INTO reviews (id, rater_id, ratee_id, rate, text, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (id) DO NOTHING",
                &[
                    Text(&review_id),
                    Text(&rater),
                    Text(&ratee),
                    Int(rate),
                    Text(&text),
                    Time(at),
                ],
            )
            .await?;
            if inserted > 0 {
                adjust_rating(tx, &ratee, 1, rate).await?;
            }
        }
        ReviewEvent::Updated {
            review_id,
            rate,
            text,
            at,
        } => {
            if let Some(old) = find(tx.into(), &review_id).await? {
                exec(
                    tx,
                    "UPDATE reviews SET rate = $2, text = $3, updated_at = $4 WHERE id = $1",
                    &[Text(&review_id), Int(rate), Text(&text), Time(at)],
                )
                .await?;
                adjust_rating(tx, &old.ratee_id, 0, rate - old.rate).await?;
            }
        }
        ReviewEvent::Deleted { review_id, .. } => {
            if let Some(old) = find(tx.into(), &review_id).await? {
                exec(tx, "DELETE FROM reviews WHERE id = $1", &[Text(&review_id)]).await?;
                adjust_rating(tx, &old.ratee_id, -1, -old.rate).await?;
            }
        }
    }
    Ok(())
}

/// One row of `reviews`, with the rater's name (`None` once their account is deleted).
#[derive(Debug, Clone, FromRow)]
pub struct ReviewRow {
    pub id: String,
    pub rater_id: String,
    pub ratee_id: String,
    pub rate: i64,
    pub text: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub rater_name: Option<String>,
    pub rater_deleted: bool,
}

const REVIEW_COLUMNS: &str = "r.id, r.rater_id, r.ratee_id, r.rate, r.text, r.created_at,
    r.updated_at, u.name AS rater_name, (u.deleted_at IS NOT NULL) AS rater_deleted";
const REVIEW_FROM: &str = "reviews r LEFT JOIN users u ON u.id = r.rater_id";

impl ReviewRow {
    fn rater_name(&self) -> Value {
        if self.rater_deleted {
            json!("Deleted user")
        } else {
            json!(self.rater_name)
        }
    }

    /// `basic_review`: `{id, rate, text, rater{id,name}, timestamp}`.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "rate": self.rate,
            "text": self.text,
            "rater": {"id": self.rater_id, "name": self.rater_name()},
            "timestamp": iso(self.created_at),
        })
    }

    /// `full_review`: `basic_review` plus the rater as a `basic_user`, the ratee's id and when
    /// it was last changed.
    pub fn to_full_json(&self, rater: Value) -> Value {
        let mut review = self.to_json();
        review["rater"] = rater;
        review["ratee"] = json!({ "id": self.ratee_id });
        review["updatedAt"] = json!(iso(self.updated_at));
        review
    }
}

pub async fn find(source: Source<'_>, id: &str) -> Result<Option<ReviewRow>, sqlx::Error> {
    let sql = format!("SELECT {REVIEW_COLUMNS} FROM {REVIEW_FROM} WHERE r.id = $1");
    with_source!(source, conn => sqlx::query_as::<_, ReviewRow>(&sql).bind(id).fetch_optional(conn).await)
}

/// `rater`'s live review of `ratee`.
pub async fn by_pair(
    source: Source<'_>,
    rater: &str,
    ratee: &str,
) -> Result<Option<ReviewRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {REVIEW_COLUMNS} FROM {REVIEW_FROM} WHERE r.rater_id = $1 AND r.ratee_id = $2"
    );
    with_source!(source, conn => {
        sqlx::query_as::<_, ReviewRow>(&sql).bind(rater).bind(ratee).fetch_optional(conn).await
    })
}

/// `(rating, totalReviews)` of a user.
pub async fn rating_of(source: Source<'_>, user_id: &str) -> Result<(f64, i64), sqlx::Error> {
    let sql = "SELECT total_reviews, rate_sum FROM user_ratings WHERE user_id = $1";
    let row: Option<(i64, i64)> = with_source!(source, conn => {
        sqlx::query_as(sql).bind(user_id).fetch_optional(conn).await?
    });
    let (total, sum) = row.unwrap_or((0, 0));
    Ok((mean_rating(sum, total), total))
}

/// One page of the reviews about `ratee`, newest first, after the keyset `(created_at, id)`.
pub async fn page(
    source: Source<'_>,
    ratee: &str,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<(Vec<ReviewRow>, i64), sqlx::Error> {
    let mut source = source;
    let total: i64 = with_source!(source.reborrow(), conn => {
        sqlx::query_scalar("SELECT COUNT(*) FROM reviews WHERE ratee_id = $1")
            .bind(ratee)
            .fetch_one(conn)
            .await?
    });
    let (keyset, binds) = match &after {
        Some((at, id)) => (
            "AND (r.created_at < $2 OR (r.created_at = $2 AND r.id < $3))",
            vec![Text(ratee), Time(*at), Text(id)],
        ),
        None => ("", vec![Text(ratee)]),
    };
    let sql = format!(
        "SELECT {REVIEW_COLUMNS} FROM {REVIEW_FROM} WHERE r.ratee_id = $1 {keyset}
          ORDER BY r.created_at DESC, r.id DESC LIMIT {limit}"
    );
    let rows = with_source!(source, conn => {
        bind_all!(sqlx::query_as::<_, ReviewRow>(&sql), binds).fetch_all(conn).await?
    });
    Ok((rows, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rating_is_the_mean_to_two_decimals() {
        assert_eq!(mean_rating(0, 0), 0.0);
        assert_eq!(mean_rating(9, 2), 4.5);
        assert_eq!(mean_rating(13, 3), 4.33);
        assert_eq!(mean_rating(14, 3), 4.67);
    }
}
