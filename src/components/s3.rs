//! `s3`: one operation on an S3 bucket (AWS or an S3-compatible server), as FlowMason's `s3` connector.
//!
//! Input: `operation` (`upload`, `download`, `list`, `delete`, `delete_many`, `copy`, `presigned_url`,
//! `head`); `bucket` (required), `key`, `region_name` (`us-east-1`); credentials `aws_access_key_id`,
//! `aws_secret_access_key`, `aws_session_token`, only as `{{env.NAME}}` (none: unsigned requests, for
//! public buckets); `content` (text), `content_type`, `metadata` (strings, stored as `x-amz-meta-*`),
//! `acl` (`private`); `prefix`, `max_keys` (1000), `delimiter`; `keys` (`delete_many`); `source_bucket`,
//! `source_key` (`copy`); `expires_in` (3600), `http_method` (`GET`, `presigned_url`). Our addition:
//! `endpoint_url` for an S3-compatible server (addressed path-style, `{endpoint}/{bucket}/{key}`);
//! without it, `https://{bucket}.s3.{region}.amazonaws.com`.
//!
//! Output: FlowMason's shape: `{success, operation, content, content_length, content_type, etag, objects,
//! object_count, common_prefixes, deleted_count, presigned_url, last_modified, object_metadata, metadata,
//! error}`; `download` gives the object as text when it is UTF-8, else base64 with
//! `metadata.content_encoding: base64`; times as Python prints them (`2026-01-02 03:04:05+00:00`).
//!
//! Requests are signed with AWS Signature Version 4 here (HMAC-SHA256 over the canonical request), with
//! the `hmac`/`sha2` crates already in the tree, rather than the AWS SDK's crates (dozens of crates to
//! build for what is a hundred lines). Errors: no answer, 5xx, 429 and S3's `SlowDown` are `transient`;
//! other 4xx (`NoSuchKey`, `NoSuchBucket`, `AccessDenied`, ...) are `client`, with S3's code and message.

