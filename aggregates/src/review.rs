//! The Review aggregate (one stream per rater and ratee, id `review_stream_id`): what one user
//! says of another after they talked. At most one live review per rater and ratee; a review is
//! written only after a call between the two ended; it can be changed or deleted, and written
//! again after a delete (a new review id).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::domain_event;

/// Longest review text, in characters.
pub const MAX_TEXT_CHARS: usize = 2000;

/// The stream of `rater`'s reviews of `ratee` (ids are UUIDs, so `:` cannot collide).
pub fn review_stream_id(rater: &str, ratee: &str) -> String {
    format!("{rater}:{ratee}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReviewCommand {
    /// A new review. `had_ended_call`: the handler found an ended call between the two.
    Write {
        review_id: String,
        rater: String,
        ratee: String,
        rate: i64,
        text: String,
        had_ended_call: bool,
        at: DateTime<Utc>,
    },
    /// Changes the live review; a field left out keeps its value.
    Update {
        rate: Option<i64>,
        text: Option<String>,
        at: DateTime<Utc>,
    },
    Delete {
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReviewEvent {
    Written {
        review_id: String,
        rater: String,
        ratee: String,
        rate: i64,
        text: String,
        at: DateTime<Utc>,
    },
    /// The review's new rate and text (both, so a reader never needs the old event).
    Updated {
        review_id: String,
        rate: i64,
        text: String,
        at: DateTime<Utc>,
    },
    Deleted {
        review_id: String,
        at: DateTime<Utc>,
    },
}
domain_event!(ReviewEvent, "1");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("you cannot review yourself")]
    SelfReview,
    #[error("rate must be a whole number from 1 to 5")]
    BadRate,
    #[error("text must be at most {MAX_TEXT_CHARS} characters")]
    TextTooLong,
    #[error("you can review someone only after a call with them ended")]
    NoEndedCall,
    #[error("you already reviewed this user; update or delete that review")]
    AlreadyReviewed,
    #[error("you have not reviewed this user")]
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct LiveReview {
    id: String,
    rate: i64,
    text: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Review {
    live: Option<LiveReview>,
}

fn check_rate(rate: i64) -> Result<(), ReviewError> {
    if (1..=5).contains(&rate) {
        Ok(())
    } else {
        Err(ReviewError::BadRate)
    }
}

fn check_text(text: &str) -> Result<(), ReviewError> {
    if text.chars().count() > MAX_TEXT_CHARS {
        Err(ReviewError::TextTooLong)
    } else {
        Ok(())
    }
}

impl Aggregate for Review {
    const TYPE: &'static str = "Review";
    type Command = ReviewCommand;
    type Event = ReviewEvent;
    type Error = ReviewError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ReviewCommand::Write {
                review_id,
                rater,
                ratee,
                rate,
                text,
                had_ended_call,
                at,
            } => {
                if rater == ratee {
                    return Err(ReviewError::SelfReview);
                }
                check_rate(rate)?;
                check_text(&text)?;
                if self.live.is_some() {
                    return Err(ReviewError::AlreadyReviewed);
                }
                if !had_ended_call {
                    return Err(ReviewError::NoEndedCall);
                }
                let event = ReviewEvent::Written {
                    review_id,
                    rater,
                    ratee,
                    rate,
                    text,
                    at,
                };
                sink.write(event, self).await;
            }
            ReviewCommand::Update { rate, text, at } => {
                let live = self.live.as_ref().ok_or(ReviewError::NotFound)?;
                let rate = rate.unwrap_or(live.rate);
                let text = text.unwrap_or_else(|| live.text.clone());
                check_rate(rate)?;
                check_text(&text)?;
                if rate == live.rate && text == live.text {
                    return Ok(());
                }
                let event = ReviewEvent::Updated {
                    review_id: live.id.clone(),
                    rate,
                    text,
                    at,
                };
                sink.write(event, self).await;
            }
            ReviewCommand::Delete { at } => {
                let live = self.live.as_ref().ok_or(ReviewError::NotFound)?;
                let event = ReviewEvent::Deleted {
                    review_id: live.id.clone(),
                    at,
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ReviewEvent::Written {
                review_id,
                rate,
                text,
                ..
            } => {
                self.live = Some(LiveReview {
                    id: review_id,
                    rate,
                    text,
                })
            }
            ReviewEvent::Updated { rate, text, .. } => {
                if let Some(live) = &mut self.live {
                    live.rate = rate;
                    live.text = text;
                }
            }
            ReviewEvent::Deleted { .. } => self.live = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<Review>;

    fn t() -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).expect("time")
    }

    fn write(rate: i64, had_ended_call: bool) -> ReviewCommand {
        ReviewCommand::Write {
            review_id: "r1".into(),
            rater: "senior".into(),
            ratee: "volunteer".into(),
            rate,
            text: "Lovely chat".into(),
            had_ended_call,
            at: t(),
        }
    }

    fn written(rate: i64) -> ReviewEvent {
        ReviewEvent::Written {
            review_id: "r1".into(),
            rater: "senior".into(),
            ratee: "volunteer".into(),
            rate,
            text: "Lovely chat".into(),
            at: t(),
        }
    }

    #[test]
    fn a_review_needs_an_ended_call_between_the_two() {
        Given::with(())
            .given_no_previous_events()
            .when(write(5, false))
            .then_expect_error(ReviewError::NoEndedCall);
        Given::with(())
            .given_no_previous_events()
            .when(write(5, true))
            .then_expect_events(vec![written(5)]);
    }

    #[test]
    fn one_live_review_per_rater_and_ratee() {
        Given::with(())
            .given(vec![written(5)])
            .when(write(4, true))
            .then_expect_error(ReviewError::AlreadyReviewed);
        // After a delete the rater may review again.
        Given::with(())
            .given(vec![
                written(5),
                ReviewEvent::Deleted {
                    review_id: "r1".into(),
                    at: t(),
                },
            ])
            .when(write(3, true))
            .then_expect_events(vec![written(3)]);
    }

    #[test]
    fn rates_are_one_to_five_and_texts_bounded_and_nobody_reviews_themself() {
        for rate in [0, 6, -1] {
            Given::with(())
                .given_no_previous_events()
                .when(write(rate, true))
                .then_expect_error(ReviewError::BadRate);
        }
        Given::with(())
            .given_no_previous_events()
            .when(ReviewCommand::Write {
                review_id: "r1".into(),
                rater: "a".into(),
                ratee: "b".into(),
                rate: 5,
                text: "x".repeat(MAX_TEXT_CHARS + 1),
                had_ended_call: true,
                at: t(),
            })
            .then_expect_error(ReviewError::TextTooLong);
        Given::with(())
            .given_no_previous_events()
            .when(ReviewCommand::Write {
                review_id: "r1".into(),
                rater: "a".into(),
                ratee: "a".into(),
                rate: 5,
                text: String::new(),
                had_ended_call: true,
                at: t(),
            })
            .then_expect_error(ReviewError::SelfReview);
    }

    #[test]
    fn updates_keep_what_is_left_out_and_skip_no_changes() {
        Given::with(())
            .given(vec![written(5)])
            .when(ReviewCommand::Update {
                rate: Some(2),
                text: None,
                at: t(),
            })
            .then_expect_events(vec![ReviewEvent::Updated {
                review_id: "r1".into(),
                rate: 2,
                text: "Lovely chat".into(),
                at: t(),
            }]);
        Given::with(())
            .given(vec![written(5)])
            .when(ReviewCommand::Update {
                rate: Some(5),
                text: Some("Lovely chat".into()),
                at: t(),
            })
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![written(5)])
            .when(ReviewCommand::Update {
                rate: Some(9),
                text: None,
                at: t(),
            })
            .then_expect_error(ReviewError::BadRate);
    }

    #[test]
    fn update_and_delete_need_a_live_review() {
        Given::with(())
            .given_no_previous_events()
            .when(ReviewCommand::Update {
                rate: Some(3),
                text: None,
                at: t(),
            })
            .then_expect_error(ReviewError::NotFound);
        Given::with(())
            .given(vec![
                written(5),
                ReviewEvent::Deleted {
                    review_id: "r1".into(),
                    at: t(),
                },
            ])
            .when(ReviewCommand::Delete { at: t() })
            .then_expect_error(ReviewError::NotFound);
    }
}
