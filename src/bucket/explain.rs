//! Opening a bucket, as a person sees it: the store's failures at the first contact said in
//! one line that names the cause and what to do about it, classified once here at the edge
//! (the SDK's own description, a page of Debug output, only at `--log-level debug`).

use crate::store::{StoreError, Unreachable};

/// The one line for a failure a person has to fix before the bucket can be used: no
/// credentials, nothing listening, a host that does not resolve, a TLS mismatch, an endpoint
/// that is not S3, a bucket that does not exist or lives in another region, access denied.
/// None for the rest (their own message says enough).
pub fn explain(err: &StoreError) -> Option<String> {
    match err {
        StoreError::RetriesExhausted { last, .. } => explain(last),
        StoreError::Unreachable { why, endpoint, .. } => Some(match why {
            Unreachable::NoCredentials => {
                let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
                format!(
                    "no AWS credentials found; tried the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), \
                     the shared files ~/.aws/credentials and ~/.aws/config (profile {profile}), web identity \
                     (AWS_WEB_IDENTITY_TOKEN_FILE), the ECS container endpoint and EC2 instance metadata; \
                     set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, run `aws configure`, or pass --profile NAME"
                )
            }
            Unreachable::Refused => {
                format!(
                    "connection refused by {endpoint}: nothing listens there (is the server running? is the port right?)"
                )
            }
            Unreachable::Dns => {
                format!("cannot resolve the host of {endpoint}: check the name in --endpoint-url, or this host's DNS")
            }
            Unreachable::Tls => format!(
                "TLS handshake with {endpoint} failed: an https:// URL for a plain-HTTP port (use http://), \
                 or a certificate this host does not trust"
            ),
        }),
        StoreError::Client {
            op,
            key,
            status,
            code,
            message,
        } => match code.as_str() {
            crate::store::aws::NOT_S3 => Some(format!(
                "the endpoint answered HTTP {status} to a {op} of {key} without an S3 error document: it is not an \
                 S3 endpoint (check --endpoint-url)"
            )),
            "NoSuchBucket" => {
                Some("the bucket does not exist (S3 answered NoSuchBucket): check the name in s3://BUCKET".into())
            }
            crate::store::aws::WRONG_REGION => Some(match message.strip_prefix("the bucket is in region ") {
                Some(region) => format!("{message}: mount with --region {region}"),
                None => format!("{message}: mount with --region set to the bucket's region"),
            }),
            "AccessDenied" | "AllAccessDisabled" => Some(format!(
                "access denied: {} on {key} (S3 answered {code}); the credentials' policy (or the bucket's) must allow it",
                action(op)
            )),
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken" => Some(format!(
                "the server refused the credentials ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                 or the profile"
            )),
            _ => None,
        },
        _ => None,
    }
}

/// The IAM action a store operation needs (what a policy has to allow).
fn action(op: &str) -> &'static str {
    match op {
        "head" | "get" => "s3:GetObject",
        "list" => "s3:ListBucket",
        "put" | "copy" | "create_multipart" | "upload_part" | "upload_part_copy" | "complete_multipart" => {
            "s3:PutObject"
        }
        "delete" | "delete_objects" => "s3:DeleteObject",
        "list_uploads" => "s3:ListBucketMultipartUploads",
        "abort_multipart" => "s3:AbortMultipartUpload",
        "get_tagging" => "s3:GetObjectTagging",
        _ => "the request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(op: &'static str, status: u16, code: &str, message: &str) -> StoreError {
        StoreError::Client {
            op,
            key: "r/.prefixfs/layout.json".into(),
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn each_cause_gets_one_line_that_says_what_to_do() {
        let unreachable = |why| StoreError::Unreachable {
            op: "get",
            key: "k".into(),
            why,
            endpoint: "http://127.0.0.1:1".into(),
        };
        let line = |e: &StoreError| explain(e).expect("explained");
        assert!(line(&unreachable(Unreachable::NoCredentials)).contains("set AWS_ACCESS_KEY_ID"));
        assert!(line(&unreachable(Unreachable::Refused)).starts_with("connection refused by http://127.0.0.1:1"));
        assert!(line(&unreachable(Unreachable::Dns)).contains("cannot resolve"));
        assert!(line(&unreachable(Unreachable::Tls)).contains("use http://"));
        let wrapped = StoreError::RetriesExhausted {
            op: "get",
            key: "k".into(),
            attempts: 2,
            last: Box::new(unreachable(Unreachable::Refused)),
        };
        assert!(line(&wrapped).starts_with("connection refused"));
        assert!(line(&client("get", 404, crate::store::aws::NOT_S3, "")).contains("not an S3 endpoint"));
        assert!(line(&client("get", 404, "NoSuchBucket", "")).contains("does not exist"));
        assert_eq!(
            line(&client("list", 403, "AccessDenied", "")),
            "access denied: s3:ListBucket on r/.prefixfs/layout.json (S3 answered AccessDenied); the credentials' \
             policy (or the bucket's) must allow it"
        );
        assert!(line(&client("get", 403, "SignatureDoesNotMatch", "")).contains("refused the credentials"));
        assert_eq!(
            line(&client(
                "get",
                301,
                crate::store::aws::WRONG_REGION,
                "the bucket is in region eu-west-1"
            )),
            "the bucket is in region eu-west-1: mount with --region eu-west-1"
        );
        assert_eq!(explain(&client("get", 400, "InvalidArgument", "x")), None);
        assert_eq!(
            explain(&StoreError::NotFound {
                op: "get",
                key: "k".into()
            }),
            None
        );
    }
}