use std::sync::{Arc, Once, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use hmac::{KeyInit as _, Mac as _};
use reqwest::{Client, Method, Url};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::connector::{cancellable, check_credential, operation, output, required_str};
use super::{config_object, input_object, is_templated, opt_str, type_name};

/// The component type name.
pub const NAME: &str = "s3";

const OPERATIONS: &[&str] = &[
    "upload",
    "download",
    "list",
    "delete",
    "delete_many",
    "copy",
    "presigned_url",
    "head",
];

/// Fields of FlowMason's `S3Connector.Output` besides `success`, `operation`, `metadata`, `error`.
const FIELDS: &[&str] = &[
    "content",
    "content_length",
    "content_type",
    "etag",
    "objects",
    "object_count",
    "common_prefixes",
    "deleted_count",
    "presigned_url",
    "last_modified",
    "object_metadata",
];

/// FlowMason's `timeout_seconds` for one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// See the module docs.
#[derive(Clone, Default)]
pub struct S3 {
    client: Arc<OnceLock<Client>>,
}

impl S3 {
    pub fn new() -> Self {
        Self::default()
    }

    fn client(&self) -> Result<Client, ComponentError> {
        static PROVIDER: Once = Once::new();
        PROVIDER.call_once(|| {
            // Fails only when a provider is already installed, which is what we want.
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let client = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| {
                ComponentError::internal(format!("{NAME}: cannot build an HTTP client: {e}"))
            })?;
        Ok(self.client.get_or_init(|| client).clone())
    }
}

/// Access key, secret and optional session token.
#[derive(Clone)]
struct Credentials {
    access_key: String,
    secret_key: String,
    token: Option<String>,
}

struct Target {
    endpoint: Option<Url>,
    region: String,
    credentials: Option<Credentials>,
}

impl Target {
    /// The URL of `key` in `bucket` (or of the bucket when `key` is empty).
    fn url(&self, bucket: &str, key: &str) -> Result<Url, ComponentError> {
        let text = match &self.endpoint {
            Some(endpoint) => format!(
                "{}/{}/{}",
                endpoint.as_str().trim_end_matches('/'),
                encode(bucket, false),
                encode(key, false)
            ),
            None => format!(
                "https://{bucket}.s3.{}.amazonaws.com/{}",
                self.region,
                encode(key, false)
            ),
        };
        Url::parse(&text).map_err(|e| {
            ComponentError::config(format!(
                "{NAME}: bucket {bucket:?} and key {key:?} make no URL: {e}"
            ))
        })
    }
}

fn target(map: &Map<String, Value>) -> Result<Target, ComponentError> {
    let endpoint = match opt_str(NAME, map, "endpoint_url")? {
        None | Some("") => None,
        Some(text) => {
            let url = Url::parse(text).map_err(|e| {
                ComponentError::config(format!("{NAME}: `endpoint_url` {text:?} is not a URL: {e}"))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ComponentError::config(format!(
                    "{NAME}: `endpoint_url` {text:?} must be http or https"
                )));
            }
            Some(url)
        }
    };
    let region = opt_str(NAME, map, "region_name")?
        .unwrap_or("us-east-1")
        .to_string();
    let access = opt_str(NAME, map, "aws_access_key_id")?.filter(|s| !s.is_empty());
    let secret = opt_str(NAME, map, "aws_secret_access_key")?.filter(|s| !s.is_empty());
    let credentials = match (access, secret) {
        (Some(a), Some(s)) => Some(Credentials {
            access_key: a.to_string(),
            secret_key: s.to_string(),
            token: opt_str(NAME, map, "aws_session_token")?
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        }),
        (None, None) => None,
        _ => {
            return Err(ComponentError::config(format!(
                "{NAME}: `aws_access_key_id` and `aws_secret_access_key` go together: set both or neither"
            )));
        }
    };
    Ok(Target {
        endpoint,
        region,
        credentials,
    })
}

fn check_fields(op: &str, map: &Map<String, Value>) -> Result<(), ComponentError> {
    required_str(NAME, map, "bucket", op)?;
    match op {
        "upload" => {
            required_str(NAME, map, "key", op)?;
            match map.get("content") {
                Some(Value::String(_)) => {}
                None | Some(Value::Null) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `content` is required for operation \"upload\""
                    )));
                }
                Some(other) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `content` must be text, got {}",
                        type_name(other)
                    )));
                }
            }
        }
        "download" | "delete" | "head" | "presigned_url" => {
            required_str(NAME, map, "key", op)?;
        }
        "copy" => {
            required_str(NAME, map, "key", op)?;
            if opt_str(NAME, map, "source_bucket")?.is_none_or(str::is_empty)
                || opt_str(NAME, map, "source_key")?.is_none_or(str::is_empty)
            {
                return Err(ComponentError::config(format!(
                    "{NAME}: `source_bucket` and `source_key` are required for operation \"copy\""
                )));
            }
        }
        "delete_many" => {
            let keys = super::opt_str_list(NAME, map, "keys")?;
            if keys.is_empty() {
                return Err(ComponentError::config(format!(
                    "{NAME}: `keys` is required for operation \"delete_many\""
                )));
            }
        }
        _ => {}
    }
    if let Some(Value::Object(meta)) = map.get("metadata")
        && let Some((k, v)) = meta.iter().find(|(_, v)| !v.is_string())
    {
        return Err(ComponentError::config(format!(
            "{NAME}: `metadata.{k}` must be a string, got {}",
            type_name(v)
        )));
    }
    if let Some(method) = opt_str(NAME, map, "http_method")?
        && !matches!(
            method.to_ascii_uppercase().as_str(),
            "GET" | "PUT" | "DELETE" | "HEAD"
        )
    {
        return Err(ComponentError::config(format!(
            "{NAME}: `http_method` must be GET, PUT, DELETE or HEAD, got {method:?}"
        )));
    }
    for (field, range) in [("max_keys", 1..=1000u64), ("expires_in", 1..=604_800)] {
        super::opt_int_in(NAME, map, field, range)?;
    }
    Ok(())
}

