#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Projector lanes (ADR 0031): a read model written by two loops at once, each with its
//! own checkpoint.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudlens::db;
use cloudlens::eventstore::RecordedEvent;
use cloudlens::projections::rebuild::Rebuild;
use cloudlens::projections::wait::{wait_for, WaitError};
use cloudlens::projections::{
    self, lanes, status, Lane, Progress, Projection, ProjectorOptions, RunnerConfig,
};
use tokio::sync::watch;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::helpers::*;

/// Records, per lane, the events of the streams the lane owns.
struct Laned;

const NAME: &str = "laned";
const TABLE_SQL: &str =
    "CREATE TABLE test_lanes (position bigint NOT NULL, stream_id uuid NOT NULL, lane int NOT NULL)";

#[async_trait]
impl Projection for Laned {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stream_types(&self) -> &[&'static str] {
        &["counter"]
    }
    fn tables(&self) -> Vec<&'static str> {
        vec!["test_lanes"]
    }
    fn options(&self) -> ProjectorOptions {
        ProjectorOptions {
            batch_size: Some(7),
            lanes: 2,
            ..Default::default()
        }
    }
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: &[RecordedEvent],
        lane: Lane,
    ) -> anyhow::Result<()> {
        let mine: Vec<&RecordedEvent> = events
            .iter()
            .filter(|e| lane.owns(e.stream_id.as_bytes()))
            .collect();
        let positions: Vec<i64> = mine.iter().map(|e| e.position).collect();
        let ids: Vec<Uuid> = mine.iter().map(|e| e.stream_id).collect();
        tx.execute(
            "INSERT INTO test_lanes SELECT p, s, $3 FROM unnest($1::bigint[], $2::uuid[]) AS u(p, s)",
            &[&positions, &ids, &i32::from(lane.index)],
        )
        .await?;
        Ok(())
    }
}

async fn laned_database() -> String {
    let conn = fresh_database().await;
    db::connect(&conn)
        .await
        .unwrap()
        .batch_execute(TABLE_SQL)
        .await
        .unwrap();
    conn
}

/// A stream id that lane `index` of 2 owns.
fn stream_of_lane(index: u16) -> Uuid {
    let lane = Lane { index, count: 2 };
    std::iter::repeat_with(Uuid::now_v7)
        .find(|id| lane.owns(id.as_bytes()))
        .unwrap()
}

fn runner(conn: &str, progress: Progress) -> RunnerConfig {
    RunnerConfig {
        conn: conn.to_owned(),
        batch_size: 100,
        poll: Duration::from_millis(50),
        owner: "test".into(),
        progress,
    }
}

fn progress() -> Progress {
    Progress::of(&Arc::new(vec![Arc::new(Laned) as Arc<dyn Projection>]))
}

async fn rows(conn: &str) -> Vec<String> {
    snapshot(
        conn,
        "SELECT format('%s %s %s', position, stream_id, lane) FROM test_lanes ORDER BY position",
    )
    .await
}

