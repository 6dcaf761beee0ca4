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
async fn japanese_and_korean_text_is_found_by_its_words() {
    let app = spawn_app().await;
    create(
        &app,
        json!({"title": "東京のクラウドコスト", "content": "クラウドの費用を毎月レポートします。"}),
    )
    .await;
    create(&app, json!({"title": "클라우드 비용 보고서", "content": "매월 클라우드 비용을 팀별로 관리합니다. Monthly report."})).await;
    create(
        &app,
        json!({"title": "Plain English", "content": "Nothing but Latin letters here."}),
    )
    .await;
    let budget = app
        .post_json("/api/v1/budgets", &budget_body("클라우드 예산"))
        .await;
    assert_eq!(budget.status(), 201);
    let pos = &body(budget).await["position"];

    // Kana words inside a run of kanji and kana, and kana mixed with kanji.
    assert_eq!(
        titles(&search(&app, "クラウド", pos).await),
        ["東京のクラウドコスト"]
    );
    assert_eq!(
        titles(&search(&app, "コスト", pos).await),
        ["東京のクラウドコスト"]
    );
    assert_eq!(
        titles(&search(&app, "費用", pos).await),
        ["東京のクラウドコスト"]
    );
    assert!(search(&app, "クラブ", pos).await["hits"]
        .as_array()
        .unwrap()
        .is_empty());
    // A Korean word is found with its particle (비용을) and inside a longer word
    // (관리합니다, 보고서); a word that is not there is not.
    let v = search(&app, "비용", pos).await;
    assert_eq!(titles(&v), ["클라우드 비용 보고서"], "{v}");
    assert!(
        v["hits"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("<b>비용</b>"),
        "{v}"
    );
    assert_eq!(
        titles(&search(&app, "관리", pos).await),
        ["클라우드 비용 보고서"]
    );
    assert_eq!(
        titles(&search(&app, "보고", pos).await),
        ["클라우드 비용 보고서"]
    );
    assert!(search(&app, "비싼", pos).await["hits"]
        .as_array()
        .unwrap()
        .is_empty());
    // Korean and English in one query, and a budget's Korean name in the global search.
    assert_eq!(
        titles(&search(&app, "클라우드 monthly", pos).await),
        ["클라우드 비용 보고서"]
    );
    let v = body(
        app.get(&format!(
            "/api/v1/search?q={}&type=budget&min_position={pos}",
            url_encode("예산")
        ))
        .await,
    )
    .await;
    assert_eq!(titles(&v), ["클라우드 예산"], "{v}");

    // Rebuilds equal live.
    for (name, sql) in [
        (
            "documents",
            "SELECT format('%s %s %s', id, version, search) FROM documents",
        ),
        (
            "search_entries",
            "SELECT format('%s %s', key, search) FROM search_entries",
        ),
    ] {
        let live = snapshot(&app.conn, sql).await;
        rebuild_and_wait(&app, name).await;
        assert_eq!(snapshot(&app.conn, sql).await, live, "{name}");
    }
}

#[actix_web::test]
async fn v24_computes_again_the_search_of_rows_written_before_it() {
    let conn = fresh_database().await;
    let client = cloudlens::db::connect(&conn).await.unwrap();
    // The functions as V13 made them (ideographs only): V24's with V13's class.
    let v24 = include_str!("../../sql/V24__cjk_kana_and_hangul.sql");
    let (functions, updates) = v24.split_at(v24.find("UPDATE documents").unwrap());
    let v13 = functions.replace(
        "\\u3040-\\u30ff\\u3400-\\u4dbf\\u4e00-\\u9fff\\uac00-\\ud7af\\uf900-\\ufaff",
        "\\u3400-\\u4dbf\\u4e00-\\u9fff\\uf900-\\ufaff",
    );
    assert_ne!(v13, functions, "the class was not found");
    client.batch_execute(&v13).await.unwrap();
    // Rows written under them: Japanese, Korean, and Chinese only.
    for (title, content) in [
        ("東京のクラウドコスト", "毎月のレポート"),
        ("비용 보고서", "클라우드 비용을 관리합니다"),
        ("成本报表", "只有中文"),
    ] {
        client
            .execute(
                "INSERT INTO documents (tenant_id, id, title, content, created_at, updated_at, version)
                 VALUES ('default', gen_random_uuid(), $1, $2, now(), now(), 1)",
                &[&title, &content],
            )
            .await
            .unwrap();
    }
    let found = |q: &'static str| {
        let conn = conn.clone();
        async move {
            count(
                &conn,
                &format!(
                    "SELECT count(*) FROM documents WHERE search @@ to_tsquery('simple', '{q}')"
                ),
            )
            .await
        }
    };
    assert_eq!(found("クラ <-> ラウ").await, 0);
    // V13 kept a Korean word whole (`관리합니다`): a part of it was not found.
    assert_eq!(found("관리").await, 0);
    let before = snapshot(
        &conn,
        "SELECT format('%s %s', title, search) FROM documents WHERE title = '成本报表'",
    )
    .await;
    // V24: its functions, then its updates.
    client.batch_execute(functions).await.unwrap();
    client.batch_execute(updates).await.unwrap();
    assert_eq!(found("クラ <-> ラウ").await, 1);
    assert_eq!(found("관리").await, 1);
    // Each row now holds what a write under V24 computes; a Chinese-only row is unchanged.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM documents d WHERE d.search IS DISTINCT FROM (
               setweight(to_tsvector('english', cloudlens_non_cjk(d.title)), 'A')
            || setweight(to_tsvector('simple', cloudlens_cjk_grams(d.title)), 'A')
            || setweight(to_tsvector('english', cloudlens_non_cjk(cloudlens_words(d.tags))), 'B')
            || setweight(to_tsvector('simple', cloudlens_cjk_grams(cloudlens_words(d.tags))), 'B')
            || setweight(to_tsvector('english', cloudlens_non_cjk(left(d.content, 100000))), 'C')
            || setweight(to_tsvector('simple', cloudlens_cjk_grams(left(d.content, 30000))), 'C'))"
        )
        .await,
        0
    );
    assert_eq!(
        snapshot(
            &conn,
            "SELECT format('%s %s', title, search) FROM documents WHERE title = '成本报表'"
        )
        .await,
        before
    );
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

