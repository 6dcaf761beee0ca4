#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The tagging context end to end: schemas, imports, tags and rules, runs and their
//! scenarios, the read models and their rebuild.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

type Response = awc::ClientResponse<actix_web::dev::Decompress<actix_web::dev::Payload>>;

async fn put_json(app: &TestApp, path: &str, body: &Value) -> Response {
    app.client.put(app.url(path)).send_json(body).await.unwrap()
}

async fn import(app: &TestApp, source: &str, content_type: &str, data: &str) -> Response {
    app.client
        .post(app.url(&format!("/api/v1/subjects/user/import?source={source}")))
        .insert_header(("Content-Type", content_type))
        .send_body(data.to_owned())
        .await
        .unwrap()
}

async fn import_ok(app: &TestApp, source: &str, csv: &str) -> Value {
    let res = import(app, source, "text/csv", csv).await;
    assert_eq!(res.status(), 200, "import of {source}");
    body(res).await
}

/// The seed's user kind (seed 004's three source tables).
async fn declare_users(app: &TestApp) {
    let res = put_json(
        app,
        "/api/v1/subject-kinds/user",
        &json!({
            "id_field": "user_id", "primary_source": "user_basic_info",
            "attributes": [
                {"name": "register_time", "type": "date", "source": "user_basic_info"},
                {"name": "register_country", "type": "string", "source": "user_basic_info"},
                {"name": "kyc_status", "type": "boolean", "source": "user_basic_info"},
                {"name": "user_level", "type": "number", "source": "user_basic_info"},
                {"name": "total_asset_value", "type": "number", "source": "user_asset_summary"},
                {"name": "last_login_time", "type": "date", "source": "user_activity_summary"},
                {"name": "login_count_7d", "type": "number", "source": "user_activity_summary"}
            ]
        }),
    )
    .await;
    assert_eq!(res.status(), 200);
}

async fn create_tag(app: &TestApp, code: &str, kind: &str, rule: Option<Value>) -> i64 {
    let mut draft = json!({"code": code, "name": code, "category": "value", "kind": kind,
                           "subject_kind": "user"});
    if let Some(r) = rule {
        draft["rule"] = r;
    }
    let res = app.post_json("/api/v1/tags", &draft).await;
    assert_eq!(res.status(), 201, "create tag {code}");
    body(res).await["id"].as_i64().unwrap()
}

/// Starts a run and waits until it has finished; returns its view.
pub async fn run(app: &TestApp, request: Value) -> Value {
    let res = app.post_json("/api/v1/tagging/runs", &request).await;
    assert_eq!(res.status(), 202);
    let accepted = body(res).await;
    let path = format!(
        "/api/v1/tagging/runs/{}?min_position={}",
        accepted["run_id"].as_str().unwrap(),
        accepted["position"]
    );
    eventually(Duration::from_secs(60), || async {
        let v = body(app.get(&path).await).await;
        matches!(v["state"].as_str(), Some("succeeded" | "failed")).then_some(v)
    })
    .await
    .expect("the run finishes")
}

async fn tags_of(app: &TestApp, id: &str) -> Value {
    body(app.get(&format!("/api/v1/subjects/user/{id}/tags")).await).await
}

