//! Set-wise writes of a read model, driven by one column definition.
//!
//! A projector declares its table once — columns with their PostgreSQL types, the key, the
//! columns an update keeps, the version column that guards against older data — and gets
//! from it the binary `COPY` for rows that are new, the staged upsert for rows that may
//! exist, and the delete by key. Nothing keeps the column list in step by hand.
//!
//! Upserts copy the batch into a temporary staging table (`ON COMMIT DELETE ROWS`, one per
//! connection and table) and merge it with one `INSERT … SELECT … ON CONFLICT`. Table
//! names stay unqualified, so a rebuild's `search_path` sends the writes to its shadow
//! tables (ADR 0002).

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

/// One column of a read-model table.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: &'static str,
    pub ty: Type,
}

/// Shorthand for column lists.
pub const fn col(name: &'static str, ty: Type) -> Column {
    Column { name, ty }
}

/// A read-model table, as its projector writes it.
#[derive(Debug)]
pub struct ReadModel {
    /// Unqualified table name, `[a-z][a-z0-9_]*`.
    pub table: &'static str,
    /// Primary-key columns (the conflict target of upserts; deletes take a one-column key).
    pub key: &'static [&'static str],
    /// Every column the projector writes, in the order of [`Row::values`].
    pub columns: &'static [Column],
    /// Columns an upsert of an existing row leaves alone (e.g. `created_at`).
    pub keep_on_update: &'static [&'static str],
    /// A column that only grows (e.g. `version`): an upsert never replaces a row with
    /// one whose value is not greater, so a replayed older event cannot undo a newer one.
    pub newer: Option<&'static str>,
}

/// A row of a read model: values in the order of [`ReadModel::columns`].
pub trait Row {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)>;
}

/// Whether a name may be used as an identifier in generated SQL.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && s.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl ReadModel {
    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn types(&self) -> Vec<Type> {
        self.columns.iter().map(|c| c.ty.clone()).collect()
    }

    fn stage_table(&self) -> String {
        format!("cl_stage_{}", self.table)
    }

    /// Checks the names that go into generated SQL (they are constants of the projector,
    /// never user input, but they are still held to a strict pattern).
    pub fn check(&self) -> anyhow::Result<()> {
        let names = std::iter::once(self.table)
            .chain(self.key.iter().copied())
            .chain(self.columns.iter().map(|c| c.name))
            .chain(self.keep_on_update.iter().copied())
            .chain(self.newer);
        for n in names {
            anyhow::ensure!(
                is_identifier(n),
                "read model {}: bad name {n:?}",
                self.table
            );
        }
        Ok(())
    }

    async fn copy<R: Row>(
        &self,
        tx: &Transaction<'_>,
        target: &str,
        rows: &[R],
    ) -> anyhow::Result<()> {
        let sql = format!("COPY {target} ({}) FROM STDIN BINARY", self.column_list());
        let sink = tx.copy_in(&sql).await?;
        let writer = BinaryCopyInWriter::new(sink, &self.types());
        futures::pin_mut!(writer);
        for r in rows {
            writer.as_mut().write(&r.values()).await?;
        }
        writer.finish().await?;
        Ok(())
    }

    /// Writes rows that cannot exist yet (e.g. the batch holds their creation) with COPY.
    pub async fn insert<R: Row>(&self, tx: &Transaction<'_>, rows: &[R]) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.copy(tx, self.table, rows).await
    }

    /// Inserts rows or updates the existing ones (guarded by [`ReadModel::newer`]). The
    /// rows must have distinct keys (fold the batch first).
    pub async fn upsert<R: Row>(&self, tx: &Transaction<'_>, rows: &[R]) -> anyhow::Result<()> {
        let set = self
            .columns
            .iter()
            .filter(|c| !self.key.contains(&c.name) && !self.keep_on_update.contains(&c.name))
            .map(|c| format!("{0} = EXCLUDED.{0}", c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let guard = self
            .newer
            .map(|v| format!(" WHERE {}.{v} < EXCLUDED.{v}", self.table))
            .unwrap_or_default();
        self.merge(tx, rows, &format!("{set}{guard}")).await
    }

    /// Inserts rows, or adds the `sums` columns of each to the existing row with its key
    /// (rollups: a batch's sums are added to what earlier batches summed). The other
    /// columns of an existing row stay. The rows must have distinct keys.
    pub async fn accumulate<R: Row>(
        &self,
        tx: &Transaction<'_>,
        rows: &[R],
        sums: &[&str],
    ) -> anyhow::Result<()> {
        for s in sums {
            anyhow::ensure!(
                self.columns.iter().any(|c| c.name == *s) && !self.key.contains(s),
                "read model {}: {s} is not a value column",
                self.table
            );
        }
        let set = sums
            .iter()
            .map(|c| format!("{c} = {}.{c} + EXCLUDED.{c}", self.table))
            .collect::<Vec<_>>()
            .join(", ");
        self.merge(tx, rows, &set).await
    }

    /// Copies rows into the table's staging table `pg_temp.cl_stage_{table}` (created on
    /// first use, emptied at commit), for a projector's own set-wise SQL.
    pub async fn stage<R: Row>(&self, tx: &Transaction<'_>, rows: &[R]) -> anyhow::Result<()> {
        let stage = self.stage_table();
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
            self.table
        ))
        .await?;
        self.copy(tx, &format!("pg_temp.{stage}"), rows).await
    }

    /// Copies rows into the staging table and merges them with one `INSERT … SELECT … ON
    /// CONFLICT (key) DO UPDATE SET {set}`. `set` is SQL of the projector (constants, the
    /// existing row under the table's name, the new one as `EXCLUDED`), never input.
    /// The rows must have distinct keys.
    pub async fn merge<R: Row>(
        &self,
        tx: &Transaction<'_>,
        rows: &[R],
        set: &str,
    ) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let stage = self.stage_table();
        self.stage(tx, rows).await?;
        let cols = self.column_list();
        // Emptied in the same statement (a rebuild's swap applies several batches in one
        // transaction; TRUNCATE would give the temporary table a new file every batch).
        tx.batch_execute(&format!(
            "WITH staged AS (DELETE FROM pg_temp.{stage} RETURNING {cols})
             INSERT INTO {table} ({cols}) SELECT {cols} FROM staged
             ON CONFLICT ({key}) DO UPDATE SET {set}",
            table = self.table,
            key = self.key.join(", "),
        ))
        .await?;
        Ok(())
    }

    /// Deletes the rows with these keys.
    pub async fn delete<K: ToSql + Sync>(
        &self,
        tx: &Transaction<'_>,
        keys: &[K],
    ) -> anyhow::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let [key] = self.key else {
            anyhow::bail!(
                "read model {}: delete by key needs a one-column key",
                self.table
            );
        };
        let sql = format!("DELETE FROM {} WHERE {key} = ANY($1)", self.table);
        tx.execute(&sql, &[&keys]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_lowercase_words_that_may_hold_digits() {
        for ok in ["budgets_view", "costs_1h", "a", "cl_rebuild_costs_1d"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "1h_costs",
            "Budgets",
            "budgets-view",
            "x;drop",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn a_bad_name_anywhere_in_a_read_model_is_refused() {
        static BAD: ReadModel = ReadModel {
            table: "costs_1h",
            key: &["id"],
            columns: &[col("id", Type::UUID), col("amount\"", Type::NUMERIC)],
            keep_on_update: &[],
            newer: None,
        };
        assert!(BAD.check().is_err());
    }
}
