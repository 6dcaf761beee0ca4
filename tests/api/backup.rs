#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Backup and verified restore (ADR 0016): a backup taken while commands keep coming in
//! restores to what its manifest describes and every projection rebuilt from its events
//! equals its restored read model; a backup with one row changed fails verification.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use cloudlens::db::cluster::PG_BIN;
use cloudlens::ops::backup;
use serde_json::json;

use crate::costs::{daily_bill, import_ok, open_account};
use crate::helpers::*;

#[actix_web::test]
async fn a_backup_under_load_verifies_and_a_tampered_one_does_not() {
    let app = spawn_app().await;
    open_account(&app, "main", "CNY").await;
    import_ok(&app, "main", "cloudlens", &daily_bill()).await;
    let res = app
        .post_json(
            "/api/v1/tag-categories",
            &json!({"code": "tier", "name": "Tier"}),
        )
        .await;
    assert_eq!(res.status(), 201);

    // Budgets keep being created while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, written) = (stop.clone(), written.clone());
        let (client, url) = (app.client.clone(), app.url("/api/v1/budgets"));
        actix_web::rt::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let res = client
                    .post(&url)
                    .send_json(&budget_body(&format!("load-{i}")))
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
                written.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    while written.load(Ordering::Relaxed) < 20 {
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let dir = test_root().join(format!("backup-{}", uuid::Uuid::new_v4().simple()));
    let manifest = backup::backup(&app.conn, &dir).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(manifest.events > 20, "{}", manifest.events);
    assert!(manifest.tables["cost_lines"].rows > 0);
    assert!(manifest.tables.contains_key("events"));
    // A second backup into the same directory is refused.
    assert!(backup::backup(&app.conn, &dir).await.is_err());

    let report = backup::verify(
        &dir,
        &app.conn,
        false,
        &cloudlens::context::projections(&test_settings()),
    )
    .await
    .unwrap();
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    for p in ["budgets", "cost_lines", "tag_categories"] {
        assert!(
            report.projections_rebuilt.iter().any(|r| r == p),
            "{p} not rebuilt: {report:?}"
        );
    }
    assert_eq!(report.projections_skipped, vec!["jobs".to_owned()]);
    assert_eq!(report.tables_checked, manifest.tables.len());
    // The scratch database is gone.
    let owner = cloudlens::db::connect(&app.conn).await.unwrap();
    let left: i64 = owner
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&report.database],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);

    // Tamper with one row of the backup: restore it, change a budget's amount, dump it
    // again over the original dump (the manifest stays).
    let maintenance = backup::with_dbname(&app.conn, "postgres");
    let tampered_db = format!("tampered_{}", uuid::Uuid::new_v4().simple());
    let tampered = backup::restore_into(&dir, &maintenance, &tampered_db)
        .await
        .unwrap();
    let t = cloudlens::db::connect(&tampered).await.unwrap();
    let changed = t
        .execute(
            "UPDATE budgets_view SET amount = amount + 1 \
             WHERE id = (SELECT id FROM budgets_view ORDER BY id LIMIT 1)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    drop(t);
    let dump = dir.join(backup::DUMP_FILE);
    std::fs::remove_file(&dump).unwrap();
    let out = Command::new(format!("{PG_BIN}/pg_dump"))
        .args([
            "--format=custom",
            "--file",
            dump.to_str().unwrap(),
            "--dbname",
            &tampered,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The command line reports it and exits non-zero.
    let out = cli(&app.conn, &["restore", dir.to_str().unwrap(), "--verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAILED"), "{stdout}");
    assert!(stdout.contains("budgets_view:"), "{stdout}");
    assert!(stdout.contains("cloudlens.dump: SHA-256"), "{stdout}");
    // The rebuild from the events disagrees with the changed read model too; nothing
    // else differs.
    assert!(
        stdout.contains("budgets_view (projection budgets): rebuilt from the events"),
        "{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    app.handle.stop(true).await;
}
