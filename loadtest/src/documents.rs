//! The documents benchmark (issue "Documents, search and TTL collections").
//!
//! 1. Bulk load: DOCS generated documents (55 % English, 25 % Chinese, 20 % mixed; words
//!    drawn from Zipf-distributed vocabularies of 5,000 English-like and 5,000 two-character
//!    Chinese words) as NDJSON bodies (`POST /api/v1/documents:batch`), CONCURRENCY
//!    requests at a time, timed until the answers and until the `documents` projector has
//!    reached the last batch (every document searchable).
//! 2. Search over HTTP, REPS queries each (a different term every time, words of ranks
//!    100-5,000): one term, a phrase, three terms; English and Chinese; each
//!    without and with a metadata filter; top 20 with snippets; after VACUUM ANALYZE (the
//!    state autovacuum keeps). Then the worst case, the most frequent words of each
//!    language.
//! 3. Baseline for two-character Chinese queries (ADR 0022): the same documents copied into
//!    a table with a `pg_trgm` GIN index on the content, `content LIKE '%词%'`, against the
//!    bigram tsvector, both as SQL on the database: top 20 (trigram: unranked) and the count
//!    of every match (what ranking has to read).
//!
//! Numbers are printed, never asserted (loadtest/documents.sh, loadtest/RESULTS.md).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::stats::Samples;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8094")]
    pub url: String,
    /// Connection string of the server's database.
    #[arg(long)]
    pub conn: String,
    #[arg(long, default_value_t = 1_000_000)]
    pub docs: usize,
    /// Documents per request.
    #[arg(long, default_value_t = 20_000)]
    pub per_request: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 200)]
    pub reps: usize,
    /// Only the queries, against data an earlier run left (server still up).
    #[arg(long)]
    pub queries_only: bool,
}

const HANZI: &str = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处府";
const SYLLABLES: [&str; 24] = [
    "ka", "lo", "mi", "ne", "ru", "ta", "po", "si", "de", "va", "qu", "zo", "be", "fi", "gu", "ha",
    "jo", "ke", "ly", "mo", "nu", "pe", "ri", "so",
];
const VOCAB: usize = 5_000;

/// Two Zipf-distributed vocabularies and a seeded generator.
struct Corpus {
    en: Vec<String>,
    zh: Vec<String>,
    /// Cumulative Zipf weights over ranks.
    cdf: Vec<f64>,
}

