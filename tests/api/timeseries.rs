#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Time series against real TimescaleDB: points and bars posted in every format, every
//! query compared with aggregates computed here from the same points, gap filling, last
//! write wins, retention (and a rebuild after it), rebuild equal to live, bad input.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::helpers::*;

const MIN: i64 = 60;

fn t0() -> DateTime<Utc> {
    // Two days back from today's midnight: inside the default retention.
    let today = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    today - chrono::Duration::days(2)
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A deterministic value of series `s` at minute `m`.
fn value(s: usize, m: i64) -> f64 {
    ((m * 37 + s as i64 * 11) % 101) as f64 / 4.0 - 3.0
}

#[derive(Clone, Debug)]
struct P {
    series: String,
    time: DateTime<Utc>,
    value: f64,
    region: &'static str,
}

/// Three series over 30 hours at one point a minute, with a 90-minute gap in the
/// second.
fn points() -> Vec<P> {
    let mut out = Vec::new();
    for s in 0..3 {
        for m in 0..30 * 60 {
            if s == 1 && (300..390).contains(&m) {
                continue;
            }
            out.push(P {
                series: format!("host-{s}"),
                time: t0() + chrono::Duration::seconds(m * MIN),
                value: value(s, m),
                region: if s == 2 { "eu" } else { "cn" },
            });
        }
    }
    out
}

async fn post(app: &TestApp, path: &str, ctype: &str, body: String) -> Response {
    app.client
        .post(app.url(path))
        .insert_header(("Content-Type", ctype))
        .send_body(body)
        .await
        .unwrap()
}

async fn accepted(res: Response) -> Value {
    let status = res.status();
    let v = body(res).await;
    assert_eq!(status, 202, "{v}");
    v
}

/// Posts the points: the first third as JSON, the next as NDJSON, the rest as CSV.
async fn post_points(app: &TestApp, pts: &[P]) -> i64 {
    let third = pts.len() / 3;
    let as_json = |p: &P| {
        json!({"series": p.series, "metric": "cpu", "time": rfc(p.time), "value": p.value,
               "tags": {"region": p.region}})
    };
    let j = json!({"points": pts[..third].iter().map(as_json).collect::<Vec<_>>()});
    let a = accepted(
        post(
            app,
            "/api/v1/metrics:batch",
            "application/json",
            j.to_string(),
        )
        .await,
    )
    .await;
    assert_eq!(a["accepted"], third as i64);
    let nd: String = pts[third..2 * third]
        .iter()
        .map(|p| format!("{}\n", as_json(p)))
        .collect();
    accepted(post(app, "/api/v1/metrics:batch", "application/x-ndjson", nd).await).await;
    let mut csv = String::from("series,metric,time,value,region\n");
    for p in &pts[2 * third..] {
        csv.push_str(&format!(
            "{},cpu,{},{},{}\n",
            p.series,
            rfc(p.time),
            p.value,
            p.region
        ));
    }
    let last = accepted(post(app, "/api/v1/metrics:batch", "text/csv", csv).await).await;
    last["position"].as_i64().unwrap()
}

/// Expected aggregates of `pts` per bucket start (µs).
fn expected(pts: &[&P], width_s: i64) -> BTreeMap<i64, BTreeMap<&'static str, f64>> {
    let mut groups: BTreeMap<i64, Vec<&P>> = BTreeMap::new();
    for p in pts {
        let t = p.time.timestamp();
        groups.entry(t - t.rem_euclid(width_s)).or_default().push(p);
    }
    groups
        .into_iter()
        .map(|(b, mut list)| {
            list.sort_by_key(|p| p.time);
            let vals: Vec<f64> = list.iter().map(|p| p.value).collect();
            let sum: f64 = vals.iter().sum();
            let mut sorted = vals.clone();
            sorted.sort_by(f64::total_cmp);
            // percentile_cont(0.95): linear interpolation between closest ranks.
            let rank = 0.95 * (sorted.len() - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            let p95 = sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64);
            let m: BTreeMap<&str, f64> = [
                ("avg", sum / vals.len() as f64),
                ("min", sorted[0]),
                ("max", *sorted.last().unwrap()),
                ("sum", sum),
                ("count", vals.len() as f64),
                ("first", vals[0]),
                ("last", *vals.last().unwrap()),
                ("p95", p95),
            ]
            .into_iter()
            .collect();
            (b * 1_000_000, m)
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn check_buckets(
    got: &Value,
    want: &BTreeMap<i64, BTreeMap<&str, f64>>,
    aggs: &[&str],
    what: &str,
) {
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: bucket count");
    for (g, (b, w)) in got.iter().zip(want) {
        let t: DateTime<Utc> = g["time"].as_str().unwrap().parse().unwrap();
        assert_eq!(t.timestamp_micros(), *b, "{what}: bucket time");
        for a in aggs {
            let v = g[*a]
                .as_f64()
                .unwrap_or_else(|| panic!("{what}: {a} in {g}"));
            assert!(close(v, w[a]), "{what} {t} {a}: got {v}, want {}", w[a]);
        }
    }
}

#[actix_web::test]
async fn points_in_every_format_answer_every_aggregation_exactly() {
    let app = spawn_app().await;
    let pts = points();
    let pos = post_points(&app, &pts).await;
    let from = rfc(t0());
    let to = rfc(t0() + chrono::Duration::hours(30));
    let all = "avg,min,max,sum,count,first,last,p95";
    for (bucket, width) in [("1m", 60), ("5m", 300), ("1h", 3600), ("1d", 86400)] {
        for s in 0..3 {
            let series = format!("host-{s}");
            let mine: Vec<&P> = pts.iter().filter(|p| p.series == series).collect();
            let want = expected(&mine, width);
            let v = body(app.get(&format!(
                "/api/v1/metrics/{series}/cpu?from={from}&to={to}&bucket={bucket}&agg={all}&min_position={pos}"
            )).await).await;
            assert_eq!(v["source"], "raw", "p95 needs the points");
            check_buckets(
                &v["points"],
                &want,
                &all.split(',').collect::<Vec<_>>(),
                &format!("{series} {bucket}"),
            );
            // Without p95 the rollups answer 1h and 1d, with the same numbers.
            let v = body(app.get(&format!(
                "/api/v1/metrics/{series}/cpu?from={from}&to={to}&bucket={bucket}&agg=avg,min,max,sum,count,first,last"
            )).await).await;
            let source = match bucket {
                "1h" => "rollup_1h",
                "1d" => "rollup_1d",
                _ => "raw",
            };
            assert_eq!(v["source"], source);
            check_buckets(
                &v["points"],
                &want,
                &["avg", "min", "max", "sum", "count", "first", "last"],
                &format!("{series} {bucket} rollup"),
            );
        }
    }

    // Across series: grouped by a tag, filtered by a tag, top N.
    let v = body(app.get(&format!(
        "/api/v1/metrics?metric=cpu&from={from}&to={to}&bucket=1h&agg=sum,count,max&group_by=tag:region"
    )).await).await;
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{v}");
    for g in groups {
        let region = g["group"].as_str().unwrap();
        let mine: Vec<&P> = pts.iter().filter(|p| p.region == region).collect();
        assert_eq!(g["series"], if region == "cn" { 2 } else { 1 });
        check_buckets(
            &g["points"],
            &expected(&mine, 3600),
            &["sum", "count", "max"],
            region,
        );
    }
    let v = body(
        app.get(&format!(
            "/api/v1/metrics?metric=cpu&tag=region:cn&from={from}&to={to}&bucket=1d&agg=count"
        ))
        .await,
    )
    .await;
    let names: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["host-0", "host-1"]);
    let v = body(
        app.get(&format!(
            "/api/v1/metrics?metric=cpu&from={from}&to={to}&bucket=1h&agg=count&top=1"
        ))
        .await,
    )
    .await;
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_ne!(
        groups[0]["group"], "host-1",
        "host-1 has the gap, so the fewest points"
    );

    // Latest and the catalog.
    let v = body(app.get("/api/v1/metrics/host-2/cpu/latest").await).await;
    let last = pts.iter().rfind(|p| p.series == "host-2").unwrap();
    assert_eq!(v["last_value"].as_f64().unwrap(), last.value);
    assert_eq!(v["tags"], json!({"region": "eu"}));
    let v = body(app.get("/api/v1/metrics/series?metric=cpu&limit=2").await).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let next = v["next"].as_str().unwrap().to_owned();
    let v = body(
        app.get(&format!(
            "/api/v1/metrics/series?metric=cpu&limit=2&after={next}"
        ))
        .await,
    )
    .await;
    assert_eq!(v["items"][0]["series"], "host-2");
    assert!(v.get("next").is_none());
    let res = app.get("/api/v1/metrics/nope/cpu/latest").await;
    assert_eq!(res.status(), 404);

    // Rebuilt read models equal the live ones.
    let tables = [
        "SELECT format('%s %s %s %s %s %s', tenant_id, id, series, metric, tags, last_time) FROM metric_series",
        "SELECT format('%s %s %s', series_id, time, value) FROM metric_points",
        "SELECT format('%s %s %s %s %s %s %s', series_id, bucket, count, round(sum::numeric, 6), min, max, last_value) FROM metric_points_1h",
        "SELECT format('%s %s %s %s %s %s %s', series_id, bucket, count, round(sum::numeric, 6), first_value, last_time, last_value) FROM metric_points_1d",
    ];
    let mut live = Vec::new();
    for t in tables {
        live.push(snapshot(&app.conn, t).await);
    }
    rebuild_and_wait(&app, "metric_points").await;
    for (t, l) in tables.iter().zip(&live) {
        assert!(!l.is_empty());
        assert_eq!(&snapshot(&app.conn, t).await, l, "{t}");
    }
    // The rollups equal the raw aggregation, also after the rebuild.
    let c = cloudlens::db::connect(&app.conn).await.unwrap();
    let diff: i64 = c
        .query_one(
            "SELECT count(*) FROM (
               SELECT series_id, time_bucket('1 hour', time) b, count(*) n, sum(value) s,
                      min(value) lo, max(value) hi, first(value, time) f, last(value, time) l
               FROM metric_points GROUP BY 1, 2) r
             FULL JOIN metric_points_1h h ON h.series_id = r.series_id AND h.bucket = r.b
             WHERE h.count IS DISTINCT FROM r.n OR abs(h.sum - r.s) > 1e-9 * greatest(1, abs(r.s))
                OR h.min IS DISTINCT FROM r.lo OR h.max IS DISTINCT FROM r.hi
                OR h.first_value IS DISTINCT FROM r.f OR h.last_value IS DISTINCT FROM r.l",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(diff, 0);
}

#[actix_web::test]
async fn gaps_are_absent_or_filled() {
    let app = spawn_app().await;
    let mut nd = String::new();
    for (m, v) in [(0, 1.0), (3, 4.0)] {
        nd.push_str(&format!(
            "{}\n",
            json!({"series": "g", "metric": "m", "time": rfc(t0() + chrono::Duration::minutes(m)), "value": v})
        ));
    }
    let a = accepted(post(&app, "/api/v1/metrics:batch", "application/x-ndjson", nd).await).await;
    let q = |fill: &str| {
        format!(
            "/api/v1/metrics/g/m?from={}&to={}&bucket=1m&agg=avg,count&fill={fill}&min_position={}",
            rfc(t0()),
            rfc(t0() + chrono::Duration::minutes(4)),
            a["position"]
        )
    };
    let avgs = |v: &Value| -> Vec<Value> {
        v["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["avg"].clone())
            .collect()
    };
    assert_eq!(
        avgs(&body(app.get(&q("none")).await).await),
        vec![json!(1.0), json!(4.0)]
    );
    assert_eq!(
        avgs(&body(app.get(&q("null")).await).await),
        vec![json!(1.0), Value::Null, Value::Null, json!(4.0)]
    );
    assert_eq!(
        avgs(&body(app.get(&q("previous")).await).await),
        vec![json!(1.0), json!(1.0), json!(1.0), json!(4.0)]
    );
    assert_eq!(
        avgs(&body(app.get(&q("linear")).await).await),
        vec![json!(1.0), json!(2.0), json!(3.0), json!(4.0)]
    );
}

#[actix_web::test]
async fn the_last_write_of_a_point_wins_in_points_and_rollups() {
    let app = spawn_app().await;
    let at = |m: i64| rfc(t0() + chrono::Duration::minutes(m));
    let p = |m: i64, v: f64| json!({"series": "d", "metric": "m", "time": at(m), "value": v});
    // Within one batch: the later of two equal points wins.
    accepted(
        app.post_json(
            "/api/v1/metrics:batch",
            &json!({"points": [p(0, 1.0), p(1, 2.0), p(0, 10.0)]}),
        )
        .await,
    )
    .await;
    // In a later batch: replaces the stored point.
    let a = accepted(
        app.post_json(
            "/api/v1/metrics:batch",
            &json!({"points": [p(1, 20.0), p(2, 3.0)]}),
        )
        .await,
    )
    .await;
    let v = body(app.get(&format!(
        "/api/v1/metrics/d/m?from={}&to={}&bucket=1h&agg=count,sum,min,max,first,last&min_position={}",
        at(0), at(60), a["position"]
    )).await).await;
    assert_eq!(v["source"], "rollup_1h");
    let b = &v["points"][0];
    assert_eq!(
        (b["count"].as_f64(), b["sum"].as_f64()),
        (Some(3.0), Some(33.0)),
        "{v}"
    );
    assert_eq!(
        (b["min"].as_f64(), b["max"].as_f64()),
        (Some(3.0), Some(20.0))
    );
    assert_eq!(
        (b["first"].as_f64(), b["last"].as_f64()),
        (Some(10.0), Some(3.0))
    );
    let d = body(
        app.get(&format!(
            "/api/v1/metrics/d/m?from={}&to={}&bucket=1d&agg=count,sum",
            at(0),
            at(60)
        ))
        .await,
    )
    .await;
    assert_eq!(d["points"][0]["sum"].as_f64(), Some(33.0));
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM metric_points").await,
        3
    );
}

async fn nothing_written(app: &TestApp) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM events WHERE stream_type IN ('metric_batch', 'bar_batch')"
        )
        .await,
        0
    );
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM staged_events").await,
        0
    );
}