fn ids(v: &Value) -> Vec<i64> {
    v["tag_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect()
}

const BASIC: &str = "user_id,register_time,register_country,kyc_status,user_level,updated_time
u1,2024-01-05,CN,true,3,2026-11-20
u2,2025-06-01 10:00:00,US,false,1,2026-11-01
u3,,CN,,5,2026-11-22
";
const ASSETS: &str = "user_id,total_asset_value
u1,150000.50
u2,999.99
u3,
u9,5
";
const ACTIVITY: &str = "user_id,last_login_time,login_count_7d
u1,2026-11-20T08:00:00Z,12
u2,2026-10-01T00:00:00Z,0
";

async fn seeded_app() -> TestApp {
    let app = spawn_app().await;
    declare_users(&app).await;
    for (source, csv) in [
        ("user_basic_info", BASIC),
        ("user_asset_summary", ASSETS),
        ("user_activity_summary", ACTIVITY),
    ] {
        import_ok(&app, source, csv).await;
    }
    let res = app
        .post_json(
            "/api/v1/tag-categories",
            &json!({"code": "value", "name": "Value"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    app
}

#[actix_web::test]
async fn a_full_run_tags_every_subject_by_its_rules_and_explains_them() {
    let app = seeded_app().await;
    let rich = create_tag(
        &app,
        "rich",
        "AUTO",
        Some(json!({"logic": "AND", "conditions": [
            {"field": "total_asset_value", "operator": ">=", "value": "100000", "type": "number"}]})),
    )
    .await;
    let active = create_tag(
        &app,
        "active",
        "AUTO",
        Some(json!({"logic": "OR", "conditions": [
            {"field": "login_count_7d", "operator": ">", "value": 5},
            {"field": "last_login_time", "operator": "recent_days", "value": 3}]})),
    )
    .await;
    let no_kyc = create_tag(
        &app,
        "no_kyc",
        "AUTO",
        Some(json!({"logic": "NOT", "conditions": [
            {"field": "kyc_status", "operator": "=", "value": true}]})),
    )
    .await;
    let v = run(
        &app,
        json!({"subject_kind": "user", "as_of": "2026-11-21T00:00:00Z"}),
    )
    .await;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(
        v["subjects_in_scope"], 3,
        "u9 is not in the primary source: {v}"
    );
    assert_eq!(v["subjects_evaluated"], 3);
    assert_eq!(ids(&tags_of(&app, "u1").await), vec![rich, active]);
    // u2: kyc false → NOT matches; u3: kyc null → NOT matches (two-valued logic).
    assert_eq!(ids(&tags_of(&app, "u2").await), vec![no_kyc]);
    assert_eq!(ids(&tags_of(&app, "u3").await), vec![no_kyc]);
    assert_eq!(v["tags_added"], 4);
    let u1 = tags_of(&app, "u1").await;
    assert_eq!(u1["tag_details"][rich.to_string()]["code"], "rich");
    assert_eq!(u1["tag_details"][rich.to_string()]["rule_version"], 1);
    // u9 has attributes but is no subject.
    assert_eq!(app.get("/api/v1/subjects/user/u9/tags").await.status(), 404);

    let e = body(
        app.get(&format!("/api/v1/subjects/user/u1/tags/{active}/explain"))
            .await,
    )
    .await;
    assert_eq!(e["result"], true, "{e}");
    assert_eq!(e["stored"], true);
    assert_eq!(e["conditions"].as_array().unwrap().len(), 2);
    assert_eq!(e["conditions"][0]["path"], "/conditions/0");
    assert_eq!(e["conditions"][0]["actual"], 12);

    // The list with tag filters, and its count.
    let page = body(
        app.get(&format!(
            "/api/v1/subjects/user?tags_any={rich},{no_kyc}&tags_none={active}&count=true"
        ))
        .await,
    )
    .await;
    let listed: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["subject_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec!["u2", "u3"]);
    assert_eq!(page["total"], 2);

    let stats = body(app.get(&format!("/api/v1/tags/{no_kyc}/stats")).await).await;
    assert_eq!(stats["subjects"], 2);
    assert_eq!(stats["last_run"]["matched"], 2);
}

async fn rule_tag(app: &TestApp, code: &str, conditions: Value) -> i64 {
    create_tag(
        app,
        code,
        "AUTO",
        Some(json!({"logic": "AND", "conditions": conditions})),
    )
    .await
}

#[actix_web::test]
async fn the_six_scenarios_merge_with_the_tags_they_do_not_cover() {
    let app = seeded_app().await;
    let level = rule_tag(
        &app,
        "level3",
        json!([{"field": "user_level", "operator": ">=", "value": 3}]),
    )
    .await;
    let cn = rule_tag(
        &app,
        "cn",
        json!([{"field": "register_country", "operator": "=", "value": "CN"}]),
    )
    .await;
    let as_of = "2026-11-21T00:00:00Z";
    // 1. all subjects × all tags
    let v = run(&app, json!({"subject_kind": "user", "as_of": as_of})).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(ids(&tags_of(&app, "u1").await), vec![level, cn]);
    assert_eq!(ids(&tags_of(&app, "u2").await), Vec::<i64>::new());
    assert_eq!(ids(&tags_of(&app, "u3").await), vec![level, cn]);

    // Rules change: level ≥ 5, cn becomes US.
    for (id, rule) in [
        (
            level,
            json!({"logic": "AND", "conditions": [{"field": "user_level", "operator": ">=", "value": 5}]}),
        ),
        (
            cn,
            json!({"logic": "AND", "conditions": [{"field": "register_country", "operator": "=", "value": "US"}]}),
        ),
    ] {
        let res = put_json(
            &app,
            &format!("/api/v1/tags/{id}/rule"),
            &json!({"rule": rule}),
        )
        .await;
        assert_eq!(res.status(), 200);
    }
    // 2. given subjects × given tags: only u1's `level` is recomputed; its `cn` is kept.
    let v = run(&app, json!({"subject_kind": "user", "as_of": as_of, "subject_ids": ["u1", "nobody"], "tag_ids": [level]})).await;
    assert_eq!(v["subjects_in_scope"], 1, "{v}");
    assert_eq!(v["unknown_subject_ids"], 1);
    assert_eq!(ids(&tags_of(&app, "u1").await), vec![cn]);
    assert_eq!(
        ids(&tags_of(&app, "u3").await),
        vec![level, cn],
        "outside the scope: untouched"
    );
    // 3. changed within 2 days of as_of: only u1 (basic row 2026-11-20); all tags.
    let v = run(
        &app,
        json!({"subject_kind": "user", "as_of": as_of, "changed_within_days": 2}),
    )
    .await;
    assert_eq!(v["subjects_in_scope"], 1, "{v}");
    assert_eq!(ids(&tags_of(&app, "u1").await), Vec::<i64>::new());
    assert_eq!(ids(&tags_of(&app, "u3").await), vec![level, cn]);
    // 4. changed within 2 days × given tags: u3 is in (2026-11-22) only with as_of later.
    let v = run(&app, json!({"subject_kind": "user", "as_of": "2026-11-22T12:00:00Z", "changed_within_days": 1, "tag_ids": [cn]})).await;
    assert_eq!(v["subjects_in_scope"], 1, "{v}");
    assert_eq!(
        ids(&tags_of(&app, "u3").await),
        vec![level],
        "cn recomputed, level kept"
    );
    // 5. given subjects × all tags
    let v = run(
        &app,
        json!({"subject_kind": "user", "as_of": as_of, "subject_ids": ["u2"]}),
    )
    .await;
    assert_eq!(v["subjects_in_scope"], 1, "{v}");
    assert_eq!(ids(&tags_of(&app, "u2").await), vec![cn]);
    // 6. all subjects × given tags
    let v = run(
        &app,
        json!({"subject_kind": "user", "as_of": as_of, "tag_ids": [level]}),
    )
    .await;
    assert_eq!(v["subjects_in_scope"], 3, "{v}");
    assert_eq!(ids(&tags_of(&app, "u1").await), Vec::<i64>::new());
    assert_eq!(ids(&tags_of(&app, "u2").await), vec![cn]);
    assert_eq!(ids(&tags_of(&app, "u3").await), vec![level]);

    // A retired tag is revoked by the next run that covers it.
    let res = app
        .client
        .delete(app.url(&format!("/api/v1/tags/{level}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v = run(&app, json!({"subject_kind": "user", "as_of": as_of})).await;
    assert_eq!(v["tags_removed"], 1, "{v}");
    assert_eq!(ids(&tags_of(&app, "u3").await), Vec::<i64>::new());

    // History: every add and remove of u3, with its run and rule version.
    let h = body(app.get("/api/v1/subjects/user/u3/tag-history").await).await;
    let steps: Vec<(i64, String, i64)> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["tag_id"].as_i64().unwrap(),
                i["action"].as_str().unwrap().to_owned(),
                i["rule_version"].as_i64().unwrap_or_else(|| panic!("{h}")),
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            (level, "added".into(), 1),
            (cn, "added".into(), 1),
            (cn, "removed".into(), 2),
            (level, "removed".into(), 2),
        ]
    );
    assert!(h["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["cause"] == "run" && i["run_id"].is_string()));
}

#[actix_web::test]
async fn manual_tags_are_kept_by_runs_and_refused_for_auto_tags() {
    let app = seeded_app().await;
    let auto = rule_tag(
        &app,
        "lvl",
        json!([{"field": "user_level", "operator": ">", "value": 2}]),
    )
    .await;
    let vip = create_tag(&app, "vip", "MANUAL", None).await;
    let path = format!("/api/v1/subjects/user/u2/tags/{vip}");
    assert_eq!(
        app.client
            .put(app.url(&path))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let res = app
        .client
        .put(app.url(&format!("/api/v1/subjects/user/u2/tags/{auto}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422, "an AUTO tag is not put by hand");
    let res = app
        .client
        .put(app.url(&format!("/api/v1/subjects/user/nobody/tags/{vip}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    run(&app, json!({"subject_kind": "user"})).await;
    assert_eq!(ids(&tags_of(&app, "u2").await), vec![vip]);
    assert_eq!(ids(&tags_of(&app, "u1").await), vec![auto]);
    let created = tags_of(&app, "u2").await["created_at"].clone();
    assert_eq!(
        app.client
            .delete(app.url(&path))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let after = eventually(Duration::from_secs(10), || async {
        let t = tags_of(&app, "u2").await;
        ids(&t).is_empty().then_some(t)
    })
    .await
    .expect("the manual tag goes");
    assert_eq!(after["created_at"], created, "created_at never moves");
    let h = body(app.get("/api/v1/subjects/user/u2/tag-history").await).await;
    let causes: Vec<(&str, &str)> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["action"].as_str().unwrap(), i["cause"].as_str().unwrap()))
        .collect();
    assert_eq!(causes, vec![("added", "manual"), ("removed", "manual")]);
}

#[actix_web::test]
async fn bad_rules_are_refused_with_a_pointer_to_the_offending_part() {
    let app = seeded_app().await;
    let cases = [
        (
            json!({"logic": "AND", "conditions": [{"field": "nope", "operator": "=", "value": 1}]}),
            "rule/conditions/0/field",
        ),
        (
            json!({"logic": "AND", "conditions": [{"field": "user_level", "operator": "contains", "value": "1"}]}),
            "rule/conditions/0/operator",
        ),
        (
            json!({"logic": "OR", "conditions": [{"field": "user_level", "operator": "=", "value": 1},
               {"field": "user_level", "operator": "in", "value": [1, "x"]}]}),
            "rule/conditions/1/value/1",
        ),
        (
            json!({"logic": "AND", "conditions": [{"field": "register_country", "operator": "=", "value": "CN", "type": "number"}]}),
            "rule/conditions/0/type",
        ),
        (json!({"logic": "XOR", "conditions": []}), "rule/logic"),
    ];
    for (rule, field) in cases {
        let res = app
            .post_json("/api/v1/tags", &json!({"code": "t", "name": "t", "category": "value", "kind": "AUTO", "subject_kind": "user", "rule": rule}))
            .await;
        assert_eq!(res.status(), 422, "{rule}");
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "application/problem+json"
        );
        let p = body(res).await;
        assert_eq!(p["field"], field, "{p}");
    }
    // Nesting deeper than 8 groups.
    let mut deep = json!({"field": "user_level", "operator": "is_null"});
    for _ in 0..9 {
        deep = json!({"logic": "AND", "conditions": [deep]});
    }
    let res = app
        .post_json("/api/v1/tags", &json!({"code": "t", "name": "t", "category": "value", "kind": "AUTO", "subject_kind": "user", "rule": deep}))
        .await;
    assert_eq!(res.status(), 422);
    // Nothing was created; a good tag after them gets through, and a taken code is 409.
    assert_eq!(
        body(app.get("/api/v1/tags").await).await["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let t = rule_tag(
        &app,
        "t",
        json!([{"field": "user_level", "operator": "is_null"}]),
    )
    .await;
    let res = app
        .post_json("/api/v1/tags", &json!({"code": "t", "name": "t", "category": "value", "kind": "MANUAL", "subject_kind": "user"}))
        .await;
    assert_eq!(res.status(), 409);
    // Preview checks the same way and saves nothing.
    let preview = json!({"rule": {"logic": "AND", "conditions": [{"field": "user_level", "operator": ">=", "value": 3}]}});
    let p = eventually(Duration::from_secs(10), || async {
        let res = app
            .post_json(&format!("/api/v1/tags/{t}/rule:preview"), &preview)
            .await;
        (res.status() == 200).then_some(res)
    })
    .await
    .expect("the tag becomes readable");
    let p = body(p).await;
    assert_eq!(p["matched"], 2, "{p}");
    assert_eq!(p["sample"], json!(["u1", "u3"]));
}

#[actix_web::test]
async fn a_bad_row_rejects_the_whole_import_and_applies_nothing() {
    let app = spawn_app().await;
    declare_users(&app).await;
    let cases = [
        ("user_id,user_level\nu1,3\nu2,abc\n", 2, "user_level"),
        ("user_id,register_time\nu1,2024-13-01\n", 1, "register_time"),
        ("user_id,shoe_size\nu1,3\n", 0, "shoe_size"),
        ("user_id,user_level\nu1,3\n,4\n", 2, "user_id"),
        ("user_id,user_level\nu1,3\nu1,4\n", 2, "user_id"),
        ("user_id,total_asset_value\nu1,3\n", 0, "total_asset_value"),
    ];
    for (csv, row, column) in cases {
        let res = import(&app, "user_basic_info", "text/csv", csv).await;
        assert_eq!(res.status(), 422, "{csv}");
        let p = body(res).await;
        assert_eq!(p["code"], "invalid_row", "{p}");
        assert_eq!(p["row"], row, "{p}");
        assert_eq!(p["field"], column, "{p}");
    }
    let res = import(&app, "user_basic_info", "application/json", "{}").await;
    assert_eq!(res.status(), 415);
    let res = import(&app, "nope", "text/csv", "user_id\nu1\n").await;
    assert_eq!(res.status(), 422);
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM events WHERE stream_type = 'subject_import'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM staged_events").await,
        0,
        "staged events are discarded"
    );

    // NDJSON: a good file applies; a missing key is null.
    let nd = "{\"user_id\": \"a\", \"user_level\": 2, \"kyc_status\": true}\n{\"user_id\": \"b\", \"register_country\": \"CN\"}\n";
    let res = import(&app, "user_basic_info", "application/x-ndjson", nd).await;
    assert_eq!(res.status(), 200);
    let r = body(res).await;
    assert_eq!(r["rows"], 2);
    let res = app
        .get(&format!(
            "/api/v1/subjects/user?min_position={}",
            r["position"]
        ))
        .await;
    let page = body(res).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");
}

/// Every operator on every type, nulls and bounds included: what the runs store (SQL)
/// equals what explain computes (Rust) for every subject and tag.
#[actix_web::test]
async fn sql_and_explain_agree_on_every_operator_and_type() {
    let app = spawn_app().await;
    let res = put_json(
        &app,
        "/api/v1/subject-kinds/user",
        &json!({"id_field": "user_id", "primary_source": "s", "attributes": [
            {"name": "n", "type": "number", "source": "s"},
            {"name": "t", "type": "string", "source": "s"},
            {"name": "d", "type": "date", "source": "s"},
            {"name": "b", "type": "boolean", "source": "s"}]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let csv = "user_id,n,t,d,b
a,10,abc,2026-11-20T00:00:00Z,true
b,10.0,ABC,2026-11-13,false
c,-0.5,xabcx,2026-11-21 00:00:00,true
d,,,,
e,1000000000000.000001,,2020-01-01,
";
    let res = app
        .client
        .post(app.url("/api/v1/subjects/user/import?source=s"))
        .insert_header(("Content-Type", "text/csv"))
        .send_body(csv)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .post_json(
            "/api/v1/tag-categories",
            &json!({"code": "value", "name": "V"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let conditions = [
        json!({"field": "n", "operator": "=", "value": 10}),
        json!({"field": "n", "operator": "!=", "value": "10"}),
        json!({"field": "n", "operator": ">", "value": -0.5}),
        json!({"field": "n", "operator": "<", "value": 10}),
        json!({"field": "n", "operator": ">=", "value": 10}),
        json!({"field": "n", "operator": "<=", "value": -0.5}),
        json!({"field": "n", "operator": "in", "value": [10, "-0.5"]}),
        json!({"field": "n", "operator": "not_in", "value": [10]}),
        json!({"field": "n", "operator": "in_range", "value": [-0.5, 10]}),
        json!({"field": "n", "operator": "in_range", "value": {"min": 11}}),
        json!({"field": "n", "operator": "is_null"}),
        json!({"field": "n", "operator": "is_not_null"}),
        json!({"field": "t", "operator": "=", "value": "abc"}),
        json!({"field": "t", "operator": "!=", "value": "abc"}),
        json!({"field": "t", "operator": "in", "value": ["abc", "ABC"]}),
        json!({"field": "t", "operator": "not_in", "value": ["abc"]}),
        json!({"field": "t", "operator": "contains", "value": "abc"}),
        json!({"field": "t", "operator": "is_null"}),
        json!({"field": "d", "operator": "=", "value": "2026-11-13"}),
        json!({"field": "d", "operator": ">", "value": "2026-11-13T00:00:00Z"}),
        json!({"field": "d", "operator": "<=", "value": "2026-11-20"}),
        json!({"field": "d", "operator": "in_range", "value": {"max": "2026-11-20"}}),
        json!({"field": "d", "operator": "recent_days", "value": 7}),
        json!({"field": "d", "operator": "recent_days", "value": 0}),
        json!({"field": "d", "operator": "is_not_null"}),
        json!({"field": "b", "operator": "=", "value": true}),
        json!({"field": "b", "operator": "!=", "value": true}),
        json!({"field": "b", "operator": "is_null"}),
    ];
    let mut tags = Vec::new();
    for (i, c) in conditions.iter().enumerate() {
        tags.push(rule_tag(&app, &format!("c{i}"), json!([c])).await);
    }
    // The three logics, nested.
    tags.push(
        create_tag(&app, "nested", "AUTO", Some(json!({"logic": "OR", "conditions": [
            {"logic": "NOT", "conditions": [{"field": "b", "operator": "=", "value": true}]},
            {"logic": "AND", "conditions": [{"field": "n", "operator": ">", "value": 0}, {"field": "t", "operator": "contains", "value": "x"}]}]})))
        .await,
    );
    // as_of = 2026-11-20T00:00:00Z: recent_days 7 reaches back to 2026-11-13 exactly,
    // recent_days 0 is the instant itself.
    let v = run(
        &app,
        json!({"subject_kind": "user", "as_of": "2026-11-20T00:00:00Z"}),
    )
    .await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let mut held_somewhere = 0;
    for s in ["a", "b", "c", "d", "e"] {
        let stored = ids(&tags_of(&app, s).await);
        for t in &tags {
            let e = body(
                app.get(&format!("/api/v1/subjects/user/{s}/tags/{t}/explain"))
                    .await,
            )
            .await;
            assert_eq!(
                e["result"].as_bool().unwrap(),
                stored.contains(t),
                "subject {s}, tag {t}: {e}"
            );
            assert_eq!(e["stored"].as_bool().unwrap(), stored.contains(t));
            held_somewhere += i32::from(stored.contains(t));
        }
    }
    assert!(held_somewhere > 20, "the cases are not all false");
    // A few facts checked by hand: null satisfies only is_null; NOT of a null field holds.
    let d = ids(&tags_of(&app, "d").await);
    let expect_d: Vec<i64> = [10usize, 17, 27]
        .iter()
        .map(|i| tags[*i])
        .chain([*tags.last().unwrap()])
        .collect();
    assert_eq!(d, expect_d);
    let a = ids(&tags_of(&app, "a").await);
    assert!(
        a.contains(&tags[22]) && a.contains(&tags[23]),
        "recent_days includes as_of itself"
    );
    let b = ids(&tags_of(&app, "b").await);
    assert!(
        b.contains(&tags[0]) && b.contains(&tags[22]),
        "10.0 = 10; 2026-11-13 is 7 days back, inclusive"
    );
}

#[actix_web::test]
async fn rebuilt_tagging_read_models_equal_the_live_ones() {
    let app = seeded_app().await;
    let lvl = rule_tag(
        &app,
        "lvl",
        json!([{"field": "user_level", "operator": ">", "value": 2}]),
    )
    .await;
    let vip = create_tag(&app, "vip", "MANUAL", None).await;
    let path = format!("/api/v1/subjects/user/u2/tags/{vip}");
    assert_eq!(
        app.client
            .put(app.url(&path))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    run(&app, json!({"subject_kind": "user"})).await;
    let res = put_json(&app, &format!("/api/v1/tags/{lvl}/rule"), &json!({"rule": {"logic": "AND", "conditions": [{"field": "user_level", "operator": ">", "value": 4}]}})).await;
    assert_eq!(res.status(), 200);
    let v = run(&app, json!({"subject_kind": "user"})).await;
    assert_eq!(v["state"], "succeeded");
    let tables = [
        ("subject_tags", "SELECT concat_ws('|', tenant_id, kind, subject_id, tag_ids, assigned, created_at, updated_at) FROM subject_tags"),
        ("subject_tags", "SELECT concat_ws('|', subject_id, position, at, run_id, added, removed) FROM subject_tag_history"),
        ("subject_tags", "SELECT concat_ws('|', position, at, run_id, tags) FROM tag_change_sets"),
        ("subject_attributes", "SELECT concat_ws('|', subject_id, is_subject, attrs, source_times, max_updated) FROM subject_attributes"),
        ("tags", "SELECT concat_ws('|', id, code, rule, rule_version, retired, version, created_at, updated_at) FROM tags"),
        ("subject_kinds", "SELECT concat_ws('|', kind, attributes, version) FROM subject_kinds"),
    ];
    let mut live = Vec::new();
    for (_, sql) in &tables {
        let rows = snapshot(&app.conn, sql).await;
        assert!(!rows.is_empty(), "{sql}");
        live.push(rows);
    }
    for name in [
        "subject_tags",
        "subject_attributes",
        "tags",
        "subject_kinds",
    ] {
        rebuild_and_wait(&app, name).await;
    }
    for ((_, sql), before) in tables.iter().zip(live) {
        assert_eq!(snapshot(&app.conn, sql).await, before, "{sql}");
    }
    // The swapped-in copy keeps the live table's storage parameters (sql/V28), and the
    // GIN index its own.
    let options = snapshot(
        &app.conn,
        "SELECT c.relname || ' ' || coalesce(array_to_string(c.reloptions, ','), 'none') FROM pg_class c
          WHERE c.oid IN ('public.subject_attributes'::regclass, 'public.subject_tags_ids'::regclass)
          ORDER BY 1",
    )
    .await;
    assert_eq!(
        options,
        [
            "subject_attributes fillfactor=70",
            "subject_tags_ids gin_pending_list_limit=32768"
        ]
    );
}

#[actix_web::test]
async fn a_run_found_running_after_a_restart_is_run_again_without_doing_anything_twice() {
    let app = seeded_app().await;
    rule_tag(
        &app,
        "lvl",
        json!([{"field": "user_level", "operator": ">", "value": 2}]),
    )
    .await;
    let v = run(&app, json!({"subject_kind": "user"})).await;
    assert_eq!(v["state"], "succeeded");
    let run_id = v["run_id"].as_str().unwrap().to_owned();
    let events = |conn: String| async move {
        count(
            &conn,
            "SELECT count(*) FROM events WHERE stream_type = 'tag_run'",
        )
        .await
    };
    let before = events(app.conn.clone()).await;
    // The server stops; as if it had died after appending the run's events but before
    // recording the job's end, the job is left `running`.
    app.handle.stop(true).await;
    app.background.stop_background().await;
    let client = cloudlens::db::connect(&app.conn).await.unwrap();
    client
        .execute(
            "UPDATE jobs SET state = 'running', finished_at = NULL WHERE id = $1",
            &[&uuid::Uuid::parse_str(&run_id).unwrap()],
        )
        .await
        .unwrap();
    // The next server's runner takes the orphan up again: the run finds its completion
    // in the log and reports it; nothing is appended twice.
    let app = spawn_app_on(app.conn.clone(), test_settings()).await;
    let again = eventually(Duration::from_secs(30), || async {
        let v = body(app.get(&format!("/api/v1/tagging/runs/{run_id}")).await).await;
        (v["state"] == "succeeded" && v["restarts"] == 1).then_some(v)
    })
    .await
    .expect("the orphaned run finishes again");
    assert_eq!(again["tags_added"], v["tags_added"]);
    assert_eq!(events(app.conn.clone()).await, before);
    assert_eq!(ids(&tags_of(&app, "u1").await).len(), 1);
}

#[actix_web::test]
async fn a_run_interrupted_before_its_commit_runs_again_from_the_start_after_a_restart() {
    use cloudlens::eventstore::{codec, StreamEvents};
    use cloudlens::tagging::events::{RunRequest, TagRunEvent};
    let app = seeded_app().await;
    rule_tag(
        &app,
        "lvl",
        json!([{"field": "user_level", "operator": ">", "value": 2}]),
    )
    .await;
    let conn = app.conn.clone();
    app.handle.stop(true).await;
    app.background.stop_background().await;
    // The state a crash leaves behind when it hits a run before its commit: the request
    // is in the log, its job is `running`, none of its changes are.
    let run_id = uuid::Uuid::now_v7();
    let requested = codec::encode(&TagRunEvent::TagRunRequested(RunRequest {
        subject_kind: "user".into(),
        tag_ids: None,
        subject_ids: None,
        changed_within_days: None,
        as_of: chrono::Utc::now(),
    }))
    .unwrap();
    let appended = store(&conn, 1)
        .append_streams(
            "default",
            &json!({}),
            &[StreamEvents {
                stream_type: "tag_run",
                stream_id: run_id,
                expected_version: 0,
                events: vec![requested],
            }],
            None,
        )
        .await
        .unwrap();
    cloudlens::db::connect(&conn)
        .await
        .unwrap()
        .execute(
            "INSERT INTO jobs (id, tenant_id, kind, params, position, state, attempts, requested_at, started_at)
             SELECT $1, 'default', 'tagging.run', payload, $2, 'running', 1, now(), now()
               FROM events WHERE stream_id = $1",
            &[&run_id, &appended[0].position],
        )
        .await
        .unwrap();
    let app = spawn_app_on(conn.clone(), test_settings()).await;
    let v = eventually(Duration::from_secs(30), || async {
        let v = body(app.get(&format!("/api/v1/tagging/runs/{run_id}")).await).await;
        (v["state"] == "succeeded").then_some(v)
    })
    .await
    .expect("the interrupted run is run again");
    assert_eq!(v["restarts"], 1, "{v}");
    assert_eq!(v["tags_added"], 2, "u1 and u3 have level > 2: {v}");
    assert_eq!(ids(&tags_of(&app, "u3").await).len(), 1);
    let completions = count(
        &conn,
        "SELECT count(*) FROM events WHERE stream_type = 'tag_run' AND event_type = 'TagRunCompleted'",
    )
    .await;
    assert_eq!(completions, 1);
}

#[actix_web::test]
async fn retries_under_one_idempotency_key_create_one_tag_and_apply_one_import() {
    let app = seeded_app().await;
    let events = || count(&app.conn, "SELECT count(*) FROM events");
    // POST /api/v1/tags: the same request again answers the same, appends nothing.
    let draft = json!({"code": "vip", "name": "VIP", "category": "value", "kind": "MANUAL",
                       "subject_kind": "user"});
    let post = |key: &'static str, draft: Value| {
        let app = &app;
        async move {
            let mut res = app
                .client
                .post(app.url("/api/v1/tags"))
                .insert_header(("Idempotency-Key", key))
                .send_json(&draft)
                .await
                .unwrap();
            let v: Value = res.json().await.unwrap();
            (res.status().as_u16(), v)
        }
    };
    let first = post("tag-1", draft.clone()).await;
    assert_eq!(first.0, 201, "{first:?}");
    let before = events().await;
    let again = post("tag-1", draft.clone()).await;
    assert_eq!(again, first);
    assert_eq!(events().await, before);
    // The same key with another request is refused; a new key is a new command (here:
    // the code is taken).
    let mut other = draft.clone();
    other["name"] = json!("Very important");
    assert_eq!(post("tag-1", other).await.0, 422);
    assert_eq!(post("tag-2", draft).await.0, 409);
    assert_eq!(events().await, before);

    // An import: the same body under the same key answers the first import's result.
    let csv = "user_id,total_asset_value\nu1,5\n";
    let import_keyed = |key: &'static str, csv: &'static str| {
        let app = &app;
        async move {
            let mut res = app
                .client
                .post(app.url("/api/v1/subjects/user/import?source=user_asset_summary"))
                .insert_header(("Content-Type", "text/csv"))
                .insert_header(("Idempotency-Key", key))
                .send_body(csv)
                .await
                .unwrap();
            let v: Value = res.json().await.unwrap();
            (res.status().as_u16(), v)
        }
    };
    let first = import_keyed("import-1", csv).await;
    assert_eq!(first.0, 200, "{first:?}");
    assert_eq!(first.1["rows"], 1);
    let before = events().await;
    assert_eq!(import_keyed("import-1", csv).await, first);
    assert_eq!(events().await, before, "the retry applied nothing");
    let changed = import_keyed("import-1", "user_id,total_asset_value\nu1,6\n").await;
    assert_eq!(changed.0, 422, "{changed:?}");
    assert_eq!(changed.1["code"], "idempotency_key_reused");
    assert_eq!(events().await, before);
}
