//! Section 10 files and the verification flow that needs them.

use std::io::Cursor;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::{assert_error, unique_email, Backend, Server, TestDb};

both_stores!(
    pictures_upload_with_thumbnails_and_limits,
    a_volunteer_becomes_verified_and_findable
);

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub async fn signed(server: &Server, token: &str, items: Value) -> (StatusCode, Value) {
    server
        .post(
            "/v1/signed/urls",
            Some(token),
            json!({"type": "user", "items": items}),
        )
        .await
}

pub async fn put_bytes(
    server: &Server,
    url: &str,
    mime: &str,
    bytes: Vec<u8>,
) -> (StatusCode, Value) {
    let response = server
        .http
        .put(url)
        .header("content-type", mime)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn pictures_upload_with_thumbnails_and_limits(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (id, token, _) = server
        .sign_up(&unique_email("pic"), "password-1", "senior")
        .await;
    let (status, body) = signed(
        &server,
        &token,
        json!({
            "me.png": {"name": "me.png", "mimeType": "image/png", "objectType": "picture"},
            "big.png": {"name": "big.png", "mimeType": "image/png", "objectType": "picture"}
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["fileDirPath"], json!(format!("users/{id}")));
    let upload = body["data"]["items"]["me.png"]["uploadUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let file_url = body["data"]["items"]["me.png"]["fileUrl"]
        .as_str()
        .unwrap()
        .to_string();

    // Forged signature, wrong declared type, content that is not a PNG.
    let forged = format!("{}0", upload);
    let (status, body) = put_bytes(&server, &forged, "image/png", png(10, 10)).await;
    assert_error(status, &body, 403, "invalid_signature");
    let (status, body) = put_bytes(&server, &upload, "image/jpeg", png(10, 10)).await;
    assert_error(status, &body, 415, "wrong_mime_type");
    let (status, body) = put_bytes(
        &server,
        &upload,
        "image/png",
        b"GIF89a not a png at all".to_vec(),
    )
    .await;
    assert_error(status, &body, 415, "wrong_mime_type");
    // Not uploaded yet: nothing to read.
    assert_eq!(
        server.http.get(&file_url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    let original = png(600, 400);
    let (status, body) = put_bytes(&server, &upload, "image/png", original.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["size"], json!(original.len()));
    let read = server.http.get(&file_url).send().await.unwrap();
    assert_eq!(read.headers()["content-type"], "image/png");
    assert_eq!(read.bytes().await.unwrap().to_vec(), original);
    // The upload URL cannot be used twice, and the key cannot be handed out again.
    let (status, _) = put_bytes(&server, &upload, "image/png", png(5, 5)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = signed(
        &server,
        &token,
        json!({"me.png": {"mimeType": "image/png", "objectType": "picture"}}),
    )
    .await;
    assert_error(status, &body, 409, "already_exists");

    // The profile shows it, with a thumbnail of at most 256 px.
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{id}"),
            Some(&token),
            Some(json!({"picture": "me.png"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let picture = &body["data"]["picture"];
    assert_eq!(picture["org"]["mimeType"], json!("image/png"));
    let sm = picture["sm"]["url"].as_str().expect("thumbnail url");
    let thumb = server
        .http
        .get(sm)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let thumb = image::load_from_memory(&thumb).expect("a picture");
    assert!(
        thumb.width() <= 256 && thumb.height() <= 256,
        "{}x{}",
        thumb.width(),
        thumb.height()
    );
    assert_eq!((thumb.width(), thumb.height()), (256, 171));
    let (_, files) = server.get("/v1/signed/urls/files", Some(&token)).await;
    assert_eq!(files["data"][0]["key"], json!("me.png"));
    assert_eq!(files["data"][0]["objectType"], json!("picture"));
    assert!(files["data"][0]["file"]["org"]["url"]
        .as_str()
        .unwrap()
        .starts_with("http"));

    // Oversized: cut off while streaming (no Content-Length), 413, nothing stored.
    let big_url = {
        let (_, body) = signed(
            &server,
            &token,
            json!({"huge.png": {"mimeType": "image/png", "objectType": "picture"}}),
        )
        .await;
        body["data"]["items"]["huge.png"]["uploadUrl"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(png(10, 10))];
    chunks.extend((0..11).map(|_| Ok(vec![0u8; 1024 * 1024])));
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = server
        .http
        .put(&big_url)
        .header("content-type", "image/png")
        .body(body)
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    let (_, files) = server.get("/v1/signed/urls/files", Some(&token)).await;
    assert_eq!(files["data"].as_array().unwrap().len(), 1);
    // An expired (but genuinely signed) URL.
    let secret: String = {
        let pool = db.connect().await;
        talkamie::store::secret(&pool, "files").await.unwrap()
    };
    let base = server.base.clone();
    let store = talkamie::providers::storage::LocalFiles::new(
        db.data_dir.path().join("files"),
        base,
        secret.into_bytes(),
    );
    let expired = store.upload_url_until(
        &id,
        "big.png",
        "image/png",
        10 * 1024 * 1024,
        chrono::Utc::now().timestamp() - 1,
    );
    let (status, body) = put_bytes(&server, &expired, "image/png", png(10, 10)).await;
    assert_error(status, &body, 403, "invalid_signature");

    // Bad requests for URLs.
    for (items, field) in [
        (
            json!({"x.mp4": {"mimeType": "video/mp4", "objectType": "picture"}}),
            "items.x.mp4",
        ),
        (
            json!({"../up": {"mimeType": "image/png", "objectType": "picture"}}),
            "items.../up",
        ),
        (
            json!({"c.pdf": {"mimeType": "application/pdf", "objectType": "diploma"}}),
            "items.c.pdf",
        ),
    ] {
        let (status, body) = signed(&server, &token, items).await;
        assert_error(status, &body, 400, "invalid_input");
        assert!(body["details"][field].is_string(), "{body}");
    }
    let (status, body) = server
        .post(
            "/v1/signed/urls",
            Some(&token),
            json!({"fileDirPath": "users/someone-else", "type": "user",
            "items": {"a.png": {"mimeType": "image/png", "objectType": "picture"}}}),
        )
        .await;
    assert_error(status, &body, 403, "forbidden");
    // A key of another user (or another object type) cannot go into a profile.
    let (other, other_token, _) = server
        .sign_up(&unique_email("other"), "password-1", "senior")
        .await;
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{other}"),
            Some(&other_token),
            Some(json!({"picture": "me.png"})),
        )
        .await;
    assert_error(status, &body, 422, "unknown_file");
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{id}"),
            Some(&token),
            Some(json!({"certificate": "me.png"})),
        )
        .await;
    assert_error(status, &body, 422, "unknown_file");
}

async fn a_volunteer_becomes_verified_and_findable(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (_, admin) = server.admin(&db).await;
    let email = unique_email("amie");
    let (id, token, _) = server.sign_up(&email, "password-1", "volunteer").await;
    let (_, senior, _) = server
        .sign_up(&unique_email("senior"), "password-1", "senior")
        .await;

    // Certificate upload (a PDF).
    let (_, body) = signed(
        &server,
        &token,
        json!({"cert.pdf": {"mimeType": "application/pdf", "objectType": "certificate"}}),
    )
    .await;
    let url = body["data"]["items"]["cert.pdf"]["uploadUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = put_bytes(
        &server,
        &url,
        "application/pdf",
        b"%PDF-1.4\n% a tiny certificate\n".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{id}"),
            Some(&token),
            Some(json!({
                "name": "Amie Carter", "dob": "1990-02-03", "specialization": "geriatric-nursing",
                "licenseId": "GN-1", "certificate": "cert.pdf", "certificateState": "CA"
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["certificate"]["state"], json!("CA"));
    assert_eq!(
        body["data"]["certificate"]["file"]["org"]["mimeType"],
        json!("application/pdf")
    );
    assert_eq!(
        body["data"]["verification"]["basic"]["status"],
        json!("in-progress")
    );

    // Email code.
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
    let (_, me) = server.get("/v1/auth", Some(&token)).await;
    assert_eq!(
        me["data"]["user"]["verification"]["basic"]["status"],
        json!("complete")
    );
    assert_eq!(me["data"]["user"]["verification"]["verified"], json!(false));
    // Not findable by seniors yet.
    let (_, found) = server.get("/v1/users?type=volunteer", Some(&senior)).await;
    assert_eq!(found["data"], json!([]));

    server
        .post(
            &format!("/v1/admin/user/{id}/verification"),
            Some(&admin),
            json!({"step": "admin", "status": "complete"}),
        )
        .await;
    let (status, body) = server.post("/v1/verification/background", Some(&token), json!({"firstName": "Amie",
        "lastName": "Carter", "zipCode": "94103", "workLocations": [{"countryCode": "US", "stateCode": "CA", "city": "San Francisco"}]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["verification"]["verified"], json!(true));
    let (_, found) = server.get("/v1/users?type=volunteer", Some(&senior)).await;
    assert_eq!(found["data"][0]["id"], json!(id));
    assert_eq!(found["data"][0]["verification"], json!({"verified": true}));

    // Deleting the account deletes the files.
    let user_dir = db.data_dir.path().join("files").join(&id);
    assert!(user_dir.exists());
    let (status, _) = server
        .call("DELETE", &format!("/v1/user/{id}"), Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!user_dir.exists(), "files removed");
    let (_, found) = server.get("/v1/users?type=volunteer", Some(&senior)).await;
    assert_eq!(found["data"], json!([]));
}
