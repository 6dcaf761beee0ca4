#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The event store and the gap-free global read, against real PostgreSQL.

use std::time::Duration;

use cloudlens::budgets::{Budget, BudgetCommand, BudgetDraft, BudgetError};
use cloudlens::db;
use cloudlens::eventstore::global::{self, Cursor};
use cloudlens::eventstore::{AppendRequest, IdempotencyRecord, NewEvent, StoreError};
use cloudlens::pipeline::{self, CommandContext, CommandError, Expect};
use cloudlens::projections::{self, Progress, RunnerConfig};
use tokio::sync::watch;
use uuid::Uuid;

use crate::helpers::*;

fn draft(name: &str) -> BudgetDraft {
    serde_json::from_value(budget_body(name)).unwrap()
}

#[actix_web::test]
async fn stale_version_conflicts_and_writes_nothing() {
    let conn = fresh_database().await;
    let store = store(&conn, 4);
    let ctx = CommandContext::new("default");
    let id = Uuid::now_v7();
    let (created, _) = pipeline::execute::<Budget>(
        &store,
        &ctx,
        "CreateBudget",
        id,
        Expect::New,
        BudgetCommand::CreateBudget(draft("a")),
        &(),
    )
    .await
    .unwrap();
    assert_eq!(created.version, 1);
    let (updated, _) = pipeline::execute::<Budget>(
        &store,
        &ctx,
        "UpdateBudget",
        id,
        Expect::Version(1),
        BudgetCommand::UpdateBudget(draft("b")),
        &(),
    )
    .await
    .unwrap();
    assert_eq!(updated.version, 2);
    assert!(updated.position > created.position);
    // A writer that still believes the stream is at version 1:
    let stale = pipeline::execute::<Budget>(
        &store,
        &ctx,
        "UpdateBudget",
        id,
        Expect::Version(1),
        BudgetCommand::UpdateBudget(draft("c")),
        &(),
    )
    .await;
    assert!(
        matches!(
            stale,
            Err(CommandError::Conflict {
                expected: Some(1),
                actual: Some(2)
            })
        ),
        "{stale:?}"
    );
    // The race that passes the version check is caught by the unique (stream, version).
    let raced = store
        .append(AppendRequest {
            tenant_id: "default",
            stream_type: "budget",
            stream_id: id,
            expected_version: 1,
            events: vec![NewEvent::from_value("BudgetDeleted", 1, &serde_json::json!({})).unwrap()],
            metadata: serde_json::json!({}),
            idempotency: None,
        })
        .await;
    assert!(matches!(raced, Err(StoreError::Conflict)), "{raced:?}");
    assert_eq!(stream_len(&conn, id).await, 2);
}

#[actix_web::test]
async fn all_events_of_a_command_are_atomic() {
    let conn = fresh_database().await;
    let store = store(&conn, 2);
    let id = Uuid::now_v7();
    append_counter_events(&store, id, 0, 1).await;
    // Three events from version 1 on: the first clashes with the existing version 1.
    let r = store.append(counter_command(id, 0, 3)).await;
    assert!(matches!(r, Err(StoreError::Conflict)));
    assert_eq!(stream_len(&conn, id).await, 1);
}

