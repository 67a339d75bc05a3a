//! Section 3: the whole account life cycle a client goes through.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_stores;
use crate::helpers::{account, assert_error, unique_email, Backend, Server, TestDb};

both_stores!(
    sign_up_sign_in_refresh_reuse_and_sign_out,
    otp_verifies_email_and_resets_password,
    change_password_ends_other_sessions,
    sign_in_is_rate_limited,
    one_account_per_email_under_concurrency
);

async fn sign_up_sign_in_refresh_reuse_and_sign_out(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let email = unique_email("ann");

    // Sign up: 201 with user_account.
    let (status, body) = server
        .post(
            "/v1/auth/sign-up",
            None,
            json!({"email": email.to_uppercase(), "password": "password-1", "name": "Ann", "type": "senior"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["success"], json!(true));
    assert_eq!(body["statusCode"], json!(201));
    let user = &body["data"]["user"];
    assert_eq!(user["name"], json!("Ann"));
    assert_eq!(user["type"], json!("senior"));
    assert_eq!(user["verification"]["basic"]["status"], json!("pending"));
    assert!(
        user["insertDate"]
            .as_str()
            .is_some_and(|d| d.ends_with('Z')),
        "{user}"
    );
    let (user_id, _, _) = account(&body);

    // Emails are unique case-insensitively.
    let (status, body) = server
        .post(
            "/v1/auth/sign-up",
            None,
            json!({"email": email, "password": "password-2", "name": "Other", "type": "volunteer"}),
        )
        .await;
    assert_error(status, &body, 409, "already_exists");

    // Sign in; one message for wrong password and unknown email.
    let (status, wrong) = server.sign_in(&email, "not-the-password").await;
    assert_error(status, &wrong, 401, "unauthenticated");
    let (status, unknown) = server.sign_in(&unique_email("nobody"), "password-1").await;
    assert_error(status, &unknown, 401, "unauthenticated");
    assert_eq!(wrong["message"], unknown["message"]);
    let (status, body) = server.sign_in(&email, "password-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (id, access, refresh) = account(&body);
    assert_eq!(id, user_id);
    assert!(body["data"]["user"]["lastLoginDate"].is_string());

    // Get user by token.
    let (status, body) = server.get("/v1/auth", Some(&access)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["user"]["id"], json!(user_id));
    assert_eq!(body["data"]["user"]["email"], json!(email.to_uppercase()));

    // Refresh rotates: new tokens work.
    let (status, body) = server
        .post("/v1/auth/refresh", None, json!({"refresh": refresh}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access2 = body["data"]["tokens"]["access"]
        .as_str()
        .unwrap()
        .to_string();
    let refresh2 = body["data"]["tokens"]["refresh"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        server.get("/v1/auth", Some(&access2)).await.0,
        StatusCode::OK
    );

    // Presenting the old refresh token again kills the whole session.
    let (status, body) = server
        .post("/v1/auth/refresh", None, json!({"refresh": refresh}))
        .await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) = server
        .post("/v1/auth/refresh", None, json!({"refresh": refresh2}))
        .await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) = server.get("/v1/auth", Some(&access2)).await;
    assert_error(status, &body, 401, "unauthenticated");
    assert_eq!(
        server.get("/v1/auth", Some(&access)).await.0,
        StatusCode::UNAUTHORIZED
    );

    // A new session; sign-out ends it and its tokens.
    let (_, body) = server.sign_in(&email, "password-1").await;
    let (_, access3, refresh3) = account(&body);
    let (status, body) = server
        .call("DELETE", "/v1/auth/sign-out", Some(&access3), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"], json!(null));
    let (status, body) = server.get("/v1/auth", Some(&access3)).await;
    assert_error(status, &body, 401, "unauthenticated");
    // Also where the handler works from the caller's row, read with the session check.
    let (status, body) = server.get("/v1/users", Some(&access3)).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) = server
        .post("/v1/auth/refresh", None, json!({"refresh": refresh3}))
        .await;
    assert_error(status, &body, 401, "unauthenticated");
}

/// The 6-digit code of the newest mail to `to` in the mail dir.
fn code_from_mail(db: &TestDb, to: &str) -> String {
    let mut mails: Vec<_> = std::fs::read_dir(db.mail_dir())
        .expect("mail dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| (e.metadata().and_then(|m| m.modified()).ok(), e.path()))
        .collect();
    mails.sort();
    let text = mails
        .iter()
        .rev()
        .map(|(_, p)| std::fs::read_to_string(p).expect("read .eml"))
        .find(|t| t.contains(to))
        .unwrap_or_else(|| panic!("no mail to {to}"));
    let marker = "code to ";
    let after = &text[text.find(marker).expect("code line")..];
    let digits: String = after
        .split(": ")
        .nth(1)
        .expect("code after colon")
        .chars()
        .take(6)
        .collect();
    assert!(digits.chars().all(|c| c.is_ascii_digit()), "{digits}");
    digits
}

async fn otp_verifies_email_and_resets_password(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let email = unique_email("otp");
    let (_, access, _) = server.sign_up(&email, "first-password", "volunteer").await;

    // Unknown emails get the same 200 and no mail.
    let (status, body) = server
        .post(
            "/v1/otp",
            None,
            json!({"email": unique_email("ghost"), "purpose": "verify-email"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!db.mail_dir().exists() || std::fs::read_dir(db.mail_dir()).unwrap().count() == 0);

    let (status, _) = server
        .post(
            "/v1/otp",
            None,
            json!({"email": email, "purpose": "verify-email"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let code = code_from_mail(&db, &email);

    // A wrong code counts a try.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status, body) = server
        .post(
            "/v1/otp/verify",
            None,
            json!({"email": email, "code": wrong, "purpose": "verify-email"}),
        )
        .await;
    assert_error(status, &body, 422, "invalid_code");
    assert!(
        body["message"].as_str().unwrap().contains("4 tries left"),
        "{body}"
    );

    let (status, body) = server
        .post(
            "/v1/otp/verify",
            None,
            json!({"email": email, "code": code, "purpose": "verify-email"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"], json!({"verified": true}));
    let (_, me) = server.get("/v1/auth", Some(&access)).await;
    // A volunteer's basic step also needs a complete profile: email alone is "in-progress".
    assert_eq!(
        me["data"]["user"]["verification"]["basic"]["status"],
        json!("in-progress")
    );
    // Single use.
    let (status, body) = server
        .post(
            "/v1/otp/verify",
            None,
            json!({"email": email, "code": code, "purpose": "verify-email"}),
        )
        .await;
    assert_error(status, &body, 422, "invalid_code");

    // Reset the password with a reset code: checking it first does not use it up.
    let (status, _) = server
        .post(
            "/v1/otp",
            None,
            json!({"email": email, "purpose": "reset-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let code = code_from_mail(&db, &email);
    let (status, body) = server
        .post(
            "/v1/otp/verify",
            None,
            json!({"email": email, "code": code, "purpose": "reset-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .post(
            "/v1/auth/reset-password",
            None,
            json!({"email": email, "code": code, "newPassword": "second-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Old password fails, new one works, every old session ended.
    let (status, body) = server.sign_in(&email, "first-password").await;
    assert_error(status, &body, 401, "unauthenticated");
    assert_eq!(
        server.sign_in(&email, "second-password").await.0,
        StatusCode::OK
    );
    assert_eq!(
        server.get("/v1/auth", Some(&access)).await.0,
        StatusCode::UNAUTHORIZED
    );
    // The reset code was used up.
    let (status, body) = server
        .post(
            "/v1/auth/reset-password",
            None,
            json!({"email": email, "code": code, "newPassword": "third-password"}),
        )
        .await;
    assert_error(status, &body, 422, "invalid_code");
}

async fn change_password_ends_other_sessions(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let email = unique_email("pw");
    let (user_id, first, _) = server.sign_up(&email, "password-one", "senior").await;
    let (_, body) = server.sign_in(&email, "password-one").await;
    let (_, second, _) = account(&body);

    let path = format!("/v1/user/{user_id}/password");
    let (status, body) = server
        .call(
            "PUT",
            &path,
            Some(&first),
            Some(json!({"oldPassword": "wrong-one", "newPassword": "password-two"})),
        )
        .await;
    assert_error(status, &body, 422, "wrong_password");
    let (status, body) = server
        .call(
            "PUT",
            &path,
            Some(&first),
            Some(json!({"oldPassword": "password-one", "newPassword": "short"})),
        )
        .await;
    assert_error(status, &body, 400, "invalid_input");
    assert!(body["details"]["newPassword"].is_string(), "{body}");
    let (status, body) = server
        .call(
            "PUT",
            &path,
            Some(&first),
            Some(json!({"oldPassword": "password-one", "newPassword": "password-two"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(server.get("/v1/auth", Some(&first)).await.0, StatusCode::OK);
    assert_eq!(
        server.get("/v1/auth", Some(&second)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        server.sign_in(&email, "password-one").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        server.sign_in(&email, "password-two").await.0,
        StatusCode::OK
    );

    // Someone else's id is 403.
    let (other_id, _, _) = server
        .sign_up(&unique_email("x"), "password-x", "senior")
        .await;
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{other_id}/password"),
            Some(&first),
            Some(json!({"oldPassword": "password-x", "newPassword": "password-y"})),
        )
        .await;
    assert_error(status, &body, 403, "forbidden");
}

async fn sign_in_is_rate_limited(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let email = unique_email("brute");
    server.sign_up(&email, "password-1", "senior").await;
    let mut limited = None;
    for _ in 0..12 {
        let response = server
            .http
            .post(format!("{}/v1/auth/sign-in", server.base))
            .json(&json!({"email": email, "password": "guess-guess"}))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body: serde_json::Value = response.json().await.unwrap();
            limited = Some((retry_after, body));
            break;
        }
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let (retry_after, body) = limited.expect("the 11th attempt is refused");
    assert!(retry_after >= 1);
    assert_error(StatusCode::TOO_MANY_REQUESTS, &body, 429, "rate_limited");
    // Even the right password waits.
    assert_eq!(
        server.sign_in(&email, "password-1").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn one_account_per_email_under_concurrency(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = std::sync::Arc::new(Server::start(&db).await);
    let email = unique_email("race");
    let attempts = (0..8).map(|i| {
        let server = server.clone();
        let email = email.clone();
        tokio::spawn(async move {
            server
                .post(
                    "/v1/auth/sign-up",
                    None,
                    json!({"email": email, "password": "password-1", "name": format!("R{i}"), "type": "senior"}),
                )
                .await
                .0
        })
    });
    let mut created = 0;
    let mut conflicts = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => conflicts += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((created, conflicts), (1, 7));
}

both_stores!(otp_requests_are_rate_limited_per_email);

async fn otp_requests_are_rate_limited_per_email(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let email = unique_email("spam");
    server.sign_up(&email, "password-1", "senior").await;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let (status, body) = server
            .post(
                "/v1/otp",
                None,
                json!({"email": email, "purpose": "verify-email"}),
            )
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_error(status, &body, 429, "rate_limited");
        }
        statuses.push(status);
    }
    assert_eq!(&statuses[..5], &[StatusCode::OK; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    // Another email is not affected.
    let (status, _) = server
        .post(
            "/v1/otp",
            None,
            json!({"email": unique_email("calm"), "purpose": "verify-email"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}