impl Corpus {
    fn new() -> Self {
        let hanzi: Vec<char> = HANZI.chars().collect();
        let mut rng = StdRng::seed_from_u64(11);
        let mut en = Vec::with_capacity(VOCAB);
        let mut seen = std::collections::HashSet::new();
        while en.len() < VOCAB {
            let n = rng.gen_range(2..=4);
            let w: String = (0..n)
                .map(|_| SYLLABLES[rng.gen_range(0..SYLLABLES.len())])
                .collect();
            if seen.insert(w.clone()) {
                en.push(w);
            }
        }
        let mut zh = Vec::with_capacity(VOCAB);
        while zh.len() < VOCAB {
            let w: String = [
                hanzi[rng.gen_range(0..hanzi.len())],
                hanzi[rng.gen_range(0..hanzi.len())],
            ]
            .iter()
            .collect();
            if seen.insert(w.clone()) {
                zh.push(w);
            }
        }
        let mut cdf = Vec::with_capacity(VOCAB);
        let mut total = 0.0;
        for r in 0..VOCAB {
            total += 1.0 / (r as f64 + 1.0);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Self { en, zh, cdf }
    }

    fn rank(&self, rng: &mut StdRng) -> usize {
        let x: f64 = rng.gen();
        self.cdf.partition_point(|c| *c < x).min(VOCAB - 1)
    }

    fn en_text(&self, rng: &mut StdRng, words: usize) -> String {
        let mut s = String::new();
        for i in 0..words {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(&self.en[self.rank(rng)]);
        }
        s
    }

    fn zh_text(&self, rng: &mut StdRng, words: usize) -> String {
        let mut s = String::new();
        for i in 0..words {
            s.push_str(&self.zh[self.rank(rng)]);
            if i % 8 == 7 {
                s.push(if i + 1 == words { '。' } else { '，' });
            }
        }
        s
    }

    fn document(&self, rng: &mut StdRng, i: usize) -> Value {
        let kind = rng.gen_range(0..100);
        let (title, content) = if kind < 55 {
            (self.en_text(rng, 4), self.en_text(rng, 60))
        } else if kind < 80 {
            (self.zh_text(rng, 3), self.zh_text(rng, 60))
        } else {
            (
                format!("{} {}", self.zh_text(rng, 2), self.en_text(rng, 2)),
                format!(
                    "{} {} {}",
                    self.zh_text(rng, 20),
                    self.en_text(rng, 20),
                    self.zh_text(rng, 20)
                ),
            )
        };
        let day = rng.gen_range(0..365);
        json!({
            "title": title,
            "content": content,
            "category": format!("cat-{}", rng.gen_range(0..12)),
            "tags": [format!("tag-{}", rng.gen_range(0..40)), format!("tag-{}", rng.gen_range(40..80))],
            "metadata": {"team": format!("t{}", i % 20), "level": rng.gen_range(1..=5)},
            "created_at": (chrono::Utc::now() - chrono::Duration::days(day)).to_rfc3339(),
        })
    }
}

fn bodies(c: &Corpus, a: &Args) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(42);
    let mut out = Vec::new();
    let mut body = String::new();
    for i in 0..a.docs {
        let _ = writeln!(body, "{}", c.document(&mut rng, i));
        if (i + 1) % a.per_request == 0 {
            out.push(std::mem::take(&mut body));
        }
    }
    if !body.is_empty() {
        out.push(body);
    }
    out
}

