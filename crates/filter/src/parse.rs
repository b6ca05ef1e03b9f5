//! The grammar, with nom: tokens follow the JavaCC lexer of Apache's
//! `SelectorParser.jj` (case-insensitive keywords, `--` and `/* */`
//! comments, `''` inside strings, `5L`, `.5E3`), the rules its precedence
//! (OR < AND < `=`/`<>`/`IS` < `<`/`>`/`BETWEEN`/`IN`/… < unary). The output
//! is a syntax tree that [`crate::eval`] checks and compiles.

use std::cell::Cell;

use nom::branch::alt;
use nom::bytes::complete::{tag, tag_no_case, take_until, take_while};
use nom::character::complete::{char, none_of, satisfy};
use nom::combinator::{cut, map, not, opt, recognize, value};
use nom::error::{Error, ErrorKind};
use nom::multi::{fold_many0, many0, separated_list1};
use nom::sequence::{delimited, pair, preceded, terminated};
use nom::{IResult, Parser};

use crate::{SqlError, MAX_DEPTH, MAX_OPERATORS};

type PResult<'a, O> = IResult<&'a str, O, Error<&'a str>>;

/// A literal as written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    /// A decimal literal that fits an `int` (Java keeps those as Integer).
    Int(i32),
    Long(i64),
    Double(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Text {
    Contains,
    StartsWith,
    EndsWith,
}

/// The syntax tree, before Apache's checks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Raw {
    Lit(Lit),
    /// A decimal literal too large for a long (Apache refuses it when it
    /// builds the constant, i.e. after the grammar accepted it).
    BadNumber(String),
    Prop(String),
    Neg(Box<Raw>),
    Not(Box<Raw>),
    And(Box<Raw>, Box<Raw>),
    Or(Box<Raw>, Box<Raw>),
    Eq(Box<Raw>, Box<Raw>),
    Ne(Box<Raw>, Box<Raw>),
    IsNull(Box<Raw>, bool),
    Cmp(Order, Box<Raw>, Box<Raw>),
    Between(Box<Raw>, Box<Raw>, Box<Raw>, bool),
    In(Box<Raw>, Vec<String>, bool),
    Text(Text, Box<Raw>, String, bool),
}

const KEYWORDS: [&str; 12] = [
    "NOT",
    "AND",
    "OR",
    "BETWEEN",
    "IN",
    "TRUE",
    "FALSE",
    "NULL",
    "IS",
    "CONTAINS",
    "STARTSWITH",
    "ENDSWITH",
];

thread_local! {
    // Recursion depth and operator count of the parse running on this
    // thread (parsing is synchronous, so one pair per thread suffices).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    static OPERATORS: Cell<usize> = const { Cell::new(0) };
}

/// Counts one operator; refuses the expression beyond [`MAX_OPERATORS`]
/// (chains like `a = 1 = 1 = …` build trees as deep as they are long, and
/// compiling, evaluating and dropping them recurse).
fn operator(i: &str) -> Result<(), nom::Err<Error<&str>>> {
    let n = OPERATORS.with(|c| {
        let v = c.get() + 1;
        c.set(v);
        v
    });
    if n > MAX_OPERATORS {
        return Err(nom::Err::Failure(Error::new(i, ErrorKind::TooLarge)));
    }
    Ok(())
}

/// Leaves one nesting level when dropped.
struct Nest;

impl Nest {
    fn enter(i: &str) -> Result<Nest, nom::Err<Error<&str>>> {
        let d = DEPTH.with(|d| {
            let v = d.get() + 1;
            d.set(v);
            v
        });
        let guard = Nest;
        if d > MAX_DEPTH {
            return Err(nom::Err::Failure(Error::new(i, ErrorKind::TooLarge)));
        }
        Ok(guard)
    }
}

