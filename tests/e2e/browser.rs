//! The sandbox checkout page driven in a real browser: headless Chromium through ChromeDriver
//! (Debian's `chromium` and `chromium-driver`, installed by `.ci/run`), over the W3C WebDriver
//! protocol. The browser loads the page, clicks Pay, and the coins arrive.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::{Backend, TestDb};
use crate::ledger::{balance, ledger_server, open_top_up, transaction, user};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let mut driver = Driver {
            child,
            base,
            http,
            session: String::new(),
        };
        for _ in 0..100 {
            if driver
                .http
                .get(format!("{}/status", driver.base))
                .send()
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            },
        }}});
        let answer = driver.call("POST", "/session", capabilities).await;
        driver.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_string();
        driver
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, value) = self.try_call(method, path, body).await;
        assert_eq!(status, StatusCode::OK, "WebDriver {path}: {value}");
        value["value"].clone()
    }

    async fn try_call(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.expect("webdriver");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    async fn session_call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    async fn open(&self, url: &str) {
        self.session_call("POST", "/url", json!({ "url": url }))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .session_call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.session_call("POST", &format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn attribute(&self, css: &str, name: &str) -> Value {
        let element = self.find(css).await;
        self.session_call(
            "GET",
            &format!("/element/{element}/attribute/{name}"),
            json!(null),
        )
        .await
    }

    /// The attribute, or `None` while the page is being replaced (the element found a moment
    /// ago is gone: WebDriver's "stale element reference" or "no such element").
    async fn attribute_while_loading(&self, css: &str, name: &str) -> Option<Value> {
        let session = format!("/session/{}", self.session);
        let (status, found) = self
            .try_call(
                "POST",
                &format!("{session}/element"),
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let element = found["value"][ELEMENT]
            .as_str()
            .filter(|_| status == StatusCode::OK)?;
        let path = format!("{session}/element/{element}/attribute/{name}");
        let (status, value) = self.try_call("GET", &path, json!(null)).await;
        (status == StatusCode::OK).then(|| value["value"].clone())
    }

    async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        let text = self
            .session_call("GET", &format!("/element/{element}/text"), json!(null))
            .await;
        text.as_str().unwrap_or_default().to_string()
    }
}

/// Chromium is needed; CI installs it. Elsewhere the test says loudly that it did not run.
fn browser_available() -> bool {
    let present =
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists();
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium and chromium-driver"
        );
        eprintln!("NOT RUN: install Debian's chromium and chromium-driver for the browser test");
    }
    present
}

both_stores!(paying_on_the_sandbox_checkout_page_in_chromium_credits_the_coins);

async fn paying_on_the_sandbox_checkout_page_in_chromium_credits_the_coins(backend: Backend) {
    if !browser_available() {
        return;
    }
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[]).await;
    let (_, token) = user(&server, "senior").await;
    let (tx, _, url) = open_top_up(&server, &token, 1000).await;

    let driver = Driver::start().await;
    driver.open(&url).await;
    assert_eq!(driver.text("#amount").await, "$10.00");
    assert_eq!(driver.attribute("#status", "data-status").await, "pending");
    driver.click("#pay").await;
    let mut status = Value::Null;
    for _ in 0..50 {
        // Pay submits a form: the next page replaces this one while we look.
        status = driver
            .attribute_while_loading("#status", "data-status")
            .await
            .unwrap_or(Value::Null);
        if status == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, "succeeded",
        "the page says the payment went through"
    );
    assert_eq!(driver.text("#title").await, "Payment received");
    assert_eq!(balance(&server, &token).await, 1000);
    assert_eq!(
        transaction(&server, &token, &tx).await["status"],
        "succeeded"
    );

    // Back on the session's page, it is closed and offers no Pay button.
    driver.open(&url).await;
    assert_eq!(
        driver.attribute("#status", "data-status").await,
        "succeeded"
    );
    let _ = driver.session_call("DELETE", "", json!(null)).await;
    server.stop().await;
}
