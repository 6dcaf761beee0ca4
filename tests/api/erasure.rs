#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Sensitive attributes and crypto-shredding end to end: sealed in the log, readable in
//! the read model, erased everywhere by a forget (live, in runs, after a rebuild) while
//! the other attributes stay.

use serde_json::{json, Value};

use crate::helpers::*;

const PHONE_1: &str = "+8613800000001";
const PHONE_2: &str = "+8613800000002";

async fn declare_people(app: &TestApp) -> awc::http::StatusCode {
    app.client
        .put(app.url("/api/v1/subject-kinds/person"))
        .send_json(&json!({
            "id_field": "person_id", "primary_source": "basic",
            "attributes": [
                {"name": "phone", "type": "string", "source": "basic", "sensitive": true},
                {"name": "email", "type": "string", "source": "basic", "sensitive": true},
                {"name": "country", "type": "string", "source": "basic"},
                {"name": "score", "type": "number", "source": "extra"}
            ]
        }))
        .await
        .unwrap()
        .status()
}

async fn import(app: &TestApp, source: &str, csv: &str) -> Response {
    app.client
        .post(app.url(&format!("/api/v1/subjects/person/import?source={source}")))
        .insert_header(("Content-Type", "text/csv"))
        .send_body(csv.to_owned())
        .await
        .unwrap()
}

async fn import_ok(app: &TestApp, source: &str, csv: &str) -> i64 {
    let res = import(app, source, csv).await;
    assert_eq!(res.status(), 200, "import of {source}");
    body(res).await["position"].as_i64().unwrap()
}

async fn person(app: &TestApp, id: &str, position: i64) -> Value {
    let res = app
        .get(&format!(
            "/api/v1/subjects/person/{id}?min_position={position}"
        ))
        .await;
    assert_eq!(res.status(), 200);
    body(res).await
}

async fn forget(app: &TestApp, kind: &str, id: &str) -> Response {
    app.client
        .post(app.url(&format!("/api/v1/subjects/{kind}/{id}:forget")))
        .send()
        .await
        .unwrap()
}

/// Runs the tag's rules over all people; the ids holding `tag`.
async fn tagged(app: &TestApp, tag: i64) -> Vec<String> {
    let run = crate::tagging::run(app, json!({"subject_kind": "person"})).await;
    assert_eq!(run["state"], "succeeded");
    let mut ids = Vec::new();
    for id in ["p1", "p2"] {
        let v = body(
            app.get(&format!(
                "/api/v1/subjects/person/{id}/tags?min_position={}",
                run["position"]
            ))
            .await,
        )
        .await;
        if v["tag_ids"]
            .as_array()
            .is_some_and(|t| t.contains(&json!(tag)))
        {
            ids.push(id.to_owned());
        }
    }
    ids
}

const ATTRIBUTES_SQL: &str = "SELECT concat_ws('|', tenant_id, kind, subject_id, is_subject, \
    attrs, source_times, max_updated, erased, erased_at) FROM subject_attributes";

