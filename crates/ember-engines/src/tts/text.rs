//! Text into what is phonemized and spoken one piece at a time: sentences of clauses, each clause
//! with the punctuation that ended it; and a sentence's phonemes into pieces a model accepts.
//!
//! The voices were trained on espeak-ng phonemes with the clause punctuation kept (Piper's
//! phonemizer appends `. ? ! , : ;` after each clause and speaks each sentence in one call), so
//! punctuation carries intonation and pauses. espeak-ng's command line drops it, so clauses are
//! found here, by the rule espeak-ng applies: a mark followed by a space or the end of the text
//! (`3.5` and `e.g.x` stay whole). A blank line ends a sentence too.

/// One clause: its text (punctuation included, which espeak-ng reads for abbreviations) and the
/// mark that ended it, as the models know it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Clause<'a> {
    pub(super) text: &'a str,
    pub(super) terminator: Option<char>,
}

/// Sentences of clauses, in order; clauses with nothing but spaces are left out.
pub(super) fn sentences(text: &str) -> Vec<Vec<Clause<'_>>> {
    let mut sentences = Vec::new();
    let mut clauses = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c == '\n' {
            // A blank line (a paragraph's end) ends the sentence even without a mark.
            let rest = &text[at + 1..];
            let line_end = rest.find('\n');
            if line_end.is_some_and(|n| rest[..n].trim().is_empty()) {
                push(&mut clauses, &text[start..at], None);
                start = at + 1;
                if !clauses.is_empty() {
                    sentences.push(std::mem::take(&mut clauses));
                }
            }
            continue;
        }
        let Some(mut terminator) = terminator(c) else {
            continue;
        };
        // A run of marks and closing quotes or brackets ends the clause together (`?!`, `."`).
        let mut end = at + c.len_utf8();
        while let Some(&(next_at, next)) = chars.peek() {
            if let Some(mark) = terminator_of_run(next) {
                terminator = mark.unwrap_or(terminator);
                end = next_at + next.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let followed_by_space = text[end..].chars().next().is_none_or(char::is_whitespace);
        if !(followed_by_space || is_full_width(c)) {
            continue;
        }
        push(&mut clauses, &text[start..end], Some(terminator));
        start = end;
        if matches!(terminator, '.' | '!' | '?') && !clauses.is_empty() {
            sentences.push(std::mem::take(&mut clauses));
        }
    }
    push(&mut clauses, &text[start..], None);
    if !clauses.is_empty() {
        sentences.push(clauses);
    }
    sentences
}

fn push<'a>(clauses: &mut Vec<Clause<'a>>, text: &'a str, terminator: Option<char>) {
    let text = text.trim();
    if !text.is_empty() {
        clauses.push(Clause { text, terminator });
    }
}

/// The mark a clause-ending character stands for. CJK full-width marks end a clause without a
/// following space (those scripts have none).
fn terminator(c: char) -> Option<char> {
    match c {
        '.' | '!' | '?' | ',' | ';' | ':' => Some(c),
        '。' => Some('.'),
        '！' => Some('!'),
        '？' => Some('?'),
        '，' | '、' => Some(','),
        '；' => Some(';'),
        '：' => Some(':'),
        _ => None,
    }
}

fn is_full_width(c: char) -> bool {
    !c.is_ascii()
}

/// Whether `c` continues a run of marks: `Some(Some(mark))` for another mark (the last one
/// counts), `Some(None)` for a closing quote or bracket.
fn terminator_of_run(c: char) -> Option<Option<char>> {
    match c {
        '"' | '\'' | ')' | ']' | '}' | '”' | '’' | '»' | '」' | '』' => Some(None),
        _ => terminator(c).map(Some),
    }
}

/// Splits a sentence's phonemes (its clauses' phonemes, each ending in its mark) into pieces of
/// at most `max_chars` characters: whole clauses while they fit, a clause longer than that at
/// word boundaries, a word longer than that anywhere.
pub(super) fn pieces(clauses: &[String], max_chars: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut current_chars = 0;
    for clause in clauses {
        for part in fit(clause, max_chars) {
            let chars = part.chars().count();
            if current_chars + chars > max_chars && !current.is_empty() {
                pieces.push(std::mem::take(&mut current).trim_end().to_owned());
                current_chars = 0;
            }
            current.push_str(&part);
            current_chars += chars;
        }
    }
    if !current.trim().is_empty() {
        pieces.push(current.trim_end().to_owned());
    }
    pieces
}

/// `clause` cut into parts of at most `max_chars` characters, at spaces where it can be.
fn fit(clause: &str, max_chars: usize) -> Vec<String> {
    if clause.chars().count() <= max_chars {
        return vec![clause.to_owned()];
    }
    let mut parts = Vec::new();
    let mut current = String::new();
    for word in clause.split_inclusive(' ') {
        let mut word: Vec<char> = word.chars().collect();
        while word.len() > max_chars {
            let rest = word.split_off(max_chars);
            if !current.is_empty() {
                parts.push(std::mem::take(&mut current));
            }
            parts.push(word.into_iter().collect());
            word = rest;
        }
        if current.chars().count() + word.len() > max_chars {
            parts.push(std::mem::take(&mut current));
        }
        current.extend(word);
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(text: &str) -> Vec<Vec<(&str, Option<char>)>> {
        sentences(text)
            .into_iter()
            .map(|s| s.into_iter().map(|c| (c.text, c.terminator)).collect())
            .collect()
    }

    #[test]
    fn clauses_end_at_marks_followed_by_space() {
        assert_eq!(
            shape("Hello, world! It costs 3.5 dollars; e.g.x works: yes.\"  Next one"),
            vec![
                vec![("Hello,", Some(',')), ("world!", Some('!'))],
                vec![
                    ("It costs 3.5 dollars;", Some(';')),
                    ("e.g.x works:", Some(':')),
                    ("yes.\"", Some('.')),
                ],
                vec![("Next one", None)],
            ]
        );
    }

    #[test]
    fn runs_of_marks_and_blank_lines() {
        assert_eq!(
            shape("Really?! Wait...\nsame sentence\n\nnew paragraph\n \n, .  "),
            vec![
                vec![("Really?!", Some('!'))],
                vec![("Wait...", Some('.'))],
                vec![("same sentence", None)],
                vec![("new paragraph", None)],
                vec![(",", Some(',')), (".", Some('.'))],
            ]
        );
        assert!(sentences(" \n\n ").is_empty());
    }

    #[test]
    fn full_width_marks_need_no_space() {
        assert_eq!(
            shape("こんにちは、世界。元気？"),
            vec![
                vec![("こんにちは、", Some(',')), ("世界。", Some('.'))],
                vec![("元気？", Some('?'))],
            ]
        );
    }

    #[test]
    fn pieces_keep_clauses_whole_while_they_fit() {
        let clauses = ["ab cd, ".to_owned(), "ef gh.".to_owned()];
        assert_eq!(pieces(&clauses, 20), vec!["ab cd, ef gh."]);
        assert_eq!(pieces(&clauses, 8), vec!["ab cd,", "ef gh."]);
        // A clause over the limit splits at spaces, a word over it anywhere.
        assert_eq!(pieces(&clauses, 4), vec!["ab", "cd,", "ef", "gh."]);
        let long = ["abcdefghij k.".to_owned()];
        assert_eq!(pieces(&long, 4), vec!["abcd", "efgh", "ij", "k."]);
        for piece in pieces(&long, 4) {
            assert!(piece.chars().count() <= 4);
        }
    }
}
