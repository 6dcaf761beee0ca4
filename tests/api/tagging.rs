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

async fn body(mut res: Response) -> Value {
    res.json::<Value>().limit(64 << 20).await.unwrap()
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
async fn run(app: &TestApp, request: Value) -> Value {
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
