//! What a person types into a search box, as clauses every index can run.
//!
//! - Words separated by spaces must all match, anywhere in the message.
//! - `"in quotes"` is one phrase: its words in that order, nothing between
//!   them but spaces or punctuation.
//! - Letters and digits typed together are one phrase (`JD2026-000123`).
//! - A run of Chinese (or other CJK) characters is cut into dictionary
//!   words (jieba, loaded on the first such query), each of which must
//!   match as written: `退款申请` finds `申请退款` too, and a word the
//!   dictionary does not know is still matched character by character.
//!   Splitting only ever widens a match: anything containing the whole
//!   run contains each of its words.

use crate::analyze::{Class, Run, runs, width};
use std::sync::OnceLock;

/// Longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 256;
/// Most clauses (words and phrases) in one query.
pub const MAX_CLAUSES: usize = 16;
/// Most terms over all clauses.
pub const MAX_TERMS: usize = 64;

/// One thing that must match: terms at offsets from where the match starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Clause {
    pub terms: Vec<(String, u32)>,
}

impl Clause {
    /// The distinct terms of the clause (for an index without positions).
    pub fn term_set(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(|(t, _)| t.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query is longer than {MAX_QUERY_CHARS} characters")]
    TooLong,
    #[error("the query has more than {MAX_CLAUSES} words or phrases")]
    TooManyClauses,
    #[error("the query has more than {MAX_TERMS} terms")]
    TooManyTerms,
}

fn jieba() -> &'static jieba_rs::Jieba {
    static JIEBA: OnceLock<jieba_rs::Jieba> = OnceLock::new();
    JIEBA.get_or_init(jieba_rs::Jieba::new)
}

/// The clause of consecutive runs (a phrase across them).
fn phrase(runs: &[&Run]) -> Clause {
    let mut terms = Vec::new();
    let mut offset = 0u32;
    for run in runs {
        match run.class {
            Class::Cjk if run.chars.len() == 1 => terms.push((run.text(0, 1), offset)),
            Class::Cjk => {
                for i in 0..run.chars.len() - 1 {
                    terms.push((run.text(i, i + 2), offset + i as u32));
                }
            }
            _ => {
                let mut word = run.text(0, run.chars.len());
                if let Some((at, _)) = word.char_indices().nth(crate::analyze::MAX_TERM_CHARS) {
                    word.truncate(at);
                }
                terms.push((word, offset));
            }
        }
        offset += width(run);
    }
    Clause { terms }
}

/// The clauses of an unquoted chunk (text without spaces).
fn chunk_clauses(chunk: &str, out: &mut Vec<Clause>) {
    let runs = runs(chunk);
    let mut words: Vec<&Run> = Vec::new();
    for run in &runs {
        if run.class == Class::Word {
            words.push(run);
            continue;
        }
        if !words.is_empty() {
            out.push(phrase(&words));
            words.clear();
        }
        if run.chars.len() <= 2 {
            out.push(phrase(&[run]));
            continue;
        }
        let text = run.text(0, run.chars.len());
        let mut from = 0;
        for token in jieba().cut(&text, false) {
            let n = token.word.chars().count();
            let piece = Run { class: Class::Cjk, chars: run.chars[from..from + n].to_vec(), end: run.end };
            out.push(phrase(&[&piece]));
            from += n;
        }
    }
    if !words.is_empty() {
        out.push(phrase(&words));
    }
}

/// Parses a query into its clauses (none for a blank query).
pub fn parse(input: &str) -> Result<Vec<Clause>, QueryError> {
    if input.chars().count() > MAX_QUERY_CHARS {
        return Err(QueryError::TooLong);
    }
    let mut clauses = Vec::new();
    // Even pieces are outside quotes, odd ones inside; an unclosed quote
    // runs to the end.
    for (i, piece) in input.split(['"', '“', '”']).enumerate() {
        if i % 2 == 1 {
            let runs = runs(piece);
            if !runs.is_empty() {
                clauses.push(phrase(&runs.iter().collect::<Vec<_>>()));
            }
        } else {
            for chunk in piece.split_whitespace() {
                chunk_clauses(chunk, &mut clauses);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    clauses.retain(|c| seen.insert(c.clone()));
    if clauses.len() > MAX_CLAUSES {
        return Err(QueryError::TooManyClauses);
    }
    if clauses.iter().map(|c| c.terms.len()).sum::<usize>() > MAX_TERMS {
        return Err(QueryError::TooManyTerms);
    }
    Ok(clauses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(q: &str) -> Vec<Vec<(String, u32)>> {
        parse(q).unwrap().into_iter().map(|c| c.terms).collect()
    }

    fn t(items: &[(&str, u32)]) -> Vec<(String, u32)> {
        items.iter().map(|(s, o)| (s.to_string(), *o)).collect()
    }

    #[test]
    fn words_are_separate_clauses_and_quotes_make_a_phrase() {
        assert_eq!(terms("Refund please"), vec![t(&[("refund", 0)]), t(&[("please", 0)])]);
        assert_eq!(terms("\"refund please\""), vec![t(&[("refund", 0), ("please", 1)])]);
        assert_eq!(terms("JD2026-000123"), vec![t(&[("jd2026", 0), ("000123", 1)])]);
    }

    #[test]
    fn cjk_words_become_bigram_phrases() {
        assert_eq!(terms("处理"), vec![t(&[("处理", 0)])]);
        assert_eq!(terms("退"), vec![t(&[("退", 0)])]);
        assert_eq!(terms("\"中国农业\""), vec![t(&[("中国", 0), ("国农", 1), ("农业", 2)])]);
    }

    #[test]
    fn unspaced_chinese_is_cut_into_words() {
        let clauses = terms("退款申请");
        assert_eq!(clauses, vec![t(&[("退款", 0)]), t(&[("申请", 0)])]);
    }

    #[test]
    fn blank_and_oversized_queries() {
        assert!(parse("   ").unwrap().is_empty());
        assert_eq!(parse(&"a".repeat(300)), Err(QueryError::TooLong));
        let many = (0..20).map(|i| format!("w{i}x")).collect::<Vec<_>>().join(" ");
        assert_eq!(parse(&many), Err(QueryError::TooManyClauses));
        assert_eq!(terms("refund refund"), vec![t(&[("refund", 0)])], "repeated words count once");
    }
}
