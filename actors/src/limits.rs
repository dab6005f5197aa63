//! Limits that keep one run's input from taking the process down: how deeply the expression languages
//! and templates may nest (their parsers and evaluators recurse, and a thread's stack is small) and how
//! large a stage output or a rendered template may grow. See docs/components.md, "Limits".

use std::sync::atomic::{AtomicUsize, Ordering};

/// How deeply an expression (Python-like, jq, JMESPath) or a template may nest: brackets, unary
/// operators and chains of binary operators count. Checked on the text before any recursive parser
/// sees it, at validation time and again when a stage runs.
pub const MAX_NESTING: usize = 256;

/// The default limit on the size of one stage output or one rendered template, as JSON: 16 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

static MAX_OUTPUT_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_OUTPUT_BYTES);

/// Sets the process-wide limit on stage outputs and rendered templates (`fm --max-output-bytes`).
pub fn set_max_output_bytes(bytes: usize) {
    MAX_OUTPUT_BYTES.store(bytes, Ordering::Relaxed);
}

/// The limit on the size of one stage output or one rendered stage input, as JSON, in bytes.
pub fn max_output_bytes() -> usize {
    MAX_OUTPUT_BYTES.load(Ordering::Relaxed)
}

/// How deeply a stage output or rendered input may nest. The event log decodes events with
/// serde_json, which refuses more than 128 levels; an event holding a deeper value could not be read
/// back, and a run whose log cannot be read cannot be resumed.
pub const MAX_VALUE_DEPTH: usize = 100;

