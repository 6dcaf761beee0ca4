//! Projector lanes (ADR 0031): one read model written on several connections at once.
//!
//! A projector with `lanes: N` runs N loops. Every lane reads the same events; each
//! applies the items whose key it owns (a stable hash of the key modulo N), so all changes
//! of one key fall in one lane, in log order, and no two lanes write the same row. Each
//! lane commits its rows with its own checkpoint row: lane 0 is the projector's name,
//! lane i is `<name>#<i>`; the column `projector` (sql/V26) groups them. A position is
//! reflected once every lane has passed it: status, read-your-writes, the replica check
//! and archiving take the least advanced lane.

use std::collections::BTreeSet;

use tokio_postgres::{Client, GenericClient};

use super::{cursor, ProjectionError, ENSURE_CHECKPOINT_SQL};
use crate::eventstore::global::Cursor;
use crate::eventstore::StoreError;

/// The share of a read model one loop of a projector writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lane {
    pub index: u16,
    pub count: u16,
}

impl Lane {
    /// The one lane of a projector that has one.
    pub const SOLE: Lane = Lane { index: 0, count: 1 };

    /// The lanes of a projector with `count` of them (at least one).
    pub fn all(count: u16) -> impl Iterator<Item = Lane> {
        let count = count.max(1);
        (0..count).map(move |index| Lane { index, count })
    }

    /// Whether this lane applies the item with this key (the read model's key: a
    /// document's id, a subject's id). The hash is FNV-1a: stable across builds and
    /// processes, which `std`'s hasher is not.
    pub fn owns(&self, key: &[u8]) -> bool {
        if self.count <= 1 {
            return true;
        }
        let hash = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        hash % u64::from(self.count) == u64::from(self.index)
    }

    /// For projectors that unpack their batches in PostgreSQL: the values to bind in
    /// `cloudlens_lane(key, $count) = $index` (sql/V27), which picks a lane by a hash
    /// PostgreSQL computes. A projector uses either this or `owns` for all its keys.
    pub fn sql_params(&self) -> (i32, i32) {
        (i32::from(self.count), i32::from(self.index))
    }

    /// `owns` for a projector that decides in SQL (`sql_params`), for the odd single key
    /// it applies outside its set-wise statements.
    pub async fn owns_in_sql<C: GenericClient>(
        &self,
        client: &C,
        key: &str,
    ) -> Result<bool, tokio_postgres::Error> {
        if self.count <= 1 {
            return Ok(true);
        }
        let (count, index) = self.sql_params();
        let row = client
            .query_one(
                "SELECT cloudlens_lane($1, $2) = $3",
                &[&key, &count, &index],
            )
            .await?;
        row.try_get(0)
    }

    /// Rows shared by every key (one per event, say) are written by lane 0 alone.
    pub fn is_first(&self) -> bool {
        self.index == 0
    }

    /// This lane's checkpoint row for the projector (or rebuild) checkpoint `base`.
    pub fn checkpoint(&self, base: &str) -> String {
        match self.index {
            0 => base.to_owned(),
            i => format!("{base}#{i}"),
        }
    }
}

/// The least advanced lane's cursor: every event before it is reflected by all lanes.
const LEAST_SQL: &str = "\
SELECT last_epoch, last_xid, last_position FROM projection_checkpoints
 WHERE projector = $1 ORDER BY last_epoch, last_xid, last_position LIMIT 1";
const LANES_SQL: &str = "\
SELECT name, last_epoch, last_xid, last_position FROM projection_checkpoints
 WHERE projector = $1 FOR UPDATE";
const ADD_LANE_SQL: &str = "\
INSERT INTO projection_checkpoints (name, last_epoch, last_xid, last_position, position_seen,
                                    events_applied)
SELECT $2, last_epoch, last_xid, last_position, position_seen, 0
  FROM projection_checkpoints WHERE name = $1
ON CONFLICT (name) DO NOTHING";
const DROP_LANES_SQL: &str =
    "DELETE FROM projection_checkpoints WHERE projector = $1 AND name <> ALL($2)";

/// The checkpoint of projector `name` over all its lanes (the start of the log if it has
/// none yet).
pub async fn least<C: GenericClient>(client: &C, name: &str) -> Result<Cursor, StoreError> {
    match client.query_opt(LEAST_SQL, &[&name]).await? {
        Some(row) => Ok(cursor(&row)?),
        None => Ok(Cursor::default()),
    }
}

/// Gives projector `name` exactly `count` lane checkpoints before its lanes start.
///
/// A lane count changed by a new build is taken up only where it is sound: while every
/// existing lane stands at the same place (always so for a projector of one lane), the
/// keys are split anew from there and the new lanes start where lane 0 is. Lanes that
/// stand apart cannot be re-split (which keys a lane has applied depends on the old
/// count): the projector then fails with an error that asks for a rebuild, and the
/// rebuild's swap leaves exactly `count` lanes.
pub async fn ensure(
    client: &mut Client,
    name: &'static str,
    count: u16,
) -> Result<(), ProjectionError> {
    client.execute(ENSURE_CHECKPOINT_SQL, &[&name]).await?;
    let wanted: Vec<String> = Lane::all(count).map(|l| l.checkpoint(name)).collect();
    let tx = client.transaction().await?;
    let mut names = BTreeSet::new();
    let mut places = BTreeSet::new();
    for r in tx.query(LANES_SQL, &[&name]).await? {
        names.insert(r.try_get::<_, String>(0)?);
        places.insert(Cursor {
            epoch: r.try_get(1)?,
            transaction_id: r.try_get(2)?,
            position: r.try_get(3)?,
        });
    }
    if names == wanted.iter().cloned().collect() {
        return Ok(());
    }
    if places.len() > 1 {
        return Err(ProjectionError::Apply {
            name,
            source: anyhow::anyhow!(
                "projector {name} now has {count} lane(s), but its {} existing lanes stand at \
                 different places and cannot be split anew: rebuild it \
                 (`cloudlens projections rebuild {name}`)",
                names.len()
            ),
        });
    }
    for lane in &wanted[1..] {
        tx.execute(ADD_LANE_SQL, &[&name, lane]).await?;
    }
    tx.execute(DROP_LANES_SQL, &[&name, &wanted]).await?;
    tx.commit().await?;
    tracing::info!(projector = name, lanes = count, "projector lanes set");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_falls_in_exactly_one_lane_and_the_lanes_share_the_keys() {
        let lanes: Vec<Lane> = Lane::all(3).collect();
        let mut per_lane = [0_u32; 3];
        for i in 0..3000_u32 {
            let key = uuid::Uuid::from_u128(u128::from(i) * 0x9e37_79b9).into_bytes();
            let owners: Vec<_> = lanes.iter().filter(|l| l.owns(&key)).collect();
            assert_eq!(owners.len(), 1, "key {i} owned by {owners:?}");
            per_lane[usize::from(owners[0].index)] += 1;
        }
        assert!(
            per_lane.iter().all(|n| (800..1200).contains(n)),
            "{per_lane:?}"
        );
        assert!(Lane::SOLE.owns(b"anything"));
    }

    #[test]
    fn lane_zero_keeps_the_projectors_name() {
        let names: Vec<String> = Lane::all(3).map(|l| l.checkpoint("documents")).collect();
        assert_eq!(names, ["documents", "documents#1", "documents#2"]);
        assert_eq!(Lane::all(0).count(), 1);
    }
}
