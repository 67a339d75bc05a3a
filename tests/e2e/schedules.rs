//! Sections 7 and 8: availability in the volunteer's wall-clock time (daylight saving included),
//! scheduling with every rule, races that never double-book, and reminders that arrive once.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Duration as Span, NaiveDate, NaiveTime, Offset, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_stores;
use crate::files::{put_bytes, signed};
use crate::helpers::{assert_error, read_models, unique_email, Backend, Server, TestDb};
use crate::ledger::{checkout, fund, ledger_server, open_top_up, user};

both_stores!(
    availability_is_validated_and_shown,
    scheduling_follows_every_rule,
    weekly_hours_stay_local_across_daylight_saving,
    racing_bookings_never_overlap,
    reminders_arrive_once_even_with_two_instances,
    each_user_update_of_a_round_shows_its_own_user,
    a_call_across_midnight_needs_both_days_open,
);

/// A volunteer who passed every verification step: `(id, token)`.
pub async fn verified_volunteer(server: &Server, db: &TestDb, admin: &str) -> (String, String) {
    let email = unique_email("amie");
    let (id, token, _) = server.sign_up(&email, "password-1", "volunteer").await;
    let (_, body) = signed(
        server,
        &token,
        json!({"cert.pdf": {"mimeType": "application/pdf", "objectType": "certificate"}}),
    )
    .await;
    let url = body["data"]["items"]["cert.pdf"]["uploadUrl"]
        .as_str()
        .expect("upload url")
        .to_string();
    let (status, _) = put_bytes(server, &url, "application/pdf", b"%PDF-1.4\n".to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{id}"),
            Some(&token),
            Some(json!({"name": "Amie Volunteer", "dob": "1990-02-03",
                        "specialization": "geriatric-nursing", "licenseId": "GN-1",
                        "certificate": "cert.pdf", "certificateState": "CA"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server
        .post(
            "/v1/otp",
            None,
            json!({"email": email, "purpose": "verify-email"}),
        )
        .await;
    let code = db.mailed_code(&email, "code to verify your email: ");
    let (status, _) = server
        .post(
            "/v1/otp/verify",
            None,
            json!({"email": email, "code": code, "purpose": "verify-email"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for step in ["admin", "background"] {
        let (status, body) = server
            .post(
                &format!("/v1/admin/user/{id}/verification"),
                Some(admin),
                json!({"step": step, "status": "complete"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, me) = server.get("/v1/auth", Some(&token)).await;
    assert_eq!(
        me["data"]["user"]["verification"]["verified"],
        json!(true),
        "{me}"
    );
    (id, token)
}

async fn set_weekly(server: &Server, token: &str, week: Value) -> (StatusCode, Value) {
    server
        .post("/v1/availability/weekly", Some(token), week)
        .await
}

fn all_week(start: &str, end: &str) -> Value {
    let range = json!([{"start": start, "end": end}]);
    json!({"sun": range, "mon": range, "tue": range, "wed": range, "thu": range,
           "fri": range, "sat": range})
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Tomorrow (UTC) at `hour`:00, plus `days`.
fn at_hour(days: i64, hour: u32) -> DateTime<Utc> {
    let date = Utc::now().date_naive() + Span::days(1 + days);
    Utc.from_utc_datetime(&date.and_hms_opt(hour, 0, 0).expect("time"))
}

/// A verified volunteer and a senior connected to them with 5,000 coins: `(volunteer,
/// senior, chat id)`.
async fn funded_pair(server: &Server, db: &TestDb) -> ((String, String), (String, String), String) {
    let (_, admin) = server.admin(db).await;
    let volunteer = verified_volunteer(server, db, &admin).await;
    let senior = user(server, "senior").await;
    let chat = server.connect(&senior, &volunteer).await;
    fund(server, &senior.1, 5000).await;
    (volunteer, senior, chat)
}

async fn book(
    server: &Server,
    token: &str,
    volunteer: &str,
    from: DateTime<Utc>,
    minutes: i64,
    recurrence: &str,
) -> (StatusCode, Value) {
    server
        .post(
            &format!("/v1/user/{volunteer}/schedule"),
            Some(token),
            json!({"title": "Tea and a chat", "type": "audio", "recurrence": recurrence,
                   "startDateTime": iso(from), "endDateTime": iso(from + Span::minutes(minutes))}),
        )
        .await
}

async fn availability_is_validated_and_shown(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[]).await;
    let (_, admin) = server.admin(&db).await;
    let volunteer = verified_volunteer(&server, &db, &admin).await;
    let senior = user(&server, "senior").await;

    let (status, body) = set_weekly(
        &server,
        &volunteer.1,
        json!({"mon": [{"start": "13:00", "end": "17:00"}, {"start": "09:00", "end": "12:00"}],
               "thur": [{"start": "00:00", "end": "24:00"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["mon"],
        json!([{"start": "09:00", "end": "12:00"}, {"start": "13:00", "end": "17:00"}])
    );
    assert_eq!(
        body["data"]["thu"],
        json!([{"start": "00:00", "end": "24:00"}])
    );
    assert_eq!(body["data"]["sun"], json!([]));
    let (status, body) = server
        .get(
            &format!("/v1/availability/weekly?userId={}", volunteer.0),
            Some(&senior.1),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["thu"],
        json!([{"start": "00:00", "end": "24:00"}])
    );

    // Bad weeks: every one is a 400 naming the field, and the stored week stays.
    let thirteen: Vec<Value> = (0..13)
        .map(|h| json!({"start": format!("{h:02}:00"), "end": format!("{h:02}:30")}))
        .collect();
    for (bad, field) in [
        (json!({"funday": []}), "funday"),
        (
            json!({"mon": [{"start": "9:00", "end": "10:00"}]}),
            "mon[0]",
        ),
        (json!({"mon": [{"start": "10:00", "end": "09:00"}]}), "mon"),
        (
            json!({"mon": [{"start": "09:00", "end": "11:00"}, {"start": "10:00", "end": "12:00"}]}),
            "mon",
        ),
        (json!({"mon": thirteen}), "mon"),
        (json!({"mon": "all day"}), "mon"),
        (json!({"mon": [{"start": "09:00"}]}), "mon[0]"),
        (
            json!({"mon": [{"start": "24:00", "end": "24:00"}]}),
            "mon[0]",
        ),
    ] {
        let (status, body) = set_weekly(&server, &volunteer.1, bad.clone()).await;
        assert_error(status, &body, 400, "invalid_input");
        assert!(body["details"][field].is_string(), "{bad} -> {body}");
    }
    let (status, body) = set_weekly(&server, &volunteer.1, json!([1, 2])).await;
    assert_error(status, &body, 400, "invalid_input");
    let (_, body) = server
        .get("/v1/availability/weekly", Some(&volunteer.1))
        .await;
    assert_eq!(
        body["data"]["thu"],
        json!([{"start": "00:00", "end": "24:00"}])
    );
    // Seniors publish no availability.
    let (status, body) = set_weekly(&server, &senior.1, all_week("09:00", "10:00")).await;
    assert_error(status, &body, 403, "forbidden");

    // Custom dates: a day off and a special day; past dates and bad keys are refused.
    let today = Utc::now().date_naive();
    let off = today + Span::days(3);
    let special = today + Span::days(4);
    let (status, body) = server
        .post(
            "/v1/availability/custom",
            Some(&volunteer.1),
            json!({ off.to_string(): [], special.to_string(): [{"start": "18:00", "end": "20:00"}] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][off.to_string()], json!([]));
    let yesterday = today - Span::days(2);
    let (status, body) = server
        .post(
            "/v1/availability/custom",
            Some(&volunteer.1),
            json!({ yesterday.to_string(): [] }),
        )
        .await;
    assert_error(status, &body, 422, "date_out_of_range");
    for bad in [
        json!({"2026-02-30": []}),
        json!({"tomorrow": []}),
        json!({}),
    ] {
        let (status, body) = server
            .post("/v1/availability/custom", Some(&volunteer.1), bad)
            .await;
        assert_error(status, &body, 400, "invalid_input");
    }
    let (status, body) = server
        .get(
            &format!(
                "/v1/availability/custom?userId={}&from={today}&to={}",
                volunteer.0,
                today + Span::days(10)
            ),
            Some(&senior.1),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"],
        json!({ off.to_string(): [], special.to_string(): [{"start": "18:00", "end": "20:00"}] })
    );
    for bad in [
        "from=2026-13-01",
        "from=2027-01-10&to=2027-01-01",
        "from=2027-01-01&to=2029-01-01",
    ] {
        let (status, body) = server
            .get(
                &format!("/v1/availability/custom?{bad}"),
                Some(&volunteer.1),
            )
            .await;
        assert_error(status, &body, 400, "invalid_input");
    }
    let (status, body) = server
        .get("/v1/availability/weekly?userId=nobody", Some(&senior.1))
        .await;
    assert_error(status, &body, 404, "not_found");

    // full_user carries it; availableOn finds the volunteer on open days only.
    let (_, body) = server
        .get(&format!("/v1/user/{}", volunteer.0), Some(&senior.1))
        .await;
    let availability = &body["data"]["availability"];
    assert_eq!(
        availability["weekly"]["mon"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );
    assert_eq!(availability["custom"][off.to_string()], json!([]));
    let find = |date: NaiveDate| {
        let server = &server;
        let token = senior.1.clone();
        async move {
            let (status, body) = server
                .get(
                    &format!("/v1/users?type=volunteer&availableOn={date}"),
                    Some(&token),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["data"]
                .as_array()
                .expect("list")
                .iter()
                .map(|u| u["id"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(find(off).await, Vec::<String>::new(), "a day off");
    assert_eq!(
        find(special).await,
        vec![volunteer.0.clone()],
        "a special day"
    );
    let next_thursday = (5..12)
        .map(|d| today + Span::days(d))
        .find(|d| d.format("%a").to_string() == "Thu")
        .expect("a thursday");
    let next_sunday = (5..12)
        .map(|d| today + Span::days(d))
        .find(|d| d.format("%a").to_string() == "Sun")
        .expect("a sunday");
    assert_eq!(find(next_thursday).await, vec![volunteer.0.clone()]);
    assert_eq!(find(next_sunday).await, Vec::<String>::new());
}

/// `(why, start, minutes, recurrence, status, error code)` of a booking that must fail.
type BrokenRule = (
    &'static str,
    DateTime<Utc>,
    i64,
    &'static str,
    u16,
    &'static str,
);

async fn scheduling_follows_every_rule(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[]).await;
    let (volunteer, senior, chat) = funded_pair(&server, &db).await;
    let stranger = user(&server, "senior").await;
    let (status, _) = set_weekly(&server, &volunteer.1, all_week("08:00", "20:00")).await;
    assert_eq!(status, StatusCode::OK);
    let (mut volunteer_ws, _) = server.ws_authenticated(&volunteer.1, None).await;

    // Booked: 201 with the schedule, the chat and its schedule message; the volunteer is alerted.
    let start = at_hour(1, 10);
    let (status, body) = book(&server, &senior.1, &volunteer.0, start, 30, "none").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let schedule = body["data"]["schedule"].clone();
    let schedule_id = schedule["id"].as_str().expect("id").to_string();
    assert_eq!(schedule["status"], json!("upcoming"));
    assert_eq!(
        schedule["timeslot"]["from"].as_str().map(|t| &t[..19]),
        Some(&iso(start)[..19])
    );
    assert_eq!(schedule["attendee"]["id"], json!(volunteer.0));
    assert_eq!(body["data"]["chat"]["id"], json!(chat));
    assert_eq!(body["data"]["message"]["type"], json!("schedule"));
    assert_eq!(
        body["data"]["message"]["schedule"]["id"],
        json!(schedule_id)
    );
    let alert = volunteer_ws
        .push_where("alert.new", |p| p["data"]["alert"]["type"] == "schedule")
        .await;
    let alert = &alert["data"]["alert"];
    assert_eq!(
        alert["schedule"],
        json!({
            "id": schedule_id, "title": "Tea and a chat", "type": "audio", "recurrence": "none",
            "timeslot": schedule["timeslot"], "status": "scheduled",
        }),
        "{alert}"
    );
    assert_eq!(alert["chat"]["id"], json!(chat), "{alert}");
    assert_eq!(alert["user"]["id"], json!(senior.0), "{alert}");
    assert!(alert["user"]["name"].is_string(), "{alert}");
    let pushed = volunteer_ws
        .push_where("chat.message.new", |p| {
            p["data"]["message"]["type"] == "schedule"
        })
        .await;
    assert_eq!(
        pushed["data"]["message"]["schedule"]["id"],
        json!(schedule_id)
    );
    // The volunteer sees the booked slot; both sides read it; a stranger gets 404.
    let (_, me) = server.get("/v1/auth", Some(&volunteer.1)).await;
    let booked = &me["data"]["user"]["availability"]["bookedSlots"]["custom"];
    assert_eq!(
        booked[start.date_naive().to_string()][0]["start"],
        json!("10:00"),
        "{me}"
    );
    let (status, body) = server
        .get(&format!("/v1/schedule/{schedule_id}"), Some(&volunteer.1))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["attendee"]["id"], json!(senior.0));
    let (status, body) = server
        .get(&format!("/v1/schedule/{schedule_id}"), Some(&stranger.1))
        .await;
    assert_error(status, &body, 404, "not_found");

    // Every broken rule, each with its own answer; nothing is booked by them.
    let cases: [BrokenRule; 5] = [
        (
            "overlap",
            start + Span::minutes(15),
            30,
            "none",
            409,
            "slot_unavailable",
        ),
        (
            "outside hours",
            at_hour(1, 21),
            30,
            "none",
            409,
            "slot_unavailable",
        ),
        (
            "past",
            Utc::now() - Span::hours(2),
            30,
            "none",
            422,
            "in_the_past",
        ),
        (
            "too expensive",
            at_hour(2, 9),
            600,
            "none",
            409,
            "insufficient_coins",
        ),
        (
            "series meets the booked call",
            start - Span::days(1) + Span::minutes(10),
            30,
            "daily",
            409,
            "slot_unavailable",
        ),
    ];
    for (why, from, minutes, recurrence, code, error) in cases {
        let (status, body) =
            book(&server, &senior.1, &volunteer.0, from, minutes, recurrence).await;
        assert_error(status, &body, code, error);
        assert!(
            !body["message"].as_str().unwrap_or("").is_empty(),
            "{why}: {body}"
        );
    }
    // A weekly series whose 7th week meets another senior's call: 409 naming that week.
    let other = user(&server, "senior").await;
    server.connect(&other, &volunteer).await;
    fund(&server, &other.1, 5000).await;
    let week7 = at_hour(2, 15) + Span::weeks(6);
    let (status, body) = book(&server, &other.1, &volunteer.0, week7, 30, "none").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = book(
        &server,
        &senior.1,
        &volunteer.0,
        at_hour(2, 15),
        30,
        "weekly",
    )
    .await;
    assert_error(status, &body, 409, "slot_unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains(&iso(week7)[..10]),
        "{body}"
    );
    // Bad fields.
    for bad in [
        json!({"title": "x", "type": "audio", "startDateTime": iso(at_hour(3, 9)), "endDateTime": iso(at_hour(3, 8))}),
        json!({"title": "x", "type": "hologram", "startDateTime": iso(at_hour(3, 9)), "endDateTime": iso(at_hour(3, 10))}),
        json!({"title": "x", "type": "audio", "startDateTime": "tomorrow at nine", "endDateTime": iso(at_hour(3, 10))}),
        json!({"title": "x", "type": "audio", "recurrence": "yearly", "startDateTime": iso(at_hour(3, 9)), "endDateTime": iso(at_hour(3, 10))}),
        json!({"title": "", "type": "audio", "startDateTime": iso(at_hour(3, 9)), "endDateTime": iso(at_hour(3, 10))}),
        json!({"type": "audio", "startDateTime": iso(at_hour(3, 9)), "endDateTime": iso(at_hour(3, 10))}),
        json!({"title": "x", "type": "audio", "startDateTime": iso(at_hour(3, 9)), "endDateTime": iso(at_hour(5, 10))}),
    ] {
        let (status, body) = server
            .post(
                &format!("/v1/user/{}/schedule", volunteer.0),
                Some(&senior.1),
                bad.clone(),
            )
            .await;
        assert_error(status, &body, 400, "invalid_input");
    }
    // Who may book whom.
    let (status, body) = book(&server, &volunteer.1, &senior.0, at_hour(3, 9), 30, "none").await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = book(
        &server,
        &stranger.1,
        &volunteer.0,
        at_hour(3, 9),
        30,
        "none",
    )
    .await;
    assert_error(status, &body, 422, "not_connected");
    let unverified = user(&server, "volunteer").await;
    let (status, body) = book(&server, &senior.1, &unverified.0, at_hour(3, 9), 30, "none").await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = book(&server, &senior.1, "nobody", at_hour(3, 9), 30, "none").await;
    assert_error(status, &body, 404, "not_found");
    // The volunteer's limits: 20 minutes at most, one call a day.
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{}", volunteer.0),
            Some(&volunteer.1),
            Some(json!({"maxCallDuration": 1200, "maxCallCount": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = book(&server, &senior.1, &volunteer.0, at_hour(3, 9), 30, "none").await;
    assert_error(status, &body, 422, "over_max_duration");
    let (status, body) = book(
        &server,
        &senior.1,
        &volunteer.0,
        start + Span::hours(3),
        20,
        "none",
    )
    .await;
    assert_error(status, &body, 422, "over_daily_limit");
    let (status, body) = book(&server, &senior.1, &volunteer.0, at_hour(3, 9), 20, "none").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let second = body["data"]["schedule"]["id"]
        .as_str()
        .expect("id")
        .to_string();

    // Moving: the senior only; the rules apply again; the volunteer is alerted.
    let path = format!("/v1/schedule/{schedule_id}");
    let (status, body) = server
        .call(
            "PUT",
            &path,
            Some(&volunteer.1),
            Some(json!({"title": "mine now"})),
        )
        .await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = server
        .call("PUT", &path, Some(&senior.1), Some(json!({"startDateTime": iso(at_hour(3, 9)), "endDateTime": iso(at_hour(3, 9) + Span::minutes(20))})))
        .await;
    assert_error(status, &body, 409, "slot_unavailable");
    let moved_to = start + Span::minutes(5);
    let (status, body) = server
        .call(
            "PUT",
            &path,
            Some(&senior.1),
            Some(json!({"title": "Tea at five past",
            "startDateTime": iso(moved_to), "endDateTime": iso(moved_to + Span::minutes(20))})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["title"], json!("Tea at five past"));
    assert_eq!(
        body["data"]["timeslot"]["from"].as_str().map(|t| &t[..16]),
        Some(&iso(moved_to)[..16])
    );
    let alert = volunteer_ws
        .push_where("alert.new", |p| {
            p["data"]["alert"]["schedule"]["status"] == "updated"
        })
        .await;
    assert_eq!(alert["data"]["alert"]["schedule"]["id"], json!(schedule_id));

    // Lists.
    let (_, body) = server.get("/v1/schedules/upcoming", Some(&senior.1)).await;
    let upcoming: Vec<&str> = body["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(
        upcoming,
        vec![schedule_id.as_str(), second.as_str()],
        "{body}"
    );
    assert_eq!(body["pagination"]["totalItems"], json!(2));
    let (_, body) = server
        .get("/v1/schedules?keyword=five%20past", Some(&volunteer.1))
        .await;
    assert_eq!(body["data"][0]["id"], json!(schedule_id), "{body}");
    assert_eq!(body["pagination"]["totalItems"], json!(1));
    let (_, body) = server
        .get("/v1/schedules?pageSize=1", Some(&senior.1))
        .await;
    assert!(body["pagination"]["lastEvaluatedKey"].is_string(), "{body}");

    // Cancelling: either side; the other is alerted; the slot is free again.
    let (mut senior_ws, _) = server.ws_authenticated(&senior.1, None).await;
    let (status, body) = server.call("DELETE", &path, Some(&volunteer.1), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let alert = senior_ws
        .push_where("alert.new", |p| p["data"]["alert"]["type"] == "schedule")
        .await;
    let alert = &alert["data"]["alert"];
    assert_eq!(alert["schedule"]["id"], json!(schedule_id), "{alert}");
    assert_eq!(alert["schedule"]["status"], json!("canceled"), "{alert}");
    assert!(alert["schedule"]["title"].is_string(), "{alert}");
    assert!(alert["schedule"]["timeslot"]["from"].is_string(), "{alert}");
    // The senior hears it from the volunteer, who cancelled.
    assert_eq!(alert["user"]["id"], json!(volunteer.0), "{alert}");
    assert!(alert["user"]["name"].is_string(), "{alert}");
    let (_, body) = server.get(&path, Some(&senior.1)).await;
    assert_eq!(body["data"]["status"], json!("canceled"));
    let (_, body) = server.get("/v1/schedules/past", Some(&senior.1)).await;
    assert_eq!(body["data"][0]["id"], json!(schedule_id));
    let (status, body) = server
        .call(
            "PUT",
            &path,
            Some(&senior.1),
            Some(json!({"title": "again"})),
        )
        .await;
    assert_error(status, &body, 409, "conflict");
    let (status, body) = server
        .call(
            "DELETE",
            &format!("/v1/user/{}/schedules", volunteer.0),
            Some(&senior.1),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"], json!({"cleared": 1}));
    let (_, body) = server.get("/v1/schedules/upcoming", Some(&senior.1)).await;
    assert_eq!(body["data"], json!([]));
    let (status, body) = book(&server, &senior.1, &volunteer.0, at_hour(3, 9), 20, "none").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // An Idempotency-Key retry answers the first booking.
    let request = |key: &str| {
        server
            .http
            .post(format!("{}/v1/user/{}/schedule", server.base, volunteer.0))
            .bearer_auth(&senior.1)
            .header("Idempotency-Key", key.to_string())
            .json(
                &json!({"title": "Once", "type": "video", "startDateTime": iso(at_hour(4, 9)),
                          "endDateTime": iso(at_hour(4, 9) + Span::minutes(15))}),
            )
            .send()
    };
    let first: Value = request("k1")
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let again: Value = request("k1")
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(first["statusCode"], json!(201), "{first}");
    assert_eq!(
        first["data"]["schedule"]["id"],
        again["data"]["schedule"]["id"]
    );
    // Rebuilding the read models gives the same schedules.
    let (_, before) = server.get("/v1/schedules", Some(&senior.1)).await;
    server.stop().await;
    let (ok, _, stderr) = db.cli(&["projections", "rebuild", "schedules"]);
    assert!(ok, "{stderr}");
    let server = ledger_server(&db, &[]).await;
    let (_, after) = server.get("/v1/schedules", Some(&senior.1)).await;
    // Sockets closed with the old process: presence is the one thing allowed to differ.
    let without_presence = |mut list: Value| {
        for schedule in list.as_array_mut().into_iter().flatten() {
            schedule["attendee"]["online"] = Value::Null;
        }
        list
    };
    assert_eq!(
        without_presence(before["data"].clone()),
        without_presence(after["data"].clone())
    );

    // So does a rebuild of every read model for the alerts (a booking's alert is made from
    // its event, a cancellation's from the schedule and the canceller read together).
    server.stop().await;
    let pool = db.connect().await;
    let alerts = read_models(&pool).await["alerts"].clone();
    assert!(
        alerts.iter().any(|row| row.contains("canceled")),
        "{alerts:#?}"
    );
    assert!(
        alerts.iter().any(|row| row.contains("updated")),
        "{alerts:#?}"
    );
    let (ok, _, stderr) = db.cli(&["projections", "rebuild"]);
    assert!(ok, "{stderr}");
    assert_eq!(read_models(&pool).await["alerts"], alerts);
}

async fn a_call_across_midnight_needs_both_days_open(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[]).await;
    let (volunteer, senior, _) = funded_pair(&server, &db).await;
    let (status, _) = set_weekly(&server, &volunteer.1, all_week("00:00", "24:00")).await;
    assert_eq!(status, StatusCode::OK);

    // 23:50 to 00:20 (the volunteer's zone is UTC): both days are open across midnight.
    let late = at_hour(1, 23) + Span::minutes(50);
    let (status, body) = book(&server, &senior.1, &volunteer.0, late, 30, "none").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The volunteer's booked slots show it on both days.
    let (_, me) = server.get("/v1/auth", Some(&volunteer.1)).await;
    let booked = &me["data"]["user"]["availability"]["bookedSlots"]["custom"];
    let day = |at: DateTime<Utc>| at.date_naive().to_string();
    assert_eq!(
        booked[day(late)],
        json!([{"start": "23:50", "end": "24:00"}]),
        "{booked}"
    );
    assert_eq!(
        booked[day(late + Span::hours(1))],
        json!([{"start": "00:00", "end": "00:20"}]),
        "{booked}"
    );

    // With the next morning closed until 06:00, a call across that midnight is refused.
    let (status, _) = set_weekly(&server, &volunteer.1, all_week("06:00", "24:00")).await;
    assert_eq!(status, StatusCode::OK);
    let later = late + Span::days(1);
    let (status, body) = book(&server, &senior.1, &volunteer.0, later, 30, "none").await;
    assert_error(status, &body, 409, "slot_unavailable");
}

async fn weekly_hours_stay_local_across_daylight_saving(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[]).await;
    let (volunteer, senior, _) = funded_pair(&server, &db).await;
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{}", volunteer.0),
            Some(&volunteer.1),
            Some(json!({"timezone": "America/New_York"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = set_weekly(&server, &volunteer.1, all_week("09:00", "12:00")).await;
    assert_eq!(status, StatusCode::OK);

    // The next change of New York's UTC offset, found from today.
    let zone = chrono_tz::America::New_York;
    let offset_on = |date: NaiveDate| {
        zone.from_utc_datetime(&date.and_time(NaiveTime::MIN + Span::hours(17)))
            .offset()
            .fix()
            .local_minus_utc()
    };
    let today = Utc::now().date_naive() + Span::days(2);
    let change = (0..400)
        .map(|d| today + Span::days(d))
        .find(|d| offset_on(*d) != offset_on(*d - Span::days(1)))
        .expect("New York changes its clocks within a year");
    let nine_local = |date: NaiveDate| {
        zone.from_local_datetime(&date.and_hms_opt(9, 0, 0).expect("time"))
            .single()
            .expect("09:00 exists")
            .with_timezone(&Utc)
    };
    let before = nine_local(change - Span::days(2));
    let after = nine_local(change + Span::days(5));
    assert_ne!(
        before.format("%H").to_string(),
        after.format("%H").to_string(),
        "09:00 local is another UTC hour after the change"
    );
    // 09:00 local is bookable on both sides of the change; 08:00 local is not.
    for start in [before, after] {
        let (status, body) = book(&server, &senior.1, &volunteer.0, start, 60, "none").await;
        assert_eq!(status, StatusCode::CREATED, "{start}: {body}");
        let (status, body) = book(
            &server,
            &senior.1,
            &volunteer.0,
            start - Span::hours(1),
            30,
            "none",
        )
        .await;
        assert_error(status, &body, 409, "slot_unavailable");
    }
    // A weekly series keeps 09:00 local: its UTC hour moves with the change.
    let series_start = nine_local(change - Span::days(3));
    let (status, body) = book(&server, &senior.1, &volunteer.0, series_start, 30, "weekly").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let occurrences = body["data"]["schedule"]["occurrences"]
        .as_array()
        .expect("occurrences")
        .clone();
    assert_eq!(occurrences.len(), 8);
    for occurrence in &occurrences {
        let from = DateTime::parse_from_rfc3339(occurrence["from"].as_str().expect("from"))
            .expect("time")
            .with_timezone(&zone);
        assert_eq!(from.format("%H:%M").to_string(), "09:00", "{occurrence}");
    }
    let hours: HashSet<String> = occurrences
        .iter()
        .map(|o| o["from"].as_str().unwrap_or_default()[11..13].to_string())
        .collect();
    assert_eq!(hours.len(), 2, "two UTC hours across the change: {hours:?}");
    // The answer (with the occurrences it booked) is the schedule as it reads back.
    let id = body["data"]["schedule"]["id"]
        .as_str()
        .expect("schedule id");
    let (_, read) = server
        .get(&format!("/v1/schedule/{id}"), Some(&senior.1))
        .await;
    assert_eq!(read["data"], body["data"]["schedule"]);
    // bookedSlots shows the series on its weekday, in local time.
    let (_, me) = server.get("/v1/auth", Some(&volunteer.1)).await;
    let weekday = series_start
        .with_timezone(&zone)
        .format("%a")
        .to_string()
        .to_lowercase();
    assert_eq!(
        me["data"]["user"]["availability"]["bookedSlots"]["weekly"][&weekday],
        json!([{"start": "09:00", "end": "09:30"}]),
        "{me}"
    );
}

async fn racing_bookings_never_overlap(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[]).await;
    let (_, admin) = server.admin(&db).await;
    let volunteer = verified_volunteer(&server, &db, &admin).await;
    set_weekly(&server, &volunteer.1, all_week("00:00", "24:00")).await;

    // 50 seniors race for overlapping slots of one volunteer: exactly one wins.
    let mut seniors = Vec::new();
    for _ in 0..50 {
        let senior = user(&server, "senior").await;
        server.connect(&senior, &volunteer).await;
        fund(&server, &senior.1, 100).await;
        seniors.push(senior);
    }
    let start = at_hour(1, 12);
    let attempts = seniors.iter().enumerate().map(|(i, senior)| {
        let from = start + Span::minutes((i % 20) as i64);
        let server = &server;
        let volunteer = volunteer.0.clone();
        async move { book(server, &senior.1, &volunteer, from, 1, "none").await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let won = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    for (status, body) in &results {
        if *status != StatusCode::CREATED {
            assert_error(*status, body, 409, "slot_unavailable");
        }
    }
    // Slots overlap only when they start within a minute of each other: count the winners of
    // each overlapping group instead of assuming one.
    let (_, body) = server
        .get("/v1/schedules?pageSize=100", Some(&volunteer.1))
        .await;
    let mut slots: Vec<(String, String)> = body["data"]
        .as_array()
        .expect("list")
        .iter()
        .map(|s| {
            (
                s["timeslot"]["from"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                s["timeslot"]["to"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    slots.sort();
    assert_eq!(slots.len(), won);
    for pair in slots.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlapping bookings: {pair:?}");
    }
    // The strict form: all 50 ask for the very same hour.
    let same = at_hour(2, 12);
    let attempts = seniors.iter().map(|senior| {
        let server = &server;
        let volunteer = volunteer.0.clone();
        async move { book(server, &senior.1, &volunteer, same, 1, "none").await.0 }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        49
    );

    // One senior books five volunteers for the same hour at once: exactly one wins.
    let senior = seniors[0].clone();
    let mut volunteers = Vec::new();
    for _ in 0..5 {
        let other = verified_volunteer(&server, &db, &admin).await;
        set_weekly(&server, &other.1, all_week("00:00", "24:00")).await;
        server.connect(&senior, &other).await;
        volunteers.push(other);
    }
    let hour = at_hour(3, 12);
    let attempts = volunteers.iter().map(|v| {
        let server = &server;
        let token = senior.1.clone();
        async move { book(server, &token, &v.0, hour, 1, "none").await.0 }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    // Losers were compensated: no hold is left on any volunteer's calendar.
    for v in &volunteers {
        let (_, body) = server.get("/v1/schedules/upcoming", Some(&v.1)).await;
        assert!(body["data"].as_array().map_or(0, Vec::len) <= 1);
    }
    let (_, body) = server.get("/v1/schedules/upcoming", Some(&senior.1)).await;
    let at_hour_count = body["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|s| {
            s["timeslot"]["from"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&iso(hour)[..16])
        })
        .count();
    assert_eq!(at_hour_count, 1);
}

async fn reminders_arrive_once_even_with_two_instances(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let env = [
        ("TALKAMIE_ADJUSTABLE_CLOCK", "true"),
        ("TALKAMIE_TIMER_POLL_MS", "100"),
    ];
    let one = ledger_server(&db, &env).await;
    // Two instances share PostgreSQL; SQLite is one process's embedded store.
    let two = match backend {
        Backend::Postgres => Some(ledger_server(&db, &env).await),
        Backend::Sqlite => None,
    };
    let (_, admin) = one.admin(&db).await;
    let volunteer = verified_volunteer(&one, &db, &admin).await;
    let senior = user(&one, "senior").await;
    one.connect(&senior, &volunteer).await;
    fund(&one, &senior.1, 1000).await;
    set_weekly(&one, &volunteer.1, all_week("00:00", "24:00")).await;
    let start = Utc::now() + Span::hours(1);
    let start = start - Span::nanoseconds(start.timestamp_subsec_nanos() as i64);
    let (status, body) = book(&one, &senior.1, &volunteer.0, start, 15, "none").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let schedule_id = body["data"]["schedule"]["id"].clone();
    let (mut senior_ws, _) = one.ws_authenticated(&senior.1, None).await;
    let (mut volunteer_ws, _) = match &two {
        Some(two) => two.ws_authenticated(&volunteer.1, None).await,
        None => one.ws_authenticated(&volunteer.1, None).await,
    };
    let advance = |seconds: i64| {
        let servers: Vec<&Server> = std::iter::once(&one).chain(two.as_ref()).collect();
        let admin = admin.clone();
        async move {
            for server in servers {
                let (status, body) = server
                    .post(
                        "/v1/admin/clock",
                        Some(&admin),
                        json!({"advanceSeconds": seconds}),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
        }
    };
    // Nothing before the lead time.
    advance(40 * 60).await;
    assert!(
        no_push(
            &mut senior_ws,
            "schedule.upcoming",
            Duration::from_millis(800)
        )
        .await,
        "no reminder 20 minutes ahead"
    );
    advance(10 * 60 + 5).await;
    for ws in [&mut senior_ws, &mut volunteer_ws] {
        let push = ws.push("schedule.upcoming").await;
        assert_eq!(push["data"]["schedule"]["id"], schedule_id);
        let starts_in = push["data"]["startsInSeconds"].as_i64().expect("seconds");
        assert!((500..=600).contains(&starts_in), "{push}");
        assert!(
            no_push(ws, "schedule.upcoming", Duration::from_millis(1500)).await,
            "exactly once"
        );
    }
    advance(10 * 60).await;
    for ws in [&mut senior_ws, &mut volunteer_ws] {
        let push = ws.push("schedule.upcoming").await;
        assert_eq!(push["data"]["startsInSeconds"], json!(0), "{push}");
        assert_eq!(
            push["data"]["schedule"]["status"],
            json!("on-going"),
            "{push}"
        );
        assert!(
            no_push(ws, "schedule.upcoming", Duration::from_millis(1500)).await,
            "exactly once"
        );
    }
    // Not a body of an admin-only clock on a normal server.
    let plain = Server::start(&db).await;
    let (status, body) = plain
        .post(
            "/v1/admin/clock",
            Some(&admin),
            json!({"advanceSeconds": 60}),
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = one
        .post(
            "/v1/admin/clock",
            Some(&senior.1),
            json!({"advanceSeconds": 60}),
        )
        .await;
    assert_error(status, &body, 403, "forbidden");
}

/// True when no `action` push arrives within `wait`.
pub async fn no_push(ws: &mut crate::helpers::Ws, action: &str, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return true;
        }
        match ws.next_within(left).await {
            Some(crate::helpers::Incoming::Json(frame)) if frame["action"] == action => {
                return false
            }
            Some(_) => continue,
            None => return true,
        }
    }
}

/// A projector round renders the `user.update`s of all the users it touched together (one read
/// per part for all of them): each must still show its own user. Three seniors pay top-ups of
/// different sizes and two volunteers publish different weekly hours, all at once, so rounds
/// hold several of them. Each user's pushes show only their own balance or hours, and the last
/// one is their `GET /v1/auth` user.
async fn each_user_update_of_a_round_shows_its_own_user(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[]).await;
    let (_, admin) = server.admin(&db).await;
    let mut volunteers = Vec::new();
    for _ in 0..2 {
        volunteers.push(verified_volunteer(&server, &db, &admin).await);
    }
    let mut seniors = Vec::new();
    for _ in 0..3 {
        seniors.push(user(&server, "senior").await);
    }
    let mut sockets = Vec::new();
    for (_, token) in volunteers.iter().chain(seniors.iter()) {
        sockets.push(server.ws_authenticated(token, None).await.0);
    }
    let hours = [("08:00", "12:00"), ("14:00", "18:30")];
    let amounts = [300i64, 500, 700];
    let mut sessions = Vec::new();
    for ((_, token), coins) in seniors.iter().zip(amounts) {
        sessions.push(open_top_up(&server, token, coins).await.1);
    }
    let server = std::sync::Arc::new(server);
    let mut writes = Vec::new();
    for ((_, token), (start, end)) in volunteers.iter().zip(hours) {
        let (server, token) = (server.clone(), token.clone());
        writes.push(tokio::spawn(async move {
            set_weekly(&server, &token, all_week(start, end)).await.0
        }));
    }
    for session in sessions {
        let server = server.clone();
        writes.push(tokio::spawn(async move {
            checkout(&server, &session, "pay").await.0
        }));
    }
    for write in writes {
        assert_eq!(write.await.expect("write"), StatusCode::OK);
    }

    let (volunteer_sockets, senior_sockets) = sockets.split_at_mut(2);
    for ((ws, (id, token)), (start, end)) in
        volunteer_sockets.iter_mut().zip(&volunteers).zip(hours)
    {
        let pushed = ws
            .push_where("user.update", |p| {
                let user = &p["data"]["user"];
                assert_eq!(user["id"], json!(id), "{p}");
                let mon = &user["availability"]["weekly"]["mon"];
                assert!(
                    *mon == json!([]) || *mon == json!([{"start": start, "end": end}]),
                    "{id} sees other hours: {p}"
                );
                *mon != json!([])
            })
            .await;
        let (_, me) = server.get("/v1/auth", Some(token)).await;
        assert_eq!(
            pushed["data"]["user"]["availability"], me["data"]["user"]["availability"],
            "{pushed} / {me}"
        );
    }
    for ((ws, (id, token)), coins) in senior_sockets.iter_mut().zip(&seniors).zip(amounts) {
        let pushed = ws
            .push_where("user.update", |p| {
                let user = &p["data"]["user"];
                assert_eq!(user["id"], json!(id), "{p}");
                let balance = &user["ledger"]["coins"]["balance"];
                assert!(
                    *balance == json!(0) || *balance == json!(coins),
                    "{id} sees another balance: {p}"
                );
                *balance == json!(coins)
            })
            .await;
        let (_, me) = server.get("/v1/auth", Some(token)).await;
        assert_eq!(
            pushed["data"]["user"]["ledger"],
            me["data"]["user"]["ledger"]
        );
        assert_eq!(
            pushed["data"]["user"]["totalUnreadAlerts"], me["data"]["user"]["totalUnreadAlerts"],
            "{pushed} / {me}"
        );
    }
}