/// Whether `value` nests deeper than `limit` (arrays and objects count), without recursion.
pub fn deeper_than(value: &serde_json::Value, limit: usize) -> bool {
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match v {
            serde_json::Value::Array(items) => Box::new(items.iter()),
            serde_json::Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth + 1 > limit {
            return true;
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    false
}

/// Whether `value` as compact JSON is longer than `limit` bytes; stops counting once it is.
pub fn json_exceeds(value: &serde_json::Value, limit: usize) -> bool {
    struct Counter {
        left: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            match self.left.checked_sub(buf.len()) {
                Some(left) => {
                    self.left = left;
                    Ok(buf.len())
                }
                None => Err(std::io::Error::other("limit reached")),
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Counter { left: limit }, value).is_err()
}

/// What [`exceeds_nesting`] needs to know of a language's text.
#[derive(Debug, Clone, Copy)]
pub struct Syntax {
    /// Characters that open a string literal closed by the same character (`\` escapes inside).
    pub quotes: &'static [u8],
    /// Whether `\(` inside a string opens an interpolated expression (jq).
    pub interpolation: bool,
    /// Whether `#` starts a comment running to the end of the line.
    pub hash_comments: bool,
    /// Words that nest what follows them (`not`, `if`, `reduce`).
    pub words: &'static [&'static str],
}

/// Nodes one bracket level may add around what it contains (a call and its argument list, a
/// comprehension and its condition, a boolean operation around a comparison).
pub const LEVEL_COST: usize = 4;

/// Whether `text` may nest deeper than `limit`: an upper bound on the depth of its syntax tree, computed
/// without recursion in one pass over the text, so that it can run before a recursive parser sees the
/// text. Each bracket level costs [`LEVEL_COST`], plus one per operator character, dot and nesting word
/// inside it; string literals and comments are skipped. Operators a parser keeps flat (`and`, `,`) are
/// counted too: a bound, not an exact depth.
pub fn exceeds_nesting(text: &str, syntax: &Syntax, limit: usize) -> bool {
    let bytes = text.as_bytes();
    // Per open bracket: the operators counted inside it, and whether it is a string interpolation.
    let mut levels: Vec<(usize, bool)> = vec![(0, false)];
    let mut total = LEVEL_COST;
    let mut i = 0;
    while i < bytes.len() {
        if total > limit {
            return true;
        }
        let c = bytes[i];
        if syntax.quotes.contains(&c) {
            match skip_string(bytes, i, syntax.interpolation) {
                StringEnd::Closed(next) => i = next,
                StringEnd::Interpolation(next) => {
                    levels.push((0, true));
                    total += LEVEL_COST;
                    i = next;
                }
            }
            continue;
        }
        match c {
            b'#' if syntax.hash_comments => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => {
                levels.push((0, false));
                total += LEVEL_COST;
            }
            b')' | b']' | b'}' if levels.len() > 1 => {
                let (count, interpolation) = levels.pop().unwrap_or_default();
                total -= LEVEL_COST + count;
                if interpolation && c == b')' {
                    // Back inside the string the interpolation was in: skip to its end.
                    match skip_string_body(bytes, i + 1, b'"', syntax.interpolation) {
                        StringEnd::Closed(next) => i = next,
                        StringEnd::Interpolation(next) => {
                            levels.push((0, true));
                            total += LEVEL_COST;
                            i = next;
                        }
                    }
                    continue;
                }
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'@' | b'&' | b'|' | b'^' | b'~' | b'<' | b'>'
            | b'.' | b'=' | b'!' | b',' | b'?' | b':' => {
                total += 1;
                if let Some(level) = levels.last_mut() {
                    level.0 += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                let start = i;
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                if syntax.words.contains(&&text[start..i]) {
                    total += 1;
                    if let Some(level) = levels.last_mut() {
                        level.0 += 1;
                    }
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    total > limit
}

enum StringEnd {
    /// The index after the closing quote (or the end of the text).
    Closed(usize),
    /// The index after a `\(` that opens an interpolation.
    Interpolation(usize),
}

/// Skips the string literal that starts at `start` (a quote); Python's triple quotes too.
fn skip_string(bytes: &[u8], start: usize, interpolation: bool) -> StringEnd {
    let quote = bytes[start];
    let triple = bytes.len() >= start + 3 && bytes[start + 1] == quote && bytes[start + 2] == quote;
    if triple {
        let mut i = start + 3;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                q if q == quote
                    && bytes.len() >= i + 3
                    && bytes[i + 1] == q
                    && bytes[i + 2] == q =>
                {
                    return StringEnd::Closed(i + 3);
                }
                _ => i += 1,
            }
        }
        return StringEnd::Closed(bytes.len());
    }
    skip_string_body(bytes, start + 1, quote, interpolation)
}

fn skip_string_body(bytes: &[u8], from: usize, quote: u8, interpolation: bool) -> StringEnd {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if interpolation && bytes.get(i + 1) == Some(&b'(') => {
                return StringEnd::Interpolation(i + 2);
            }
            b'\\' => i += 2,
            q if q == quote => return StringEnd::Closed(i + 1),
            _ => i += 1,
        }
    }
    StringEnd::Closed(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JQ: Syntax = Syntax {
        quotes: b"\"",
        interpolation: true,
        hash_comments: true,
        words: &["if", "reduce", "foreach", "try", "def", "as", "and", "or"],
    };

    #[test]
    fn depth_of_values_is_bounded_without_recursion() {
        let mut deep = serde_json::json!(0);
        for _ in 0..100_000 {
            deep = serde_json::Value::Array(vec![deep]);
        }
        assert!(deeper_than(&deep, MAX_VALUE_DEPTH));
        assert!(!deeper_than(&serde_json::json!({"a": [1, {"b": 2}]}), 3));
        assert!(deeper_than(&serde_json::json!({"a": [1, {"b": [2]}]}), 3));
        // A value this deep would overflow the stack when dropped; take it apart iteratively.
        let mut stack = vec![deep];
        while let Some(v) = stack.pop() {
            if let serde_json::Value::Array(items) = v {
                stack.extend(items);
            }
        }
    }

    #[test]
    fn brackets_and_operator_chains_count() {
        assert!(!exceeds_nesting("[.a, .b] | map(. + 1)", &JQ, MAX_NESTING));
        assert!(exceeds_nesting(&"[".repeat(100), &JQ, MAX_NESTING));
        assert!(exceeds_nesting(&vec!["1"; 300].join("+"), &JQ, MAX_NESTING));
        assert!(exceeds_nesting(&".a".repeat(300), &JQ, MAX_NESTING));
    }

    #[test]
    fn strings_and_comments_are_skipped_interpolations_are_not() {
        let quoted = format!("\"{}\"", "[[[+".repeat(500));
        assert!(!exceeds_nesting(&quoted, &JQ, MAX_NESTING));
        let comment = format!("# {}\n.", "(((".repeat(500));
        assert!(!exceeds_nesting(&comment, &JQ, MAX_NESTING));
        let nested = format!("{}1{}", "\"\\(".repeat(100), ")\"".repeat(100));
        assert!(exceeds_nesting(&nested, &JQ, MAX_NESTING));
        assert!(!exceeds_nesting(
            "\"a \\(.x) b \\(.y)\" | length",
            &JQ,
            MAX_NESTING
        ));
    }
}