#[actix_web::test]
async fn a_forgotten_subject_s_sensitive_attributes_are_erased_everywhere_and_stay_erased() {
    let app = spawn_app().await;
    assert_eq!(declare_people(&app).await, 200);
    let csv = format!(
        "person_id,phone,email,country\np1,{PHONE_1},one@example.cn,CN\np2,{PHONE_2},two@example.com,US\n"
    );
    import_ok(&app, "basic", &csv).await;
    let at = import_ok(&app, "extra", "person_id,score\np1,10.5\np2,7\n").await;

    // Sealed in the log: no plaintext in any event, one data key per subject.
    assert_eq!(
        count(&app.conn, &format!("SELECT count(*) FROM events WHERE payload::text LIKE '%{PHONE_1}%' OR payload::text LIKE '%one@example%'")).await,
        0
    );
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM events WHERE payload::text LIKE '%\"sealed\"%'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM subject_keys WHERE wrapped IS NOT NULL"
        )
        .await,
        2
    );
    let p1 = person(&app, "p1", at).await;
    assert_eq!(p1["attributes"]["phone"], PHONE_1);
    assert_eq!(p1["attributes"]["email"], "one@example.cn");
    assert_eq!(p1["erased"], json!([]));

    // A rule on a sensitive attribute sees it while it exists.
    assert_eq!(
        app.post_json(
            "/api/v1/tag-categories",
            &json!({"code": "contact", "name": "Contact"})
        )
        .await
        .status(),
        201
    );
    let res = app
        .post_json(
            "/api/v1/tags",
            &json!({"code": "reachable", "name": "Reachable", "category": "contact",
                    "kind": "AUTO", "subject_kind": "person",
                    "rule": {"logic": "AND", "conditions": [{"field": "phone", "operator": "is_not_null"}]}}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let tag = body(res).await["id"].as_i64().unwrap();
    assert_eq!(tagged(&app, tag).await, ["p1", "p2"]);

    // Forget p1.
    let res = forget(&app, "person", "p1").await;
    assert_eq!(res.status(), 200);
    let forgot = body(res).await;
    assert_eq!(forgot["erased"], json!(["phone", "email"]));
    assert_eq!(forgot["keys_destroyed"], 1);
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM subject_keys WHERE subject_id = 'p1' AND wrapped IS NULL AND destroyed_at IS NOT NULL").await,
        1
    );
    let position = forgot["position"].as_i64().unwrap();
    let p1 = person(&app, "p1", position).await;
    assert_eq!(p1["attributes"], json!({"country": "CN", "score": 10.5}));
    assert_eq!(p1["erased"], json!(["phone", "email"]));
    assert!(p1["erased_at"].is_string());
    let p2 = person(&app, "p2", position).await;
    assert_eq!(
        p2["attributes"]["phone"], PHONE_2,
        "other subjects keep theirs"
    );
    // Rules treat the erased attribute as null.
    assert_eq!(tagged(&app, tag).await, ["p2"]);

    // A rebuild from the log cannot read the erased values back; it equals the live model.
    let live = snapshot(&app.conn, ATTRIBUTES_SQL).await;
    rebuild_and_wait(&app, "subject_attributes").await;
    assert_eq!(snapshot(&app.conn, ATTRIBUTES_SQL).await, live);
    let p1 = person(&app, "p1", position).await;
    assert_eq!(p1["attributes"], json!({"country": "CN", "score": 10.5}));

    // Forgetting again destroys nothing more; unknown subjects and kinds are 404.
    let again = forget(&app, "person", "p1").await;
    assert_eq!(again.status(), 200);
    assert_eq!(body(again).await["keys_destroyed"], 0);
    for (kind, id) in [("person", "nobody"), ("robot", "p1")] {
        let res = forget(&app, kind, id).await;
        assert_eq!(res.status(), 404);
        assert_eq!(body(res).await["code"], "not_found");
    }

    // Imported again after the forget: sealed under a new key, readable again, and a
    // rebuild still equals the live model (the old values stay erased).
    let at = import_ok(
        &app,
        "basic",
        "person_id,phone,country\np1,+8613900000009,CN\n",
    )
    .await;
    let p1 = person(&app, "p1", at).await;
    assert_eq!(p1["attributes"]["phone"], "+8613900000009");
    assert_eq!(p1["attributes"].get("email"), None);
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM subject_keys WHERE subject_id = 'p1'"
        )
        .await,
        2
    );
    let live = snapshot(&app.conn, ATTRIBUTES_SQL).await;
    rebuild_and_wait(&app, "subject_attributes").await;
    assert_eq!(snapshot(&app.conn, ATTRIBUTES_SQL).await, live);

    // A retried forget (same Idempotency-Key) answers as the first one and destroys no
    // key made since: p2's new values stay readable.
    let forget_p2 = || async {
        app.client
            .post(app.url("/api/v1/subjects/person/p2:forget"))
            .insert_header(("Idempotency-Key", "forget-p2"))
            .send()
            .await
            .unwrap()
    };
    let first = body(forget_p2().await).await;
    assert_eq!(first["keys_destroyed"], 1);
    let at = import_ok(&app, "basic", "person_id,phone\np2,+8613900000002\n").await;
    let retried = forget_p2().await;
    assert_eq!(retried.status(), 200);
    assert_eq!(body(retried).await, first);
    let p2 = person(&app, "p2", at).await;
    assert_eq!(p2["attributes"]["phone"], "+8613900000002");
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM subject_keys WHERE subject_id = 'p2' AND wrapped IS NOT NULL"
        )
        .await,
        1
    );

    // Whether an attribute is sensitive is fixed once declared.
    let res = app
        .client
        .put(app.url("/api/v1/subject-kinds/person"))
        .send_json(&json!({
            "id_field": "person_id", "primary_source": "basic",
            "attributes": [
                {"name": "phone", "type": "string", "source": "basic"},
                {"name": "email", "type": "string", "source": "basic", "sensitive": true},
                {"name": "country", "type": "string", "source": "basic"},
                {"name": "score", "type": "number", "source": "extra"}
            ]
        }))
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(body(res).await["field"], "attributes/0/sensitive");
}

#[actix_web::test]
async fn without_a_master_key_sensitive_values_are_refused_and_nothing_is_written() {
    let settings = cloudlens::config::Settings {
        master_key: None,
        ..test_settings()
    };
    let app = spawn_app_on(fresh_database().await, settings).await;
    assert_eq!(declare_people(&app).await, 200);
    let res = import(&app, "basic", "person_id,phone\np1,+8613800000001\n").await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("Retry-After").is_none());
    assert_eq!(body(res).await["code"], "encryption_unavailable");
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM events WHERE stream_type = 'subject_import'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM subject_keys").await,
        0
    );
    // Sources without sensitive attributes import as before.
    import_ok(&app, "extra", "person_id,score\np1,1\n").await;
}
