//! CJK text without a segmenter (ADR 0022). The index holds every CJK run as overlapping
//! bigrams plus its last character (`sql/V13`: `cloudlens_cjk_grams`); here a query's CJK
//! runs become the matching bigram phrases, and matches are highlighted (PostgreSQL's
//! `ts_headline` cannot see bigrams).

/// The CJK ranges indexed as bigrams: CJK Unified Ideographs Extension A, CJK Unified
/// Ideographs, CJK Compatibility Ideographs. The same as the SQL functions of V13.
pub const CJK: [(char, char); 3] = [
    ('\u{3400}', '\u{4dbf}'),
    ('\u{4e00}', '\u{9fff}'),
    ('\u{f900}', '\u{faff}'),
];

pub fn is_cjk(c: char) -> bool {
    CJK.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c))
}

/// A search query split for PostgreSQL: the `websearch_to_tsquery('english', …)` text, in
/// which every CJK run of two or more characters is a quoted bigram phrase (a `-` before
/// it kept), and the single CJK characters, each a prefix term (`X:*`) to AND in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub websearch: String,
    pub single: Vec<char>,
    /// The CJK runs of the query (for highlighting).
    pub runs: Vec<String>,
}

/// Splits a user's query (websearch syntax: words, "phrases", OR, -exclusions).
pub fn query(q: &str) -> Query {
    let mut websearch = String::with_capacity(q.len() * 3);
    let mut single = Vec::new();
    let mut runs = Vec::new();
    let chars: Vec<char> = q.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if !is_cjk(chars[i]) {
            websearch.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_cjk(chars[i]) {
            i += 1;
        }
        let run: Vec<char> = chars[start..i].to_vec();
        runs.push(run.iter().collect());
        if run.len() == 1 {
            // `-X` or a lone character: a prefix term; an exclusion of one character is
            // left out (it would exclude every text with the character).
            if websearch.ends_with('-') {
                websearch.pop();
            } else {
                single.push(run[0]);
            }
            websearch.push(' ');
            continue;
        }
        let grams: Vec<String> = run.windows(2).map(|w| w.iter().collect()).collect();
        // Inside a quoted phrase already: just the bigrams; else a phrase of its own. A
        // `-` or an opening quote right before stays attached.
        let quoted = websearch.matches('"').count() % 2 == 1;
        if !websearch.ends_with(['-', '"']) {
            websearch.push(' ');
        }
        if !quoted {
            websearch.push('"');
        }
        websearch.push_str(&grams.join(" "));
        websearch.push_str(if quoted { " " } else { "\" " });
    }
    Query {
        websearch: websearch.split_whitespace().collect::<Vec<_>>().join(" "),
        single,
        runs,
    }
}

/// `to_tsquery('simple', …)` text of the single characters: `X:* & Y:*` (only CJK
/// characters ever reach it).
pub fn single_tsquery(single: &[char]) -> String {
    single
        .iter()
        .map(|c| format!("{c}:*"))
        .collect::<Vec<_>>()
        .join(" & ")
}

/// A snippet of about `width` characters around the first match of any of `terms` in
/// `text`, HTML-escaped, every match wrapped in `<b>…</b>`; `None` when none matches.
pub fn highlight(text: &str, terms: &[String], width: usize) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let terms: Vec<Vec<char>> = terms
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| t.chars().collect())
        .collect();
    let matches_at = |i: usize| {
        terms
            .iter()
            .filter(|t| chars[i..].starts_with(t))
            .map(Vec::len)
            .max()
    };
    let first = (0..chars.len()).find(|i| matches_at(*i).is_some())?;
    let start = first.saturating_sub(width / 2);
    let end = (start + width).min(chars.len());
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    let mut i = start;
    while i < end {
        match matches_at(i) {
            Some(n) => {
                out.push_str("<b>");
                for c in &chars[i..(i + n).min(chars.len())] {
                    escape(*c, &mut out);
                }
                out.push_str("</b>");
                i += n;
            }
            None => {
                escape(chars[i], &mut out);
                i += 1;
            }
        }
    }
    if end < chars.len() {
        out.push('…');
    }
    Some(out)
}

fn escape(c: char, out: &mut String) {
    match c {
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '&' => out.push_str("&amp;"),
        '"' => out.push_str("&quot;"),
        _ => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_runs_become_bigram_phrases() {
        let q = query("成本 报告 cost");
        assert_eq!(q.websearch, "\"成本\" \"报告\" cost");
        let q = query("全文搜索 -mysql");
        assert_eq!(q.websearch, "\"全文 文搜 搜索\" -mysql");
        let q = query("\"云成本 report\"");
        assert_eq!(q.websearch, "\"云成 成本 report\"");
        let q = query("-成本 budget");
        assert_eq!(q.websearch, "-\"成本\" budget");
        let q = query("务 cloud");
        assert_eq!(
            (q.websearch.as_str(), q.single.clone()),
            ("cloud", vec!['务'])
        );
        assert_eq!(single_tsquery(&q.single), "务:*");
    }

    #[test]
    fn highlights_are_escaped_and_wrap_every_match() {
        let h = highlight("a<b> 成本分析：成本", &["成本".into()], 40).unwrap();
        assert_eq!(h, "a&lt;b&gt; <b>成本</b>分析：<b>成本</b>");
        assert!(highlight("nothing here", &["成本".into()], 40).is_none());
        let long = format!("{}成本{}", "字".repeat(100), "字".repeat(100));
        let h = highlight(&long, &["成本".into()], 20).unwrap();
        assert!(h.starts_with('…') && h.ends_with('…') && h.contains("<b>成本</b>"));
    }

    #[test]
    fn the_ranges_match_the_migration() {
        let sql = include_str!("../../sql/V13__documents.sql");
        let class = "[\\u3400-\\u4dbf\\u4e00-\\u9fff\\uf900-\\ufaff]+";
        assert_eq!(
            sql.matches(class).count(),
            2,
            "both SQL functions use the class"
        );
        let rendered: String = CJK
            .iter()
            .map(|(lo, hi)| format!("\\u{:04x}-\\u{:04x}", *lo as u32, *hi as u32))
            .collect();
        assert_eq!(format!("[{rendered}]+"), class);
    }
}