#[actix_web::test]
async fn idempotent_retry_returns_the_original_and_appends_nothing() {
    let conn = fresh_database().await;
    let store = store(&conn, 4);
    let mut ctx = CommandContext::new("default");
    ctx.idempotency = Some(IdempotencyRecord {
        key: "k-1".into(),
        request_hash: vec![1, 2, 3],
    });
    let id = Uuid::now_v7();
    let (first, replayed) = pipeline::execute::<Budget>(
        &store,
        &ctx,
        "CreateBudget",
        id,
        Expect::New,
        BudgetCommand::CreateBudget(draft("a")),
        &(),
    )
    .await
    .unwrap();
    assert!(!replayed);
    // The retry gets a new stream id (as a retried POST would) but the same key:
    let (again, replayed) = pipeline::execute::<Budget>(
        &store,
        &ctx,
        "CreateBudget",
        Uuid::now_v7(),
        Expect::New,
        BudgetCommand::CreateBudget(draft("a")),
        &(),
    )
    .await
    .unwrap();
    assert!(replayed);
    assert_eq!(again, first);
    assert_eq!(count(&conn, "SELECT count(*) FROM events").await, 1);
    // Same key, different request:
    ctx.idempotency.as_mut().unwrap().request_hash = vec![9];
    let other = pipeline::execute::<Budget>(
        &store,
        &ctx,
        "CreateBudget",
        Uuid::now_v7(),
        Expect::New,
        BudgetCommand::CreateBudget(draft("b")),
        &(),
    )
    .await;
    assert!(
        matches!(other, Err(CommandError::IdempotencyMismatch)),
        "{other:?}"
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM events").await, 1);
}

#[actix_web::test]
async fn a_failed_command_writes_nothing() {
    let conn = fresh_database().await;
    let store = store(&conn, 2);
    let mut d = draft("bad");
    d.amount = rust_decimal::Decimal::ZERO;
    let r = pipeline::execute::<Budget>(
        &store,
        &CommandContext::new("default"),
        "CreateBudget",
        Uuid::now_v7(),
        Expect::New,
        BudgetCommand::CreateBudget(d),
        &(),
    )
    .await;
    assert!(
        matches!(r, Err(CommandError::Domain(BudgetError::Invalid { ref field, .. })) if field == "amount")
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM events").await, 0);
}

#[actix_web::test]
async fn events_cannot_be_updated_or_deleted() {
    let conn = fresh_database().await;
    let store = store(&conn, 2);
    append_counter_events(&store, Uuid::now_v7(), 0, 1).await;
    let c = db::connect(&conn).await.unwrap();
    assert!(c
        .execute("UPDATE events SET payload = '{}'", &[])
        .await
        .is_err());
    assert!(c.execute("DELETE FROM events", &[]).await.is_err());
    assert!(c.batch_execute("TRUNCATE events").await.is_err());
    assert_eq!(count(&conn, "SELECT count(*) FROM events").await, 1);
}

#[actix_web::test]
async fn an_old_schema_version_event_is_upcast_when_loaded() {
    let conn = fresh_database().await;
    let store = store(&conn, 2);
    let id = Uuid::now_v7();
    // Written the way version 1 of the code wrote it: `thresholds`, no currency.
    let v1 = serde_json::json!({
        "name": "Legacy", "amount": "99.90", "period": "yearly", "budget_type": "cost",
        "start_date": "2024-01-01", "end_date": null, "tag_filter": {}, "service_filter": [],
        "thresholds": ["50"], "account": null
    });
    store
        .append(AppendRequest {
            tenant_id: "default",
            stream_type: "budget",
            stream_id: id,
            expected_version: 0,
            events: vec![NewEvent::from_value("BudgetCreated", 1, &v1).unwrap()],
            metadata: serde_json::json!({}),
            idempotency: None,
        })
        .await
        .unwrap();
    let loaded = pipeline::load::<Budget>(&store, "default", id)
        .await
        .unwrap();
    assert_eq!(loaded.version, 1);
    let d = loaded.aggregate.details.unwrap();
    assert_eq!(d.currency, "CNY");
    assert_eq!(d.alert_thresholds, vec![rust_decimal::Decimal::from(50)]);
}

fn runner(conn: &str, progress: Progress) -> RunnerConfig {
    RunnerConfig {
        conn: conn.to_owned(),
        batch_size: 500,
        poll: Duration::from_millis(50),
        owner: "test".into(),
        progress,
    }
}

async fn seen(conn: &str) -> (i64, i64) {
    let c = db::connect(conn).await.unwrap();
    let r = c
        .query_one(
            "SELECT count(*), count(DISTINCT position) FROM test_seen",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

async fn assert_seen_matches_events(conn: &str) {
    let c = db::connect(conn).await.unwrap();
    let missing: i64 = c
        .query_one(
            "SELECT count(*) FROM events e WHERE e.stream_type = 'counter'
               AND NOT EXISTS (SELECT 1 FROM test_seen s WHERE s.position = e.position)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let extra: i64 = c
        .query_one(
            "SELECT count(*) FROM test_seen s WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.position = s.position)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (rows, distinct) = seen(conn).await;
    assert_eq!((missing, extra), (0, 0), "read model differs from the log");
    assert_eq!(rows, distinct, "an event was applied twice");
}

#[actix_web::test]
async fn concurrent_writers_while_projecting_lose_and_double_nothing() {
    let conn = fresh_counting_database().await;
    let store = store(&conn, 32);
    let (stop, stop_rx) = watch::channel(false);
    let projection = CountingProjection::new(false);
    let wake = store_signal_receiver();
    let task = tokio::spawn(projections::run(
        projection,
        runner(&conn, Progress::new(["counting"])),
        wake,
        stop_rx,
    ));
    // 32 writers, 625 single-event commands each, on streams of their own.
    let mut writers = Vec::new();
    for _ in 0..32 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..5 {
                append_counter_events(&store, Uuid::now_v7(), 0, 125).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(count(&conn, "SELECT count(*) FROM events").await, 20_000);
    let caught_up = eventually(Duration::from_secs(120), || async {
        (seen(&conn).await.0 >= 20_000).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert!(
        caught_up.is_some(),
        "projector did not catch up: {:?}",
        seen(&conn).await
    );
    assert_seen_matches_events(&conn).await;
}

/// Projectors here poll (50 ms); a fresh receiver is enough.
fn store_signal_receiver() -> cloudlens::eventstore::signal::Wake {
    cloudlens::eventstore::signal::EventSignal::default().subscribe(&["counter"])
}

#[actix_web::test]
async fn a_projector_killed_mid_batch_resumes_exactly_once() {
    let conn = fresh_counting_database().await;
    let store = store(&conn, 4);
    append_counter_events(&store, Uuid::now_v7(), 0, 300).await;
    let projection = CountingProjection::new(true);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(projections::run(
        projection.clone(),
        runner(&conn, Progress::new(["counting"])),
        store_signal_receiver(),
        stop_rx,
    ));
    // The first batch has written its rows and is stalled before committing: kill its session.
    tokio::time::timeout(Duration::from_secs(30), projection.stalled.notified())
        .await
        .unwrap();
    let admin = db::connect(&conn).await.unwrap();
    let killed: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND state LIKE 'idle in transaction%'
                AND pid <> pg_backend_pid()) k",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "expected to kill the projector's open batch");
    append_counter_events(&store, Uuid::now_v7(), 0, 50).await;
    let done = eventually(Duration::from_secs(60), || async {
        (seen(&conn).await.0 >= 350).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert!(
        done.is_some(),
        "projector did not resume: {:?}",
        seen(&conn).await
    );
    assert_seen_matches_events(&conn).await;
}

#[actix_web::test]
async fn an_unrelated_long_transaction_does_not_stall_projection() {
    let conn = fresh_database().await;
    let admin = db::connect(&conn).await.unwrap();
    admin.batch_execute(COUNTING_TABLE_SQL).await.unwrap();
    admin
        .batch_execute("CREATE TABLE unrelated (x int)")
        .await
        .unwrap();
    // An open transaction that has written (so it holds a transaction id) and stays open.
    let mut other = db::connect(&conn).await.unwrap();
    let open = other.transaction().await.unwrap();
    open.execute("INSERT INTO unrelated VALUES (1)", &[])
        .await
        .unwrap();

    let store = store(&conn, 4);
    append_counter_events(&store, Uuid::now_v7(), 0, 100).await;
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(projections::run(
        CountingProjection::new(false),
        runner(&conn, Progress::new(["counting"])),
        store_signal_receiver(),
        stop_rx,
    ));
    let done = eventually(Duration::from_secs(30), || async {
        (seen(&conn).await.0 >= 100).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    open.rollback().await.unwrap();
    assert!(
        done.is_some(),
        "projection stalled behind an unrelated transaction: {:?}",
        seen(&conn).await
    );
    assert_seen_matches_events(&conn).await;
}

/// What `APPEND_SQL` does, in separate statements, so a test can stop a writer half-way.
const WRITER_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock_shared(1668048001, 1)";
const WRITE_ONE_EVENT_SQL: &str = "INSERT INTO events (tenant_id, stream_type, stream_id, \
     stream_version, event_type, schema_version, payload) \
     VALUES ('default', 'counter', $1, 1, 'Counted', 1, '{}')";

#[actix_web::test]
async fn an_in_flight_writer_holds_the_horizon_so_nothing_is_skipped() {
    let conn = fresh_database().await;
    let store = store(&conn, 4);
    // Writer A takes the writer lock and a transaction id, then is slow to insert.
    let mut a = db::connect(&conn).await.unwrap();
    let tx = a.transaction().await.unwrap();
    tx.execute(WRITER_LOCK_SQL, &[]).await.unwrap();
    tx.execute("SELECT pg_current_xact_id()", &[])
        .await
        .unwrap();
    // Writer B starts later (higher transaction id), takes a lower position, commits first.
    append_counter_events(&store, Uuid::now_v7(), 0, 1).await;
    let reader = db::connect(&conn).await.unwrap();
    let before = global::read_batch(&reader, Cursor::default(), &["counter"], 100)
        .await
        .unwrap()
        .events;
    assert!(
        before.is_empty(),
        "B must not be read while A (lower xid) may still commit: {before:?}"
    );
    tx.execute(WRITE_ONE_EVENT_SQL, &[&Uuid::now_v7()])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let after = global::read_batch(&reader, Cursor::default(), &["counter"], 100)
        .await
        .unwrap()
        .events;
    assert_eq!(after.len(), 2);
    // A's event (higher position, lower transaction id) comes first.
    assert!(after[0].transaction_id < after[1].transaction_id);
    assert!(after[0].position > after[1].position);
}

#[actix_web::test]
async fn an_aborted_writer_does_not_hold_the_horizon() {
    let conn = fresh_database().await;
    let store = store(&conn, 4);
    let mut a = db::connect(&conn).await.unwrap();
    let tx = a.transaction().await.unwrap();
    tx.execute(WRITER_LOCK_SQL, &[]).await.unwrap();
    tx.execute(WRITE_ONE_EVENT_SQL, &[&Uuid::now_v7()])
        .await
        .unwrap();
    append_counter_events(&store, Uuid::now_v7(), 0, 1).await;
    tx.rollback().await.unwrap();
    let reader = db::connect(&conn).await.unwrap();
    let events = global::read_batch(&reader, Cursor::default(), &["counter"], 100)
        .await
        .unwrap()
        .events;
    assert_eq!(events.len(), 1);
}

#[actix_web::test]
async fn a_conflict_in_a_group_commit_fails_only_its_own_command() {
    let conn = fresh_database().await;
    let store = store(&conn, 4);
    let taken = Uuid::now_v7();
    append_counter_events(&store, taken, 0, 1).await;
    let one = |id: Uuid| {
        let store = store.clone();
        async move { store.append(counter_command(id, 0, 1)).await }
    };
    // 40 single-event commands at once (they share statements when they queue up); the
    // one that re-appends version 1 of `taken` must fail alone.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let id = if i == 17 { taken } else { Uuid::now_v7() };
        tasks.push(tokio::spawn(one(id)));
    }
    let mut ok = 0;
    let mut conflicts = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(a) => {
                assert_eq!(a.version, 1);
                ok += 1;
            }
            Err(StoreError::Conflict) => conflicts += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((ok, conflicts), (39, 1));
    assert_eq!(count(&conn, "SELECT count(*) FROM events").await, 40);
    let distinct = count(&conn, "SELECT count(DISTINCT position) FROM events").await;
    assert_eq!(distinct, 40);
}

#[actix_web::test]
async fn a_bulk_append_across_streams_writes_all_or_nothing() {
    use cloudlens::eventstore::{NewEvent, StreamEvents};
    let conn = fresh_database().await;
    let store = store(&conn, 2);
    let event = || NewEvent::from_value("Tick", 1, &serde_json::json!({})).unwrap();
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let both = |va: i64, vb: i64| {
        vec![
            StreamEvents {
                stream_type: "counter",
                stream_id: a,
                expected_version: va,
                events: vec![event(), event()],
            },
            StreamEvents {
                stream_type: "counter",
                stream_id: b,
                expected_version: vb,
                events: vec![event()],
            },
        ]
    };
    let meta = serde_json::json!({});
    let appended = store
        .append_streams("t", &meta, &both(0, 0), None)
        .await
        .unwrap();
    assert_eq!((appended[0].version, appended[1].version), (2, 1));
    assert!(appended[0].position > 0 && appended[1].position > 0);
    // b is stale: nothing of a is written either.
    let err = store
        .append_streams("t", &meta, &both(2, 0), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, cloudlens::eventstore::StoreError::Conflict),
        "{err}"
    );
    assert_eq!(stream_len(&conn, a).await, 2);
    assert_eq!(stream_len(&conn, b).await, 1);
}

#[actix_web::test]
async fn staged_events_reach_the_log_only_when_committed() {
    use cloudlens::eventstore::NewEvent;
    let conn = fresh_database().await;
    let store = store(&conn, 2);
    let event = |i: i32| NewEvent::from_value("Tick", 1, &serde_json::json!({ "i": i })).unwrap();
    let (batch, stream) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    store.stage(batch, 0, &[event(0), event(1)]).await.unwrap();
    store.stage(batch, 2, &[event(2)]).await.unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM events").await, 0);
    let meta = serde_json::json!({});
    let (appended, n) = store
        .commit_staged("t", ("counter", stream, 0), batch, &[event(3)], &meta, None)
        .await
        .unwrap();
    assert_eq!((appended.version, n), (4, 4));
    let order = count(
        &conn,
        "SELECT count(*) FROM events WHERE (payload->>'i')::int = stream_version - 1",
    )
    .await;
    assert_eq!(order, 4, "staged order, then the tail, as versions 1..4");
    assert_eq!(count(&conn, "SELECT count(*) FROM staged_events").await, 0);
    // A discarded batch leaves nothing; a commit onto a moved stream writes nothing.
    store.stage(batch, 0, &[event(0)]).await.unwrap();
    let err = store
        .commit_staged("t", ("counter", stream, 0), batch, &[], &meta, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, cloudlens::eventstore::StoreError::Conflict),
        "{err}"
    );
    store.discard_staged(batch).await.unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM staged_events").await, 0);
    assert_eq!(stream_len(&conn, stream).await, 4);
}

#[actix_web::test]
async fn a_reader_of_one_event_type_skips_the_others_of_its_stream() {
    let conn = fresh_database().await;
    let store = store(&conn, 2);
    let event = |t: &str| NewEvent::from_value(t, 1, &serde_json::json!({"big": "batch"})).unwrap();
    let id = Uuid::now_v7();
    store
        .append(AppendRequest {
            tenant_id: "default",
            stream_type: "import",
            stream_id: id,
            expected_version: 0,
            events: vec![event("Rows"), event("Rows"), event("Done"), event("Rows")],
            metadata: serde_json::json!({}),
            idempotency: None,
        })
        .await
        .unwrap();
    let reader = db::connect(&conn).await.unwrap();
    let read = |kinds: &'static [&'static str]| {
        let reader = &reader;
        async move {
            global::read_batch(reader, Cursor::default(), kinds, 100)
                .await
                .unwrap()
                .events
                .iter()
                .map(|e| e.event_type.clone())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(read(&["import/Done"]).await, ["Done"]);
    assert_eq!(read(&["import"]).await, ["Rows", "Rows", "Done", "Rows"]);
    assert_eq!(read(&["import/Nope", "other"]).await, Vec::<String>::new());
    let (pending, _) = global::pending(&reader, Cursor::default(), &["import/Done"], 100)
        .await
        .unwrap();
    assert_eq!(pending, 1);
}
