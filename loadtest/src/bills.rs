//! `bills`: a seeded generator of cloudlens-format bill files (the Alibaba Cloud bill
//! columns seed 000 stores), one file per account, lines spread evenly over `days` days
//! from `start`. Also writes `sums.csv`: the exact cost per (account, day, service) and
//! the grand total, computed here independently of the server, for checking its answers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use chrono::Datelike;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(clap::Args)]
pub struct BillArgs {
    /// Lines per account file.
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: u64,
    /// Number of account files (acct-00, acct-01, …).
    #[arg(long, default_value_t = 10)]
    pub accounts: u32,
    /// Days the lines span, from `start`.
    #[arg(long, default_value_t = 90)]
    pub days: u32,
    /// First charge day (YYYY-MM-DD).
    #[arg(long, default_value = "2024-01-01")]
    pub start: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

const SERVICES: &[(&str, &str)] = &[
    ("ecs", "Elastic Compute Service"),
    ("oss", "Object Storage Service"),
    ("rds", "ApsaraDB RDS"),
    ("slb", "Server Load Balancer"),
    ("cdn", "CDN"),
    ("redis", "ApsaraDB for Redis"),
    ("mongodb", "ApsaraDB for MongoDB"),
    ("eip", "Elastic IP"),
    ("nas", "NAS"),
    ("sls", "Log Service"),
    ("ack", "Container Service"),
    ("polardb", "PolarDB"),
];
const REGIONS: &[&str] = &[
    "cn-hangzhou",
    "cn-shanghai",
    "cn-beijing",
    "cn-shenzhen",
    "ap-southeast-1",
    "us-west-1",
];
const TEAMS: &[&str] = &[
    "web", "data", "infra", "ml", "mobile", "search", "ads", "pay",
];

pub fn run(a: BillArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let start = chrono::NaiveDate::parse_from_str(&a.start, "%Y-%m-%d")?;
    let mut rng = StdRng::seed_from_u64(a.seed);
    // Exact sums in ten-thousandths (costs have 4 decimals).
    let mut sums: BTreeMap<(u32, u32, &str), i128> = BTreeMap::new();
    let mut total: i128 = 0;
    for acct in 0..a.accounts {
        let path = a.out.join(format!("acct-{acct:02}.csv"));
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&path)?);
        writeln!(
            w,
            "billing_cycle,billing_date,product_code,product_name,product_type,subscription_type,\
             instance_id,region,zone,resource_group,billing_item,list_price,invoice_discount,\
             pretax_amount,deducted_by_coupons,payment_amount,currency,tag"
        )?;
        for i in 0..a.lines {
            let day = (i * u64::from(a.days) / a.lines) as u32;
            let date = start + chrono::Duration::days(i64::from(day));
            let (code, name) = SERVICES[rng.gen_range(0..SERVICES.len())];
            let region = REGIONS[rng.gen_range(0..REGIONS.len())];
            let resource = rng.gen_range(0..20_000u32);
            let cost: i128 = rng.gen_range(1..2_000_000);
            let team = TEAMS[rng.gen_range(0..TEAMS.len())];
            // Every 50th line has no charge day: charged on the period's first day.
            let (billing_date, sum_day) = if i % 50 == 49 {
                let first = date.with_day0(0).unwrap_or(date);
                (String::new(), (first - start).num_days() as u32)
            } else {
                (date.format("%Y-%m-%d").to_string(), day)
            };
            writeln!(
                w,
                "{cycle},{billing_date},{code},{name},PostPaid,PayAsYouGo,i-{acct:02}-{resource:05},\
                 {region},{region}-a,rg-{team},{code}-usage,{list}.{lf:04},0,{c}.{cf:04},0,{c}.{cf:04},CNY,\
                 team:{team};env:{env}",
                cycle = date.format("%Y-%m"),
                list = (cost * 12 / 10) / 10_000,
                lf = (cost * 12 / 10) % 10_000,
                c = cost / 10_000,
                cf = cost % 10_000,
                env = if resource % 3 == 0 { "dev" } else { "prod" },
            )?;
            *sums.entry((acct, sum_day, code)).or_default() += cost;
            total += cost;
        }
        w.flush()?;
    }
    let mut w = BufWriter::new(File::create(a.out.join("sums.csv"))?);
    writeln!(w, "account,day,service,cost")?;
    for ((acct, day, code), cost) in &sums {
        let date = start + chrono::Duration::days(i64::from(*day));
        writeln!(
            w,
            "acct-{acct:02},{date},{code},{}.{:04}",
            cost / 10_000,
            cost % 10_000
        )?;
    }
    writeln!(w, "total,,,{}.{:04}", total / 10_000, total % 10_000)?;
    w.flush()?;
    Ok(())
}
