#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The costs context end to end: accounts, bill imports in both layouts, restatement and
//! identical re-imports, breakdowns from the rollup and from the raw lines, drill-down,
//! bad input, and the rebuild of every cost read model.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::helpers::*;

pub async fn open_account(app: &TestApp, name: &str, currency: &str) {
    let res = app
        .post_json(
            "/api/v1/accounts",
            &json!({"provider": "aliyun", "name": name, "currency": currency}),
        )
        .await;
    assert_eq!(res.status(), 201, "open account {name}");
}

async fn post_bill(app: &TestApp, account: &str, format: &str, csv: &str) -> Response {
    app.client
        .post(app.url(&format!(
            "/api/v1/costs/imports?account={account}&format={format}"
        )))
        .insert_header(("Content-Type", "text/csv"))
        .send_body(csv.to_owned())
        .await
        .unwrap()
}

/// No bill import reached the log, and nothing of one stayed staged.
async fn nothing_imported(app: &TestApp) {
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM events WHERE stream_type = 'bill_import'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM staged_events").await,
        0
    );
}

/// Imports and waits until the import is visible; returns the answer.
pub async fn import_ok(app: &TestApp, account: &str, format: &str, csv: &str) -> Value {
    let res = post_bill(app, account, format, csv).await;
    assert_eq!(res.status(), 202, "import into {account}");
    let v = body(res).await;
    let state = body(
        app.get(&format!(
            "/api/v1/costs/imports/{}?min_position={}",
            v["import_id"].as_str().unwrap(),
            v["position"]
        ))
        .await,
    )
    .await;
    assert_eq!(state["state"], "complete", "{state}");
    assert_eq!(state["lines_loaded"], v["lines"]);
    v
}

const HEADER: &str = "billing_cycle,billing_date,product_code,product_name,product_type,subscription_type,instance_id,region,zone,resource_group,billing_item,list_price,invoice_discount,pretax_amount,deducted_by_coupons,payment_amount,currency,tag";

/// A deterministic cloudlens bill of `n` lines in `period` (YYYY-MM); returns the CSV and
/// the exact sum per (day, service) and per team tag.
fn bill(period: &str, n: usize, seed: u64) -> (String, BTreeMap<(String, String), Decimal>) {
    let mut csv = String::from(HEADER);
    csv.push('\n');
    let mut sums = BTreeMap::new();
    let mut x = seed;
    let services = ["ecs", "oss", "rds", "slb"];
    let regions = ["cn-hangzhou", "cn-beijing"];
    for i in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let day = (x >> 33) % 28 + 1;
        let service = services[((x >> 20) % 4) as usize];
        let region = regions[((x >> 10) % 2) as usize];
        let cents = (x >> 40) % 100_000;
        let amount = Decimal::new(cents as i64, 4); // up to 4 decimals, exact
                                                    // Every 7th line has no charge day: it belongs on the period's first day.
        let (date, day_key) = if i % 7 == 3 {
            (String::new(), format!("{period}-01"))
        } else {
            let d = format!("{period}-{day:02}");
            (d.clone(), d)
        };
        let tag = match i % 3 {
            0 => format!("\"{{\"\"team\"\":\"\"t{}\"\"}}\"", i % 4),
            1 => format!("team:t{};env:prod", i % 4),
            _ => String::new(),
        };
        csv.push_str(&format!(
            "{period},{date},{service},{service} name,usage,PayAsYouGo,i-{i},{region},{region}-a,rg,item,9.99,0,{amount},0,{amount},CNY,{tag}\n"
        ));
        *sums.entry((day_key, service.to_owned())).or_default() += amount;
    }
    (csv, sums)
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap()).unwrap()
}

/// Sum per (day, service) of a day × service breakdown.
fn by_day_service(v: &Value) -> BTreeMap<(String, String), Decimal> {
    let mut out = BTreeMap::new();
    for b in v["buckets"].as_array().unwrap() {
        let day = b["start"].as_str().unwrap()[..10].to_owned();
        for g in b["groups"].as_array().unwrap() {
            let service = g["key"]["service"].as_str().unwrap().to_owned();
            *out.entry((day.clone(), service)).or_default() += dec(&g["cost"]);
        }
    }
    out
}

async fn costs(app: &TestApp, query: &str) -> Value {
    let res = app.get(&format!("/api/v1/costs?{query}")).await;
    assert_eq!(res.status(), 200, "{query}");
    body(res).await
}