impl Drop for Nest {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Parses `sql` into a syntax tree.
pub(crate) fn parse(sql: &str) -> Result<Raw, SqlError> {
    DEPTH.with(|d| d.set(0));
    OPERATORS.with(|c| c.set(0));
    let (rest, raw) = match or_expr(sql) {
        Ok(v) => v,
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => return Err(error_at(sql, e)),
        Err(nom::Err::Incomplete(_)) => return Err(error_at(sql, Error::new("", ErrorKind::Eof))),
    };
    // Apache's start rule has no <EOF>: what follows a complete expression
    // is ignored, provided the next token lexes (its lookahead reads it).
    let (rest, _) = skip(rest).map_err(|_| syntax(sql, rest))?;
    if !rest.is_empty() && token(rest).is_err() {
        return Err(syntax(sql, rest));
    }
    Ok(raw)
}

fn error_at(sql: &str, e: Error<&str>) -> SqlError {
    if e.code == ErrorKind::TooLarge {
        SqlError::TooComplex
    } else {
        syntax(sql, e.input)
    }
}

fn syntax(sql: &str, rest: &str) -> SqlError {
    let consumed = sql.len().saturating_sub(rest.len());
    let column = sql.get(..consumed).map_or(1, |s| s.chars().count() + 1);
    let near = if rest.is_empty() {
        "end of input".to_owned()
    } else {
        let snippet: String = rest.chars().take(20).collect();
        format!("'{snippet}'")
    };
    SqlError::Syntax { column, near }
}

// ---- lexical level -------------------------------------------------------

/// Whitespace and comments (`--` to a line end, `/* … */`).
fn skip(i: &str) -> PResult<'_, ()> {
    let line = recognize((
        tag("--"),
        take_while(|c| c != '\n' && c != '\r'),
        alt((tag("\r\n"), tag("\n"), tag("\r"))),
    ));
    let block = recognize((tag("/*"), take_until("*/"), tag("*/")));
    let space = recognize(satisfy(|c| matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{c}')));
    value((), many0(alt((space, line, block)))).parse(i)
}

fn is_id_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '$'
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$'
}

/// A keyword, case-insensitive, not the prefix of a longer identifier.
fn kw<'a>(word: &'static str) -> impl Parser<&'a str, Output = (), Error = Error<&'a str>> {
    value(
        (),
        preceded(
            skip,
            terminated(tag_no_case(word), not(satisfy(is_id_char))),
        ),
    )
}

fn sym<'a>(s: &'static str) -> impl Parser<&'a str, Output = (), Error = Error<&'a str>> {
    value((), preceded(skip, tag(s)))
}

/// A word: identifier or keyword (JavaCC matches the longest run first).
fn word(i: &str) -> PResult<'_, &str> {
    preceded(
        skip,
        recognize(pair(satisfy(is_id_start), take_while(is_id_char))),
    )
    .parse(i)
}

fn identifier(i: &str) -> PResult<'_, &str> {
    let (rest, w) = word(i)?;
    if KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(w)) {
        return Err(nom::Err::Error(Error::new(i, ErrorKind::Tag)));
    }
    Ok((rest, w))
}

fn string_lit(i: &str) -> PResult<'_, String> {
    preceded(
        skip,
        delimited(
            char('\''),
            fold_many0(
                alt((value('\'', tag("''")), none_of("'"))),
                String::new,
                |mut s, c| {
                    s.push(c);
                    s
                },
            ),
            char('\''),
        ),
    )
    .parse(i)
}

fn digits(i: &str) -> PResult<'_, &str> {
    nom::character::complete::digit1(i)
}

fn exponent(i: &str) -> PResult<'_, &str> {
    recognize((tag_no_case("e"), opt(alt((char('+'), char('-')))), digits)).parse(i)
}

/// FLOATING_POINT_LITERAL: `5.`, `5.5`, `5.5E10`, `.5`, `.5E10`, `5E10`.
fn float_text(i: &str) -> PResult<'_, &str> {
    alt((
        recognize((digits, char('.'), opt(digits), opt(exponent))),
        recognize((char('.'), digits, opt(exponent))),
        recognize((digits, exponent)),
    ))
    .parse(i)
}

