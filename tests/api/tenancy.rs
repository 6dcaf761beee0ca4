#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Tenants isolated by row-level security (ADR 0015): every read model is secured, a
//! query with its tenant filter removed still sees only its tenant's rows, and a rebuilt
//! read model is swapped in secured.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// Every table of every projector the server runs, with its projector.
fn read_model_tables() -> Vec<(String, &'static str)> {
    cloudlens::context::projections(&cloudlens::config::Settings::default())
        .iter()
        .flat_map(|p| {
            let name = p.name().to_owned();
            p.tables().into_iter().map(move |t| (name.clone(), t))
        })
        .collect()
}

async fn post_as(app: &TestApp, tenant: &str, path: &str, body: &Value) -> Value {
    let mut res = app
        .client
        .post(app.url(path))
        .insert_header(("X-Tenant-Id", tenant))
        .send_json(body)
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    res.json().await.unwrap()
}

/// Waits until `tenant`'s budget is in the read model.
async fn visible(app: &TestApp, tenant: &str, created: &Value) {
    let res = app
        .client
        .get(app.url(&format!(
            "/api/v1/budgets/{}?min_position={}",
            created["id"].as_str().unwrap(),
            created["position"]
        )))
        .insert_header(("X-Tenant-Id", tenant))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn every_read_model_table_is_secured_and_the_query_role_owns_none() {
    let app = spawn_app().await;
    let owner = cloudlens::db::connect(&app.conn).await.unwrap();
    let tables = read_model_tables();
    assert!(tables.len() >= 15, "{tables:?}");
    for (projection, t) in &tables {
        let row = owner
            .query_one(
                "SELECT c.relrowsecurity,
                        EXISTS (SELECT 1 FROM pg_policies p
                                WHERE p.tablename = c.relname AND p.schemaname = 'public'
                                  AND 'cloudlens_query' = ANY (p.roles)),
                        has_table_privilege('cloudlens_query', c.oid, 'SELECT'),
                        EXISTS (SELECT 1 FROM pg_attribute a
                                WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'),
                        pg_get_userbyid(c.relowner) <> 'cloudlens_query'
                 FROM pg_class c WHERE c.oid = ('public.' || $1)::regclass",
                &[t],
            )
            .await
            .unwrap();
        let (rls, policy, select, tenant_col, not_owner): (bool, bool, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        assert!(rls, "{projection}: {t} has no row-level security");
        assert!(not_owner, "{t} is owned by the query role");
        // Readable by the query role exactly when a policy filters it by tenant.
        assert_eq!(policy, tenant_col, "{t}: policy");
        assert_eq!(select, tenant_col, "{t}: SELECT grant");
    }
    let role = owner
        .query_one(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'cloudlens_query'",
            &[],
        )
        .await
        .unwrap();
    assert!(!role.get::<_, bool>(0) && !role.get::<_, bool>(1));
    app.handle.stop(true).await;
}

#[actix_web::test]
async fn a_query_without_its_tenant_filter_still_sees_only_its_tenant() {
    let app = spawn_app().await;
    let mut mine = Vec::new();
    for (tenant, n) in [("acme", 3), ("globex", 2)] {
        for i in 0..n {
            let created = post_as(
                &app,
                tenant,
                "/api/v1/budgets",
                &budget_body(&format!("b{i}")),
            )
            .await;
            if tenant == "acme" {
                mine.push(created["id"].as_str().unwrap().to_owned());
            }
            visible(&app, tenant, &created).await;
        }
        let category = post_as(
            &app,
            tenant,
            "/api/v1/tag-categories",
            &json!({"code": "tier", "name": "Tier"}),
        )
        .await;
        let res = app
            .client
            .get(app.url(&format!(
                "/api/v1/tag-categories?min_position={}",
                category["position"]
            )))
            .insert_header(("X-Tenant-Id", tenant))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }

    let reader = cloudlens::db::Reader::new(&app.conn, 1, 4);
    let acme = reader.tenant("acme").await.unwrap();
    let who: String = acme
        .client()
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "cloudlens_query");

    // The budgets query with its WHERE clause removed.
    let rows = acme
        .client()
        .query("SELECT id::text, tenant_id FROM budgets_view", &[])
        .await
        .unwrap();
    let mut ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort();
    mine.sort();
    assert_eq!(ids, mine);
    assert!(rows.iter().all(|r| r.get::<_, String>(1) == "acme"));

    // The tenant's connections for pages of lists (a group of their own, three here) are
    // bound to it just the same.
    let reader = cloudlens::db::Reader::new(&app.conn, 1, 4).with_page_connections(3);
    let point = reader.tenant("acme").await.unwrap();
    let pid = |c: std::sync::Arc<cloudlens::db::ReadConnection>| async move {
        c.client()
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
    };
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let page = reader.tenant_pages("acme").await.unwrap();
        let rows = page
            .client()
            .query("SELECT tenant_id FROM budgets_view", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), mine.len());
        assert!(rows.iter().all(|r| r.get::<_, String>(0) == "acme"));
        pids.insert(pid(page).await);
    }
    assert_eq!(pids.len(), 3, "the pages' group has its three connections");
    assert!(
        !pids.contains(&pid(point).await),
        "apart from the point reads'"
    );

    // Every readable read model: no row of another tenant, whatever the table holds.
    let owner = reader.get().await.unwrap();
    let all: i64 = owner
        .client()
        .query_one("SELECT count(*) FROM budgets_view", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(all, 5, "the owner sees every tenant");
    for (_, t) in read_model_tables() {
        let readable: bool = owner
            .client()
            .query_one(
                "SELECT has_table_privilege('cloudlens_query', ('public.' || $1)::regclass, 'SELECT')",
                &[&t],
            )
            .await
            .unwrap()
            .get(0);
        if readable {
            let others: i64 = acme
                .client()
                .query_one(
                    &format!("SELECT count(*) FROM {t} WHERE tenant_id <> 'acme'"),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(others, 0, "{t} shows another tenant's rows");
        } else {
            let denied = acme
                .client()
                .query(&format!("SELECT 1 FROM {t}"), &[])
                .await
                .unwrap_err();
            assert_eq!(
                denied.code(),
                Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                "{t}: {denied:?}"
            );
        }
    }
    let categories: i64 = acme
        .client()
        .query_one("SELECT count(*) FROM tag_categories", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(categories, 1);

    // The query role without a tenant sees nothing.
    let unbound = cloudlens::db::connect(&app.conn).await.unwrap();
    unbound
        .batch_execute("SET ROLE cloudlens_query")
        .await
        .unwrap();
    let n: i64 = unbound
        .query_one("SELECT count(*) FROM budgets_view", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // Over HTTP, another tenant's budget is not found.
    let res = app
        .client
        .get(app.url(&format!("/api/v1/budgets/{}", mine[0])))
        .insert_header(("X-Tenant-Id", "globex"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    app.handle.stop(true).await;
}

#[actix_web::test]
async fn a_rebuilt_read_model_is_swapped_in_secured() {
    let app = spawn_app().await;
    for tenant in ["acme", "globex"] {
        let created = post_as(&app, tenant, "/api/v1/budgets", &budget_body("b")).await;
        visible(&app, tenant, &created).await;
    }
    app.start_rebuild("budgets").await;
    let done = eventually(Duration::from_secs(60), || async {
        let mut r = app.get("/api/v1/admin/projections").await;
        let v: Value = r.json().await.ok()?;
        let budgets = v["projections"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "budgets")?
            .clone();
        (budgets["rebuild"]["state"] == "done").then_some(())
    })
    .await;
    assert!(done.is_some(), "rebuild did not finish");

    let reader = cloudlens::db::Reader::new(&app.conn, 1, 4);
    let acme = reader.tenant("acme").await.unwrap();
    let tenants: Vec<String> = acme
        .client()
        .query("SELECT DISTINCT tenant_id FROM budgets_view", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tenants, vec!["acme".to_owned()]);
    let owner = reader.get().await.unwrap();
    let rls: bool = owner
        .client()
        .query_one(
            "SELECT relrowsecurity FROM pg_class WHERE oid = 'public.budgets_view'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(rls);
    app.handle.stop(true).await;
}
