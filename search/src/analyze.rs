//! The tokenizer every index uses, and the matcher, so that a message is
//! found by the same terms on every backend.
//!
//! Text is folded (full-width ASCII to ASCII, lower case) and cut into
//! runs:
//!
//! - a **word** run is letters and digits of scripts written with spaces
//!   (`JD2026`, `refund`, `café`). It is one term at one position, and when
//!   it mixes letters and digits each part is a term at the same position
//!   too, so `JD2026-000123` is found by `jd2026-000123`, `jd2026`, `jd`,
//!   `2026` and `000123`.
//! - a **CJK** run (Han, kana, Hangul) gives every character a position,
//!   with a unigram term and a bigram term (the character and the next) at
//!   it. A word of n ≥ 2 characters is then the phrase of its n−1 bigrams,
//!   found wherever it stands in a sentence, whether a dictionary knows it
//!   or not: exactly the substring semantics a person expects from
//!   searching a chat (处理 in 待处理, 添加 in 已添加为好友).
//!
//! Everything else separates runs and takes no position.

/// Longest term, in characters; longer words are cut (both when indexed
/// and when searched, so they still match).
pub const MAX_TERM_CHARS: usize = 64;

/// One term of a text at a position, with the byte range of the original
/// text it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub term: String,
    pub position: u32,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Word,
    Cjk,
    Other,
}

/// A character of a run, folded, with its byte range in the original text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Char {
    pub c: char,
    pub start: usize,
    pub end: usize,
}

/// A maximal run of characters of one class (never `Other`).
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub class: Class,
    pub chars: Vec<Char>,
    /// Byte offset where the run ends in the original text.
    pub end: usize,
}

impl Run {
    pub fn start(&self) -> usize {
        self.chars.first().map_or(self.end, |c| c.start)
    }

    /// The folded text of `chars[from..to]`.
    pub fn text(&self, from: usize, to: usize) -> String {
        self.chars[from..to].iter().map(|c| c.c).collect()
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF     // hiragana, katakana
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xAC00..=0xD7AF   // Hangul syllables
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0x20000..=0x2FA1F // extensions B and later
    )
}

/// Full-width ASCII to ASCII, then lower case (first char of the lower
/// case form: enough for every script we fold).
fn fold(c: char) -> char {
    let c = match c as u32 {
        0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        0x3000 => ' ',
        _ => c,
    };
    if c.is_ascii() { c.to_ascii_lowercase() } else { c.to_lowercase().next().unwrap_or(c) }
}

fn class(c: char) -> Class {
    if is_cjk(c) {
        Class::Cjk
    } else if c.is_alphanumeric() {
        Class::Word
    } else {
        Class::Other
    }
}

/// The runs of `text`, in order.
pub(crate) fn runs(text: &str) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    let mut current: Option<Run> = None;
    for (start, raw) in text.char_indices() {
        let c = fold(raw);
        let end = start + raw.len_utf8();
        let class = class(c);
        match &mut current {
            Some(run) if run.class == class => {
                run.chars.push(Char { c, start, end });
                run.end = end;
            }
            _ => {
                out.extend(current.take());
                if class != Class::Other {
                    current = Some(Run { class, chars: vec![Char { c, start, end }], end });
                }
            }
        }
    }
    out.extend(current);
    out
}

/// Where a word run switches between letters and digits.
pub(crate) fn word_parts(run: &Run) -> Vec<(usize, usize)> {
    let mut parts = Vec::new();
    let mut from = 0;
    for i in 1..run.chars.len() {
        if run.chars[i].c.is_numeric() != run.chars[i - 1].c.is_numeric() {
            parts.push((from, i));
            from = i;
        }
    }
    parts.push((from, run.chars.len()));
    parts
}

fn cut(term: String) -> String {
    match term.char_indices().nth(MAX_TERM_CHARS) {
        Some((at, _)) => term[..at].to_string(),
        None => term,
    }
}

/// How many positions a run takes.
pub(crate) fn width(run: &Run) -> u32 {
    match run.class {
        Class::Cjk => run.chars.len() as u32,
        _ => 1,
    }
}

/// The terms of `text` with their positions, as an index stores them.
pub fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut position = 0u32;
    for run in runs(text) {
        match run.class {
            Class::Word => {
                let (start, end) = (run.start(), run.end);
                out.push(Token { term: cut(run.text(0, run.chars.len())), position, start, end });
                let parts = word_parts(&run);
                if parts.len() > 1 {
                    for (from, to) in parts {
                        let (start, end) = (run.chars[from].start, run.chars[to - 1].end);
                        out.push(Token { term: cut(run.text(from, to)), position, start, end });
                    }
                }
            }
            Class::Cjk => {
                for (i, ch) in run.chars.iter().enumerate() {
                    let at = position + i as u32;
                    out.push(Token { term: ch.c.to_string(), position: at, start: ch.start, end: ch.end });
                    if let Some(next) = run.chars.get(i + 1) {
                        let term: String = [ch.c, next.c].into_iter().collect();
                        out.push(Token { term, position: at, start: ch.start, end: next.end });
                    }
                }
            }
            Class::Other => {}
        }
        position += width(&run);
    }
    out
}

/// The distinct terms of `text`, sorted: what an index without positions
/// (the cluster backend's) stores per message.
pub fn terms(text: &str) -> Vec<String> {
    let mut terms: Vec<String> = tokens(text).into_iter().map(|t| t.term).collect();
    terms.sort_unstable();
    terms.dedup();
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms_at(text: &str) -> Vec<(String, u32)> {
        tokens(text).into_iter().map(|t| (t.term, t.position)).collect()
    }

    #[test]
    fn words_fold_and_split_into_parts() {
        let t = terms_at("Order ＪＤ2026-000123, REFUND");
        let want = [("order", 0), ("jd2026", 1), ("jd", 1), ("2026", 1), ("000123", 2), ("refund", 3)];
        assert_eq!(t, want.iter().map(|(s, p)| (s.to_string(), *p)).collect::<Vec<_>>());
    }

    #[test]
    fn cjk_gives_unigrams_and_bigrams_per_position() {
        let t = terms_at("待处理a");
        let want = [("待", 0), ("待处", 0), ("处", 1), ("处理", 1), ("理", 2), ("a", 3)];
        assert_eq!(t, want.iter().map(|(s, p)| (s.to_string(), *p)).collect::<Vec<_>>());
    }

    #[test]
    fn offsets_point_into_the_original_text() {
        let text = "Hi 退款！JD2026";
        for t in tokens(text) {
            let original: String = text[t.start..t.end].chars().map(fold).collect();
            assert!(original.contains(&t.term) || t.term.len() <= original.len(), "{t:?} vs {original}");
        }
        let refund = tokens(text).into_iter().find(|t| t.term == "退款").unwrap();
        assert_eq!(&text[refund.start..refund.end], "退款");
    }

    #[test]
    fn long_words_are_cut() {
        let long = "a".repeat(200);
        assert_eq!(tokens(&long)[0].term.chars().count(), MAX_TERM_CHARS);
    }
}
