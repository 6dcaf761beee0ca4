#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Cost anomalies end to end (ADR 0026): bills with a weekly pattern and one spike give
//! exactly one anomaly, with its first day, severity and top contributor; importing the
//! bill again (byte-identical or restated with the same costs) records nothing new; a
//! flat series gives none; the spike's episode ends; bad queries are 422; the rebuilt
//! read model equals the live one.

use chrono::{Datelike, Duration, NaiveDate};
use serde_json::Value;

use crate::costs::{import_ok, open_account};
use crate::helpers::*;

/// January and February 2024, every day: ecs on two instances in two regions (weekdays
/// 100 + 50, weekends 40 + 20, ±2), oss flat at 10.00 ± 0.04. On 2024-02-14 ecs also
/// runs `i-batch` in cn-shanghai for 600, tagged team:batch.
fn history(extra: &str) -> String {
    let mut csv = String::from(
        "billing_cycle,billing_date,product_code,region,instance_id,pretax_amount,currency,tag\n",
    );
    let mut day = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    let end = NaiveDate::from_ymd_opt(2024, 3, 1).unwrap();
    let mut i = 0i64;
    while day < end {
        let cycle = format!("{}-{:02}", day.year(), day.month());
        let weekend = day.weekday().number_from_monday() >= 6;
        let noise = (i * 7919) % 5 - 2;
        let (web, db) = if weekend { (40, 20) } else { (100, 50) };
        csv.push_str(&format!(
            "{cycle},{day},ecs,cn-hangzhou,i-web,{},CNY,team:web\n",
            web + noise
        ));
        csv.push_str(&format!(
            "{cycle},{day},ecs,cn-beijing,i-db,{db},CNY,team:data\n"
        ));
        csv.push_str(&format!(
            "{cycle},{day},oss,cn-hangzhou,bucket-1,10.{:02},CNY,\n",
            (i * 31) % 9
        ));
        if day == NaiveDate::from_ymd_opt(2024, 2, 14).unwrap() {
            csv.push_str(&format!(
                "{cycle},{day},ecs,cn-shanghai,i-batch,600,CNY,team:batch\n"
            ));
        }
        day += Duration::days(1);
        i += 1;
    }
    csv.push_str(extra);
    csv
}

/// Waits until `n` anomaly jobs succeeded, then reads the anomalies.
async fn anomalies_after_jobs(app: &TestApp, n: i64, query: &str) -> Value {
    let done = eventually(std::time::Duration::from_secs(60), || async {
        let finished = count(
            &app.conn,
            "SELECT count(*) FROM jobs WHERE kind = 'costs.anomalies' AND state = 'succeeded'",
        )
        .await;
        (finished == n).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "{n} anomaly jobs succeed: {:?}",
        snapshot(
            &app.conn,
            "SELECT concat_ws('|', kind, state, error) FROM jobs"
        )
        .await
    );
    let position = count(&app.conn, "SELECT max(position) FROM events").await;
    let res = app
        .get(&format!(
            "/api/v1/costs/anomalies?min_position={position}{query}"
        ))
        .await;
    assert_eq!(res.status(), 200, "{query}");
    body(res).await
}

const ANOMALY_EVENTS: &str = "SELECT count(*) FROM events WHERE stream_type = 'cost_anomaly'";

#[actix_web::test]
async fn one_spike_is_one_anomaly_with_its_contributor_and_nothing_is_recorded_twice() {
    let app = spawn_app().await;
    open_account(&app, "prod", "CNY").await;
    let csv = history("");
    import_ok(&app, "prod", "cloudlens", &csv).await;
    let v = anomalies_after_jobs(&app, 1, "").await;
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    let a = &items[0];
    assert_eq!(a["account_id"], "prod");
    assert_eq!(a["service"], "ecs");
    assert_eq!(a["first_day"], "2024-02-14");
    assert_eq!(a["severity"], "critical", "{a}");
    let actual: rust_decimal::Decimal = a["actual"].as_str().unwrap().parse().unwrap();
    assert!(actual > rust_decimal::Decimal::from(740), "{a}");
    assert_eq!(a["state"], "ended", "the next day is normal: {a}");
    assert_eq!(a["ended_day"], "2024-02-15");
    assert_eq!(a["last_day"], "2024-02-14");
    assert!(a["deviation"].as_f64().unwrap() >= 12.0);
    // The new region, resource and tag value, each 600 more than its median (0).
    let c = a["contributors"].as_array().unwrap();
    assert_eq!(c.len(), 3, "{a}");
    assert_eq!(c[0]["dimension"], "region");
    assert_eq!(c[0]["value"], "cn-shanghai");
    assert_eq!(c[0]["delta"], "600");
    let rest: Vec<(&str, &str)> = c[1..]
        .iter()
        .map(|c| {
            (
                c["dimension"].as_str().unwrap(),
                c["value"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(rest, vec![("resource", "i-batch"), ("tag:team", "batch")]);
    assert_eq!(count(&app.conn, ANOMALY_EVENTS).await, 2, "detected, ended");

    // The same costs restated (another file: one more oss line of 0), then the same file
    // byte for byte (a duplicate): nothing new.
    import_ok(
        &app,
        "prod",
        "cloudlens",
        &history("2024-02,2024-02-20,oss,cn-hangzhou,bucket-1,0,CNY,\n"),
    )
    .await;
    let again = anomalies_after_jobs(&app, 2, "").await;
    assert_eq!(again["items"], v["items"]);
    let res = app
        .client
        .post(app.url("/api/v1/costs/imports?account=prod&format=cloudlens"))
        .insert_header(("Content-Type", "text/csv"))
        .send_body(csv.clone())
        .await
        .unwrap();
    assert!(res.status().is_success());
    assert_eq!(count(&app.conn, ANOMALY_EVENTS).await, 2, "never twice");
    // The flat oss series has none, even from the lowest severity.
    let oss = anomalies_after_jobs(&app, 2, "&service=oss&severity=low").await;
    assert_eq!(oss["items"].as_array().unwrap().len(), 0, "{oss}");

    // Filters and pages.
    for (query, n) in [
        ("&from=2024-02-14&to=2024-02-15", 1),
        ("&from=2024-02-15", 0),
        ("&severity=critical&state=ended&account=prod", 1),
        ("&state=open", 0),
        ("&account=other", 0),
        ("&limit=1", 1),
    ] {
        let page = anomalies_after_jobs(&app, 2, query).await;
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            n,
            "{query}: {page}"
        );
        assert!(page["next_cursor"].is_null(), "{query}");
    }

    // Bad input: 422 naming the field.
    for (query, field) in [
        ("from=yesterday", "from"),
        ("from=2024-02-02&to=2024-02-01", "to"),
        ("severity=huge", "severity"),
        ("state=closed", "state"),
        ("limit=0", "limit"),
        ("cursor=nope", "cursor"),
    ] {
        let res = app.get(&format!("/api/v1/costs/anomalies?{query}")).await;
        assert_eq!(res.status(), 422, "{query}");
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "application/problem+json"
        );
        assert_eq!(body(res).await["field"], field, "{query}");
    }

    // A rebuild gives the same rows.
    let sql = "SELECT concat_ws('|', tenant_id, id, account_id, service, currency, first_day, last_day, ended_day, actual, expected, deviation, severity, contributors, state, restated, detected_at) FROM cost_anomalies";
    let before = snapshot(&app.conn, sql).await;
    assert_eq!(before.len(), 1);
    rebuild_and_wait(&app, "cost_anomalies").await;
    assert_eq!(snapshot(&app.conn, sql).await, before);
}