#[actix_web::test]
async fn a_bill_sums_exactly_in_every_grouping_from_the_rollup_and_from_the_lines() {
    let app = spawn_app().await;
    open_account(&app, "prod", "CNY").await;
    // 2,500 lines: three line events, several projector batches.
    let (csv, expected) = bill("2024-03", 2_500, 7);
    let v = import_ok(&app, "prod", "cloudlens", &csv).await;
    assert_eq!(v["lines"], 2_500);
    assert_eq!(v["duplicate"], false);
    let total: Decimal = expected.values().copied().sum();

    let q = "from=2024-03-01&to=2024-04-01&group_by=service";
    let rollup = costs(&app, q).await;
    assert_eq!(rollup["source"], "rollup");
    assert_eq!(rollup["currency"], "CNY");
    assert_eq!(dec(&rollup["total"]), total, "to the last digit");
    assert_eq!(by_day_service(&rollup), expected);
    let lines = costs(&app, &format!("{q}&source=lines")).await;
    assert_eq!(lines["source"], "lines");
    assert_eq!(lines["buckets"], rollup["buckets"]);

    // Weeks start on Monday (2024-02-26), months on the 1st; every grouping sums to the
    // same total.
    let week = costs(&app, "from=2024-03-01&to=2024-04-01&bucket=week").await;
    assert_eq!(week["buckets"][0]["start"], "2024-02-26T00:00:00Z");
    let month = costs(
        &app,
        "from=2024-03-01&to=2024-04-01&bucket=month&group_by=account,region,service",
    )
    .await;
    assert_eq!(month["buckets"].as_array().unwrap().len(), 1);
    assert_eq!(month["buckets"][0]["start"], "2024-03-01T00:00:00Z");
    assert_eq!(
        month["buckets"][0]["groups"].as_array().unwrap().len(),
        8,
        "1 account × 2 regions × 4 services"
    );
    for v in [&week, &month] {
        assert_eq!(dec(&v["total"]), total);
    }
    // A tag grouping reads the tag rollup; both tag spellings count, untagged lines are
    // null (the daily rollup less the tagged cost).
    let teams = costs(
        &app,
        "from=2024-03-01&to=2024-04-01&bucket=month&group_by=tag:team",
    )
    .await;
    assert_eq!(teams["source"], "tag_rollup");
    // Every tag-rollup shape equals the same query over the lines, group for group.
    for q in [
        "bucket=month&group_by=tag:team",
        "bucket=day&group_by=service,tag:team",
        "bucket=week&group_by=tag:team,account,service&service=ecs",
        "bucket=month&group_by=tag:team&tag=team:t1",
        "bucket=day&group_by=tag:env&currency=CNY",
    ] {
        let q = format!("from=2024-03-01&to=2024-04-01&{q}");
        let rolled = costs(&app, &q).await;
        assert_eq!(rolled["source"], "tag_rollup", "{q}");
        let lines = costs(&app, &format!("{q}&source=lines")).await;
        assert_eq!(lines["source"], "lines");
        assert_eq!(rolled["buckets"], lines["buckets"], "{q}");
        assert_eq!(rolled["totals"], lines["totals"], "{q}");
    }
    // A region filter or a second tag key: the lines.
    for q in [
        "group_by=tag:team&region=cn-hangzhou",
        "group_by=tag:team&tag=env:prod",
    ] {
        let v = costs(&app, &format!("from=2024-03-01&to=2024-04-01&{q}")).await;
        assert_eq!(v["source"], "lines", "{q}");
    }
    let keys: Vec<Value> = teams["buckets"][0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"]["tag:team"].clone())
        .collect();
    assert_eq!(
        keys,
        [
            json!("t0"),
            json!("t1"),
            json!("t2"),
            json!("t3"),
            Value::Null
        ]
    );
    assert_eq!(dec(&teams["total"]), total);
    let filtered = costs(
        &app,
        "from=2024-03-01&to=2024-04-01&bucket=month&tag=team:t1&service=ecs",
    )
    .await;
    let direct = costs(
        &app,
        "from=2024-03-01&to=2024-04-01&bucket=month&group_by=tag:team,service",
    )
    .await;
    let t1_ecs: Decimal = direct["buckets"][0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["key"]["tag:team"] == "t1" && g["key"]["service"] == "ecs")
        .map(|g| dec(&g["cost"]))
        .sum();
    assert_eq!(dec(&filtered["total"]), t1_ecs);
    // The line without a charge day landed on the period's first day.
    let first_day = costs(&app, "from=2024-03-01&to=2024-03-02").await;
    let expected_first: Decimal = expected
        .iter()
        .filter(|((d, _), _)| d == "2024-03-01")
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(dec(&first_day["total"]), expected_first);

    // Top services, ranked.
    let top = body(
        app.get("/api/v1/costs/top?by=service&from=2024-03-01&to=2024-04-01&limit=2")
            .await,
    )
    .await;
    let items = top["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(dec(&items[0]["cost"]) >= dec(&items[1]["cost"]));
    let mut per_service: BTreeMap<String, Decimal> = BTreeMap::new();
    for ((_, s), v) in &expected {
        *per_service.entry(s.clone()).or_default() += *v;
    }
    let best = per_service.iter().max_by_key(|(_, v)| **v).unwrap();
    assert_eq!(items[0]["key"], best.0.as_str());
    assert_eq!(dec(&items[0]["cost"]), *best.1);

    // Drill-down: pages of lines in charge order reach every line once.
    let mut seen = std::collections::HashSet::new();
    let mut sum = Decimal::ZERO;
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v1/costs/lines?from=2024-03-01&to=2024-04-01&limit=1000".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = body(app.get(&path).await).await;
        for l in page["items"].as_array().unwrap() {
            assert!(seen.insert(l["line"].as_i64().unwrap()));
            sum += dec(&l["cost"]);
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 2_500);
    assert_eq!(sum, total);
}

#[actix_web::test]
async fn an_identical_file_changes_nothing_and_a_new_file_restates_its_periods() {
    let app = spawn_app().await;
    open_account(&app, "prod", "CNY").await;
    open_account(&app, "dev", "CNY").await;
    let (jan, _) = bill("2024-01", 300, 1);
    let (feb, _) = bill("2024-02", 300, 2);
    let jan_feb = format!("{jan}{}", feb.split_once('\n').unwrap().1);
    let first = import_ok(&app, "prod", "cloudlens", &jan_feb).await;
    import_ok(&app, "dev", "cloudlens", &jan).await;
    let totals = |v: &Value| -> BTreeMap<String, Decimal> {
        v["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let sum = b["groups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| dec(&g["cost"]))
                    .sum();
                (b["start"].as_str().unwrap()[..7].to_owned(), sum)
            })
            .collect()
    };
    let q = "from=2024-01-01&to=2024-03-01&bucket=month&account=prod";
    let before = costs(&app, q).await;

    // The same bytes again: the first import, nothing appended. (The anomaly jobs the
    // imports asked for append events of their own: wait until the jobs projector has seen
    // the last import and no anomaly job is left to run. One run or two, by timing.)
    const SETTLED_SQL: &str = "\
SELECT count(*) FROM projection_checkpoints c, events e
 WHERE c.name = 'jobs'
   AND e.position = (SELECT max(position) FROM events WHERE event_type = 'BillImportCompleted')
   AND (c.last_epoch, c.last_xid, c.last_position) >= (e.epoch, e.transaction_id, e.position)
   AND EXISTS (SELECT 1 FROM jobs WHERE kind = 'costs.anomalies' AND state = 'succeeded')
   AND NOT EXISTS (SELECT 1 FROM jobs WHERE kind = 'costs.anomalies'
                    AND state NOT IN ('succeeded', 'failed'))";
    let settled = eventually(std::time::Duration::from_secs(60), || async {
        (count(&app.conn, SETTLED_SQL).await == 1).then_some(())
    })
    .await;
    assert!(settled.is_some(), "the first import's jobs finished");
    let events = "SELECT count(*) FROM events";
    let events_before = count(&app.conn, events).await;
    let res = post_bill(&app, "prod", "cloudlens", &jan_feb).await;
    assert_eq!(res.status(), 200);
    let again = body(res).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["import_id"], first["import_id"]);
    assert_eq!(again["position"], first["position"]);
    assert_eq!(count(&app.conn, events).await, events_before);
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(DISTINCT stream_id) FROM events WHERE stream_type = 'bill_import'"
        )
        .await,
        2
    );
    assert_eq!(costs(&app, q).await["buckets"], before["buckets"]);

    // A corrected February: February's lines are replaced, January's stay.
    let (feb2, feb2_sums) = bill("2024-02", 50, 99);
    let second = import_ok(&app, "prod", "cloudlens", &feb2).await;
    let after = costs(&app, &format!("{q}&min_position={}", second["position"])).await;
    let t = totals(&after);
    assert_eq!(t["2024-01"], totals(&before)["2024-01"]);
    assert_eq!(t["2024-02"], feb2_sums.values().copied().sum::<Decimal>());
    // Other accounts are untouched.
    let dev_total = costs(
        &app,
        "from=2024-01-01&to=2024-03-01&bucket=month&account=dev",
    )
    .await;
    assert_eq!(
        dec(&dev_total["total"]),
        totals(&before)["2024-01"],
        "same January file"
    );
    // The rollup still equals the lines, row for row; no empty rollup rows remain.
    assert_eq!(
        snapshot(&app.conn, "SELECT concat_ws('|', account, day, service, region, currency, cost, lines) FROM cost_daily").await,
        snapshot(&app.conn, "SELECT concat_ws('|', account, d, service, region, currency, c, n) FROM (SELECT account, time_bucket('1 day', charge_start) AS d, service, region, currency, sum(cost) AS c, count(*) AS n FROM cost_lines GROUP BY 1, 2, 3, 4, 5) s").await
    );
    let old = body(
        app.get(&format!(
            "/api/v1/costs/imports/{}",
            first["import_id"].as_str().unwrap()
        ))
        .await,
    )
    .await;
    assert_eq!(old["restated_by"], second["import_id"]);
    assert_eq!(old["periods"], json!(["2024-01-01", "2024-02-01"]));
    let list = body(app.get("/api/v1/costs/imports?account=prod").await).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