/// DECIMAL_LITERAL: `0`, or a non-zero digit, digits, and an optional `L`.
fn decimal_text(i: &str) -> PResult<'_, &str> {
    alt((
        recognize((
            satisfy(|c| matches!(c, '1'..='9')),
            take_while(|c: char| c.is_ascii_digit()),
            opt(satisfy(|c| c == 'l' || c == 'L')),
        )),
        tag("0"),
    ))
    .parse(i)
}

/// A number token; the longer of the two readings wins, as in JavaCC.
fn number(i: &str) -> PResult<'_, Raw> {
    let (i, _) = skip(i)?;
    let f = float_text(i).ok();
    let d = decimal_text(i).ok();
    match (f, d) {
        (Some((fr, ft)), Some((_, dt))) if ft.len() > dt.len() => Ok((fr, float_lit(ft))),
        (_, Some((dr, dt))) => Ok((dr, decimal_lit(dt))),
        (Some((fr, ft)), None) => Ok((fr, float_lit(ft))),
        (None, None) => Err(nom::Err::Error(Error::new(i, ErrorKind::Digit))),
    }
}

fn decimal_lit(text: &str) -> Raw {
    let digits = text.trim_end_matches(['l', 'L']);
    match digits.parse::<i64>() {
        Ok(v) => match i32::try_from(v) {
            Ok(small) => Raw::Lit(Lit::Int(small)),
            Err(_) => Raw::Lit(Lit::Long(v)),
        },
        Err(_) => Raw::BadNumber(text.to_owned()),
    }
}

fn float_lit(text: &str) -> Raw {
    match text.parse::<f64>() {
        Ok(v) => Raw::Lit(Lit::Double(v)),
        Err(_) => Raw::BadNumber(text.to_owned()),
    }
}

/// One token of any kind (for the look at what follows the expression).
fn token(i: &str) -> PResult<'_, ()> {
    alt((
        value((), word),
        value((), number),
        value((), string_lit),
        value(
            (),
            alt((
                tag(">="),
                tag("<="),
                tag("<>"),
                tag(">"),
                tag("<"),
                tag("="),
                tag("("),
                tag(")"),
                tag(","),
                tag("+"),
                tag("-"),
            )),
        ),
    ))
    .parse(i)
}

// ---- grammar -------------------------------------------------------------

fn boxed(r: Raw) -> Box<Raw> {
    Box::new(r)
}

fn or_expr(i: &str) -> PResult<'_, Raw> {
    let (mut i, mut left) = and_expr(i)?;
    loop {
        match kw("OR").parse(i) {
            Ok((rest, ())) => {
                operator(rest)?;
                let (rest, right) = cut(and_expr).parse(rest)?;
                left = Raw::Or(boxed(left), boxed(right));
                i = rest;
            }
            Err(nom::Err::Error(_)) => return Ok((i, left)),
            Err(e) => return Err(e),
        }
    }
}

fn and_expr(i: &str) -> PResult<'_, Raw> {
    let (mut i, mut left) = equality(i)?;
    loop {
        match kw("AND").parse(i) {
            Ok((rest, ())) => {
                operator(rest)?;
                let (rest, right) = cut(equality).parse(rest)?;
                left = Raw::And(boxed(left), boxed(right));
                i = rest;
            }
            Err(nom::Err::Error(_)) => return Ok((i, left)),
            Err(e) => return Err(e),
        }
    }
}

#[derive(Clone, Copy)]
enum EqOp {
    Eq,
    Ne,
    IsNull,
    IsNotNull,
}

