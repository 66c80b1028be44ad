//! Whether a message's text matches a query, and its snippet with the
//! matches marked. Every backend checks its index's hits here against the
//! message as it is stored now, so a hit whose message was recalled (or
//! an index entry a crash left behind) is never a result, and a brute-force
//! scan with [`matches`] is the reference the index is tested against.

use crate::analyze::{Token, tokens};
use crate::query::Clause;
use std::collections::HashMap;

/// Characters of a snippet, at most.
pub const SNIPPET_CHARS: usize = 120;
/// Characters of context kept before the first match.
const CONTEXT_BEFORE: usize = 30;

/// One piece of a snippet: text, and whether it is (part of) a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub text: String,
    pub matched: bool,
}

/// The byte ranges of `text` every match of `clauses` covers, sorted and
/// merged, if every clause matches somewhere; `None` otherwise. No clauses
/// match any text (with no ranges).
pub fn find(clauses: &[Clause], text: &str) -> Option<Vec<(usize, usize)>> {
    if clauses.is_empty() {
        return Some(Vec::new());
    }
    let tokens = tokens(text);
    let mut by_term: HashMap<&str, Vec<&Token>> = HashMap::new();
    for t in &tokens {
        by_term.entry(t.term.as_str()).or_default().push(t);
    }
    let mut ranges = Vec::new();
    for clause in clauses {
        let before = ranges.len();
        let (first, first_offset) = &clause.terms[0];
        for start in by_term.get(first.as_str()).into_iter().flatten() {
            let Some(base) = start.position.checked_sub(*first_offset) else { continue };
            let mut span = (start.start, start.end);
            let all = clause.terms.iter().all(|(term, offset)| {
                let found = by_term.get(term.as_str()).and_then(|ts| ts.iter().find(|t| t.position == base + offset));
                if let Some(t) = found {
                    span = (span.0.min(t.start), span.1.max(t.end));
                }
                found.is_some()
            });
            if all {
                ranges.push(span);
            }
        }
        if ranges.len() == before {
            return None;
        }
    }
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    Some(merged)
}

/// Whether `text` matches every clause.
pub fn matches(clauses: &[Clause], text: &str) -> bool {
    find(clauses, text).is_some()
}

/// Up to [`SNIPPET_CHARS`] characters of `text` around its first match,
/// cut into parts with the matches marked; "…" where text was left out.
pub fn snippet(text: &str, ranges: &[(usize, usize)]) -> Vec<Part> {
    let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    let chars = boundaries.len() - 1;
    let first_char = ranges.first().map_or(0, |r| boundaries.partition_point(|&b| b < r.0));
    let from = first_char.saturating_sub(CONTEXT_BEFORE).min(chars.saturating_sub(SNIPPET_CHARS));
    let to = (from + SNIPPET_CHARS).min(chars);
    let (start, end) = (boundaries[from], boundaries[to]);
    let mut parts = Vec::new();
    let mut push = |text: &str, matched: bool| {
        if !text.is_empty() {
            parts.push(Part { text: text.to_string(), matched });
        }
    };
    if from > 0 {
        push("…", false);
    }
    let mut at = start;
    for &(a, b) in ranges {
        let (a, b) = (a.clamp(start, end), b.clamp(start, end));
        if a >= b {
            continue;
        }
        push(&text[at..a], false);
        push(&text[a..b], true);
        at = b;
    }
    push(&text[at..end], false);
    if to < chars {
        push("…", false);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::parse;

    fn hit(q: &str, text: &str) -> bool {
        matches(&parse(q).unwrap(), text)
    }

    #[test]
    fn the_recall_cases() {
        assert!(hit("添加", "已添加为好友"));
        assert!(hit("处理", "您的订单待处理"));
        assert!(hit("农业", "中国农业发展银行"));
        assert!(hit("退款", "我想申请退款"));
        assert!(hit("JD2026-000123", "订单号JD2026-000123已发货"));
        assert!(hit("000123", "订单号JD2026-000123已发货"));
        assert!(hit("2026", "订单号JD2026-000123已发货"));
        assert!(hit("REFUND", "I want a refund"));
        assert!(hit("\"want a\"", "I want a refund"));
        assert!(!hit("\"a want\"", "I want a refund"));
        assert!(hit("退款申请", "我想申请退款"), "dictionary words each match");
        assert!(!hit("\"退款申请\"", "我想申请退款"), "a quoted phrase keeps its order");
        assert!(!hit("添好", "已添加为好友"));
        assert!(!hit("refunds", "I want a refund"));
    }

    proptest::proptest! {
        /// Any piece of a Chinese sentence finds it, however the
        /// dictionary cuts the piece (the recall the bigrams promise).
        #[test]
        fn every_cjk_substring_finds_its_sentence(
            sentence in proptest::collection::vec(proptest::sample::select(
                "我想申请退款已添加为好友中国农业发展银行待处理订单号发货了吗".chars().collect::<Vec<_>>()), 1..30),
            from in 0usize..30, len in 1usize..8,
        ) {
            let from = from % sentence.len();
            let to = (from + len).min(sentence.len());
            let text: String = sentence.iter().collect();
            let piece: String = sentence[from..to].iter().collect();
            proptest::prop_assert!(hit(&piece, &text), "{piece} in {text}");
            let quoted = format!("\"{piece}\"");
            proptest::prop_assert!(hit(&quoted, &text), "{quoted} in {text}");
        }
    }

    #[test]
    fn snippet_marks_matches_and_cuts_around_the_first() {
        let text = format!("{}我想申请退款，订单{}", "很".repeat(100), "长".repeat(100));
        let ranges = find(&parse("退款").unwrap(), &text).unwrap();
        let parts = snippet(&text, &ranges);
        assert_eq!(parts.first().unwrap().text, "…");
        assert_eq!(parts.last().unwrap().text, "…");
        let marked: Vec<&str> = parts.iter().filter(|p| p.matched).map(|p| p.text.as_str()).collect();
        assert_eq!(marked, ["退款"]);
        let chars: usize = parts.iter().map(|p| p.text.chars().count()).sum();
        assert!(chars <= SNIPPET_CHARS + 2);
        let short = snippet("Refund me", &find(&parse("refund").unwrap(), "Refund me").unwrap());
        assert_eq!(
            short,
            vec![Part { text: "Refund".into(), matched: true }, Part { text: " me".into(), matched: false }]
        );
    }
}