#[actix_web::test]
async fn two_lanes_apply_every_event_once_in_the_lane_of_its_key_and_rebuild_equal() {
    let conn = laned_database().await;
    let store = store(&conn, 4);
    let streams: Vec<Uuid> = (0..12).map(|_| Uuid::now_v7()).collect();
    for (i, id) in streams.iter().enumerate() {
        append_counter_events(&store, *id, 0, 3 + i as i64 % 4).await;
    }
    let total = count(&conn, "SELECT count(*) FROM events").await;
    let (stop, stop_rx) = watch::channel(false);
    let wake = cloudlens::eventstore::signal::EventSignal::default().subscribe(&["counter"]);
    let task = tokio::spawn(projections::run(
        Arc::new(Laned),
        runner(&conn, progress()),
        wake,
        stop_rx,
    ));
    let done = eventually(Duration::from_secs(20), || async {
        (count(&conn, "SELECT count(*) FROM test_lanes").await == total).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert!(done.is_some(), "not every event was applied");
    assert_eq!(
        count(&conn, "SELECT count(DISTINCT position) FROM test_lanes").await,
        total,
        "an event was applied twice"
    );
    // Every event is in the lane that owns its stream, and both lanes had work.
    let c = db::connect(&conn).await.unwrap();
    for r in c
        .query("SELECT stream_id, lane FROM test_lanes", &[])
        .await
        .unwrap()
    {
        let (id, lane): (Uuid, i32) = (r.get(0), r.get(1));
        let owner = Lane {
            index: u16::try_from(lane).unwrap(),
            count: 2,
        };
        assert!(owner.owns(id.as_bytes()), "{id} applied by lane {lane}");
    }
    assert_eq!(
        count(&conn, "SELECT count(DISTINCT lane) FROM test_lanes").await,
        2
    );
    // Two checkpoints, both at the end; the status shows the projector as a whole.
    let names = snapshot(
        &conn,
        "SELECT name FROM projection_checkpoints WHERE projector = 'laned' ORDER BY name",
    )
    .await;
    assert_eq!(names, ["laned", "laned#1"]);
    let st = status::of(&c, &Laned).await.unwrap();
    assert_eq!(st.lag_events, 0);
    assert_eq!(st.events_applied, 2 * total, "each lane reads every event");
    let lanes: Vec<&str> = st.lanes.iter().map(|l| l.checkpoint.as_str()).collect();
    assert_eq!(lanes, ["laned", "laned#1"]);
    assert!(st.lanes.iter().all(|l| l.position == st.position));

    let live = rows(&conn).await;
    let report = Rebuild::begin(&conn, Arc::new(Laned))
        .await
        .unwrap()
        .run(5, watch::channel(false).1)
        .await
        .unwrap();
    assert_eq!(rows(&conn).await, live);
    assert_eq!(report.events, total as u64, "events replayed, counted once");
    let names = snapshot(
        &conn,
        "SELECT name FROM projection_checkpoints WHERE name LIKE 'laned%' ORDER BY name",
    )
    .await;
    assert_eq!(
        names,
        ["laned", "laned#1"],
        "the rebuild's checkpoints are gone"
    );
}

#[actix_web::test]
async fn a_position_is_read_only_once_every_lane_has_passed_it() {
    let conn = laned_database().await;
    let store = store(&conn, 4);
    let progress = progress();
    let (stop, stop_rx) = watch::channel(false);
    let wake = cloudlens::eventstore::signal::EventSignal::default().subscribe(&["counter"]);
    let task = tokio::spawn(projections::run(
        Arc::new(Laned),
        runner(&conn, progress.clone()),
        wake,
        stop_rx,
    ));
    append_counter_events(&store, stream_of_lane(0), 0, 1).await;
    let reads = db::Reader::new(&conn, 1, 1);
    let first = count(&conn, "SELECT max(position) FROM events").await;
    wait_for(&reads, &progress, &Laned, first, Duration::from_secs(10))
        .await
        .unwrap();

    // Hold lane 1 back: its batch waits for its checkpoint row.
    let mut holder = db::connect(&conn).await.unwrap();
    let hold = holder.transaction().await.unwrap();
    hold.execute(
        "SELECT 1 FROM projection_checkpoints WHERE name = 'laned#1' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let slow = stream_of_lane(1);
    let fast = stream_of_lane(0);
    append_counter_events(&store, slow, 0, 1).await;
    append_counter_events(&store, fast, 0, 1).await;
    let last = count(&conn, "SELECT max(position) FROM events").await;
    // Lane 0 applies its event; the position is still not reached.
    let lane0 = eventually(Duration::from_secs(10), || async {
        (count(
            &conn,
            &format!("SELECT count(*) FROM test_lanes WHERE stream_id = '{fast}'"),
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    assert!(lane0.is_some(), "lane 0 did not go on while lane 1 waited");
    let behind = wait_for(&reads, &progress, &Laned, last, Duration::from_millis(300)).await;
    assert!(matches!(behind, Err(WaitError::Behind(_))), "{behind:?}");
    assert!(progress.reached(NAME) < last);
    // The status shows the lagging lane: lane 0 is past `last`, lane 1 is not.
    let c = db::connect(&conn).await.unwrap();
    let st = status::of(&c, &Laned).await.unwrap();
    assert!(st.lag_events >= 1);
    assert_eq!(st.lanes[0].position, last, "{st:?}");
    assert!(st.lanes[1].position < last, "{st:?}");
    assert_eq!(st.position, st.lanes[1].position);

    hold.rollback().await.unwrap();
    wait_for(&reads, &progress, &Laned, last, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        count(
            &conn,
            &format!("SELECT count(*) FROM test_lanes WHERE stream_id = '{slow}' AND lane = 1"),
        )
        .await,
        1
    );
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[actix_web::test]
async fn lanes_are_split_anew_only_where_they_stand_together() {
    let conn = laned_database().await;
    let mut c = db::connect(&conn).await.unwrap();
    // A projector of one lane that has applied up to some place.
    c.batch_execute(
        "INSERT INTO projection_checkpoints (name, last_epoch, last_xid, last_position, position_seen)
         VALUES ('laned', 1, '900'::xid8, 42, 42)",
    )
    .await
    .unwrap();
    lanes::ensure(&mut c, NAME, 2).await.unwrap();
    let places = snapshot(
        &conn,
        "SELECT format('%s %s %s %s', name, last_epoch, last_xid, last_position)
           FROM projection_checkpoints WHERE projector = 'laned' ORDER BY name",
    )
    .await;
    assert_eq!(places, ["laned 1 900 42", "laned#1 1 900 42"]);

    // Lanes that stand apart cannot be split anew: the projector asks for a rebuild.
    c.batch_execute("UPDATE projection_checkpoints SET last_position = 50 WHERE name = 'laned#1'")
        .await
        .unwrap();
    let err = lanes::ensure(&mut c, NAME, 3).await.unwrap_err();
    assert!(err.to_string().contains("rebuild"), "{err}");
    let err = lanes::ensure(&mut c, NAME, 1).await.unwrap_err();
    assert!(err.to_string().contains("rebuild"), "{err}");
    // The same count is fine wherever the lanes stand.
    lanes::ensure(&mut c, NAME, 2).await.unwrap();

    // Standing together again, they go down to one.
    c.batch_execute("UPDATE projection_checkpoints SET last_position = 42 WHERE name = 'laned#1'")
        .await
        .unwrap();
    lanes::ensure(&mut c, NAME, 1).await.unwrap();
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM projection_checkpoints WHERE projector = 'laned'"
        )
        .await,
        1
    );
}

/// Projectors that unpack their batches in PostgreSQL pick lanes with `cloudlens_lane`
/// (sql/V27): every key in exactly one lane, the keys shared evenly, and `owns_in_sql`
/// (for single keys applied outside the set-wise statements) says the same.
#[actix_web::test]
async fn lanes_chosen_in_sql_split_the_keys_and_agree_with_owns_in_sql() {
    let conn = fresh_database().await;
    let c = db::connect(&conn).await.unwrap();
    let per_lane = snapshot(
        &conn,
        "SELECT format('%s %s', lane, count(*))
           FROM generate_series(1, 3000) i, cloudlens_lane('user-' || i, 3) lane
          GROUP BY lane ORDER BY lane",
    )
    .await;
    assert_eq!(per_lane.len(), 3, "{per_lane:?}");
    for line in &per_lane {
        let n: i64 = line.split(' ').nth(1).unwrap().parse().unwrap();
        assert!((800..1200).contains(&n), "{per_lane:?}");
    }
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM generate_series(1, 100) i WHERE cloudlens_lane('k' || i, 1) <> 0"
        )
        .await,
        0
    );
    for key in ["user-1", "user-2", "user-3", "用户-4", ""] {
        let mut owners = Vec::new();
        for lane in Lane::all(3) {
            if lane.owns_in_sql(&c, key).await.unwrap() {
                owners.push(lane.index);
            }
        }
        let (count, _) = Lane { index: 0, count: 3 }.sql_params();
        let expected: i32 = c
            .query_one("SELECT cloudlens_lane($1, $2)", &[&key, &count])
            .await
            .unwrap()
            .get(0);
        assert_eq!(owners, [expected as u16], "{key}");
    }
}