const FOCUS: &str = "BillingAccountId,BillingPeriodStart,BillingPeriodEnd,ChargePeriodStart,ChargePeriodEnd,ChargeCategory,BilledCost,EffectiveCost,ListCost,BillingCurrency,ServiceName,ServiceCategory,ResourceId,RegionId,SubAccountId,Tags,AllocatedMethodId,AllocatedResourceId,AllocatedTags,x_CostCenter
ba-1,2025-06-01T00:00:00Z,2025-07-01T00:00:00Z,2025-06-03T00:00:00Z,2025-06-04T00:00:00Z,Usage,10.0000000001,9.5,12,USD,Amazon EC2,Compute,i-1,us-east-1,sub-1,\"{\"\"team\"\":\"\"web\"\"}\",,,,cc-7
ba-1,2025-06-01T00:00:00Z,2025-07-01T00:00:00Z,2025-06-03T12:00:00Z,2025-06-03T13:00:00Z,Usage,0.25,0.25,,USD,Amazon S3,Storage,bucket-a,us-east-1,sub-1,{},split-1,i-9,\"{\"\"team\"\":\"\"data\"\"}\",
ba-1,2025-06-01T00:00:00Z,2025-07-01T00:00:00Z,2025-06-20T00:00:00Z,2025-06-21T00:00:00Z,Purchase,100,0,,EUR,Support,Other,,global,sub-2,,,,,
";

#[actix_web::test]
async fn a_focus_file_imports_with_its_split_allocation_and_custom_columns() {
    let app = spawn_app().await;
    open_account(&app, "aws", "USD").await;
    import_ok(&app, "aws", "focus", FOCUS).await;
    // Two currencies: never summed together.
    let v = costs(
        &app,
        "from=2025-06-01&to=2025-07-01&bucket=month&group_by=service",
    )
    .await;
    assert_eq!(v["currency"], Value::Null);
    assert_eq!(v["total"], Value::Null);
    let totals: BTreeMap<String, Decimal> = v["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["currency"].as_str().unwrap().to_owned(), dec(&t["total"])))
        .collect();
    assert_eq!(totals["USD"], Decimal::from_str("10.2500000001").unwrap());
    assert_eq!(totals["EUR"], Decimal::from(100));
    let usd = costs(
        &app,
        "from=2025-06-01&to=2025-07-01&bucket=month&currency=USD",
    )
    .await;
    assert_eq!(usd["currency"], "USD");
    assert_eq!(
        dec(&usd["total"]),
        Decimal::from_str("10.2500000001").unwrap()
    );
    // A bound that is not midnight reads the lines: 12:00-13:00 holds the S3 line only.
    let noon = costs(
        &app,
        "from=2025-06-03T12:00:00Z&to=2025-06-03T13:00:00Z&group_by=service",
    )
    .await;
    assert_eq!(noon["source"], "lines");
    assert_eq!(dec(&noon["total"]), Decimal::from_str("0.25").unwrap());
    let page = body(
        app.get("/api/v1/costs/lines?from=2025-06-01&to=2025-07-01&resource=bucket-a")
            .await,
    )
    .await;
    let line = &page["items"][0];
    assert_eq!(line["service"], "Amazon S3");
    assert_eq!(line["extra"]["AllocatedMethodId"], "split-1");
    assert_eq!(line["extra"]["AllocatedTags"], "{\"team\":\"data\"}");
    assert_eq!(line["extra"]["BillingAccountId"], "ba-1");
    let first = body(
        app.get("/api/v1/costs/lines?from=2025-06-01&to=2025-07-01&resource=i-1")
            .await,
    )
    .await;
    assert_eq!(first["items"][0]["extra"]["x_CostCenter"], "cc-7");
    assert_eq!(first["items"][0]["tags"], json!({"team": "web"}));
    assert_eq!(first["items"][0]["effective_cost"], "9.5");
}

#[actix_web::test]
async fn a_bad_bill_is_refused_whole_with_row_and_column_and_writes_nothing() {
    let app = spawn_app().await;
    open_account(&app, "prod", "CNY").await;
    let (good, _) = bill("2024-03", 1_500, 3);
    // Line 1,201: past the first staged event, so staging must be undone.
    let mut late: Vec<String> = good.lines().map(String::from).collect();
    late[1201] = late[1201].replace(",CNY,", ",XYZ,");
    let cases: Vec<(String, i64, &str)> = vec![
        (late.join("\n"), 1201, "currency"),
        (
            format!("{HEADER}\n2024-03,2024-03-02,ecs,,,,,,,,,,,abc,,,CNY,\n"),
            1,
            "pretax_amount",
        ),
        (
            format!("{HEADER}\n2024-03,2024-03-32,ecs,,,,,,,,,,,1,,,CNY,\n"),
            1,
            "billing_date",
        ),
        (
            format!("{HEADER}\n2024-3,,ecs,,,,,,,,,,,1,,,CNY,\n"),
            1,
            "billing_cycle",
        ),
        (
            format!("{HEADER}\n2024-03,,ecs,,,,,,,,,,,1,,,CNY,team=a\n"),
            1,
            "tag",
        ),
        (
            format!("{HEADER}\n2024-03,,ecs,,,,,,,,,,,1,,,CNY,\"[1,2]\"\n"),
            1,
            "tag",
        ),
        (
            format!("{HEADER}\n2024-03,,ecs,,,,,,,,,,,,,,CNY,\n"),
            1,
            "pretax_amount",
        ),
        (
            "billing_cycle,product_code,currency\n2024-03,ecs,CNY\n".into(),
            0,
            "pretax_amount",
        ),
        (
            "billing_cycle,product_code,pretax_amount,currency,colour\n2024-03,ecs,1,CNY,red\n"
                .into(),
            0,
            "colour",
        ),
        (format!("{HEADER}\n"), 1, ""),
    ];
    for (csv, row, column) in &cases {
        let res = post_bill(&app, "prod", "cloudlens", csv).await;
        assert_eq!(res.status(), 422, "row {row} column {column}");
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "application/problem+json"
        );
        let p = body(res).await;
        assert_eq!(p["code"], "invalid_row", "{p}");
        assert_eq!(p["row"], *row, "{p}");
        assert_eq!(p["field"], *column, "{p}");
    }
    let res = app
        .client
        .post(app.url("/api/v1/costs/imports?account=prod&format=cloudlens"))
        .insert_header(("Content-Type", "application/json"))
        .send_body("{}")
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let res = post_bill(&app, "nobody", "cloudlens", &good).await;
    assert_eq!(res.status(), 422);
    assert_eq!(body(res).await["field"], "account");
    let res = post_bill(&app, "prod", "csv", &good).await;
    assert_eq!(res.status(), 422);
    assert_eq!(body(res).await["field"], "format");
    // Nothing of any of them reached the log or stayed staged.
    nothing_imported(&app).await;
    // An account name is unique; a bad currency names its field.
    let res = app
        .post_json(
            "/api/v1/accounts",
            &json!({"provider": "aws", "name": "prod", "currency": "CNY"}),
        )
        .await;
    assert_eq!(res.status(), 409);
    let res = app
        .post_json(
            "/api/v1/accounts",
            &json!({"provider": "aws", "name": "x", "currency": "RMB"}),
        )
        .await;
    assert_eq!(res.status(), 422);
    assert_eq!(body(res).await["field"], "currency");
    // Queries name the offending parameter.
    for (query, field) in [
        ("from=2024-03-01&to=2024-02-01", "to"),
        ("from=yesterday&to=2024-02-01", "from"),
        ("from=2024-01-01&to=2024-02-01&group_by=colour", "group_by"),
        (
            "from=2024-01-01&to=2024-02-01&group_by=service,service",
            "group_by",
        ),
        ("from=2024-01-01&to=2024-02-01&bucket=hour", "bucket"),
        ("from=2024-01-01&to=2024-02-01&currency=RMB", "currency"),
        ("from=2024-01-01&to=2024-02-01&tag=team", "tag"),
    ] {
        let res = app.get(&format!("/api/v1/costs?{query}")).await;
        assert_eq!(res.status(), 422, "{query}");
        assert_eq!(body(res).await["field"], field, "{query}");
    }
    let res = app
        .get("/api/v1/costs/lines?from=2024-01-01&to=2024-02-01&cursor=xyz")
        .await;
    assert_eq!(res.status(), 422);
    let res = app
        .get("/api/v1/costs/top?by=colour&from=2024-01-01&to=2024-02-01")
        .await;
    assert_eq!(res.status(), 422);
}

