#!/usr/bin/env bash
# Installs the PySpark baseline of the tagging benchmark (loadtest/tagging/spark_baseline.py)
# into target/spark-venv. Idempotent: does nothing when the pinned version is already there.
#
#   loadtest/tagging/spark_setup.sh
#
# PySpark's PyPI package bundles the Spark jars, so the only other need is a JVM: Spark
# 3.5 runs on Java 8/11/17, and Debian's openjdk-17 is what these machines have (installed
# here when missing, so a fresh machine can run the baseline too).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYSPARK_VERSION=3.5.9
VENV=target/spark-venv

if ! command -v java >/dev/null; then
  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi

if [ -x "$VENV/bin/python" ] &&
  "$VENV/bin/python" -c "import pyspark, sys; sys.exit(pyspark.__version__ != '$PYSPARK_VERSION')" 2>/dev/null; then
  echo "pyspark $PYSPARK_VERSION already in $VENV"
  exit 0
fi

python3 -m venv "$VENV"
# No pyarrow/pandas: the baseline stays in Spark's JVM side (DataFrame API only), so the
# Arrow bridge is never used.
"$VENV/bin/pip" install -q --disable-pip-version-check "pyspark==$PYSPARK_VERSION"
"$VENV/bin/python" -c "import pyspark; print('pyspark', pyspark.__version__, 'in $VENV')"
