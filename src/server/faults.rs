//! Injected faults for soak-testing a client against an S3 that misbehaves like S3 can:
//! `prefixfs serve --fault KIND:RATE[:OPERATION][:after]`, any number of rules, seeded.
//!
//! Kinds: `500` (InternalError), `503` (SlowDown), `reset` (the connection is dropped
//! without an answer), `stall` (the answer comes `--fault-stall-ms` late), `truncate` (the
//! body is cut off halfway; for requests that return one, e.g. GetObject). With `after`, the
//! request is applied first and then its answer replaced by the fault: the effect happens,
//! the client does not learn it (a lost answer). `OPERATION` is an S3 operation name
//! (`PutObject`, `CompleteMultipartUpload`…; see [`operation`]); without it a rule applies
//! to every request. Each request rolls once per rule, in order; the first rule that fires
//! decides.

use crate::invalid::Invalid;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    InternalError,
    SlowDown,
    Reset,
    Stall,
    Truncate,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    pub kind: FaultKind,
    /// Probability per request, 0..=1.
    pub rate: f64,
    pub operation: Option<String>,
    pub after: bool,
}

impl FromStr for FaultRule {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        let mut parts = s.split(':');
        let kind = match parts.next().unwrap_or_default() {
            "500" => FaultKind::InternalError,
            "503" => FaultKind::SlowDown,
            "reset" => FaultKind::Reset,
            "stall" => FaultKind::Stall,
            "truncate" => FaultKind::Truncate,
            k => {
                return Err(Invalid::new(
                    format!("fault kind {k:?}"),
                    "one of 500, 503, reset, stall, truncate",
                ));
            }
        };
        let rate: f64 = parts
            .next()
            .and_then(|r| r.parse().ok())
            .filter(|r: &f64| (0.0..=1.0).contains(r))
            .ok_or_else(|| Invalid::new(s, "the rate must be a number in 0..=1 (KIND:RATE[:OPERATION][:after])"))?;
        let mut rule = FaultRule {
            kind,
            rate,
            operation: None,
            after: false,
        };
        for p in parts {
            match p {
                "after" => rule.after = true,
                op if !op.is_empty() && op.chars().all(|c| c.is_ascii_alphabetic()) && rule.operation.is_none() => {
                    rule.operation = Some(op.to_string())
                }
                other => {
                    return Err(Invalid::new(
                        s,
                        format!("{other:?} is neither an operation name nor `after`"),
                    ));
                }
            }
        }
        Ok(rule)
    }
}

/// The rules of a server, their random source, and how often each kind fired.
#[derive(Debug)]
pub struct FaultPlan {
    rules: Vec<FaultRule>,
    /// Off: no fault fires (a test's clean phase).
    on: std::sync::atomic::AtomicBool,
    rng: Mutex<fastrand::Rng>,
    pub stall: Duration,
    fired: [AtomicU64; 5],
}

impl FaultPlan {
    pub fn new(rules: Vec<FaultRule>, seed: u64, stall: Duration) -> Self {
        FaultPlan {
            rules,
            on: std::sync::atomic::AtomicBool::new(true),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            stall,
            fired: Default::default(),
        }
    }

    /// The fault for one request of `operation`, if a rule fires: its kind and whether it
    /// comes after the request is applied.
    pub fn pick(&self, operation: &str) -> Option<(FaultKind, bool)> {
        if !self.on.load(Ordering::Relaxed) {
            return None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        for r in &self.rules {
            if r.operation.as_deref().is_some_and(|op| op != operation) {
                continue;
            }
            if rng.f64() < r.rate {
                self.fired[r.kind as usize].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(operation, kind = ?r.kind, after = r.after, "injected fault");
                return Some((r.kind, r.after));
            }
        }
        None
    }

    /// Switches every rule on or off.
    pub fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// How many faults of `kind` were injected.
    pub fn fired(&self, kind: FaultKind) -> u64 {
        self.fired[kind as usize].load(Ordering::Relaxed)
    }
}

/// The S3 operation a request is, from its method, path, query and whether it names a copy
/// source (the names S3 documents).
pub fn operation(method: &http::Method, path: &str, query: &str, copy: bool) -> &'static str {
    let has = |k: &str| query.split('&').any(|p| p.split('=').next() == Some(k));
    // `/bucket` or `/bucket/` (path style): a bucket operation; `/bucket/key`: an object's.
    let object = path
        .trim_start_matches('/')
        .split_once('/')
        .is_some_and(|(_, k)| !k.is_empty());
    match (method.as_str(), object) {
        ("GET", false) if has("uploads") => "ListMultipartUploads",
        ("GET", false) => "ListObjectsV2",
        ("POST", false) if has("delete") => "DeleteObjects",
        ("PUT", false) => "CreateBucket",
        ("HEAD", false) => "HeadBucket",
        ("GET", true) if has("uploadId") => "ListParts",
        ("GET", true) => "GetObject",
        ("HEAD", true) => "HeadObject",
        ("PUT", true) if has("uploadId") && copy => "UploadPartCopy",
        ("PUT", true) if has("uploadId") => "UploadPart",
        ("PUT", true) if copy => "CopyObject",
        ("PUT", true) => "PutObject",
        ("POST", true) if has("uploads") => "CreateMultipartUpload",
        ("POST", true) if has("uploadId") => "CompleteMultipartUpload",
        ("DELETE", true) if has("uploadId") => "AbortMultipartUpload",
        ("DELETE", true) => "DeleteObject",
        _ => "Other",
    }
}

