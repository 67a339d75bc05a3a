//! The S3-compatible store (`TALKAMIE_STORAGE=s3`) against a real local S3 server (moto, from
//! PyPI; `.ci/run` installs it). Presigned upload, the server's check on first use, the
//! thumbnail, the size rule and deletion.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::{assert_error, unique_email, Backend, Server, TestDb};

both_stores!(files_go_to_an_s3_bucket);

struct S3Server {
    child: Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts moto's S3 server on a free port; `None` (skip) only when it is not installed and
/// this is not CI.
async fn start_s3() -> Option<S3Server> {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spawned = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(error) if std::env::var("CI").is_err() => {
            eprintln!("moto_server not found ({error}): skipping the S3 test (pip install 'moto[server]')");
            return None;
        }
        Err(error) => panic!("moto_server is required in CI: {error}"),
    };
    let server = S3Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if reqwest::get(&server.endpoint).await.is_ok() {
            return Some(server);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto_server did not start");
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img =
        image::RgbImage::from_fn(width, height, |x, _| image::Rgb([(x % 256) as u8, 10, 200]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn files_go_to_an_s3_bucket(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let Some(s3) = start_s3().await else { return };
    let server = Server::start_with(
        &db,
        &[
            ("TALKAMIE_STORAGE", "s3"),
            ("S3_ENDPOINT", &s3.endpoint),
            ("S3_BUCKET", "talkamie-test"),
            ("S3_ACCESS_KEY_ID", "test"),
            ("S3_SECRET_ACCESS_KEY", "test"),
        ],
    )
    .await;
    let (id, token, _) = server
        .sign_up(&unique_email("s3"), "password-1", "senior")
        .await;
    let (status, body) = server
        .post(
            "/v1/signed/urls",
            Some(&token),
            json!({"type": "user", "items": {
                "me.png": {"mimeType": "image/png", "objectType": "picture"},
                "big.png": {"mimeType": "image/png", "objectType": "picture"},
                "wrong.png": {"mimeType": "image/png", "objectType": "picture"}
            }}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let item = |k: &str| body["data"]["items"][k].clone();
    let upload = item("me.png")["uploadUrl"].as_str().unwrap().to_string();
    assert!(
        upload.starts_with(&s3.endpoint) && upload.contains("X-Amz-Signature"),
        "{upload}"
    );

    // The presigned PUT goes straight to the bucket (which, on real S3, also refuses another
    // Content-Type than the signed one; the local test server does not check signatures).
    let original = png(512, 512);
    let put = server
        .http
        .put(&upload)
        .header("content-type", "image/png")
        .body(original.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());

    // First use: checked, thumbnailed, shown with presigned read URLs.
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{id}"),
            Some(&token),
            Some(json!({"picture": "me.png"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let org: Value = body["data"]["picture"]["org"].clone();
    let read = server
        .http
        .get(org["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(read.bytes().await.unwrap().to_vec(), original);
    let sm = body["data"]["picture"]["sm"]["url"]
        .as_str()
        .expect("thumbnail")
        .to_string();
    let thumb = image::load_from_memory(
        &server
            .http
            .get(&sm)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(thumb.width() <= 256 && thumb.height() <= 256);

    // Another type than declared: the server refuses it on first use and deletes it.
    let wrong_url = item("wrong.png")["uploadUrl"].as_str().unwrap().to_string();
    let put = server
        .http
        .put(&wrong_url)
        .header("content-type", "image/jpeg")
        .body(png(4, 4))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{id}"),
            Some(&token),
            Some(json!({"picture": "wrong.png"})),
        )
        .await;
    assert_error(status, &body, 422, "unknown_file");

    // Too big for a picture: the bucket took it, the server refuses it and deletes it.
    let big_url = item("big.png")["uploadUrl"].as_str().unwrap().to_string();
    let mut big = png(8, 8);
    big.extend(vec![0u8; 10 * 1024 * 1024 + 10]);
    let put = server
        .http
        .put(&big_url)
        .header("content-type", "image/png")
        .body(big)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{id}"),
            Some(&token),
            Some(json!({"picture": "big.png"})),
        )
        .await;
    assert_error(status, &body, 422, "unknown_file");
    let (_, files) = server.get("/v1/signed/urls/files", Some(&token)).await;
    assert_eq!(files["data"].as_array().unwrap().len(), 1);

    // Deleting the account deletes the objects.
    let (status, _) = server
        .call("DELETE", &format!("/v1/user/{id}"), Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let gone = server
        .http
        .get(org["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}