#[actix_web::test]
async fn a_bad_point_rejects_the_whole_batch_naming_its_line() {
    let app = spawn_app().await;
    let good = |m: i64| {
        format!(
            r#"{{"series":"s","metric":"m","time":"{}","value":1}}"#,
            rfc(t0() + chrono::Duration::minutes(m))
        )
    };
    let future = rfc(Utc::now() + chrono::Duration::days(2));
    let cases: Vec<(String, &str, i64, &str)> = vec![
        (format!("{}\n{}\n{{\"series\":\"s\",\"metric\":\"m\",\"time\":\"x\",\"value\":1}}\n", good(0), good(1)), "application/x-ndjson", 3, "time"),
        (format!("{}\n{{\"series\":\"\",\"metric\":\"m\",\"time\":\"{}\",\"value\":1}}\n", good(0), rfc(t0())), "application/x-ndjson", 2, "series"),
        (format!("{{\"series\":\"s\",\"metric\":\"m\",\"time\":\"{future}\",\"value\":1}}\n"), "application/x-ndjson", 1, "time"),
        (format!("{{\"points\":[{},{{\"series\":\"s\",\"metric\":\"\",\"time\":\"{}\",\"value\":1}}]}}", good(0), rfc(t0())), "application/json", 2, "metric"),
        (format!("{{\"points\":[{},{},{{\"series\":\"s\",\"metric\":\"m\",\"time\":\"{}\",\"value\":1e999}}]}}", good(0), good(1), rfc(t0())), "application/json", 3, "value"),
        (format!("series,metric,time,value\ns,m,{},1\ns,m,{},NaN\n", rfc(t0()), rfc(t0())), "text/csv", 2, "value"),
        (format!("series,metric,time,value\ns,m,{},inf\n", rfc(t0())), "text/csv", 1, "value"),
        ("series,metric,value\ns,m,1\n".into(), "text/csv", 0, "time"),
    ];
    for (body_text, ctype, row, field) in cases {
        let res = post(&app, "/api/v1/metrics:batch", ctype, body_text.clone()).await;
        assert_eq!(res.status(), 422, "{body_text}");
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "application/problem+json"
        );
        let v = body(res).await;
        assert_eq!(v["code"], "invalid_row", "{v}");
        assert_eq!(v["row"], row, "{v}");
        assert_eq!(v["field"], field, "{v}");
    }
    let res = post(
        &app,
        "/api/v1/metrics:batch",
        "application/json",
        "{\"points\": [".into(),
    )
    .await;
    assert_eq!(res.status(), 422);
    let res = post(
        &app,
        "/api/v1/metrics:batch",
        "application/json",
        "{\"point\": []}".into(),
    )
    .await;
    assert_eq!(res.status(), 422);
    let res = post(&app, "/api/v1/metrics:batch", "text/plain", "x".into()).await;
    assert_eq!(res.status(), 415);
    let res = post(
        &app,
        "/api/v1/metrics:batch",
        "application/json",
        "{\"points\": []}".into(),
    )
    .await;
    assert_eq!(res.status(), 422, "an empty batch");
    nothing_written(&app).await;

    // Queries refuse bad parameters and too many points, naming a bucket that fits.
    for q in [
        "bucket=2m",
        "agg=median",
        "fill=zero",
        "from=yesterday",
        "colour=red",
    ] {
        let res = app.get(&format!("/api/v1/metrics/s/m?{q}")).await;
        assert_eq!(res.status(), 422, "{q}");
    }
    let res = app
        .get(&format!(
            "/api/v1/metrics/s/m?bucket=1m&from={}&to={}",
            rfc(t0() - chrono::Duration::days(200)),
            rfc(t0())
        ))
        .await;
    assert_eq!(res.status(), 422);
    let v = body(res).await;
    assert_eq!(v["code"], "too_many_points");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("bucket=5m would fit"),
        "{v}"
    );
}