fn equality(i: &str) -> PResult<'_, Raw> {
    let (mut i, mut left) = comparison(i)?;
    loop {
        let op = alt((
            value(EqOp::Ne, sym("<>")),
            // `=` never starts a longer token (there is no `==`).
            value(EqOp::Eq, sym("=")),
            preceded(
                kw("IS"),
                cut(alt((
                    value(EqOp::IsNull, kw("NULL")),
                    value(EqOp::IsNotNull, preceded(kw("NOT"), kw("NULL"))),
                ))),
            ),
        ))
        .parse(i);
        let (rest, op) = match op {
            Ok(v) => v,
            Err(nom::Err::Error(_)) => return Ok((i, left)),
            Err(e) => return Err(e),
        };
        operator(rest)?;
        i = rest;
        left = match op {
            EqOp::Eq | EqOp::Ne => {
                let (rest, right) = cut(comparison).parse(i)?;
                i = rest;
                if matches!(op, EqOp::Eq) {
                    Raw::Eq(boxed(left), boxed(right))
                } else {
                    Raw::Ne(boxed(left), boxed(right))
                }
            }
            EqOp::IsNull => Raw::IsNull(boxed(left), true),
            EqOp::IsNotNull => Raw::IsNull(boxed(left), false),
        };
    }
}

#[derive(Clone, Copy)]
enum CmpOp {
    Order(Order),
    Text(Text, bool),
    Between(bool),
    In(bool),
}

fn cmp_op(i: &str) -> PResult<'_, CmpOp> {
    let negatable = |negated: bool| {
        alt((
            value(CmpOp::Text(Text::Contains, negated), kw("CONTAINS")),
            value(CmpOp::Text(Text::StartsWith, negated), kw("STARTSWITH")),
            value(CmpOp::Text(Text::EndsWith, negated), kw("ENDSWITH")),
            value(CmpOp::Between(negated), kw("BETWEEN")),
            value(CmpOp::In(negated), kw("IN")),
        ))
    };
    alt((
        value(CmpOp::Order(Order::Ge), sym(">=")),
        value(CmpOp::Order(Order::Le), sym("<=")),
        // `<` must not be the start of `<>` (an equality-level operator).
        value(
            CmpOp::Order(Order::Lt),
            terminated(sym("<"), not(alt((char('>'), char('='))))),
        ),
        value(
            CmpOp::Order(Order::Gt),
            terminated(sym(">"), not(char('='))),
        ),
        negatable(false),
        preceded(kw("NOT"), negatable(true)),
    ))
    .parse(i)
}

fn comparison(i: &str) -> PResult<'_, Raw> {
    let (mut i, mut left) = unary(i)?;
    loop {
        let (rest, op) = match cmp_op(i) {
            Ok(v) => v,
            Err(nom::Err::Error(_)) => return Ok((i, left)),
            Err(e) => return Err(e),
        };
        operator(rest)?;
        // The left side moves into the new node (a clone per operator made
        // chains quadratic); the placeholder is overwritten right after.
        let lhs = |left: &mut Raw| boxed(std::mem::replace(left, Raw::Lit(Lit::Null)));
        let (rest, next) = match op {
            CmpOp::Order(o) => {
                let (rest, r) = cut(unary).parse(rest)?;
                (rest, Raw::Cmp(o, lhs(&mut left), boxed(r)))
            }
            CmpOp::Text(t, negated) => {
                let (rest, s) = cut(string_lit).parse(rest)?;
                (rest, Raw::Text(t, lhs(&mut left), s, negated))
            }
            CmpOp::Between(negated) => {
                let (rest, (low, high)) = cut((unary, preceded(kw("AND"), unary))).parse(rest)?;
                (
                    rest,
                    Raw::Between(lhs(&mut left), boxed(low), boxed(high), negated),
                )
            }
            CmpOp::In(negated) => {
                let (rest, list) = cut(delimited(
                    sym("("),
                    separated_list1(sym(","), string_lit),
                    sym(")"),
                ))
                .parse(rest)?;
                (rest, Raw::In(lhs(&mut left), list, negated))
            }
        };
        i = rest;
        left = next;
    }
}

fn unary(i: &str) -> PResult<'_, Raw> {
    let _nest = Nest::enter(i)?;
    alt((
        preceded(sym("+"), cut(unary)),
        map(preceded(sym("-"), cut(unary)), |r| Raw::Neg(boxed(r))),
        map(preceded(kw("NOT"), cut(unary)), |r| Raw::Not(boxed(r))),
        primary,
    ))
    .parse(i)
}