/// The answer S3 gives for a fault of `kind` (500 or 503), as S3 words it.
pub fn error_response(kind: FaultKind) -> http::Response<s3s::Body> {
    match kind {
        FaultKind::SlowDown => s3_error_response(503, "SlowDown", "injected fault (prefixfs serve --fault)"),
        _ => s3_error_response(500, "InternalError", "injected fault (prefixfs serve --fault)"),
    }
}

/// An S3 error answer: `status`, and the error document with `code` and `message`.
pub fn s3_error_response(status: u16, code: &str, message: &str) -> http::Response<s3s::Body> {
    let escaped = message.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{escaped}</Message></Error>"
    );
    let mut resp = http::Response::new(s3s::Body::from(body));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_bad_ones_say_why() {
        let r: FaultRule = "500:0.25:CompleteMultipartUpload:after".parse().unwrap();
        assert_eq!(
            r,
            FaultRule {
                kind: FaultKind::InternalError,
                rate: 0.25,
                operation: Some("CompleteMultipartUpload".into()),
                after: true
            }
        );
        assert_eq!("reset:1".parse::<FaultRule>().unwrap().operation, None);
        for bad in ["404:0.1", "500", "500:2", "500:x", "503:0.1:Put-Object", "500:0.1:A:B"] {
            assert!(bad.parse::<FaultRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_seed_decides_the_sequence_and_rules_match_their_operation() {
        let rules = vec!["503:0.5:PutObject".parse().unwrap()];
        let a = FaultPlan::new(rules.clone(), 7, Duration::ZERO);
        let b = FaultPlan::new(rules, 7, Duration::ZERO);
        let seq = |p: &FaultPlan| (0..200).map(|_| p.pick("PutObject").is_some()).collect::<Vec<_>>();
        let (sa, sb) = (seq(&a), seq(&b));
        assert_eq!(sa, sb);
        let n = sa.iter().filter(|f| **f).count();
        assert!((60..140).contains(&n), "{n} of 200 at rate 0.5");
        assert_eq!(a.pick("GetObject"), None);
        assert_eq!(a.fired(FaultKind::SlowDown), n as u64);
    }

    #[test]
    fn requests_are_named_as_s3_names_them() {
        use http::Method;
        assert_eq!(operation(&Method::PUT, "/b/k/x", "", false), "PutObject");
        assert_eq!(operation(&Method::PUT, "/b/k/x", "", true), "CopyObject");
        assert_eq!(
            operation(&Method::PUT, "/b/k", "partNumber=2&uploadId=u", false),
            "UploadPart"
        );
        assert_eq!(
            operation(&Method::PUT, "/b/k", "partNumber=2&uploadId=u", true),
            "UploadPartCopy"
        );
        assert_eq!(
            operation(&Method::POST, "/b/k", "uploadId=u", false),
            "CompleteMultipartUpload"
        );
        assert_eq!(
            operation(&Method::POST, "/b/k", "uploads", false),
            "CreateMultipartUpload"
        );
        assert_eq!(
            operation(&Method::GET, "/b", "list-type=2&prefix=a", false),
            "ListObjectsV2"
        );
        assert_eq!(operation(&Method::POST, "/b", "delete", false), "DeleteObjects");
        assert_eq!(operation(&Method::HEAD, "/b/k", "", false), "HeadObject");
        assert_eq!(operation(&Method::GET, "/b/k", "", false), "GetObject");
    }
}
