#!/usr/bin/env python3
"""Seeded generator of the seed-004 user tables for the tagging benchmark.

Writes, for N users, the three source tables as CSV (the seed's columns, ~3 % empty
cells), plus `changes.csv`: new `user_activity_summary` rows for ~7 % of the users,
updated inside the 7 days before AS_OF (every base row is 10-60 days older).

    gen.py --users 1000000 --out DIR [--seed 42]
"""
import argparse
import csv
import os
import random
from datetime import datetime, timedelta, timezone

AS_OF = datetime(2026, 11, 20, tzinfo=timezone.utc)
COUNTRIES = ["CN", "US", "SG", "JP", "DE", "GB", "HK", "KR", "FR", "BR"]


def ts(t):
    return t.strftime("%Y-%m-%d %H:%M:%S")


def maybe(r, v, p=0.03):
    return "" if r.random() < p else v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--changed", type=float, default=0.07)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    r = random.Random(a.seed)
    files = {n: open(os.path.join(a.out, n + ".csv"), "w", newline="") for n in
             ("user_basic_info", "user_asset_summary", "user_activity_summary", "changes")}
    w = {n: csv.writer(f, lineterminator="\n") for n, f in files.items()}
    w["user_basic_info"].writerow(["user_id", "register_time", "register_country", "kyc_status", "user_level", "updated_time"])
    w["user_asset_summary"].writerow(["user_id", "total_asset_value", "total_deposit_amount", "total_withdraw_amount", "updated_time"])
    activity = ["user_id", "last_login_time", "login_count_7d", "trading_count_30d", "last_trading_time", "updated_time"]
    w["user_activity_summary"].writerow(activity)
    w["changes"].writerow(activity)
    for i in range(a.users):
        uid = f"u{i:07d}"
        old = lambda: ts(AS_OF - timedelta(days=r.uniform(10, 60)))
        reg = AS_OF - timedelta(days=r.uniform(0, 2000))
        w["user_basic_info"].writerow([uid, maybe(r, ts(reg)), maybe(r, r.choice(COUNTRIES)),
                                       maybe(r, r.choice(["true", "false"])), maybe(r, str(r.randint(1, 10))), old()])
        asset = r.lognormvariate(8, 2.5)
        dep = asset * r.uniform(0.5, 2)
        w["user_asset_summary"].writerow([uid, maybe(r, f"{asset:.2f}"), maybe(r, f"{dep:.2f}"),
                                          maybe(r, f"{dep * r.uniform(0, 0.9):.2f}"), old()])

        def activity_row(updated):
            login = AS_OF - timedelta(days=r.uniform(0, 90))
            trade = AS_OF - timedelta(days=r.uniform(0, 180))
            return [uid, maybe(r, ts(login)), maybe(r, str(r.randint(0, 40))), maybe(r, str(r.randint(0, 300))),
                    maybe(r, ts(trade)), updated]
        w["user_activity_summary"].writerow(activity_row(old()))
        if r.random() < a.changed:
            w["changes"].writerow(activity_row(ts(AS_OF - timedelta(days=r.uniform(0, 6.9)))))
    for f in files.values():
        f.close()


if __name__ == "__main__":
    main()