#[actix_web::test]
async fn an_import_past_its_route_limit_is_413_and_applies_nothing() {
    let conn = fresh_database().await;
    // A bill import has a limit of its own, here larger than the JSON commands': a bill
    // over it is refused, a smaller one over the JSON limit is not.
    let settings = cloudlens::config::Settings {
        body_limit: 1024,
        import_limit: 64 * 1024,
        ..test_settings()
    };
    let app = spawn_app_on(conn, settings).await;
    open_account(&app, "prod", "CNY").await;
    let (csv, _) = bill("2024-03", 3_000, 5);
    assert!(csv.len() > 64 * 1024 && csv.len() > 1024, "{}", csv.len());
    let res = post_bill(&app, "prod", "cloudlens", &csv).await;
    assert_eq!(res.status(), 413);
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
    assert_eq!(body(res).await["code"], "payload_too_large");
    nothing_imported(&app).await;
    // A bill under the import limit (and over the JSON limit) is imported.
    let small: String = csv.lines().take(200).collect::<Vec<_>>().join("\n") + "\n";
    assert!(small.len() > 1024 && small.len() < 64 * 1024);
    import_ok(&app, "prod", "cloudlens", &small).await;
    // A JSON command over its own limit is 413 too.
    let res = app
        .post_json(
            "/api/v1/accounts",
            &json!({"provider": "aws", "name": "x".repeat(2000), "currency": "CNY"}),
        )
        .await;
    assert_eq!(res.status(), 413);
}

#[actix_web::test]
async fn rebuilt_cost_read_models_equal_the_live_ones() {
    let app = spawn_app().await;
    open_account(&app, "prod", "CNY").await;
    import_ok(&app, "prod", "cloudlens", &bill("2024-01", 1_200, 5).0).await;
    import_ok(&app, "prod", "cloudlens", &bill("2024-02", 800, 6).0).await;
    // A restatement of January between them in the log.
    import_ok(&app, "prod", "cloudlens", &bill("2024-01", 100, 8).0).await;
    import_ok(&app, "prod", "focus", FOCUS).await;
    let tables = [
        "SELECT concat_ws('|', tenant_id, charge_start, charge_end, billing_period, account, provider, import_id, line_no, currency, cost, effective_cost, list_cost, service, service_name, category, region, resource, sub_account, charge_category, tags, vtags, extra) FROM cost_lines",
        "SELECT concat_ws('|', tenant_id, day, account, service, region, currency, cost, lines) FROM cost_daily",
        "SELECT concat_ws('|', tenant_id, day, account, key, value, service, currency, cost, lines) FROM cost_daily_tags",
        "SELECT concat_ws('|', import_id, account, format, sha256, periods, lines, lines_loaded, totals, state, started_at, completed_at, position, restated_by) FROM cost_imports",
        "SELECT concat_ws('|', tenant_id, name, provider, external_id, currency, created_at, last_position) FROM cost_accounts",
    ];
    let mut live = Vec::new();
    for sql in &tables {
        let rows = snapshot(&app.conn, sql).await;
        assert!(!rows.is_empty(), "{sql}");
        live.push(rows);
    }
    assert_eq!(
        live[0].len(),
        800 + 100 + 3,
        "January restated by the 100-line file"
    );
    // The tag rollup is the lines' sums, after the restatement too.
    assert_eq!(
        live[2],
        snapshot(
            &app.conn,
            "SELECT concat_ws('|', tenant_id, time_bucket('1 day', charge_start), account,
                    t.key, t.value #>> '{}', service, currency, sum(cost), count(*))
               FROM cost_lines, jsonb_each(tags) AS t WHERE jsonb_typeof(t.value) = 'string'
              GROUP BY tenant_id, time_bucket('1 day', charge_start), account, t.key,
                       t.value #>> '{}', service, currency"
        )
        .await
    );
    for name in ["cost_lines", "cost_accounts"] {
        rebuild_and_wait(&app, name).await;
    }
    for (sql, before) in tables.iter().zip(live) {
        assert_eq!(snapshot(&app.conn, sql).await, before, "{sql}");
    }
    // Still a hypertable after the swap.
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name IN ('cost_lines', 'cost_daily', 'cost_daily_tags')").await,
        3
    );
}