async fn post_ndjson(app: &TestApp, body: String, key: Option<&str>) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url("/api/v1/documents:batch"))
        .insert_header(("Content-Type", "application/x-ndjson"));
    if let Some(k) = key {
        req = req.insert_header(("Idempotency-Key", k));
    }
    let res = req.send_body(body).await.unwrap();
    let status = res.status().as_u16();
    (status, crate::helpers::body(res).await)
}

#[actix_web::test]
async fn batches_are_searchable_changeable_and_all_or_nothing() {
    let app = spawn_app().await;
    let own_id = "0190c7a9-4a5e-7c1d-9d0e-715300000042";
    let mut lines = Vec::new();
    for i in 0..1_200 {
        let doc = match i {
            0 => {
                json!({"id": own_id, "title": "Batch alpha", "content": "unique zebra words", "metadata": {"n": 0}})
            }
            1 => {
                json!({"title": "成本分析报告", "content": "云资源的成本与预算", "tags": ["财务"]})
            }
            2 => json!({"title": "Gamma", "content": "混合 mixed 文本 with budget alerts"}),
            _ => {
                json!({"title": format!("Filler {i}"), "content": "plain filler text", "metadata": {"n": i}})
            }
        };
        lines.push(doc.to_string());
    }
    let ndjson = lines.join("\n") + "\n";
    let (status, v) = post_ndjson(&app, ndjson.clone(), Some("docs-1")).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["accepted"], 1_200);
    // Blocks of 500 documents: three events and the completion, not one per document.
    let events = count(
        &app.conn,
        &format!(
            "SELECT count(*) FROM events WHERE stream_type = 'document_batch' AND stream_id = '{}'",
            v["batch_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(events, 4);
    // A retry under the same key answers with the same batch and writes nothing.
    let (status, again) = post_ndjson(&app, ndjson, Some("docs-1")).await;
    assert_eq!(status, 202);
    assert_eq!(again["batch_id"], v["batch_id"]);
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM events WHERE stream_type = 'document_batch'"
        )
        .await,
        4
    );
    let pos = &v["position"];
    assert_eq!(titles(&search(&app, "zebra", pos).await), ["Batch alpha"]);
    assert_eq!(titles(&search(&app, "成本", pos).await), ["成本分析报告"]);
    assert_eq!(titles(&search(&app, "文本 budget", pos).await), ["Gamma"]);
    let fillers = body(
        app.get(&format!(
            "/api/v1/search?q=filler&limit=100&min_position={pos}"
        ))
        .await,
    )
    .await;
    assert_eq!(fillers["hits"].as_array().unwrap().len(), 100);

    // A batch's document is changed and deleted like any other (version 0 until then).
    let got = app.get(&format!("/api/v1/documents/{own_id}")).await;
    assert_eq!(got.headers().get("etag").unwrap(), "\"0\"");
    let res = app
        .client
        .put(app.url(&format!("/api/v1/documents/{own_id}")))
        .insert_header(("If-Match", "\"0\""))
        .send_json(&json!({"title": "Batch alpha, edited", "content": "unique okapi words"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let edited = body(res).await;
    assert_eq!(edited["version"], 1);
    assert_eq!(
        titles(&search(&app, "okapi", &edited["position"]).await),
        ["Batch alpha, edited"]
    );
    assert!(search(&app, "zebra", &edited["position"]).await["hits"]
        .as_array()
        .unwrap()
        .is_empty());
    let gamma = search(&app, "gamma", pos).await["hits"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .client
        .delete(app.url(&format!("/api/v1/documents/{gamma}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let deleted = body(res).await;
    assert!(search(&app, "gamma", &deleted["position"]).await["hits"]
        .as_array()
        .unwrap()
        .is_empty());
    let again = app
        .client
        .delete(app.url(&format!("/api/v1/documents/{gamma}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);

    // All or nothing: a bad line, a repeated id, an id another document has.
    let reserved = "SELECT count(*) FROM document_batch_ids";
    let before = count(&app.conn, reserved).await;
    let good = |t: &str| json!({"title": t, "content": "x"}).to_string();
    for (body_text, row, field) in [
        (
            format!(
                "{}\n{}\n{{\"title\":\"\",\"content\":\"x\"}}\n",
                good("a"),
                good("b")
            ),
            3,
            "title",
        ),
        (
            format!(
                "{}\n{{\"title\":\"t\",\"content\":\"x\",\"tags\":[\"a,b\"]}}\n",
                good("a")
            ),
            2,
            "tags",
        ),
        (format!("{}\nnot json\n", good("a")), 2, ""),
        (
            format!("{{\"id\":\"{own_id}\",\"title\":\"t\",\"content\":\"x\"}}\n"),
            1,
            "id",
        ),
        (
            format!("{{\"id\":\"{gamma}\",\"title\":\"t\",\"content\":\"x\"}}\n"),
            1,
            "id",
        ),
        (
            format!(
                "{{\"id\":\"{}\",\"title\":\"t\",\"content\":\"x\"}}\n{}\n",
                edited["id"].as_str().unwrap(),
                good("a")
            ),
            1,
            "id",
        ),
        (
            "{\"id\":\"0190c7a9-4a5e-7c1d-9d0e-715300000043\",\"title\":\"t\",\"content\":\"x\"}\n\
             {\"id\":\"0190c7a9-4a5e-7c1d-9d0e-715300000043\",\"title\":\"u\",\"content\":\"y\"}\n"
                .to_owned(),
            2,
            "id",
        ),
    ] {
        let (status, v) = post_ndjson(&app, body_text.clone(), None).await;
        assert_eq!(status, 422, "{body_text}: {v}");
        assert_eq!(v["code"], "invalid_row", "{v}");
        assert_eq!(v["row"], row, "{body_text}: {v}");
        if !field.is_empty() {
            assert_eq!(v["field"], field, "{v}");
        }
    }
    assert_eq!(count(&app.conn, reserved).await, before);
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM events WHERE stream_type = 'document_batch'"
        )
        .await,
        4
    );
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM staged_events").await,
        0
    );
    let (status, _) = post_ndjson(&app, String::new(), None).await;
    assert_eq!(status, 422);
    let res = app
        .client
        .post(app.url("/api/v1/documents:batch"))
        .insert_header(("Content-Type", "application/json"))
        .send_body("{}")
        .await
        .unwrap();
    assert_eq!(res.status(), 415);

    // Rebuild equals live, batch documents and their changes included.
    let sql =
        "SELECT format('%s %s %s %s %s', id, title, version, created_at, search) FROM documents";
    let live = snapshot(&app.conn, sql).await;
    assert_eq!(live.len(), 1_199);
    rebuild_and_wait(&app, "documents").await;
    assert_eq!(snapshot(&app.conn, sql).await, live);
}

#[actix_web::test]
async fn one_search_finds_budgets_tags_accounts_and_documents() {
    let app = spawn_app().await;
    let budget = app
        .post_json("/api/v1/budgets", &budget_body("Platform egress 成本预算"))
        .await;
    assert_eq!(budget.status(), 201);
    let budget = body(budget).await;
    let res = app
        .post_json(
            "/api/v1/accounts",
            &json!({"provider": "aliyun", "name": "egress billing account", "currency": "CNY", "external_id": "1234-5678"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let res = app
        .client
        .put(app.url("/api/v1/subject-kinds/user"))
        .send_json(&json!({"id_field": "user_id", "primary_source": "basic",
            "attributes": [{"name": "level", "type": "number", "source": "basic"}]}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .post_json(
            "/api/v1/tag-categories",
            &json!({"code": "value", "name": "Value"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let res = app
        .post_json(
            "/api/v1/tags",
            &json!({"code": "heavy_egress", "name": "Heavy egress users", "category": "value",
                    "kind": "MANUAL", "subject_kind": "user", "description": "流量大的用户"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let tag = body(res).await;
    let doc = create(&app, json!({"title": "Egress pricing notes", "content": "Egress costs by region.", "category": "finance"})).await;
    let pos = doc["position"]
        .as_i64()
        .unwrap()
        .max(tag["position"].as_i64().unwrap());

    let kinds = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["type"].as_str().unwrap().to_owned())
            .collect();
        k.sort();
        k
    };
    let all = search(&app, "egress", &json!(pos)).await;
    assert_eq!(
        kinds(&all),
        ["account", "budget", "document", "tag"],
        "{all}"
    );
    let hit = |v: &Value, kind: &str| {
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["type"] == kind)
            .cloned()
            .unwrap()
    };
    assert_eq!(hit(&all, "budget")["id"], budget["id"]);
    assert_eq!(hit(&all, "tag")["id"], tag["id"].to_string());
    // Chinese in a name and in a description; the account by its external id.
    assert_eq!(kinds(&search(&app, "成本", &json!(pos)).await), ["budget"]);
    let users = search(&app, "用户", &json!(pos)).await;
    assert_eq!(kinds(&users), ["tag"]);
    assert!(
        hit(&users, "tag")["snippet"]
            .as_str()
            .unwrap()
            .contains("<b>用户</b>"),
        "{users}"
    );
    // `type=` picks types; a document filter keeps to documents.
    let only = body(
        app.get(&format!(
            "/api/v1/search?q=egress&type=budget,tag&min_position={pos}"
        ))
        .await,
    )
    .await;
    assert_eq!(kinds(&only), ["budget", "tag"], "{only}");
    let filtered = body(
        app.get(&format!(
            "/api/v1/search?q=egress&category=finance&min_position={pos}"
        ))
        .await,
    )
    .await;
    assert_eq!(kinds(&filtered), ["document"], "{filtered}");
    // Pages of one walk every hit once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = body(
            app.get(&format!(
                "/api/v1/search?q=egress&limit=1{cursor}&min_position={pos}"
            ))
            .await,
        )
        .await;
        assert!(page["hits"].is_array(), "{page}");
        seen.extend(kinds(&page));
        match page["next"].as_str() {
            Some(n) => cursor = format!("&cursor={n}"),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, kinds(&all));
    let res = app.get("/api/v1/search?q=egress&type=invoice").await;
    assert_eq!(res.status(), 422);
    assert_eq!(body(res).await["field"], "type");

    // A deleted budget leaves the search; rebuild equals live.
    let res = app
        .client
        .delete(app.url(&format!(
            "/api/v1/budgets/{}",
            budget["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let deleted = body(res).await;
    let after = search(&app, "egress", &deleted["position"]).await;
    assert_eq!(kinds(&after), ["account", "document", "tag"]);
    let sql = "SELECT format('%s %s %s %s %s %s', key, type, ref_id, title, created_at, search) FROM search_entries";
    let live = snapshot(&app.conn, sql).await;
    assert_eq!(live.len(), 2);
    rebuild_and_wait(&app, "search_entries").await;
    assert_eq!(snapshot(&app.conn, sql).await, live);
}

#[actix_web::test]
async fn vector_and_hybrid_search_rank_by_embedding_or_say_they_cannot() {
    let conn = fresh_database().await;
    let mut settings = test_settings();
    settings.embedding_dimensions = 3;
    let app = spawn_app_on(conn.clone(), settings.clone()).await;
    let ready = eventually(std::time::Duration::from_secs(60), || async {
        let res = app.get("/api/v1/search?vector=%5B1,0,0%5D").await;
        (res.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the vector index became ready");
    let a = create(
        &app,
        json!({"title": "Apple orchard", "content": "apple trees", "embedding": [1.0, 0.0, 0.0]}),
    )
    .await;
    create(
        &app,
        json!({"title": "Banana", "content": "yellow fruit", "embedding": [0.9, 0.2, 0.0]}),
    )
    .await;
    create(&app, json!({"title": "Cherry", "content": "apple and cherry", "embedding": [0.0, 1.0, 0.0], "metadata": {"k": 1}})).await;
    let res = app
        .client
        .post(app.url("/api/v1/documents"))
        .insert_header(("X-Tenant-Id", "other"))
        .send_json(
            &json!({"title": "Other tenant", "content": "apple", "embedding": [1.0, 0.0, 0.0]}),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let last = create(
        &app,
        json!({"title": "No embedding", "content": "apple pie"}),
    )
    .await;
    let pos = &last["position"];

    let vector = body(
        app.get(&format!(
            "/api/v1/search?vector=%5B1,0,0%5D&min_position={pos}"
        ))
        .await,
    )
    .await;
    assert_eq!(
        titles(&vector),
        ["Apple orchard", "Banana", "Cherry"],
        "{vector}"
    );
    assert!((vector["hits"][0]["rank"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    assert!(vector.get("next").is_none());
    assert_eq!(vector["hits"][0]["id"], a["id"]);
    // Filters apply to the nearest documents too.
    let filtered = body(
        app.get(&format!(
            "/api/v1/search?vector=%5B1,0,0%5D&metadata=%7B%22k%22:1%7D&min_position={pos}"
        ))
        .await,
    )
    .await;
    assert_eq!(titles(&filtered), ["Cherry"]);
    // Hybrid: Cherry is in both lists (text: "apple"; vector: nearest to [0,1,0]).
    let hybrid = body(
        app.get(&format!(
            "/api/v1/search?q=apple&vector=%5B0,1,0%5D&min_position={pos}"
        ))
        .await,
    )
    .await;
    let t = titles(&hybrid);
    assert_eq!(t[0], "Cherry", "{hybrid}");
    assert!(
        t.contains(&"No embedding".to_owned()),
        "text-only hits count too: {hybrid}"
    );
    assert!(
        t.contains(&"Banana".to_owned()),
        "vector-only hits count too: {hybrid}"
    );
    assert!(!t.contains(&"Other tenant".to_owned()));

    for (q, field) in [
        ("vector=%5B1,0%5D", "vector"),
        ("vector=%5B0,0,0%5D", "vector"),
        ("vector=nope", "vector"),
        ("q=apple&mode=hybrid", "mode"),
        ("q=apple&mode=fuzzy", "mode"),
        ("mode=vector", "mode"),
        ("limit=5", "q"),
        ("vector=%5B1,0,0%5D&cursor=abc", "cursor"),
        ("vector=%5B1,0,0%5D&type=tag", "type"),
    ] {
        let res = app.get(&format!("/api/v1/search?{q}")).await;
        assert_eq!(res.status(), 422, "{q}");
        assert_eq!(body(res).await["field"], field, "{q}");
    }
    let res = app
        .post_json(
            "/api/v1/documents",
            &json!({"title": "t", "content": "c", "embedding": [1.0, 2.0]}),
        )
        .await;
    assert_eq!(res.status(), 422);
    assert_eq!(body(res).await["field"], "embedding");

    // Rebuild equals live, embeddings included.
    let sql = "SELECT format('%s %s %s', id, title, embedding) FROM documents";
    let live = snapshot(&app.conn, sql).await;
    rebuild_and_wait(&app, "documents").await;
    assert_eq!(snapshot(&app.conn, sql).await, live);

    // Another embedding size for the deployment: the documents of the old size stay out
    // of the new index, and the projector goes on with documents of the new size.
    let mut wider = settings.clone();
    wider.embedding_dimensions = 4;
    let app4 = spawn_app_on(conn.clone(), wider).await;
    let ready = eventually(std::time::Duration::from_secs(60), || async {
        let res = app4.get("/api/v1/search?vector=%5B1,0,0,0%5D").await;
        (res.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the index for the new size became ready");
    let d4 = create(
        &app4,
        json!({"title": "Four", "content": "four numbers", "embedding": [0.0, 0.0, 0.0, 1.0]}),
    )
    .await;
    let four = body(
        app4.get(&format!(
            "/api/v1/search?vector=%5B0,0,0,1%5D&min_position={}",
            d4["position"]
        ))
        .await,
    )
    .await;
    assert_eq!(titles(&four), ["Four"], "{four}");

    // A server with vector search off says so, never falls back to text.
    settings.vector_search = false;
    let off = spawn_app_on(conn, settings).await;
    let res = off.get("/api/v1/search?q=apple&vector=%5B1,0,0%5D").await;
    assert_eq!(res.status(), 503);
    let v = body(res).await;
    assert_eq!(v["code"], "vector_search_unavailable", "{v}");
    assert_eq!(off.get("/api/v1/search?q=apple").await.status(), 200);
}
