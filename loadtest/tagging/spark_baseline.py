#!/usr/bin/env python3
"""The seed's approach to user tagging, as the baseline of loadtest/tagging.sh: PySpark on
local[2] reading the three user tables from Parquet, all 20 rules of rules.json evaluated
as Spark SQL column expressions, one sorted tag-id array per user written out.

    target/spark-venv/bin/python loadtest/tagging/spark_baseline.py DATA_DIR

DATA_DIR is what gen.py wrote (user_basic_info.csv, user_asset_summary.csv,
user_activity_summary.csv, changes.csv). Untimed, once: the CSVs become Parquet under
DATA_DIR/parquet/ (plus user_activity_summary_merged: the activity table after changes.csv
replaced those users' rows, which the incremental run reads). Timed, in one session:
the JVM/SparkSession start, then a full run and an incremental run, each twice (the first
pays the JIT warm-up). Writes DATA_DIR/spark_tags.csv for the subject-by-subject check and
ends with one `SPARK_RESULT ...` line for scripts.

Rule semantics are those of cloudlens (src/tagging/rules.rs), so both sides can be
compared tag by tag: a null field satisfies no operator but is_null; AND/OR/NOT are
all/any/none; numbers are exact decimals, dates UTC instants, in_range and recent_days
inclusive.
"""
import time

T_SCRIPT = time.time()  # before importing pyspark: the JVM start includes that import

import argparse
import json
import os
import shutil
from datetime import datetime, timedelta, timezone
from functools import reduce

HERE = os.path.dirname(os.path.abspath(__file__))
AS_OF = "2026-11-20T00:00:00Z"  # gen.py's
NUM = "decimal(38,10)"  # wide enough for any amount here, exact like PostgreSQL's numeric

# Column types of the seed's Hive tables (its README), with kyc_status and user_level typed
# as the benchmark's rules use them (boolean, number).
TABLES = {
    "user_basic_info": {"register_time": "timestamp", "register_country": "string",
                        "kyc_status": "boolean", "user_level": "int", "updated_time": "timestamp"},
    "user_asset_summary": {"total_asset_value": "decimal(20,2)", "total_deposit_amount": "decimal(20,2)",
                           "total_withdraw_amount": "decimal(20,2)", "updated_time": "timestamp"},
    "user_activity_summary": {"last_login_time": "timestamp", "login_count_7d": "int",
                              "trading_count_30d": "int", "last_trading_time": "timestamp",
                              "updated_time": "timestamp"},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--rules", default=os.path.join(HERE, "rules.json"))
    ap.add_argument("--as-of", default=AS_OF)
    ap.add_argument("--days", type=int, default=7, help="incremental window before as_of")
    ap.add_argument("--driver-memory", default="4g")
    a = ap.parse_args()
    if not os.environ.get("JAVA_HOME"):
        # spark-class falls back to `java` on PATH anyway; an explicit home avoids surprises
        # from alternatives pointing at a JRE without the jdk layout.
        java = shutil.which("java")
        if java:
            os.environ["JAVA_HOME"] = os.path.dirname(os.path.dirname(os.path.realpath(java)))
    # Everything stays on loopback (and Spark stops warning about the hostname).
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").appName("tagging-baseline")
             # The driver is the only executor in local mode: 4g of a 24 GiB box, like the
             # seed's "performance" profile (driver_memory 4g).
             .config("spark.driver.memory", a.driver_memory)
             .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
             .config("spark.sql.session.timeZone", "UTC")
             # 200 shuffle partitions is cluster-sized; AQE would coalesce them, but starting
             # at 8 (4 per core) spares the 2 cores hundreds of tiny tasks.
             .config("spark.sql.shuffle.partitions", "8")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1")
             .getOrCreate())
    jvm_start = time.time() - T_SCRIPT
    spark.sparkContext.setLogLevel("ERROR")
    print(f"spark {spark.version} local[2], driver memory {a.driver_memory}; "
          f"JVM + SparkSession start: {jvm_start:.2f} s")

    pq = os.path.join(a.data_dir, "parquet")
    to_parquet(spark, a.data_dir, pq)

    with open(a.rules) as f:
        rules = json.load(f)
    as_of = parse_instant(a.as_of)
    tag_ids = tags_column(rules, as_of)
    print(f"{len(rules)} rules, as_of {a.as_of}; results go to Parquet (the seed upserts "
          f"into MySQL: writing Parquet is a cheaper stand-in)")

    full_s, inc_s = [], []
    for i in (1, 2):
        t0 = time.time()
        evaluate(spark, pq, "user_activity_summary", tag_ids).write.mode("overwrite") \
            .parquet(os.path.join(pq, "tags_full"))
        full_s.append(time.time() - t0)
        users, tagged, assigned = stats(spark, os.path.join(pq, "tags_full"))
        print(f"full run {i}: {full_s[-1]:.2f} s; {users} users, {tagged} with at least one tag, "
              f"{assigned} assignments")
    since = as_of - timedelta(days=a.days)
    for i in (1, 2):
        t0 = time.time()
        evaluate(spark, pq, "user_activity_summary_merged", tag_ids, (since, as_of)) \
            .write.mode("overwrite").parquet(os.path.join(pq, "tags_incremental"))
        inc_s.append(time.time() - t0)
        inc_users, inc_tagged, inc_assigned = stats(spark, os.path.join(pq, "tags_incremental"))
        print(f"incremental run {i} ({a.days} days, after changes.csv): {inc_s[-1]:.2f} s; "
              f"{inc_users} users in scope, {inc_tagged} with at least one tag, "
              f"{inc_assigned} assignments")

    # The check in tagging.sh compares against the server after its incremental run, i.e.
    # the tags of the data with the changes applied: a full evaluation over the merged
    # tables (for the ~93 % of users that did not change, the same as the base full run).
    out = write_tags_csv(spark, pq, tag_ids, a.data_dir)
    print(f"wrote {out} (full evaluation over the tables after changes.csv, untimed)")

    fmt = lambda xs: ",".join(f"{x:.2f}" for x in xs)
    print(f"SPARK_RESULT jvm_start_s={jvm_start:.2f} full_s={fmt(full_s)} "
          f"incremental_s={fmt(inc_s)} users={users} full_assignments={assigned} "
          f"incremental_users={inc_users}")
    spark.stop()