/// February 2024 (a leap month) and the first days of March: every day ecs 10.00 tagged
/// team:web, oss 1.00 untagged; a line in USD that a CNY budget never counts.
pub fn daily_bill() -> String {
    let mut csv =
        String::from("billing_cycle,billing_date,product_code,pretax_amount,currency,tag\n");
    for day in 1..=29 {
        csv.push_str(&format!(
            "2024-02,2024-02-{day:02},ecs,10.00,CNY,team:web\n"
        ));
        csv.push_str(&format!("2024-02,2024-02-{day:02},oss,1.00,CNY,\n"));
    }
    csv.push_str("2024-02,2024-02-05,ecs,999,USD,team:web\n");
    for day in 1..=2 {
        csv.push_str(&format!("2024-03,2024-03-{day:02},ecs,500,CNY,team:web\n"));
    }
    csv
}

async fn budget(app: &TestApp, draft: Value) -> (String, i64) {
    let res = app.post_json("/api/v1/budgets", &draft).await;
    assert_eq!(res.status(), 201);
    let v = body(res).await;
    (
        v["id"].as_str().unwrap().to_owned(),
        v["position"].as_i64().unwrap(),
    )
}

#[actix_web::test]
async fn budget_status_counts_its_scope_forecasts_and_crosses_thresholds() {
    let app = spawn_app().await;
    open_account(&app, "prod", "CNY").await;
    let imported = import_ok(&app, "prod", "cloudlens", &daily_bill()).await;
    let (ecs, _) = budget(
        &app,
        json!({"name": "ecs", "amount": "250", "currency": "CNY", "period": "monthly",
               "type": "cost", "start_date": "2024-01-01", "account": "prod",
               "service_filter": ["ecs"], "alert_thresholds": ["50", "100", "120"]}),
    )
    .await;
    let (web, position) = budget(
        &app,
        json!({"name": "web", "amount": "1000", "currency": "CNY", "period": "quarterly",
               "type": "cost", "start_date": "2024-01-01", "tag_filter": {"team": "web"}}),
    )
    .await;
    let min = position.max(imported["position"].as_i64().unwrap());
    let status = |id: &str, as_of: &str| {
        let path = format!("/api/v1/budgets/{id}/status?as_of={as_of}&min_position={min}");
        let app = &app;
        async move {
            let res = app.get(&path).await;
            assert_eq!(res.status(), 200, "{path}");
            body(res).await
        }
    };
    // Ten days of February at 10.00 of ecs: oss and the USD line do not count.
    let s = status(&ecs, "2024-02-10").await;
    assert_eq!(s["period_start"], "2024-02-01");
    assert_eq!(s["period_end"], "2024-03-01");
    assert_eq!(s["days_in_period"], 29);
    assert_eq!(dec(&s["spent"]), Decimal::from(100));
    assert_eq!(dec(&s["remaining"]), Decimal::from(150));
    assert_eq!(dec(&s["percent_used"]), Decimal::from(40));
    assert_eq!(s["source"], "rollup");
    assert_eq!(s["forecast"]["method"], "linear_run_rate");
    assert_eq!(
        dec(&s["forecast"]["amount"]),
        Decimal::from(290),
        "29 days at 10"
    );
    assert_eq!(dec(&s["forecast"]["percent"]), Decimal::from(116));
    let crossed: Vec<(String, String)> = s["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["crossed"] == true)
        .map(|t| {
            (
                t["percent"].as_str().unwrap().to_owned(),
                t["basis"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        crossed,
        [
            ("50".to_owned(), "forecast".to_owned()),
            ("100".into(), "forecast".into())
        ]
    );
    // The whole month: over budget, not capped; the period is over.
    let s = status(&ecs, "2024-02-29").await;
    assert_eq!(dec(&s["spent"]), Decimal::from(290));
    assert_eq!(dec(&s["percent_used"]), Decimal::from(116));
    assert_eq!(s["forecast"]["method"], "final");
    // Across the month boundary: March's own period, two days of data: no guess.
    let s = status(&ecs, "2024-03-02").await;
    assert_eq!(s["period_start"], "2024-03-01");
    assert_eq!(s["days_in_period"], 31);
    assert_eq!(dec(&s["spent"]), Decimal::from(1000));
    assert_eq!(dec(&s["percent_used"]), Decimal::from(400));
    assert_eq!(s["forecast"]["method"], "insufficient_data");
    assert_eq!(s["forecast"]["amount"], Value::Null);
    // A one-tag filter reads the tag rollup; the quarter of a leap year has 91 days.
    let s = status(&web, "2024-02-29").await;
    assert_eq!(s["source"], "tag_rollup");
    assert_eq!(s["period_start"], "2024-01-01");
    assert_eq!(s["days_in_period"], 91);
    assert_eq!(dec(&s["spent"]), Decimal::from(290));
    // Two tags: the lines (every pair must be on the line).
    let (two, position) = budget(
        &app,
        json!({"name": "two", "amount": "1000", "currency": "CNY", "period": "monthly",
               "type": "cost", "start_date": "2024-01-01",
               "tag_filter": {"team": "web", "env": "prod"}}),
    )
    .await;
    let res = app
        .get(&format!(
            "/api/v1/budgets/{two}/status?as_of=2024-02-29&min_position={position}"
        ))
        .await;
    let s = body(res).await;
    assert_eq!(s["source"], "lines");
    assert_eq!(dec(&s["spent"]), Decimal::ZERO);
    // Unknown budgets and days outside the budget's dates.
    let res = app
        .get(&format!("/api/v1/budgets/{}/status", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(res.status(), 404);
    let res = app
        .get(&format!("/api/v1/budgets/{ecs}/status?as_of=2023-12-31"))
        .await;
    assert_eq!(res.status(), 422);
    assert_eq!(body(res).await["field"], "as_of");
    let res = app
        .get(&format!("/api/v1/budgets/{ecs}/status?as_of=soon"))
        .await;
    assert_eq!(res.status(), 422);
}

/// Waits until every threshold job has finished (`n` of them) and returns the budget's alerts.
async fn alerts_after_jobs(app: &TestApp, budget: &str, n: i64) -> Value {
    let done = eventually(std::time::Duration::from_secs(60), || async {
        let finished = count(
            &app.conn,
            "SELECT count(*) FROM jobs WHERE kind = 'costs.budget_thresholds' AND state = 'succeeded'",
        )
        .await;
        (finished == n).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "{n} threshold jobs succeed: {:?}",
        (snapshot(&app.conn, "SELECT concat_ws('|', kind, state, error) FROM jobs").await, snapshot(&app.conn, "SELECT concat_ws('|', name, last_position, last_error) FROM projection_checkpoints").await)
    );
    let position = count(&app.conn, "SELECT max(position) FROM events").await;
    body(
        app.get(&format!(
            "/api/v1/budgets/{budget}/alerts?min_position={position}"
        ))
        .await,
    )
    .await
}

#[actix_web::test]
async fn thresholds_are_recorded_once_per_period_also_under_restatement_and_replay() {
    let app = spawn_app().await;
    open_account(&app, "prod", "CNY").await;
    let (id, _) = budget(
        &app,
        json!({"name": "ecs", "amount": "250", "currency": "CNY", "period": "monthly",
               "type": "cost", "start_date": "2024-01-01", "account": "prod",
               "service_filter": ["ecs"], "alert_thresholds": ["50", "100", "500"]}),
    )
    .await;
    import_ok(&app, "prod", "cloudlens", &daily_bill()).await;
    // February: 290 of 250 (116 %); March: 1000 (400 %). Both periods are over, so the
    // forecast is what was spent: 50 and 100 cross on both bases in both months, 500 never.
    let v = alerts_after_jobs(&app, &id, 1).await;
    let mut seen: Vec<(String, String, String)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["period_start"].as_str().unwrap().to_owned(),
                a["percent"].as_str().unwrap().to_owned(),
                a["basis"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let mut expected = Vec::new();
    for p in ["2024-02-01", "2024-03-01"] {
        for t in ["100", "50"] {
            for b in ["actual", "forecast"] {
                expected.push((p.to_owned(), t.to_owned(), b.to_owned()));
            }
        }
    }
    expected.sort();
    assert_eq!(seen, expected);
    let feb = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["period_start"] == "2024-02-01" && a["basis"] == "actual")
        .unwrap();
    assert_eq!(dec(&feb["spent"]), Decimal::from(290));
    assert_eq!(dec(&feb["observed_percent"]), Decimal::from(116));
    assert_eq!(feb["period_end"], "2024-03-01");

    // February restated below the thresholds, then above them again: nothing new.
    let low = "billing_cycle,billing_date,product_code,pretax_amount,currency\n2024-02,2024-02-01,ecs,1,CNY\n";
    import_ok(&app, "prod", "cloudlens", low).await;
    let high = format!("{low}2024-02,2024-02-02,ecs,900,CNY\n");
    import_ok(&app, "prod", "cloudlens", &high).await;
    let again = alerts_after_jobs(&app, &id, 3).await;
    assert_eq!(again["items"], v["items"], "never twice");
    let crossed = "SELECT count(*) FROM events WHERE event_type = 'BudgetThresholdCrossed'";
    assert_eq!(count(&app.conn, crossed).await, 8);
    // The view follows the stream's version (ETag), so If-Match keeps working.
    let b = body(app.get(&format!("/api/v1/budgets/{id}")).await).await;
    assert_eq!(b["version"], 9);

    // A replay of the budgets projector rebuilds the same alerts and appends nothing.
    let sql = "SELECT concat_ws('|', budget_id, period_start, period_end, percent, basis, observed_percent, spent, forecast, as_of, import_id, crossed_at, position) FROM budget_alerts";
    let before = snapshot(&app.conn, sql).await;
    rebuild_and_wait(&app, "budgets").await;
    assert_eq!(snapshot(&app.conn, sql).await, before);
    assert_eq!(count(&app.conn, crossed).await, 8);
    let res = app
        .get(&format!("/api/v1/budgets/{}/alerts", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(res.status(), 404);
}

#[actix_web::test]
async fn a_scan_that_runs_too_long_is_cancelled_and_the_connection_stays_usable() {
    let conn = fresh_database().await;
    let pool = cloudlens::db::scan_pool(&conn, 1, std::time::Duration::from_millis(100)).unwrap();
    let client = pool.get().await.unwrap();
    let err = client.query("SELECT pg_sleep(2)", &[]).await.unwrap_err();
    assert!(matches!(
        cloudlens::db::QueryError::from(err),
        cloudlens::db::QueryError::Timeout
    ));
    assert_eq!(client.query("SELECT 1", &[]).await.unwrap().len(), 1);
}

/// Cost per virtual-tag value over a month, from the API.
async fn by_vtag(app: &TestApp, month: &str, next: &str, min: i64) -> BTreeMap<String, Decimal> {
    let v = costs(
        app,
        &format!("from={month}&to={next}&bucket=month&group_by=vtag:owner&min_position={min}"),
    )
    .await;
    assert_eq!(v["source"], "lines");
    v["buckets"][0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"]["vtag:owner"]
                    .as_str()
                    .unwrap_or("(null)")
                    .to_owned(),
                dec(&g["cost"]),
            )
        })
        .collect()
}

/// The same, computed by hand-written SQL over the lines' own columns.
async fn by_rule_sql(app: &TestApp, case: &str, month: &str) -> BTreeMap<String, Decimal> {
    let client = cloudlens::db::connect(&app.conn).await.unwrap();
    let sql = format!(
        "SELECT coalesce({case}, '(null)'), sum(cost) FROM cost_lines
          WHERE billing_period = '{month}' GROUP BY 1"
    );
    client
        .query(sql.as_str(), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until the recomputation of the virtual tag saved at `position` is complete and
/// answers its progress.
async fn recomputed(app: &TestApp, position: i64) -> Value {
    eventually(std::time::Duration::from_secs(60), || async {
        let list = body(
            app.get(&format!(
                "/api/v1/costs/virtual-tags?min_position={position}"
            ))
            .await,
        )
        .await;
        let tag = list["items"][0].clone();
        (tag["position"] == position && tag["recompute"]["state"] == "complete").then_some(tag)
    })
    .await
    .expect("the recomputation completes")
}

#[actix_web::test]
async fn virtual_tags_recompute_existing_lines_and_follow_new_ones() {
    let app = spawn_app().await;
    open_account(&app, "prod", "CNY").await;
    import_ok(&app, "prod", "cloudlens", &bill("2024-03", 1_200, 11).0).await;
    let owner = |default: Value| {
        json!({"name": "owner", "default": default, "values": [
            {"value": "one", "rule": {"logic": "AND", "conditions": [
                {"field": "tags.team", "operator": "=", "value": "t1"}]}},
            {"value": "storage", "rule": {"logic": "OR", "conditions": [
                {"field": "service", "operator": "=", "value": "oss"},
                {"field": "cost", "operator": ">", "value": 9.9}]}}]})
    };
    let res = app
        .post_json("/api/v1/costs/virtual-tags", &owner(json!("other")))
        .await;
    assert_eq!(res.status(), 201);
    let saved = body(res).await["position"].as_i64().unwrap();
    let case = "CASE WHEN tags->>'team' = 't1' THEN 'one' \
                WHEN service = 'oss' OR cost > 9.9 THEN 'storage' ELSE 'other' END";
    // Existing lines were recomputed by the job, in steps of about 300 lines (the test
    // setting), each a `VirtualTagRecomputed` event; the first matching value wins.
    let tag = recomputed(&app, saved).await;
    assert_eq!(tag["recompute"]["lines_done"], 1_200);
    assert_eq!(tag["recompute"]["lines_total"], 1_200);
    let steps = count(
        &app.conn,
        "SELECT count(*) FROM events WHERE event_type = 'VirtualTagRecomputed'",
    )
    .await;
    assert!(steps >= 3, "{steps} steps");
    let march = by_vtag(&app, "2024-03-01", "2024-04-01", saved).await;
    assert_eq!(march, by_rule_sql(&app, case, "2024-03-01").await);
    assert_eq!(march.len(), 3);
    // Lines imported after the save get the tag as they are written.
    let april = import_ok(&app, "prod", "cloudlens", &bill("2024-04", 900, 12).0).await;
    let april_pos = april["position"].as_i64().unwrap();
    assert_eq!(
        by_vtag(&app, "2024-04-01", "2024-05-01", april_pos).await,
        by_rule_sql(&app, case, "2024-04-01").await
    );
    // Without a default, unmatched lines are null; saving the same again changes nothing.
    let res = app
        .post_json("/api/v1/costs/virtual-tags", &owner(Value::Null))
        .await;
    assert_eq!(res.status(), 200);
    let changed = body(res).await["position"].as_i64().unwrap();
    let tag = recomputed(&app, changed).await;
    assert_eq!(tag["recompute"]["lines_done"], 2_100);
    let no_default = "CASE WHEN tags->>'team' = 't1' THEN 'one' \
                      WHEN service = 'oss' OR cost > 9.9 THEN 'storage' END";
    let march = by_vtag(&app, "2024-03-01", "2024-04-01", changed).await;
    assert!(march.contains_key("(null)"));
    assert_eq!(march, by_rule_sql(&app, no_default, "2024-03-01").await);
    let events = count(&app.conn, "SELECT count(*) FROM events").await;
    let res = app
        .post_json("/api/v1/costs/virtual-tags", &owner(Value::Null))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM events").await,
        events
    );
    let list = body(app.get("/api/v1/costs/virtual-tags").await).await;
    assert_eq!(list["items"][0]["name"], "owner");
    assert_eq!(list["items"][0]["default"], Value::Null);

    // Bad definitions name the offending part; an unknown virtual tag is refused.
    for (draft, field) in [
        (
            json!({"name": "x", "values": [{"value": "a", "rule": {"logic": "AND", "conditions": [
                {"field": "colour", "operator": "=", "value": "red"}]}}]}),
            "values/0/rule/conditions/0/field",
        ),
        (
            json!({"name": "x", "values": [{"value": "a", "rule": {"logic": "AND", "conditions": [
                {"field": "tags.a'b", "operator": "=", "value": "red"}]}}]}),
            "values/0/rule/conditions/0/field",
        ),
        (json!({"name": "X y", "values": []}), "name"),
        (json!({"name": "x", "values": []}), "values"),
    ] {
        let res = app.post_json("/api/v1/costs/virtual-tags", &draft).await;
        assert_eq!(res.status(), 422, "{draft}");
        assert_eq!(body(res).await["field"], field, "{draft}");
    }
    let res = app
        .get("/api/v1/costs?from=2024-03-01&to=2024-04-01&group_by=vtag:nope")
        .await;
    assert_eq!(res.status(), 422);

    // A replay computes the same values: saved tags over earlier lines, new lines after.
    let sql = "SELECT concat_ws('|', import_id, line_no, vtags) FROM cost_lines";
    let before = snapshot(&app.conn, sql).await;
    rebuild_and_wait(&app, "cost_lines").await;
    assert_eq!(snapshot(&app.conn, sql).await, before);
}

#[actix_web::test]
async fn shared_costs_are_allocated_over_their_targets_without_losing_a_cent() {
    let app = spawn_app().await;
    open_account(&app, "prod", "CNY").await;
    let bill = "billing_cycle,billing_date,product_code,pretax_amount,currency,tag
2024-05,2024-05-01,ecs,30.00,CNY,team:web
2024-05,2024-05-01,rds,10.00,CNY,team:data
2024-05,2024-05-01,slb,1.00,CNY,team:shared
2024-05,2024-05-02,ecs,5.00,CNY,team:web
2024-05,2024-05-02,rds,5.00,CNY,team:data
2024-05,2024-05-02,slb,10.01,CNY,team:shared
2024-05,2024-05-02,slb,3.00,USD,team:shared
";
    import_ok(&app, "prod", "cloudlens", bill).await;
    let rule = |method: &str, targets: Value| {
        json!({"name": "shared", "by": "tag:team", "method": method,
               "source": {"tag": "team:shared"}, "targets": targets})
    };
    let res = app
        .post_json(
            "/api/v1/costs/allocation-rules",
            &rule("proportional", json!([{"key": "web"}, {"key": "data"}])),
        )
        .await;
    assert_eq!(res.status(), 201);
    let pos = body(res).await["position"].as_i64().unwrap();
    let q = format!(
        "from=2024-05-01&to=2024-05-03&group_by=tag:team&allocated=true&min_position={pos}"
    );
    let cells = |v: &Value| -> BTreeMap<(String, String, String), Decimal> {
        let mut out = BTreeMap::new();
        for b in v["buckets"].as_array().unwrap() {
            for g in b["groups"].as_array().unwrap() {
                out.insert(
                    (
                        b["start"].as_str().unwrap()[..10].to_owned(),
                        g["key"]["tag:team"].as_str().unwrap().to_owned(),
                        g["currency"].as_str().unwrap().to_owned(),
                    ),
                    dec(&g["cost"]),
                );
            }
        }
        out
    };
    let d = |s: &str| Decimal::from_str(s).unwrap();
    let key = |day: &str, team: &str, cur: &str| (day.to_owned(), team.to_owned(), cur.to_owned());
    let v = costs(&app, &q).await;
    assert_eq!(v["allocated"], true);
    let c = cells(&v);
    // Day 1: 1.00 in proportion 30:10. Day 2: 10.01 in proportion 5:5, the cent left
    // over to the first key ("data"). USD: no direct cost to weigh by, so evenly.
    assert_eq!(c[&key("2024-05-01", "web", "CNY")], d("30.75"));
    assert_eq!(c[&key("2024-05-01", "data", "CNY")], d("10.25"));
    assert_eq!(c[&key("2024-05-02", "web", "CNY")], d("10.00"));
    assert_eq!(c[&key("2024-05-02", "data", "CNY")], d("10.01"));
    assert_eq!(c[&key("2024-05-02", "web", "USD")], d("1.50"));
    assert_eq!(c[&key("2024-05-02", "data", "USD")], d("1.50"));
    assert!(!c.keys().any(|(_, team, _)| team == "shared"), "{c:?}");
    // Totals equal the unallocated ones to the last digit.
    let plain = costs(&app, "from=2024-05-01&to=2024-05-03&group_by=tag:team").await;
    assert_eq!(v["totals"], plain["totals"]);

    // A fixed split replaces the rule.
    let res = app
        .post_json(
            "/api/v1/costs/allocation-rules",
            &rule(
                "fixed",
                json!([{"key": "web", "weight": "60"}, {"key": "data", "weight": "40"}]),
            ),
        )
        .await;
    assert_eq!(res.status(), 200);
    let pos = body(res).await["position"].as_i64().unwrap();
    let v = costs(
        &app,
        &format!(
            "from=2024-05-01&to=2024-05-02&group_by=tag:team&allocated=true&min_position={pos}"
        ),
    )
    .await;
    let c = cells(&v);
    assert_eq!(c[&key("2024-05-01", "web", "CNY")], d("30.60"));
    assert_eq!(c[&key("2024-05-01", "data", "CNY")], d("10.40"));

    // Cycles, bad weights and unsupported groupings are refused.
    for (draft, field) in [
        (
            json!({"name": "back", "by": "tag:team", "method": "even",
                   "source": {"tag": "team:web"}, "targets": [{"key": "ml"}]}),
            "source",
        ),
        (
            json!({"name": "into", "by": "tag:team", "method": "even",
                   "source": {"tag": "team:ops"}, "targets": [{"key": "shared"}]}),
            "targets",
        ),
        (
            rule(
                "fixed",
                json!([{"key": "web", "weight": "60"}, {"key": "data", "weight": "30"}]),
            ),
            "targets",
        ),
        (
            json!({"name": "x", "by": "colour", "method": "even",
                   "source": {"tag": "team:ops"}, "targets": [{"key": "a"}]}),
            "by",
        ),
    ] {
        let res = app
            .post_json("/api/v1/costs/allocation-rules", &draft)
            .await;
        assert_eq!(res.status(), 422, "{draft}");
        assert_eq!(body(res).await["field"], field, "{draft}");
    }
    let res = app
        .get("/api/v1/costs?from=2024-05-01&to=2024-05-03&group_by=tag:team,service&allocated=true")
        .await;
    assert_eq!(res.status(), 422);
    assert_eq!(body(res).await["field"], "allocated");
    let list = body(app.get("/api/v1/costs/allocation-rules").await).await;
    assert_eq!(list["items"][0]["method"], "fixed");
    let sql =
        "SELECT concat_ws('|', tenant_id, name, definition, position) FROM cost_allocation_rules";
    let before = snapshot(&app.conn, sql).await;
    rebuild_and_wait(&app, "cost_allocation_rules").await;
    assert_eq!(snapshot(&app.conn, sql).await, before);
}

#[actix_web::test]
async fn a_budget_created_or_lowered_under_imported_costs_alerts_without_a_new_bill() {
    use chrono::Datelike;
    let app = spawn_app().await;
    open_account(&app, "prod", "CNY").await;
    // Today's month so far: 10.00 a day.
    let today = chrono::Utc::now().date_naive();
    let month = today.format("%Y-%m").to_string();
    let mut csv =
        String::from("billing_cycle,billing_date,product_code,pretax_amount,currency,tag\n");
    for d in 1..=today.day() {
        csv.push_str(&format!("{month},{month}-{d:02},ecs,10.00,CNY,team:web\n"));
    }
    import_ok(&app, "prod", "cloudlens", &csv).await;
    let spent = Decimal::from(10 * today.day());
    let mut draft = json!({"name": "b", "amount": (spent * Decimal::from(4)).to_string(),
        "currency": "CNY", "period": "monthly", "type": "cost", "start_date": "2024-01-01",
        "account": "prod", "alert_thresholds": ["50", "100"]});
    let (id, created) = budget(&app, draft.clone()).await;
    // Budget changes ask for one coalescing job per tenant, which evaluates the budgets
    // changed since its previous run; wait until it has seen `position`.
    let evaluated = |position: i64| {
        let (app, id) = (&app, &id);
        async move {
            let done = eventually(std::time::Duration::from_secs(60), || async {
                let seen = count(
                    &app.conn,
                    &format!(
                        "SELECT count(*) FROM jobs WHERE kind = 'costs.budget_thresholds_on_change' \
                         AND state = 'succeeded' \
                         AND (result->>'evaluated_through')::bigint >= {position}"
                    ),
                )
                .await;
                (seen == 1).then_some(())
            })
            .await;
            assert!(done.is_some(), "the change job evaluates up to {position}");
            let position = count(&app.conn, "SELECT max(position) FROM events").await;
            body(
                app.get(&format!(
                    "/api/v1/budgets/{id}/alerts?min_position={position}"
                ))
                .await,
            )
            .await["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    format!(
                        "{}/{}",
                        a["percent"].as_str().unwrap(),
                        a["basis"].as_str().unwrap()
                    )
                })
                .collect::<BTreeSet<String>>()
        }
    };
    // Spent is a quarter of the amount: under 50 % actual (the forecast depends on the day
    // of the month, so only the actual basis is asserted).
    let alerts = evaluated(created).await;
    assert!(!alerts.contains("50/actual"), "{alerts:?}");
    // Lowered to the amount spent: 50 % and 100 % actual are crossed, with no new bill.
    // Replaces the budget; answers the position of the change.
    let replace = |draft: Value| {
        let (app, id) = (&app, &id);
        async move {
            let res = app
                .client
                .put(app.url(&format!("/api/v1/budgets/{id}")))
                .send_json(&draft)
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            body(res).await["position"].as_i64().unwrap()
        }
    };
    draft["amount"] = json!(spent.to_string());
    let lowered = replace(draft.clone()).await;
    let alerts = evaluated(lowered).await;
    assert!(
        alerts.contains("50/actual") && alerts.contains("100/actual"),
        "{alerts:?}"
    );
    // The same again: a new evaluation, no crossing recorded twice.
    let crossed = count(
        &app.conn,
        "SELECT count(*) FROM events WHERE event_type = 'BudgetThresholdCrossed'",
    )
    .await;
    draft["name"] = json!("b2");
    let renamed = replace(draft.clone()).await;
    assert_eq!(evaluated(renamed).await, alerts);
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM events WHERE event_type = 'BudgetThresholdCrossed'",
        )
        .await,
        crossed
    );
    // A burst of budgets is one job (one row per tenant), run as often as it is asked
    // for while it runs, not once per budget.
    let mut last = 0;
    for i in 0..30 {
        draft["name"] = json!(format!("burst-{i}"));
        last = budget(&app, draft.clone()).await.1;
    }
    evaluated(last).await;
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM jobs WHERE kind = 'costs.budget_thresholds_on_change'"
        )
        .await,
        1
    );
}
