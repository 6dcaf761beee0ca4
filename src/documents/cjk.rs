//! CJK text without a segmenter (ADR 0022). The index holds every CJK run as overlapping
//! bigrams plus its last character (`sql/V13`, ranges widened in V24: `cloudlens_cjk_grams`); here a query's CJK
//! runs become the matching bigram phrases, and matches are highlighted (PostgreSQL's
//! `ts_headline` cannot see bigrams).

/// The ranges indexed as bigrams: Hiragana and Katakana, CJK Unified Ideographs
/// Extension A, CJK Unified Ideographs, Hangul Syllables, CJK Compatibility Ideographs.
/// The same as the SQL functions of V24 (V13 without the kana and hangul).
pub const CJK: [(char, char); 5] = [
    ('\u{3040}', '\u{30ff}'),
    ('\u{3400}', '\u{4dbf}'),
    ('\u{4e00}', '\u{9fff}'),
    ('\u{ac00}', '\u{d7af}'),
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
///
/// - Outside quotes, a CJK run of two or more characters becomes a quoted bigram phrase;
///   a `-` right before it (at the start or after a space) excludes it. A `-` glued
///   between characters is a separator, not an exclusion.
/// - Inside quotes, the phrase is split where the script changes: CJK bigrams and Latin
///   words live in different parts of the index and are never adjacent, so
///   `"云成本 report"` becomes `"云成 成本" "report"` (both must match).
/// - A single CJK character is a prefix term to AND in (an excluded one is dropped).
pub fn query(q: &str) -> Query {
    let mut out = Query {
        websearch: String::with_capacity(q.len() * 3),
        single: Vec::new(),
        runs: Vec::new(),
    };
    for (k, part) in q.split('"').enumerate() {
        if k % 2 == 1 {
            quoted(part, &mut out);
        } else {
            unquoted(part, &mut out);
        }
        out.websearch.push(' ');
    }
    out.websearch = out
        .websearch
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    out
}

/// The bigrams of a run of two or more CJK characters.
fn bigrams(run: &[char]) -> String {
    run.windows(2)
        .map(|w| w.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

fn unquoted(part: &str, out: &mut Query) {
    let chars: Vec<char> = part.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '-' {
            let negation = i == 0 || chars[i - 1].is_whitespace();
            out.websearch.push(if negation { '-' } else { ' ' });
            i += 1;
            continue;
        }
        if !is_cjk(c) {
            out.websearch.push(c);
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_cjk(chars[i]) {
            i += 1;
        }
        let run = &chars[start..i];
        let negated = out.websearch.ends_with('-');
        if run.len() == 1 {
            if negated {
                out.websearch.pop();
            } else {
                out.single.push(run[0]);
                out.runs.push(run.iter().collect());
            }
        } else {
            if !negated {
                out.websearch.push(' ');
                out.runs.push(run.iter().collect());
            }
            out.websearch.push('"');
            out.websearch.push_str(&bigrams(run));
            out.websearch.push('"');
        }
        out.websearch.push(' ');
    }
}

fn quoted(part: &str, out: &mut Query) {
    let chars: Vec<char> = part.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let cjk = is_cjk(chars[i]);
        let start = i;
        while i < chars.len() && is_cjk(chars[i]) == cjk {
            i += 1;
        }
        let seg = &chars[start..i];
        if !cjk {
            let text: String = seg.iter().collect();
            if !text.trim().is_empty() {
                out.websearch.push_str(&format!(" \"{}\" ", text.trim()));
            }
        } else if seg.len() == 1 {
            out.single.push(seg[0]);
            out.runs.push(seg.iter().collect());
        } else {
            out.websearch.push_str(&format!(" \"{}\" ", bigrams(seg)));
            out.runs.push(seg.iter().collect());
        }
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
    let mut terms: Vec<&str> = terms
        .iter()
        .map(String::as_str)
        .filter(|t| !t.is_empty())
        .collect();
    if terms.is_empty() {
        return None;
    }
    // Longest first, so a longer term wins where two start at the same place.
    terms.sort_by_key(|t| std::cmp::Reverse(t.len()));
    terms.dedup();
    let first = terms.iter().filter_map(|t| text.find(t)).min()?;
    // The window, in characters, around the first match.
    let before: Vec<(usize, char)> = text[..first].char_indices().collect();
    let from = before
        .len()
        .checked_sub(width / 2)
        .map_or(0, |k| before[k].0);
    let to = text[from..]
        .char_indices()
        .nth(width)
        .map_or(text.len(), |(k, _)| from + k);
    let mut out = String::new();
    if from > 0 {
        out.push('…');
    }
    let mut at = from;
    while at < to {
        let found = terms
            .iter()
            .filter_map(|t| text[at..to].find(t).map(|k| (at + k, t.len())))
            .min_by_key(|(k, len)| (*k, std::cmp::Reverse(*len)));
        let (k, len) = found.unwrap_or((to, 0));
        text[at..k].chars().for_each(|c| escape(c, &mut out));
        if len == 0 {
            break;
        }
        out.push_str("<b>");
        text[k..(k + len).min(text.len())]
            .chars()
            .for_each(|c| escape(c, &mut out));
        out.push_str("</b>");
        at = k + len;
    }
    if to < text.len() {
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
        assert_eq!(q.websearch, "\"云成 成本\" \"report\"");
        let q = query("全文-检索 成本-cost abc-务");
        assert_eq!(q.websearch, "\"全文\" \"检索\" \"成本\" cost abc");
        assert_eq!(q.single, vec!['务']);
        let q = query("cloud -务");
        assert_eq!(
            (q.websearch.as_str(), q.single.len(), q.runs.len()),
            ("cloud", 0, 0)
        );
        let q = query("-成本 budget");
        assert_eq!(q.websearch, "-\"成本\" budget");
        let q = query("务 cloud");
        assert_eq!(
            (q.websearch.as_str(), q.single.clone()),
            ("cloud", vec!['务'])
        );
        assert_eq!(single_tsquery(&q.single), "务:*");
        // Japanese kana and Korean hangul are split the same way.
        let q = query("クラウド 비용 tokyo");
        assert_eq!(q.websearch, "\"クラ ラウ ウド\" \"비용\" tokyo");
        assert_eq!(q.runs, ["クラウド", "비용"]);
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
        let sql = include_str!("../../sql/V24__cjk_kana_and_hangul.sql");
        let class =
            "[\\u3040-\\u30ff\\u3400-\\u4dbf\\u4e00-\\u9fff\\uac00-\\ud7af\\uf900-\\ufaff]+";
        assert_eq!(
            sql.matches(class).count(),
            3,
            "the three SQL functions use the class"
        );
        let rendered: String = CJK
            .iter()
            .map(|(lo, hi)| format!("\\u{:04x}-\\u{:04x}", *lo as u32, *hi as u32))
            .collect();
        assert_eq!(format!("[{rendered}]+"), class);
    }
}
