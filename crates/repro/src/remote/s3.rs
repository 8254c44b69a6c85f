//! The few S3 calls the cache needs (GET, PUT, HEAD-free existence through GET, LIST), signed
//! with rusty-s3 (sans-IO: it only builds presigned URLs) and sent with ureq (blocking, no
//! async runtime), so the xtask stays quick to compile.

use std::io::Read;
use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

/// How long a presigned URL stays valid: long enough for one large transfer.
const SIGN_FOR: Duration = Duration::from_secs(3600);

/// Where a bucket is and who we are to it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `http://127.0.0.1:3900`; `None` for AWS itself (`https://s3.<region>.amazonaws.com`).
    pub url: Option<String>,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Bounds every connect; a slow or dead endpoint costs at most this much per request.
    pub connect_timeout: Duration,
    /// Bounds every read and write of a transfer.
    pub io_timeout: Duration,
}

impl Endpoint {
    /// The standard AWS variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`
    /// (or `AWS_DEFAULT_REGION`), `AWS_ENDPOINT_URL`.
    pub fn from_env() -> Endpoint {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Endpoint {
            url: var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".to_owned()),
            access_key: var("AWS_ACCESS_KEY_ID").unwrap_or_default(),
            secret_key: var("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
            connect_timeout: Duration::from_secs(3),
            io_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a request gave nothing.
#[derive(Debug)]
pub enum S3Error {
    /// 404: the object is not there (a cache miss, not a fault).
    NotFound,
    /// The endpoint answered with another status (bad credentials, a server error).
    Status(u16, String),
    /// The endpoint could not be reached in time.
    Transport(String),
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            S3Error::NotFound => f.write_str("no such object"),
            S3Error::Status(code, body) => write!(f, "the endpoint answered HTTP {code}{}", if body.is_empty() { String::new() } else { format!(": {body}") }),
            S3Error::Transport(why) => write!(f, "the endpoint is unreachable: {why}"),
        }
    }
}

pub struct Client {
    bucket: Bucket,
    credentials: Credentials,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(endpoint: &Endpoint, bucket: &str) -> Result<Client, String> {
        let (base, style) = match &endpoint.url {
            Some(url) => (url.clone(), UrlStyle::Path),
            None => (format!("https://s3.{}.amazonaws.com", endpoint.region), UrlStyle::VirtualHost),
        };
        let base: url::Url = base.parse().map_err(|e| format!("the endpoint {base:?} is not a URL: {e}"))?;
        let bucket = Bucket::new(base.clone(), style, bucket.to_owned(), endpoint.region.clone())
            .map_err(|e| format!("cannot address bucket {bucket:?} at {base}: {e}"))?;
        let agent =
            ureq::AgentBuilder::new().timeout_connect(endpoint.connect_timeout).timeout_read(endpoint.io_timeout).timeout_write(endpoint.io_timeout).build();
        Ok(Client { bucket, credentials: Credentials::new(endpoint.access_key.clone(), endpoint.secret_key.clone()), agent })
    }

    pub fn bucket(&self) -> &str {
        self.bucket.name()
    }

    pub fn get(&self, object: &str) -> Result<Vec<u8>, S3Error> {
        let url = self.bucket.get_object(Some(&self.credentials), object).sign(SIGN_FOR);
        let response = answer(self.agent.get(url.as_str()).call())?;
        let mut body = Vec::new();
        response.into_reader().read_to_end(&mut body).map_err(|e| S3Error::Transport(format!("reading {object}: {e}")))?;
        Ok(body)
    }

    pub fn put(&self, object: &str, bytes: &[u8]) -> Result<(), S3Error> {
        let url = self.bucket.put_object(Some(&self.credentials), object).sign(SIGN_FOR);
        answer(self.agent.put(url.as_str()).send_bytes(bytes)).map(drop)
    }

    /// Every object under `prefix`, with its size.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, S3Error> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            action.with_prefix(prefix);
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(SIGN_FOR);
            let body = answer(self.agent.get(url.as_str()).call())?.into_string().map_err(|e| S3Error::Transport(e.to_string()))?;
            let parsed = rusty_s3::actions::ListObjectsV2::parse_response(&body).map_err(|e| S3Error::Status(200, format!("unreadable listing: {e}")))?;
            all.extend(parsed.contents.into_iter().map(|c| (c.key, c.size.unwrap_or(0))));
            match parsed.next_continuation_token {
                Some(t) => token = Some(t),
                None => return Ok(all),
            }
        }
    }
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response, S3Error> {
    match result {
        Ok(response) => Ok(response),
        Err(ureq::Error::Status(404, _)) => Err(S3Error::NotFound),
        Err(ureq::Error::Status(code, response)) => {
            let body = response.into_string().unwrap_or_default();
            // S3 errors are XML; the code and message are what a person needs.
            let pick = |tag: &str| body.split(&format!("<{tag}>")).nth(1).and_then(|s| s.split(&format!("</{tag}>")).next()).map(str::to_owned);
            let summary = match (pick("Code"), pick("Message")) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c,
                _ => body.chars().take(200).collect(),
            };
            Err(S3Error::Status(code, summary))
        }
        Err(ureq::Error::Transport(t)) => Err(S3Error::Transport(t.to_string())),
    }
}
