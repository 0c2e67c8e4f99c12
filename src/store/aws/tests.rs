#[test]
fn a_name_s_extension_says_its_content_type() {
    use super::connect::content_type_of as ct;
    assert_eq!(ct("root/3/site/index.html"), Some("text/html"));
    assert_eq!(ct("a.b.JSON"), Some("application/json"));
    assert_eq!(ct("photo.jpg"), Some("image/jpeg"));
    assert_eq!(ct("README"), None);
    assert_eq!(ct("trailing."), None);
    assert_eq!(ct("x.unknownext"), None);
}

#[test]
fn a_wrong_region_answer_names_the_bucket_s_region() {
    use super::errors::region_of_answer as r;
    assert_eq!(r(Some(301), "", "", Some("eu-west-1".into())), Some("eu-west-1".into()));
    assert_eq!(r(Some(301), "PermanentRedirect", "", None), Some(String::new()));
    let malformed = "The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'ap-south-1'";
    assert_eq!(
        r(Some(400), "AuthorizationHeaderMalformed", malformed, None),
        Some("ap-south-1".into())
    );
    assert_eq!(r(Some(400), "AuthorizationHeaderMalformed", "other", None), None);
    assert_eq!(r(Some(404), "NoSuchKey", "", None), None);
}

#[test]
fn payloads_are_signed_only_where_nothing_else_protects_them() {
    use super::connect::payload_signing_needed as signed;
    assert!(!signed(None), "AWS: https");
    assert!(!signed(Some("https://minio.example.com:9000")));
    assert!(!signed(Some("http://127.0.0.1:9000")));
    assert!(!signed(Some("http://localhost:9000/")));
    assert!(!signed(Some("http://[::1]:9000")));
    assert!(signed(Some("http://10.0.0.5:9000")));
    assert!(signed(Some("http://minio.lan")));
    assert!(signed(Some("minio.lan:9000")));
}

use super::*;

#[test]
fn listed_keys_are_url_decoded() {
    assert_eq!(
        urlenc::decode("2017/a%01b+c%2Bd%25%C3%A9.txt"),
        "2017/a\u{1}b c+d%é.txt"
    );
    assert_eq!(urlenc::decode("50%"), "50%", "a cut escape stays as it is");
    assert_eq!(urlenc::decode("%zz%4"), "%zz%4");
}

#[test]
fn copy_source_is_percent_encoded() {
    assert_eq!(encode_copy_source("b", "a/b c+d%é.txt"), "b/a/b%20c%2Bd%25%C3%A9.txt");
}
