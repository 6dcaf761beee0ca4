#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Documents and search against real PostgreSQL: ranking (title first), websearch
//! syntax, Chinese queries (two-character words, mixed with English), snippets,
//! filters, pagination, updates and deletes, rebuild equal to live, bad input.

use serde_json::{json, Value};

use crate::helpers::*;

async fn create(app: &TestApp, doc: Value) -> Value {
    let mut res = app.post_json("/api/v1/documents", &doc).await;
    let v: Value = res.json().await.unwrap();
    assert_eq!(res.status(), 201, "{v}");
    v
}

async fn search(app: &TestApp, query: &str, position: &Value) -> Value {
    let q: String = url_encode(query);
    let res = app
        .get(&format!("/api/v1/search?q={q}&min_position={position}"))
        .await;
    assert_eq!(res.status(), 200, "{query}");
    body(res).await
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn titles(v: &Value) -> Vec<String> {
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["title"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn search_ranks_titles_first_and_understands_chinese() {
    let app = spawn_app().await;
    create(&app, json!({"title": "Quarterly cost report", "content": "Spending by team and service.", "category": "finance", "tags": ["cost"], "metadata": {"team": "web"}})).await;
    create(&app, json!({"title": "Kubernetes notes", "content": "The cost of idle nodes is a large part of the bill.", "category": "ops", "metadata": {"team": "ops"}})).await;
    create(&app, json!({"title": "时序数据与全文检索", "content": "我们在PostgreSQL里做全文检索，也存时序数据。成本效益很重要。", "category": "design", "tags": ["数据库"]})).await;
    let last = create(&app, json!({"title": "报表系统", "content": "查询优化: 并行查询 and cost control <script>", "metadata": {"team": "web", "level": 2}})).await;
    let pos = &last["position"];

    // A title match ranks above a content match.
    let v = search(&app, "cost", pos).await;
    assert_eq!(titles(&v)[0], "Quarterly cost report", "{v}");
    assert_eq!(titles(&v).len(), 3, "{v}");
    // websearch syntax: a phrase, an exclusion, or.
    assert_eq!(
        titles(&search(&app, "\"idle nodes\"", pos).await),
        ["Kubernetes notes"]
    );
    assert_eq!(
        titles(&search(&app, "cost -kubernetes -team", pos).await),
        ["报表系统"]
    );
    assert_eq!(
        search(&app, "kubernetes or quarterly", pos).await["hits"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Chinese: a two-character word, a four-character phrase, one character, mixed.
    assert_eq!(
        titles(&search(&app, "成本", pos).await),
        ["时序数据与全文检索"]
    );
    assert_eq!(
        titles(&search(&app, "全文检索", pos).await),
        ["时序数据与全文检索"]
    );
    assert_eq!(titles(&search(&app, "报表", pos).await), ["报表系统"]);
    assert_eq!(titles(&search(&app, "查询 cost", pos).await), ["报表系统"]);
    assert_eq!(
        titles(&search(&app, "检", pos).await),
        ["时序数据与全文检索"]
    );
    // A quoted phrase of both scripts, a hyphen between Chinese words, an exclusion.
    assert_eq!(
        titles(&search(&app, "\"PostgreSQL里做全文检索\"", pos).await),
        ["时序数据与全文检索"]
    );
    assert_eq!(
        titles(&search(&app, "全文-检索", pos).await),
        ["时序数据与全文检索"]
    );
    assert!(search(&app, "全文 -检索", pos).await["hits"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(search(&app, "检测", pos).await["hits"]
        .as_array()
        .unwrap()
        .is_empty());
    // The English word glued to Chinese text is found.
    assert_eq!(
        titles(&search(&app, "postgresql", pos).await),
        ["时序数据与全文检索"]
    );
    // Snippets mark the matches and are HTML-safe.
    let v = search(&app, "成本", pos).await;
    assert!(
        v["hits"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("<b>成本</b>"),
        "{v}"
    );
    let v = search(&app, "control", pos).await;
    let snippet = v["hits"][0]["snippet"].as_str().unwrap();
    assert!(
        snippet.contains("<b>control</b>") && !snippet.contains("<script"),
        "{snippet}"
    );

    // Filters: metadata containment, category, tag.
    let v = body(
        app.get(&format!(
            "/api/v1/search?q=cost&metadata={}&min_position={pos}",
            url_encode(r#"{"team":"web"}"#)
        ))
        .await,
    )
    .await;
    assert_eq!(titles(&v), ["Quarterly cost report", "报表系统"]);
    let v = body(
        app.get(&format!(
            "/api/v1/search?q=cost&category=ops&min_position={pos}"
        ))
        .await,
    )
    .await;
    assert_eq!(titles(&v), ["Kubernetes notes"]);
    let v = body(
        app.get(&format!(
            "/api/v1/search?q={}&tag={}&min_position={pos}",
            url_encode("数据"),
            url_encode("数据库")
        ))
        .await,
    )
    .await;
    assert_eq!(titles(&v), ["时序数据与全文检索"]);
    // Pagination is stable: two pages of one cover the first two hits.
    let one = body(
        app.get(&format!("/api/v1/search?q=cost&limit=1&min_position={pos}"))
            .await,
    )
    .await;
    let two = body(
        app.get(&format!(
            "/api/v1/search?q=cost&limit=1&cursor={}",
            one["next"].as_str().unwrap()
        ))
        .await,
    )
    .await;
    let all = search(&app, "cost", pos).await;
    assert_eq!([titles(&one), titles(&two)].concat(), titles(&all)[..2]);

    // Rebuild equals live.
    let sql = "SELECT format('%s %s %s %s', id, title, version, search) FROM documents";
    let live = snapshot(&app.conn, sql).await;
    rebuild_and_wait(&app, "documents").await;
    assert_eq!(snapshot(&app.conn, sql).await, live);
}

#[actix_web::test]
async fn documents_change_and_bad_input_is_refused() {
    let app = spawn_app().await;
    let doc = create(&app, json!({"title": "Draft", "content": "old words"})).await;
    let id = doc["id"].as_str().unwrap();
    let res = app
        .client
        .put(app.url(&format!("/api/v1/documents/{id}")))
        .insert_header(("If-Match", "\"1\""))
        .send_json(&json!({"title": "Final", "content": "new words"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let stale = app
        .client
        .put(app.url(&format!("/api/v1/documents/{id}")))
        .insert_header(("If-Match", "\"1\""))
        .send_json(&json!({"title": "Again", "content": "x"}))
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);
    let res = app
        .client
        .delete(app.url(&format!("/api/v1/documents/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let deleted: Value = body(res).await;
    assert!(search(&app, "words", &deleted["position"]).await["hits"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        app.get(&format!(
            "/api/v1/documents/{id}?min_position={}",
            deleted["position"]
        ))
        .await
        .status(),
        404
    );

    for (bad, field) in [
        (json!({"title": "", "content": "x"}), "title"),
        (json!({"title": "t", "content": "x", "tags": [""]}), "tags"),
        (json!({"title": "t", "content": "x", "colour": 1}), ""),
        (json!({"title": "t\u{0}", "content": "x"}), "title"),
        (json!({"title": "t", "content": "x\u{1}"}), "content"),
        (
            json!({"title": "t", "content": "x", "tags": ["a,b"]}),
            "tags",
        ),
        (
            json!({"title": "t", "content": "x", "created_at": "-5000-01-01T00:00:00Z"}),
            "created_at",
        ),
        (
            json!({"title": "t", "content": "x", "metadata": {"k": "a\u{0}"}}),
            "metadata",
        ),
    ] {
        let res = app.post_json("/api/v1/documents", &bad).await;
        assert_eq!(res.status(), 422, "{bad}");
        let v = body(res).await;
        if !field.is_empty() {
            assert_eq!(v["field"], field, "{v}");
        }
    }
    // 1 MiB of Chinese with few repeats: indexed (its first 30,000 characters), and the
    // projector goes on.
    let mut seed = 7_u32;
    let mut varied = String::new();
    while varied.len() + 3 <= 1024 * 1024 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        varied.push(char::from_u32(0x4e00 + (seed >> 8) % 20_000).unwrap());
    }
    let heavy = create(&app, json!({"title": "heavy", "content": varied})).await;
    // Indexing it takes a moment on a busy machine: wait past the 5 s of min_position.
    let seen = eventually(std::time::Duration::from_secs(120), || async {
        let res = app
            .get(&format!(
                "/api/v1/documents/{}?min_position={}",
                heavy["id"].as_str().unwrap(),
                heavy["position"]
            ))
            .await;
        (res.status() == 200).then_some(())
    })
    .await;
    assert!(seen.is_some(), "the 1 MiB document was projected");
    let found = search(&app, "heavy", &heavy["position"]).await;
    assert_eq!(titles(&found), ["heavy"]);
    let big = "字".repeat(400_000); // 1.2 MB
    let res = app
        .post_json(
            "/api/v1/documents",
            &json!({"title": "big", "content": big}),
        )
        .await;
    assert_eq!(res.status(), 413);
    for q in [
        "q=",
        "q=x&limit=0",
        "q=x&metadata=%5B1%5D",
        "q=x&cursor=nope",
        "q=x&from=yesterday",
    ] {
        assert_eq!(
            app.get(&format!("/api/v1/search?{q}")).await.status(),
            422,
            "{q}"
        );
    }
}
