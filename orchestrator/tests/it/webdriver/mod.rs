//! The few W3C WebDriver commands the browser test uses, over hyper-util.
//!
//! Written here instead of depending on a WebDriver crate: fantoccini pulled in
//! cookie, time and url, whose features (syn "fold", time "macros", ...) made
//! `cargo test --workspace` resolve the shared dependencies differently from
//! `cargo build --workspace`, so CI compiled the whole graph twice (11 minutes
//! and 0.8 GB on the 2-core machine). These commands need nothing the services
//! do not already build.

use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// The key under which WebDriver returns an element reference (W3C spec).
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A failed command: the transport's error or the driver's `error` and
/// `message`.
pub struct WebDriverError(String);

impl fmt::Debug for WebDriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Result<T> = std::result::Result<T, WebDriverError>;

/// One browser session on a running chromedriver.
pub struct Session {
    http: Client<HttpConnector, Full<Bytes>>,
    /// `http://driver/session/ID`
    url: String,
}

/// An element found in the session's current page.
pub struct Element<'s> {
    session: &'s Session,
    id: String,
}

async fn command(
    http: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value> {
    let what = format!("{method} {url}");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| WebDriverError(format!("{what}: {e}")))?;
    let response = http
        .request(request)
        .await
        .map_err(|e| WebDriverError(format!("{what}: {e}")))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| WebDriverError(format!("{what}: reading the reply: {e}")))?
        .to_bytes();
    let reply: Value = serde_json::from_slice(&bytes).map_err(|e| {
        WebDriverError(format!(
            "{what}: {status}, not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        ))
    })?;
    let value = reply.get("value").cloned().unwrap_or(Value::Null);
    if status.is_success() {
        Ok(value)
    } else {
        Err(WebDriverError(format!(
            "{what}: {status} {}: {}",
            value["error"].as_str().unwrap_or("unknown error"),
            value["message"].as_str().unwrap_or_default()
        )))
    }
}

impl Session {
    /// Starts a browser through the driver at `driver_url` with the given
    /// capabilities (`alwaysMatch`).
    pub async fn new(driver_url: &str, capabilities: Value) -> Result<Self> {
        let http = Client::builder(TokioExecutor::new()).build_http();
        let created = command(
            &http,
            Method::POST,
            &format!("{driver_url}/session"),
            Some(json!({ "capabilities": { "alwaysMatch": capabilities } })),
        )
        .await?;
        let id = created["sessionId"]
            .as_str()
            .ok_or_else(|| WebDriverError(format!("no sessionId in {created}")))?;
        Ok(Self {
            http,
            url: format!("{driver_url}/session/{id}"),
        })
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}{path}", self.url);
        command(&self.http, Method::POST, &url, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.url);
        command(&self.http, Method::GET, &url, None).await
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    /// Runs `script` as a function body in the page and returns its value.
    pub async fn execute(&self, script: &str) -> Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    pub async fn find_id(&self, id: &str) -> Result<Element<'_>> {
        let found = self
            .post(
                "/element",
                json!({ "using": "css selector", "value": format!("#{id}") }),
            )
            .await?;
        let reference = found[ELEMENT_KEY]
            .as_str()
            .ok_or_else(|| WebDriverError(format!("#{id}: no element reference in {found}")))?;
        Ok(Element {
            session: self,
            id: reference.to_string(),
        })
    }

    /// Finds `#id` and clicks it.
    pub async fn click_id(&self, id: &str) -> Result<()> {
        self.find_id(id).await?.click().await
    }

    /// The page as a PNG.
    pub async fn screenshot(&self) -> Result<Vec<u8>> {
        let encoded = self.get("/screenshot").await?;
        let encoded = encoded
            .as_str()
            .ok_or_else(|| WebDriverError("screenshot: not a string".to_string()))?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| WebDriverError(format!("screenshot: {e}")))
    }

    /// Ends the session, which closes the browser.
    pub async fn close(self) -> Result<()> {
        command(&self.http, Method::DELETE, &self.url, None)
            .await
            .map(drop)
    }
}

impl Element<'_> {
    fn path(&self, command: &str) -> String {
        format!("/element/{}/{command}", self.id)
    }

    pub async fn click(&self) -> Result<()> {
        self.session
            .post(&self.path("click"), json!({}))
            .await
            .map(drop)
    }

    pub async fn clear(&self) -> Result<()> {
        self.session
            .post(&self.path("clear"), json!({}))
            .await
            .map(drop)
    }

    pub async fn send_keys(&self, text: &str) -> Result<()> {
        self.session
            .post(&self.path("value"), json!({ "text": text }))
            .await
            .map(drop)
    }

    pub async fn text(&self) -> Result<String> {
        let text = self.session.get(&self.path("text")).await?;
        Ok(text.as_str().unwrap_or_default().to_string())
    }
}