fn primary(i: &str) -> PResult<'_, Raw> {
    alt((
        map(string_lit, |s| Raw::Lit(Lit::Str(s))),
        number,
        value(Raw::Lit(Lit::Bool(true)), kw("TRUE")),
        value(Raw::Lit(Lit::Bool(false)), kw("FALSE")),
        value(Raw::Lit(Lit::Null), kw("NULL")),
        map(identifier, |s| Raw::Prop(s.to_owned())),
        delimited(sym("("), cut(or_expr), cut(sym(")"))),
    ))
    .parse(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Raw {
        parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn prop(n: &str) -> Box<Raw> {
        boxed(Raw::Prop(n.into()))
    }

    #[test]
    fn precedence_and_keywords() {
        assert_eq!(
            p("a = 1 or b = 2 AND c IS NOT NULL"),
            Raw::Or(
                boxed(Raw::Eq(prop("a"), boxed(Raw::Lit(Lit::Int(1))))),
                boxed(Raw::And(
                    boxed(Raw::Eq(prop("b"), boxed(Raw::Lit(Lit::Int(2))))),
                    boxed(Raw::IsNull(prop("c"), false)),
                )),
            )
        );
        assert_eq!(
            p("a<>'x'"),
            Raw::Ne(prop("a"), boxed(Raw::Lit(Lit::Str("x".into()))))
        );
        assert_eq!(
            p("a <= 1"),
            Raw::Cmp(Order::Le, prop("a"), boxed(Raw::Lit(Lit::Int(1))))
        );
        assert_eq!(
            p("notes not in ('a', 'it''s')"),
            Raw::In(prop("notes"), vec!["a".into(), "it's".into()], true)
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(p("a = 5L"), p("a = 5"));
        assert_eq!(
            p("a = 3000000000"),
            Raw::Eq(prop("a"), boxed(Raw::Lit(Lit::Long(3_000_000_000))))
        );
        for (s, v) in [("5.", 5.0), (".5", 0.5), ("5E2", 500.0), ("1.5e-1", 0.15)] {
            assert_eq!(
                p(&format!("a = {s}")),
                Raw::Eq(prop("a"), boxed(Raw::Lit(Lit::Double(v)))),
                "{s}"
            );
        }
    }

    #[test]
    fn comments_and_trailing_tokens() {
        assert_eq!(p("/* x */ a -- y\n = 1"), p("a = 1"));
        // Apache ignores complete tokens after the expression.
        assert_eq!(p("a = 1 b"), p("a = 1"));
        assert!(parse("a = 1 'open").is_err());
        // A `--` comment needs its line end; without one it lexes as `-`.
        assert_eq!(p("a = 1 -- no newline"), p("a = 1"));
    }

    #[test]
    fn errors_point_at_the_problem() {
        match parse("a = ").unwrap_err() {
            SqlError::Syntax { column, near } => {
                assert_eq!(column, 5);
                assert_eq!(near, "end of input");
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(parse("a IS 5"), Err(SqlError::Syntax { .. })));
        assert!(matches!(parse("(a = 1"), Err(SqlError::Syntax { .. })));
        assert!(matches!(parse(""), Err(SqlError::Syntax { .. })));
        let deep = format!("{}a = 1{}", "(".repeat(500), ")".repeat(500));
        assert_eq!(parse(&deep), Err(SqlError::TooComplex));
        let nots = format!("{}TRUE", "NOT ".repeat(10_000));
        assert_eq!(parse(&nots), Err(SqlError::TooComplex));
        let chain = format!("a{}", " = 1".repeat(5_000));
        assert_eq!(parse(&chain), Err(SqlError::TooComplex));
        let ors = vec!["a = 1"; 2_000].join(" OR ");
        assert_eq!(parse(&ors), Err(SqlError::TooComplex));
        // The depth is per parse: a fine expression after a deep one parses.
        assert!(parse("(((a = 1)))").is_ok());
    }
}
