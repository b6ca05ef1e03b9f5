//! RocketMQ's SQL92 message selector, as consumers use it through
//! `MessageSelector.bySql`: this crate owns the grammar (the subset Apache
//! RocketMQ's `SelectorParser` accepts, including `CONTAINS`, `STARTSWITH`
//! and `ENDSWITH`), the compile-time checks Apache applies (a string cannot
//! be ordered with `<`, `NULL` cannot be compared with `=`, `BETWEEN` bounds
//! must be ordered, `IN` needs a property), and the evaluation rules over a
//! message's properties (a missing property makes a comparison unknown,
//! strings and numbers are converted as Apache converts them, and a failed
//! conversion rejects the message). It is pure: no I/O, no networking, no
//! knowledge of how properties are stored — callers give a [`Properties`]
//! source, and evaluating borrows from it and from the compiled expression
//! without allocating.
//!
//! ```
//! use apogee_filter::Expression;
//! let e = Expression::compile("a BETWEEN 1 AND 3 AND color IN ('red', 'blue')").unwrap();
//! assert!(e.matches(&[("a", "2"), ("color", "red")][..]));
//! assert!(!e.matches(&[("a", "2")][..]));
//! ```

mod eval;
mod parse;

use std::collections::HashMap;

pub use eval::Expression;

/// Why an expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// The text does not follow the grammar.
    #[error("Invalid MessageSelector: syntax error at column {column}, near {near}")]
    Syntax {
        /// 1-based column (in characters) where parsing stopped.
        column: usize,
        /// The text found there, quoted, or `end of input`.
        near: String,
    },
    /// Parentheses or unary operators nest deeper than [`MAX_DEPTH`], or
    /// the expression has more than [`MAX_OPERATORS`] binary operators.
    #[error(
        "Invalid MessageSelector: the expression nests deeper than {MAX_DEPTH} levels \
         or has more than {MAX_OPERATORS} operators"
    )]
    TooComplex,
    /// The grammar holds but Apache's checks refuse the expression.
    #[error("Invalid MessageSelector: {0}")]
    Invalid(String),
}

/// Deepest nesting of parentheses and unary operators accepted (generous
/// for real selectors); bounds the
/// parser's recursion so hostile input cannot overflow the stack.
pub const MAX_DEPTH: usize = 20;

/// Most binary operators (`AND`, `=`, `BETWEEN`, …) in one expression; the
/// syntax tree is as deep as its longest chain, and compiling, evaluating
/// and dropping it recurse on the caller's stack (a tokio worker's 2 MiB).
/// Real selectors have a handful. With [`MAX_DEPTH`], the worst case needs
/// under 1 MiB even with a debug build's frames (1000 operators or 40
/// levels overflowed a worker's stack and aborted the broker).
pub const MAX_OPERATORS: usize = 64;

/// A message's properties as the selector sees them: a lookup by exact
/// (case-sensitive) name.
pub trait Properties {
    /// The value of `name`, if the message has it.
    fn get(&self, name: &str) -> Option<&str>;
}

impl Properties for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter().rev().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

impl<S: std::hash::BuildHasher> Properties for HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
}

impl<P: Properties + ?Sized> Properties for &P {
    fn get(&self, name: &str) -> Option<&str> {
        (**self).get(name)
    }
}