async fn load(
    client: &awc::Client,
    url: &str,
    bodies: Vec<String>,
    concurrency: usize,
) -> anyhow::Result<(f64, f64)> {
    use futures::StreamExt;
    let started = Instant::now();
    let positions: Vec<anyhow::Result<i64>> = futures::stream::iter(bodies)
        .map(|b| async move {
            let mut res = client
                .post(format!("{url}/api/v1/documents:batch"))
                .insert_header(("Content-Type", "application/x-ndjson"))
                .send_body(b)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let v: Value = res.json().await?;
            anyhow::ensure!(res.status() == 202, "batch refused: {v}");
            Ok(v["position"].as_i64().unwrap_or(0))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut last = 0;
    for p in positions {
        last = last.max(p?);
    }
    let answered = started.elapsed().as_secs_f64();
    while crate::timeseries::reached(client, url, "documents").await? < last {
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((answered, started.elapsed().as_secs_f64()))
}

fn line(what: &str, s: &mut Samples) {
    println!(
        "{what:<52} p50 {:>8.2} ms  p95 {:>8.2} ms  (n={})",
        s.percentile(50.0),
        s.percentile(95.0),
        s.len()
    );
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Times `queries` over HTTP (top 20); returns the samples and the mean hit count.
async fn time_http(
    client: &awc::Client,
    url: &str,
    queries: &[String],
    filter: bool,
) -> anyhow::Result<(Samples, f64)> {
    let mut s = Samples::default();
    let mut hits = 0;
    for (i, q) in queries.iter().enumerate() {
        let mut path = format!("{url}/api/v1/search?limit=20&q={}", encode(q));
        if filter {
            let _ = write!(
                path,
                "&metadata={}",
                encode(&format!("{{\"team\":\"t{}\"}}", i % 20))
            );
        }
        let t = Instant::now();
        let mut res = client
            .get(path)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let v: Value = res.json().limit(16 << 20).await?;
        s.add(t.elapsed());
        anyhow::ensure!(res.status() == 200, "search refused: {v}");
        hits += v["hits"].as_array().map_or(0, Vec::len);
    }
    Ok((s, hits as f64 / queries.len().max(1) as f64))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let corpus = Corpus::new();
    let bodies = if a.queries_only {
        Vec::new()
    } else {
        println!("== generating {} documents", a.docs);
        bodies(&corpus, &a)
    };
    let mut rng = StdRng::seed_from_u64(7);
    // One-term queries: words of ranks 100 to 5,000, uniformly (most words a user types
    // are not among the hundred most frequent; those are timed apart, the worst case).
    let mid = |rng: &mut StdRng| rng.gen_range(100..VOCAB);
    let n = a.reps;
    let en_one: Vec<String> = (0..n).map(|_| corpus.en[mid(&mut rng)].clone()).collect();
    let zh_one: Vec<String> = (0..n).map(|_| corpus.zh[mid(&mut rng)].clone()).collect();
    // Phrases: two words next to each other in a generated text.
    let en_phrase: Vec<String> = (0..n)
        .map(|_| {
            let t = corpus.en_text(&mut rng, 2);
            format!("\"{t}\"")
        })
        .collect();
    let zh_phrase: Vec<String> = (0..n).map(|_| corpus.zh_text(&mut rng, 2)).collect();
    let few = |rng: &mut StdRng| rng.gen_range(20..500);
    let en_three: Vec<String> = (0..n)
        .map(|_| {
            format!(
                "{} {} {}",
                corpus.en[few(&mut rng)],
                corpus.en[few(&mut rng)],
                corpus.en[few(&mut rng)]
            )
        })
        .collect();
    let zh_three: Vec<String> = (0..n)
        .map(|_| {
            format!(
                "{} {} {}",
                corpus.zh[few(&mut rng)],
                corpus.zh[few(&mut rng)],
                corpus.zh[few(&mut rng)]
            )
        })
        .collect();
    // The worst case takes seconds a query: 20 of them are enough.
    let en_top: Vec<String> = (0..n.min(20)).map(|i| corpus.en[i % 3].clone()).collect();
    let zh_top: Vec<String> = (0..n.min(20)).map(|i| corpus.zh[i % 3].clone()).collect();

    actix_rt::System::new().block_on(async move {
        let client = awc::Client::builder().timeout(Duration::from_secs(3600)).finish();
        let (db, conn) = tokio_postgres::connect(&a.conn, tokio_postgres::NoTls).await?;
        actix_rt::spawn(conn);
        if !a.queries_only {
            let bytes: usize = bodies.iter().map(String::len).sum();
            println!(
                "== bulk load: {} documents, {} requests of {}, {} at a time, {:.0} MiB of NDJSON",
                a.docs,
                bodies.len(),
                a.per_request,
                a.concurrency,
                bytes as f64 / 1048576.0
            );
            let (answered, visible) = load(&client, &a.url, bodies, a.concurrency).await?;
            println!(
                "documents: requests answered after {answered:.1} s ({:.0} docs/s); all searchable after {visible:.1} s: {:.0} docs/s end to end",
                a.docs as f64 / answered,
                a.docs as f64 / visible
            );
        }
        // A running server's table has been vacuumed by autovacuum by the time it is
        // searched (visibility map, hint bits); a run straight after the load would time
        // that first pass instead.
        let t = Instant::now();
        db.batch_execute("VACUUM ANALYZE documents").await?;
        println!("VACUUM ANALYZE documents: {:.1} s", t.elapsed().as_secs_f64());
        let size: Vec<tokio_postgres::Row> = db
            .query(
                "SELECT count(*), pg_size_pretty(pg_total_relation_size('documents')),
                        pg_size_pretty(pg_relation_size('documents_search')) FROM documents",
                &[],
            )
            .await?;
        println!(
            "documents: {} rows, table with indexes {}, search GIN index {}",
            size[0].get::<_, i64>(0),
            size[0].get::<_, String>(1),
            size[0].get::<_, String>(2)
        );
        // Warm the caches the way a running server's would be.
        for q in en_one.iter().chain(&zh_one).take(20) {
            time_http(&client, &a.url, std::slice::from_ref(q), false).await?;
        }
        println!("== search over HTTP, top 20 with snippets, {n} queries each (mean hits in brackets)");
        for (name, qs) in [
            ("English, one term", &en_one),
            ("English, phrase", &en_phrase),
            ("English, three terms", &en_three),
            ("Chinese, one two-character word", &zh_one),
            ("Chinese, phrase (two words, four characters)", &zh_phrase),
            ("Chinese, three words", &zh_three),
            ("English, most frequent words (worst case)", &en_top),
            ("Chinese, most frequent words (worst case)", &zh_top),
        ] {
            for filter in [false, true] {
                let (mut s, hits) = time_http(&client, &a.url, qs, filter).await?;
                let label = format!("{name}{} [{hits:.1}]", if filter { " + metadata" } else { "" });
                line(&label, &mut s);
            }
        }

        println!("== baseline for two-character Chinese queries: pg_trgm GIN on the content");
        db.batch_execute(
            "CREATE EXTENSION IF NOT EXISTS pg_trgm;
             DROP TABLE IF EXISTS trgm_documents;
             CREATE TABLE trgm_documents AS SELECT id, content FROM documents;",
        )
        .await?;
        let t = Instant::now();
        db.batch_execute("CREATE INDEX trgm_documents_content ON trgm_documents USING gin (content gin_trgm_ops); ANALYZE trgm_documents;")
            .await?;
        let trgm_size: String = db
            .query_one("SELECT pg_size_pretty(pg_relation_size('trgm_documents_content'))", &[])
            .await?
            .get(0);
        println!("trigram index built in {:.1} s, {trgm_size}", t.elapsed().as_secs_f64());
        let ours_top = db
            .prepare(
                "SELECT id FROM documents, to_tsquery('simple', $1) q WHERE search @@ q
                 ORDER BY ts_rank_cd(search, q, 32) DESC, id LIMIT 20",
            )
            .await?;
        let ours_all = db
            .prepare("SELECT count(*) FROM documents WHERE search @@ to_tsquery('simple', $1)")
            .await?;
        let trgm_top = db
            .prepare("SELECT id FROM trgm_documents WHERE content LIKE $1 LIMIT 20")
            .await?;
        let trgm_all = db
            .prepare("SELECT count(*) FROM trgm_documents WHERE content LIKE $1")
            .await?;
        let (mut s1, mut s2, mut s3, mut s4) = Default::default();
        let (mut m_ours, mut m_trgm) = (0_i64, 0_i64);
        for w in zh_one.iter().take(n.min(50)) {
            let like = format!("%{w}%");
            let t = Instant::now();
            db.query(&ours_top, &[w]).await?;
            Samples::add(&mut s1, t.elapsed());
            let t = Instant::now();
            m_ours += db.query_one(&ours_all, &[w]).await?.get::<_, i64>(0);
            Samples::add(&mut s2, t.elapsed());
            let t = Instant::now();
            db.query(&trgm_top, &[&like]).await?;
            Samples::add(&mut s3, t.elapsed());
            let t = Instant::now();
            m_trgm += db.query_one(&trgm_all, &[&like]).await?.get::<_, i64>(0);
            Samples::add(&mut s4, t.elapsed());
        }
        let k = n.min(50) as i64;
        line("bigram tsvector: ranked top 20 (SQL)", &mut s1);
        line(&format!("bigram tsvector: count of all matches [{}]", m_ours / k), &mut s2);
        line("pg_trgm LIKE: top 20, unranked (SQL)", &mut s3);
        line(&format!("pg_trgm LIKE: count of all matches [{}]", m_trgm / k), &mut s4);
        let plan: Vec<String> = db
            .query(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT count(*) FROM trgm_documents WHERE content LIKE $1",
                &[&format!("%{}%", zh_one[0])],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        println!("pg_trgm plan for {:?}:\n  {}", zh_one[0], plan.join("\n  "));
        db.batch_execute("DROP TABLE trgm_documents").await?;
        Ok(())
    })
}
