//! Percent-encoding as S3 uses it: listed keys (`encoding-type=url`), copy sources, and
//! object tags (`x-amz-tagging: k=v&k2=v2`).

/// Decodes `%XX` escapes, and `+` for a space (S3 writes a space so in listings; a `+` itself
/// comes as `%2B`). Bytes that do not make UTF-8 are replaced (such a key cannot be a path
/// of the layout anyway).
pub fn decode(s: &str) -> String {
    decode_with(s, true)
}

/// Decodes `%XX` escapes only (a `+` stays a `+`), as s3fs decodes its `xattr` header.
pub fn decode_percent(s: &str) -> String {
    decode_with(s, false)
}

fn decode_with(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes every byte of `s` but the unreserved ones and those in `keep`.
pub fn encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A tag set as `x-amz-tagging` carries it.
pub fn encode_tags<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    tags.into_iter()
        .map(|(k, v)| format!("{}={}", encode(k, b""), encode(v, b"")))
        .collect::<Vec<_>>()
        .join("&")
}

/// The tags of an `x-amz-tagging` value.
pub fn decode_tags(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let tags = [("project", "a b"), ("k=1", "v&2"), ("é", "")];
        let s = encode_tags(tags);
        assert_eq!(s, "project=a%20b&k%3D1=v%262&%C3%A9=");
        let back = decode_tags(&s);
        let back: Vec<(&str, &str)> = back.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(back, tags);
    }
}
