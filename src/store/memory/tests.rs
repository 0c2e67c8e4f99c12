use super::*;

#[tokio::test]
async fn list_paginates_with_delimiter() {
    let s = MemoryStore::new();
    for k in ["a/1", "a/2", "b/x/1", "b/x/2", "b/y", "c"] {
        s.put(k, Bytes::new(), &UserMeta::new()).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = s.list("", Some("/"), token.as_deref(), Some(1)).await.unwrap();
        seen.extend(page.common_prefixes.clone());
        seen.extend(page.objects.iter().map(|o| o.key.clone()));
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, vec!["a/", "b/", "c"]);
}