impl Component for S3 {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(map) = config_object(NAME, config)? else {
            return Ok(());
        };
        for (field, var) in [
            ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
            ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
            ("aws_session_token", "AWS_SESSION_TOKEN"),
        ] {
            check_credential(NAME, map, field, var)?;
        }
        if !map.contains_key("operation") || is_templated(&map["operation"]) {
            return Ok(());
        }
        let op = operation(NAME, map, OPERATIONS)?;
        if map.values().any(is_templated) {
            return Ok(());
        }
        check_fields(op, map)?;
        target(map).map(|_| ())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        let this = self.clone();
        Box::pin(async move {
            let map = input_object(NAME, input)?;
            let op = operation(NAME, &map, OPERATIONS)?.to_string();
            check_fields(&op, &map)?;
            let target = target(&map)?;
            let client = this.client()?;
            let started = Instant::now();
            let work = perform(&client, &target, &op, &map, started);
            cancellable(NAME, &ctx, work)
                .await
                .map(ComponentOutput::from)
        })
    }
}

struct Answer {
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// Sends one signed request; an error answer becomes a stage error with S3's code and message.
async fn send(
    client: &Client,
    target: &Target,
    method: Method,
    mut url: Url,
    query: &[(&str, String)],
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Result<Answer, ComponentError> {
    if !query.is_empty() {
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
    }
    let now = Utc::now();
    let payload_hash = hex::encode(Sha256::digest(&body));
    let mut all = headers;
    all.push(("x-amz-content-sha256".into(), payload_hash.clone()));
    all.push((
        "x-amz-date".into(),
        now.format("%Y%m%dT%H%M%SZ").to_string(),
    ));
    if let Some(credentials) = &target.credentials {
        if let Some(token) = &credentials.token {
            all.push(("x-amz-security-token".into(), token.clone()));
        }
        let authorization = authorization(
            credentials,
            &target.region,
            method.as_str(),
            &url,
            &all,
            &payload_hash,
            now,
        );
        all.push(("authorization".into(), authorization));
    }
    let shown = format!("{method} {}", url.path());
    let mut request = client.request(method, url).body(body);
    for (k, v) in &all {
        request = request.header(k.as_str(), v.as_str());
    }
    let response = request.send().await.map_err(|e| {
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        ComponentError::transient(format!("{NAME}: {shown}: no answer: {chain}"))
    })?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .map_err(|e| {
            ComponentError::transient(format!("{NAME}: {shown}: reading the answer: {e}"))
        })?
        .to_vec();
    if status.is_success() {
        return Ok(Answer { headers, body });
    }
    let text = String::from_utf8_lossy(&body);
    let (code, message) = roxmltree::Document::parse(&text)
        .ok()
        .map(|doc| {
            (
                child_text(doc.root_element(), "Code"),
                child_text(doc.root_element(), "Message"),
            )
        })
        .unwrap_or_default();
    let code = if code.is_empty() {
        status.to_string()
    } else {
        code
    };
    let detail = if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    };
    let message = format!("{NAME}: {shown}: {code}{detail}");
    let details = json!({"status": status.as_u16(), "code": code});
    if status.is_server_error()
        || status.as_u16() == 429
        || status.as_u16() == 408
        || code == "SlowDown"
    {
        Err(ComponentError::transient(message).with_details(details))
    } else {
        Err(ComponentError::client(message).with_details(details))
    }
}

fn child_text(node: roxmltree::Node<'_, '_>, name: &str) -> String {
    node.children()
        .find(|c| c.has_tag_name(name))
        .and_then(|c| c.text())
        .unwrap_or_default()
        .to_string()
}

async fn perform(
    client: &Client,
    target: &Target,
    op: &str,
    map: &Map<String, Value>,
    started: Instant,
) -> Result<Value, ComponentError> {
    let bucket = opt_str(NAME, map, "bucket")?
        .unwrap_or_default()
        .to_string();
    let key = opt_str(NAME, map, "key")?.unwrap_or_default().to_string();
    let mut set = Map::new();
    let mut metadata = Map::new();
    match op {
        "upload" => {
            let content = opt_str(NAME, map, "content")?
                .unwrap_or_default()
                .to_string();
            let mut headers = Vec::new();
            let content_type = opt_str(NAME, map, "content_type")?.map(str::to_string);
            if let Some(ct) = &content_type {
                headers.push(("content-type".to_string(), ct.clone()));
            }
            if let Some(Value::Object(meta)) = map.get("metadata") {
                for (k, v) in meta {
                    headers.push((
                        format!("x-amz-meta-{}", k.to_ascii_lowercase()),
                        v.as_str().unwrap_or_default().to_string(),
                    ));
                }
            }
            let acl = opt_str(NAME, map, "acl")?.unwrap_or("private").to_string();
            if !acl.is_empty() {
                headers.push(("x-amz-acl".to_string(), acl.clone()));
            }
            let length = content.chars().count();
            let answer = send(
                client,
                target,
                Method::PUT,
                target.url(&bucket, &key)?,
                &[],
                headers,
                content.into_bytes(),
            )
            .await?;
            set.insert("etag".into(), json!(etag(&answer)));
            set.insert("content_length".into(), json!(length));
            metadata.insert("key".into(), json!(key));
            metadata.insert("content_type".into(), json!(content_type));
            metadata.insert("acl".into(), json!(acl));
        }
        "download" => {
            let answer = send(
                client,
                target,
                Method::GET,
                target.url(&bucket, &key)?,
                &[],
                Vec::new(),
                Vec::new(),
            )
            .await?;
            head_fields(&answer, &mut set);
            let (content, encoding) = match String::from_utf8(answer.body) {
                Ok(text) => (text, None),
                Err(e) => (
                    base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                    Some("base64"),
                ),
            };
            set.insert("content".into(), Value::String(content));
            metadata.insert("key".into(), json!(key));
            if let Some(encoding) = encoding {
                metadata.insert("content_encoding".into(), json!(encoding));
            }
        }
        "head" => {
            let answer = send(
                client,
                target,
                Method::HEAD,
                target.url(&bucket, &key)?,
                &[],
                Vec::new(),
                Vec::new(),
            )
            .await?;
            head_fields(&answer, &mut set);
            metadata.insert("key".into(), json!(key));
        }
        "list" => {
            let max_keys = map.get("max_keys").and_then(Value::as_u64).unwrap_or(1000);
            let prefix = opt_str(NAME, map, "prefix")?
                .unwrap_or_default()
                .to_string();
            let mut query = vec![
                ("list-type", "2".to_string()),
                ("max-keys", max_keys.to_string()),
            ];
            if !prefix.is_empty() {
                query.push(("prefix", prefix.clone()));
            }
            if let Some(d) = opt_str(NAME, map, "delimiter")?.filter(|d| !d.is_empty()) {
                query.push(("delimiter", d.to_string()));
            }
            let answer = send(
                client,
                target,
                Method::GET,
                target.url(&bucket, "")?,
                &query,
                Vec::new(),
                Vec::new(),
            )
            .await?;
            let text = String::from_utf8_lossy(&answer.body).into_owned();
            let doc = roxmltree::Document::parse(&text).map_err(|e| {
                ComponentError::transient(format!("{NAME}: the list answer is not XML: {e}"))
            })?;
            let root = doc.root_element();
            let objects: Vec<Value> = root
                .children()
                .filter(|c| c.has_tag_name("Contents"))
                .map(|c| {
                    json!({
                        "key": child_text(c, "Key"),
                        "size": child_text(c, "Size").parse::<u64>().unwrap_or(0),
                        "last_modified": python_time(&child_text(c, "LastModified")),
                        "etag": child_text(c, "ETag").trim_matches('"'),
                        "storage_class": Some(child_text(c, "StorageClass")).filter(|s| !s.is_empty()).unwrap_or_else(|| "STANDARD".into()),
                    })
                })
                .collect();
            let prefixes: Vec<Value> = root
                .children()
                .filter(|c| c.has_tag_name("CommonPrefixes"))
                .map(|c| json!(child_text(c, "Prefix")))
                .collect();
            set.insert("object_count".into(), json!(objects.len()));
            set.insert("objects".into(), Value::Array(objects));
            set.insert("common_prefixes".into(), Value::Array(prefixes));
            metadata.insert("prefix".into(), json!(prefix));
            metadata.insert("max_keys".into(), json!(max_keys));
            metadata.insert(
                "is_truncated".into(),
                json!(child_text(root, "IsTruncated") == "true"),
            );
        }
        "delete" => {
            send(
                client,
                target,
                Method::DELETE,
                target.url(&bucket, &key)?,
                &[],
                Vec::new(),
                Vec::new(),
            )
            .await?;
            set.insert("deleted_count".into(), json!(1));
            metadata.insert("key".into(), json!(key));
        }
        "delete_many" => {
            let keys = super::opt_str_list(NAME, map, "keys")?;
            let mut xml = String::from("<Delete>");
            for k in &keys {
                xml.push_str("<Object><Key>");
                xml.push_str(&xml_escape(k));
                xml.push_str("</Key></Object>");
            }
            xml.push_str("</Delete>");
            let body = xml.into_bytes();
            let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
            let headers = vec![
                ("content-md5".to_string(), md5),
                ("content-type".to_string(), "application/xml".to_string()),
            ];
            let answer = send(
                client,
                target,
                Method::POST,
                target.url(&bucket, "")?,
                &[("delete", String::new())],
                headers,
                body,
            )
            .await?;
            let text = String::from_utf8_lossy(&answer.body).into_owned();
            let doc = roxmltree::Document::parse(&text).map_err(|e| {
                ComponentError::transient(format!("{NAME}: the delete answer is not XML: {e}"))
            })?;
            let root = doc.root_element();
            let deleted = root
                .children()
                .filter(|c| c.has_tag_name("Deleted"))
                .count();
            let errors: Vec<Value> = root
                .children()
                .filter(|c| c.has_tag_name("Error"))
                .map(|c| json!({"Key": child_text(c, "Key"), "Code": child_text(c, "Code"), "Message": child_text(c, "Message")}))
                .collect();
            set.insert("deleted_count".into(), json!(deleted));
            metadata.insert("keys".into(), json!(keys));
            metadata.insert("errors".into(), Value::Array(errors));
        }
        "copy" => {
            let source_bucket = opt_str(NAME, map, "source_bucket")?
                .unwrap_or_default()
                .to_string();
            let source_key = opt_str(NAME, map, "source_key")?
                .unwrap_or_default()
                .to_string();
            let source = format!(
                "/{}/{}",
                encode(&source_bucket, false),
                encode(&source_key, false)
            );
            let answer = send(
                client,
                target,
                Method::PUT,
                target.url(&bucket, &key)?,
                &[],
                vec![("x-amz-copy-source".to_string(), source)],
                Vec::new(),
            )
            .await?;
            let text = String::from_utf8_lossy(&answer.body).into_owned();
            let etag = roxmltree::Document::parse(&text)
                .map(|doc| {
                    child_text(doc.root_element(), "ETag")
                        .trim_matches('"')
                        .to_string()
                })
                .unwrap_or_default();
            set.insert("etag".into(), json!(etag));
            metadata.insert("source_bucket".into(), json!(source_bucket));
            metadata.insert("source_key".into(), json!(source_key));
            metadata.insert("destination_bucket".into(), json!(bucket));
            metadata.insert("destination_key".into(), json!(key));
        }
        _ => {
            let expires = map
                .get("expires_in")
                .and_then(Value::as_u64)
                .unwrap_or(3600);
            let method = opt_str(NAME, map, "http_method")?
                .unwrap_or("GET")
                .to_ascii_uppercase();
            let Some(credentials) = &target.credentials else {
                return Err(ComponentError::config(format!(
                    "{NAME}: presigned_url needs `aws_access_key_id` and `aws_secret_access_key` (from env)"
                )));
            };
            let url = presign(
                credentials,
                &target.region,
                &method,
                target.url(&bucket, &key)?,
                expires,
                Utc::now(),
            );
            set.insert("presigned_url".into(), json!(url.to_string()));
            metadata.insert("key".into(), json!(key));
            metadata.insert("expires_in".into(), json!(expires));
            metadata.insert("http_method".into(), json!(method));
        }
    }
    metadata.insert("bucket".into(), json!(bucket));
    metadata.insert("region".into(), json!(target.region));
    Ok(output(FIELDS, op, started, set, metadata))
}

fn etag(answer: &Answer) -> String {
    answer
        .header("etag")
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

/// `content_length`, `content_type`, `etag`, `last_modified`, `object_metadata` from a GET or HEAD.
fn head_fields(answer: &Answer, set: &mut Map<String, Value>) {
    set.insert(
        "content_length".into(),
        json!(
            answer
                .header("content-length")
                .and_then(|v| v.parse::<u64>().ok())
        ),
    );
    set.insert("content_type".into(), json!(answer.header("content-type")));
    set.insert("etag".into(), json!(etag(answer)));
    let modified = answer
        .header("last-modified")
        .and_then(|t| DateTime::parse_from_rfc2822(&t).ok())
        .map(|t| python_datetime(t.with_timezone(&Utc)));
    set.insert(
        "last_modified".into(),
        json!(modified.unwrap_or_else(|| "None".into())),
    );
    let meta: Map<String, Value> = answer
        .headers
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix("x-amz-meta-")?;
            Some((name.to_string(), json!(v.to_str().ok()?)))
        })
        .collect();
    set.insert("object_metadata".into(), Value::Object(meta));
}