# ---------------------------------------------------------------------------------------
# Data: CSV -> Parquet (untimed), then the timed read + join + evaluate + write
# ---------------------------------------------------------------------------------------

def to_parquet(spark, data_dir, pq):
    """Converts the CSVs once; redone when a CSV is newer than its Parquet."""
    from pyspark.sql import functions as F

    def done(name, sources):
        marker = os.path.join(pq, name, "_SUCCESS")
        return os.path.exists(marker) and all(
            os.path.getmtime(os.path.join(data_dir, s + ".csv")) <= os.path.getmtime(marker)
            for s in sources)

    def read(csv_name, table):
        cols = ["user_id"] + list(TABLES[table])
        df = spark.read.csv(os.path.join(data_dir, csv_name + ".csv"), header=True,
                            schema=", ".join(f"{c} string" for c in cols))
        typed = [F.col("user_id")]
        for c, ty in TABLES[table].items():
            s = F.when(F.col(c) != "", F.col(c))  # an empty cell is null, whatever the reader
            if ty == "timestamp":
                s = F.to_timestamp(s, "yyyy-MM-dd HH:mm:ss")  # UTC: the session time zone
            elif ty == "boolean":
                s = F.when(s == "true", True).when(s == "false", False)
            else:
                s = s.cast(ty)
            typed.append(s.alias(c))
        return df.select(typed)

    def write(df, name):
        # Several files per table, as a Hive table on S3 would have: one Parquet file is
        # one scan task, which would leave one of the two cores idle.
        df.repartitionByRange(4, "user_id").sortWithinPartitions("user_id") \
            .write.mode("overwrite").parquet(os.path.join(pq, name))

    t0 = time.time()
    converted = []
    for table in TABLES:
        if not done(table, [table]):
            write(read(table, table), table)
            converted.append(table)
    merged = "user_activity_summary_merged"
    if not done(merged, ["user_activity_summary", "changes"]):
        base = spark.read.parquet(os.path.join(pq, "user_activity_summary"))
        changes = read("changes", "user_activity_summary")
        # changes.csv replaces those users' rows (one new row per changed user).
        write(base.join(changes.select("user_id"), "user_id", "left_anti").unionByName(changes),
              merged)
        converted.append(merged)
    if converted:
        print(f"converted to Parquet (untimed): {', '.join(converted)} in {time.time() - t0:.1f} s")


def evaluate(spark, pq, activity, tag_ids, window=None):
    """The users of user_basic_info (the subjects), left-joined with the other two tables,
    with their sorted tag ids; with a window, only the users updated within it in any
    table."""
    from pyspark.sql import functions as F

    read = lambda name: spark.read.parquet(os.path.join(pq, name))
    basic, asset, act = read("user_basic_info"), read("user_asset_summary"), read(activity)
    if window is not None:
        lo, hi = (F.lit(ts_literal(t)).cast("timestamp") for t in window)
        changed = reduce(lambda x, y: x.union(y), [
            t.where(F.col("updated_time").between(lo, hi)).select("user_id")
            for t in (basic, asset, act)]).distinct()
        basic = basic.join(changed, "user_id", "left_semi")
    # Only the rule fields: updated_time exists in all three tables and is not one.
    fields = lambda df: df.select("user_id", *[c for c in df.columns
                                               if c not in ("user_id", "updated_time")])
    joined = fields(basic).join(fields(asset), "user_id", "left") \
        .join(fields(act), "user_id", "left")
    return joined.select("user_id", tag_ids.alias("tag_ids"))


def stats(spark, path):
    """Users, users with a tag, assignments of a written result (untimed)."""
    from pyspark.sql import functions as F
    r = spark.read.parquet(path).agg(
        F.count("*"), F.sum((F.size("tag_ids") > 0).cast("long")),
        F.coalesce(F.sum(F.size("tag_ids")), F.lit(0))).first()
    return r[0], r[1] or 0, r[2]


