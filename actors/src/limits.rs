//! Limits that keep one run's input from taking the process down: how deeply the expression languages
//! and templates may nest (their parsers and evaluators recurse, and a thread's stack is small) and how
//! large a stage output or a rendered template may grow. See docs/components.md, "Limits".

/// How deeply an expression (Python-like, jq, JMESPath) or a template may nest: brackets, unary
/// operators and chains of binary operators count. Checked on the text before any recursive parser
/// sees it, at validation time and again when a stage runs.
pub const MAX_NESTING: usize = 256;

/// The default limit on the size of one stage output or one rendered template, as JSON: 16 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;