/// Python's `str()` of a UTC datetime: `2026-01-02 03:04:05+00:00` (microseconds only when not zero).
fn python_datetime(t: DateTime<Utc>) -> String {
    if t.timestamp_subsec_micros() == 0 {
        t.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string()
    }
}

fn python_time(iso: &str) -> String {
    DateTime::parse_from_rfc3339(iso)
        .map(|t| python_datetime(t.with_timezone(&Utc)))
        .unwrap_or_else(|_| iso.to_string())
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

// ---------------------------------------------------------------------------------------------------------
// AWS Signature Version 4

/// URI-encodes as SigV4 wants: everything but `A-Za-z0-9-._~` (and `/` when `slash` is false, for paths).
fn encode(text: &str, slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if !slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn signing_key(secret: &str, date: &str, region: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date);
    let k_region = hmac(&k_date, region);
    let k_service = hmac(&k_region, "s3");
    hmac(&k_service, "aws4_request")
}

/// The canonical query string: pairs sorted, keys and values encoded.
fn canonical_query(url: &Url) -> String {
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (encode(&k, true), encode(&v, true)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn host(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

/// The `Authorization` header for a request with `headers` (host is added; every `x-amz-*` header and
/// `content-md5`/`content-type` are signed).
fn authorization(
    credentials: &Credentials,
    region: &str,
    method: &str,
    url: &Url,
    headers: &[(String, String)],
    payload_hash: &str,
    now: DateTime<Utc>,
) -> String {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| {
            k.starts_with("x-amz-") || k == "content-md5" || k == "content-type" || k == "range"
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    signed.push(("host".into(), host(url)));
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = signed
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        url.path(),
        canonical_query(url)
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let signature = hex::encode(hmac(
        &signing_key(&credentials.secret_key, &date, region),
        &to_sign,
    ));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key
    )
}

/// A presigned URL (query-string authentication) valid for `expires` seconds from `now`.
fn presign(
    credentials: &Credentials,
    region: &str,
    method: &str,
    mut url: Url,
    expires: u64,
    now: DateTime<Utc>,
) -> Url {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let scope = format!("{date}/{region}/s3/aws4_request");
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("X-Amz-Algorithm", "AWS4-HMAC-SHA256");
        q.append_pair(
            "X-Amz-Credential",
            &format!("{}/{scope}", credentials.access_key),
        );
        q.append_pair("X-Amz-Date", &amz_date);
        q.append_pair("X-Amz-Expires", &expires.to_string());
        if let Some(token) = &credentials.token {
            q.append_pair("X-Amz-Security-Token", token);
        }
        q.append_pair("X-Amz-SignedHeaders", "host");
    }
    let canonical_request = format!(
        "{method}\n{}\n{}\nhost:{}\n\nhost\nUNSIGNED-PAYLOAD",
        url.path(),
        canonical_query(&url),
        host(&url)
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let signature = hex::encode(hmac(
        &signing_key(&credentials.secret_key, &date, region),
        &to_sign,
    ));
    url.query_pairs_mut()
        .append_pair("X-Amz-Signature", &signature);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn example_credentials() -> Credentials {
        Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            token: None,
        }
    }

    fn example_time() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    /// AWS's documented example: "GET Object" with a Range header (S3 API reference, Signature V4,
    /// "Example: GET Object").
    #[test]
    fn signature_matches_aws_s_get_object_example() {
        let url = Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").expect("url");
        let headers = vec![
            ("range".to_string(), "bytes=0-9".to_string()),
            ("x-amz-content-sha256".to_string(), EMPTY_SHA256.to_string()),
            ("x-amz-date".to_string(), "20130524T000000Z".to_string()),
        ];
        let auth = authorization(
            &example_credentials(),
            "us-east-1",
            "GET",
            &url,
            &headers,
            EMPTY_SHA256,
            example_time(),
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// AWS's documented presigned URL example (query-string authentication, 86400 s).
    #[test]
    fn presigned_url_matches_aws_s_example() {
        let url = Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").expect("url");
        let signed = presign(
            &example_credentials(),
            "us-east-1",
            "GET",
            url,
            86400,
            example_time(),
        );
        assert!(
            signed.as_str().ends_with(
                "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
            ),
            "{signed}"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let c = S3::new();
        for (config, needle) in [
            (
                json!({"operation": "move", "bucket": "b"}),
                "`operation` must be one of",
            ),
            (json!({"operation": "list"}), "`bucket` is required"),
            (
                json!({"operation": "upload", "bucket": "b", "key": "k"}),
                "`content` is required",
            ),
            (
                json!({"operation": "copy", "bucket": "b", "key": "k"}),
                "`source_bucket` and `source_key`",
            ),
            (
                json!({"operation": "delete_many", "bucket": "b"}),
                "`keys` is required",
            ),
            (
                json!({"operation": "list", "bucket": "b", "aws_secret_access_key": "abcd1234"}),
                "`aws_secret_access_key` holds a credential literally",
            ),
            (
                json!({"operation": "list", "bucket": "b", "endpoint_url": "ftp://x"}),
                "`endpoint_url`",
            ),
            (
                json!({"operation": "list", "bucket": "b", "max_keys": 0}),
                "`max_keys`",
            ),
        ] {
            let err = c.validate(&config).unwrap_err();
            assert!(err.message.contains(needle), "{config}: {}", err.message);
        }
        assert!(c.validate(&json!({"operation": "list", "bucket": "b",
            "aws_access_key_id": "{{env.AWS_ACCESS_KEY_ID}}", "aws_secret_access_key": "{{env.AWS_SECRET_ACCESS_KEY}}"})).is_ok());
    }
}