def write_tags_csv(spark, pq, tag_ids, data_dir):
    """DATA_DIR/spark_tags.csv: `user_id,tag_ids` with the ids space-separated, sorted by
    user, `u1,` for a user without tags."""
    from pyspark.sql import functions as F
    tmp = os.path.join(pq, "spark_tags_csv")
    evaluate(spark, pq, "user_activity_summary_merged", tag_ids) \
        .select("user_id", F.array_join(F.col("tag_ids").cast("array<string>"), " ").alias("tag_ids")) \
        .repartition(1).sortWithinPartitions("user_id") \
        .write.mode("overwrite").csv(tmp, header=True, emptyValue="", quote="")
    part = [p for p in os.listdir(tmp) if p.startswith("part-") and p.endswith(".csv")]
    out = os.path.join(data_dir, "spark_tags.csv")
    shutil.move(os.path.join(tmp, part[0]), out)
    shutil.rmtree(tmp)
    return out


# ---------------------------------------------------------------------------------------
# Rules -> Spark column expressions
# ---------------------------------------------------------------------------------------

def tags_column(rules, as_of):
    """One array column: the 1-based indexes (tag ids) of the rules that match, ascending
    because the candidates are listed in that order."""
    from pyspark.sql import functions as F
    cands = [F.when(compile_group(r["rule"], as_of), F.lit(i)) for i, r in enumerate(rules, 1)]
    return F.filter(F.array(*cands), lambda x: x.isNotNull())


def compile_group(g, as_of):
    """AND = all, OR = any, NOT = none. Every leaf is already two-valued (coalesced), so
    NOT over a null field's false leaf is true, as in cloudlens."""
    from pyspark.sql import functions as F
    parts = [compile_group(c, as_of) if "logic" in c else compile_leaf(c, as_of)
             for c in g["conditions"]]
    logic = g.get("logic", "AND").upper()
    any_ = reduce(lambda x, y: x | y, parts) if parts else F.lit(False)
    if logic == "AND":
        return reduce(lambda x, y: x & y, parts) if parts else F.lit(True)
    if logic == "OR":
        return any_
    if logic == "NOT":
        return ~any_
    raise ValueError(f"unknown logic {logic!r}")


def compile_leaf(c, as_of):
    """One condition, null on a null field except for is_null/is_not_null, then coalesced
    to false: a null field satisfies no other operator (so != and not_in are false too)."""
    from pyspark.sql import functions as F
    ty, op, v = c.get("type", "string"), c["operator"], c.get("value")
    col = F.col(c["field"])
    if op == "is_null":
        return col.isNull()
    if op == "is_not_null":
        return col.isNotNull()
    if ty == "number":
        col = col.cast(NUM)  # amounts are decimal(20,2), counts int: compare both exactly
    lit = lambda x: literal(ty, x)
    if op in ("=", "!=", ">", ">=", "<", "<="):
        rhs = lit(v)
        e = {"=": col == rhs, "!=": col != rhs, ">": col > rhs, ">=": col >= rhs,
             "<": col < rhs, "<=": col <= rhs}[op]
    elif op in ("in", "not_in"):
        # A null list element matches nothing; SQL's x NOT IN (.., NULL) would be null for
        # every row, so it is left out rather than passed through.
        items = [lit(x) for x in v if x is not None]
        e = col.isin(*items) if items else F.lit(False)
        if op == "not_in":
            e = ~e if items else col.isNotNull()
    elif op == "contains":
        e = col.contains(str(v))  # byte-wise, case-sensitive substring
    elif op == "in_range":
        lo, hi = (v.get("min"), v.get("max")) if isinstance(v, dict) else (list(v) + [None, None])[:2]
        e = col.isNotNull()
        if lo is not None:
            e = e & (col >= lit(lo))
        if hi is not None:
            e = e & (col <= lit(hi))
    elif op == "recent_days":
        lo = as_of - timedelta(days=int(v))
        e = col.between(F.lit(ts_literal(lo)).cast("timestamp"),
                        F.lit(ts_literal(as_of)).cast("timestamp"))
    else:
        raise ValueError(f"unknown operator {op!r}")
    return F.coalesce(e, F.lit(False))


def literal(ty, v):
    from pyspark.sql import functions as F
    if ty == "number":
        # Through the decimal text, never a float: 0.1 stays exactly 0.1.
        return F.lit(str(v)).cast(NUM)
    if ty == "date":
        return F.lit(ts_literal(parse_instant(v))).cast("timestamp")
    if ty == "boolean":
        return F.lit(v if isinstance(v, bool) else str(v).lower() == "true")
    return F.lit(str(v))


def parse_instant(s):
    """A UTC instant: a date alone is its midnight UTC, a time without offset is UTC."""
    s = str(s).strip()
    if len(s) == 10:
        s += "T00:00:00"
    t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def ts_literal(t):
    """Text that Spark casts to this instant, the session time zone being UTC."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


if __name__ == "__main__":
    main()