#[actix_web::test]
async fn a_retried_batch_under_its_key_answers_the_same_and_adds_nothing() {
    let app = spawn_app().await;
    let send = |v: f64| {
        app.client
            .post(app.url("/api/v1/metrics:batch"))
            .insert_header(("Idempotency-Key", "batch-1"))
            .send_json(
                &json!({"points": [{"series": "k", "metric": "m", "time": rfc(t0()), "value": v}]}),
            )
    };
    let first = accepted(send(1.0).await.unwrap()).await;
    let again = accepted(send(1.0).await.unwrap()).await;
    assert_eq!(first, again);
    let res = send(2.0).await.unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM events WHERE stream_type = 'metric_batch'"
        )
        .await,
        2
    );
}

struct B {
    time: DateTime<Utc>,
    o: Decimal,
    h: Decimal,
    l: Decimal,
    c: Decimal,
    v: Decimal,
}

#[actix_web::test]
async fn bars_roll_up_exactly_from_one_minute_bars() {
    let app = spawn_app().await;
    let start = Utc.with_ymd_and_hms(2024, 3, 4, 9, 30, 0).unwrap();
    let bars: Vec<B> = (0..200)
        .map(|i| {
            let base = Decimal::new(10_000 + (i * 37 % 113), 2); // 100.00 ..
            B {
                time: start + chrono::Duration::minutes(i),
                o: base,
                h: base + Decimal::new(57, 3),
                l: base - Decimal::new(31, 3),
                c: base + Decimal::new(i % 7, 3),
                v: Decimal::new(1000 + i, 1),
            }
        })
        .collect();
    let row = |b: &B| json!({"symbol": "AAPL", "time": rfc(b.time), "open": b.o.to_string(), "high": b.h.to_string(), "low": b.l.to_string(), "close": b.c.to_string(), "volume": b.v.to_string()});
    accepted(
        app.post_json(
            "/api/v1/bars:batch",
            &json!({"bars": bars[..70].iter().map(row).collect::<Vec<_>>()}),
        )
        .await,
    )
    .await;
    let nd: String = bars[70..140]
        .iter()
        .map(|b| format!("{}\n", row(b)))
        .collect();
    accepted(post(&app, "/api/v1/bars:batch", "application/x-ndjson", nd).await).await;
    let mut csv = String::from("symbol,time,open,high,low,close,volume\n");
    for b in &bars[140..] {
        csv.push_str(&format!(
            "AAPL,{},{},{},{},{},{}\n",
            rfc(b.time),
            b.o,
            b.h,
            b.l,
            b.c,
            b.v
        ));
    }
    let a = accepted(post(&app, "/api/v1/bars:batch", "text/csv", csv).await).await;
    for (interval, minutes) in [("1m", 1), ("5m", 5), ("15m", 15), ("1h", 60), ("1d", 1440)] {
        let v = body(
            app.get(&format!(
                "/api/v1/bars/AAPL?from={}&to={}&interval={interval}&min_position={}",
                rfc(start),
                rfc(start + chrono::Duration::minutes(200)),
                a["position"]
            ))
            .await,
        )
        .await;
        let mut want: BTreeMap<i64, Vec<&B>> = BTreeMap::new();
        for b in &bars {
            let t = b.time.timestamp();
            want.entry(t - t.rem_euclid(minutes * 60))
                .or_default()
                .push(b);
        }
        let got = v["bars"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{interval}");
        for (g, (_, list)) in got.iter().zip(&want) {
            let dec = |k: &str| {
                g[k].to_string()
                    .trim_matches('"')
                    .parse::<Decimal>()
                    .unwrap()
            };
            assert_eq!(dec("open"), list[0].o);
            assert_eq!(dec("close"), list.last().unwrap().c);
            assert_eq!(dec("high"), list.iter().map(|b| b.h).max().unwrap());
            assert_eq!(dec("low"), list.iter().map(|b| b.l).min().unwrap());
            assert_eq!(
                dec("volume"),
                list.iter().map(|b| b.v).sum::<Decimal>(),
                "{interval}"
            );
            assert_eq!(g["bars"], list.len());
        }
    }
    // Exact decimals survive: the stored text equals what was sent.
    assert_eq!(
        count(
            &app.conn,
            &format!(
                "SELECT count(*) FROM bars_1m WHERE time = '{}' AND high::text = '{}'",
                rfc(bars[0].time),
                bars[0].h
            )
        )
        .await,
        1
    );
    // A bar that contradicts itself is refused.
    let bad = json!({"bars": [{"symbol": "AAPL", "time": rfc(start), "open": "1", "high": "0.5", "low": "0.9", "close": "1", "volume": "1"}]});
    let res = app.post_json("/api/v1/bars:batch", &bad).await;
    assert_eq!(res.status(), 422);
    let live = snapshot(&app.conn, "SELECT format('%s %s %s %s %s %s %s', symbol, time, open, high, low, close, volume) FROM bars_1m").await;
    rebuild_and_wait(&app, "bars").await;
    assert_eq!(snapshot(&app.conn, "SELECT format('%s %s %s %s %s %s %s', symbol, time, open, high, low, close, volume) FROM bars_1m").await, live);
}

#[actix_web::test]
async fn retention_drops_old_raw_points_keeps_rollups_and_a_rebuild_does_not_bring_them_back() {
    let app = spawn_app().await;
    // Cutoffs are whole 7-day chunks: `short` (5 days) cuts between 5 and 12 days back,
    // the default (30) between 30 and 37.
    let old = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        - chrono::Duration::days(20);
    let recent = Utc::now() - chrono::Duration::hours(3);
    let point = |metric: &str, t: DateTime<Utc>, v: i64| json!({"series": "r", "metric": metric, "time": rfc(t), "value": v});
    let mut pts = Vec::new();
    // 50 days back: past every retention, so its chunk is dropped whole.
    let ancient = old - chrono::Duration::days(30);
    for metric in ["short", "long"] {
        for m in 0..120 {
            for t in [old, recent] {
                pts.push(point(metric, t + chrono::Duration::minutes(m), m));
            }
        }
        for m in 0..10 {
            pts.push(point(metric, ancient + chrono::Duration::minutes(m), m));
        }
    }
    // `short` keeps raw points for 5 days; the default (30) keeps `long`'s.
    let put = |days: Value| {
        app.client
            .put(app.url("/api/v1/admin/metrics/retention/short"))
            .send_json(&json!({ "raw_days": days }))
    };
    assert_eq!(put(json!(5)).await.unwrap().status(), 200);
    assert_eq!(put(json!(0)).await.unwrap().status(), 422);
    accepted(
        app.post_json("/api/v1/metrics:batch", &json!({"points": pts}))
            .await,
    )
    .await;
    // A correction of an old point before retention runs: live replaces it exactly.
    let fix = accepted(
        app.post_json(
            "/api/v1/metrics:batch",
            &json!({"points": [point("short", old, 1000)]}),
        )
        .await,
    )
    .await;
    // Retention looks at the series the read model has: wait for them.
    let res = app
        .get(&format!(
            "/api/v1/metrics/r/short/latest?min_position={}",
            fix["position"]
        ))
        .await;
    assert_eq!(res.status(), 200);
    let raw = |metric: &'static str| {
        let conn = app.conn.clone();
        async move {
            count(
                &conn,
                &format!(
                    "SELECT count(*) FROM metric_points p JOIN metric_series s ON s.id = p.series_id
                     WHERE s.metric = '{metric}' AND p.time < '{}'",
                    rfc(old + chrono::Duration::days(1))
                ),
            )
            .await
        }
    };
    let run = app
        .client
        .post(app.url("/api/v1/admin/metrics/retention:run"))
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 202);
    let run = body(run).await;
    assert_eq!(
        (run["tenants"].as_i64(), run["metrics"].as_i64()),
        (Some(1), Some(2)),
        "{run}"
    );
    let res = app
        .get(&format!(
            "/api/v1/admin/metrics/retention?min_position={}",
            run["position"]
        ))
        .await;
    assert_eq!(
        res.status(),
        200,
        "the projector applied the retention event"
    );
    let status = body(res).await;
    assert_eq!(raw("short").await, 0, "short's old raw points are gone");
    assert_eq!(raw("long").await, 120, "long keeps its old raw points");
    assert_eq!(status["default_days"], 30);
    assert_eq!(
        status["metrics"],
        json!([{"metric": "short", "raw_days": 5}])
    );
    let horizons = status["horizons"].as_array().unwrap();
    let short = horizons.iter().find(|h| h["metric"] == "short").unwrap();
    assert_eq!(short["points_deleted"], 130, "{status}");
    let long = horizons.iter().find(|h| h["metric"] == "long").unwrap();
    assert_eq!(long["points_deleted"], 10, "{status}");
    assert!(status["runs"][0]["trigger"] == "admin", "{status}");
    let metrics = app.get("/metrics").await.body().await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    // Whole lines: the counters are the process's, and no other test removes points.
    let lines: Vec<&str> = metrics.lines().collect();
    for line in [
        "cloudlens_timeseries_retention_points_deleted_total{trigger=\"admin\"} 140",
        "cloudlens_timeseries_retention_chunks_dropped_total{trigger=\"admin\"} 1",
    ] {
        assert!(lines.contains(&line), "{line} in {metrics}");
    }
    // Nothing more is due: a second run requests nothing.
    let again = body(
        app.client
            .post(app.url("/api/v1/admin/metrics/retention:run"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(again["metrics"], 0);
    // A late write before the horizon is not kept raw; its rollup counts it, each time
    // it is written (no raw row to replace), whichever batches a replay makes.
    let late_point = json!({"points": [point("short", old + chrono::Duration::minutes(500), 7)]});
    accepted(app.post_json("/api/v1/metrics:batch", &late_point).await).await;
    let late = accepted(app.post_json("/api/v1/metrics:batch", &late_point).await).await;
    let q = format!(
        "/api/v1/metrics/r/short?from={}&to={}&bucket=1h&agg=count,sum,first&min_position={}",
        rfc(old),
        rfc(old + chrono::Duration::hours(9)),
        late["position"]
    );
    let v = body(app.get(&q).await).await;
    let hours = v["points"].as_array().unwrap();
    assert_eq!(
        hours[0]["count"].as_f64(),
        Some(60.0),
        "the corrected hour: {v}"
    );
    assert_eq!(hours[0]["first"].as_f64(), Some(1000.0));
    assert_eq!(hours.last().unwrap()["count"].as_f64(), Some(2.0), "{v}");
    assert_eq!(raw("short").await, 0);

    // A rebuild replays points, corrections and retention in log order: the same result.
    let tables = [
        "SELECT format('%s %s %s %s %s', series_id, bucket, count, sum, first_value) FROM metric_points_1h",
        "SELECT format('%s %s %s', series_id, time, value) FROM metric_points",
        "SELECT format('%s %s %s %s', tenant_id, metric, before, points_deleted) FROM metric_raw_horizon",
    ];
    let mut live = Vec::new();
    for t in tables {
        live.push(snapshot(&app.conn, t).await);
    }
    rebuild_and_wait(&app, "metric_points").await;
    assert_eq!(raw("short").await, 0, "the rebuild did not bring them back");
    assert_eq!(raw("long").await, 120);
    for (t, l) in tables.iter().zip(&live) {
        assert_eq!(&snapshot(&app.conn, t).await, l, "{t}");
    }
}
