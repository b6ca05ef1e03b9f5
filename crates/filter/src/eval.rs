//! Apache's checks on the syntax tree, the compiled form, and evaluation.
//!
//! Values follow Java's boxed types in Apache's evaluator: a property is
//! always a string, a decimal literal an Integer (or a Long when it does not
//! fit), a float literal a Double. Comparing two different types converts
//! one to the other as `ComparisonExpression.__compare` does; a conversion
//! that fails (`'abc'` as a number) makes the whole evaluation fail and the
//! message not match, whatever the rest of the expression says.

use std::cmp::Ordering;

use crate::parse::{self, Lit, Order, Raw, Text};
use crate::{Properties, SqlError};

/// A constant of the compiled expression.
#[derive(Debug, Clone, PartialEq)]
enum Const {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    Str(Box<str>),
}

/// An expression that yields a value.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Const(Const),
    Prop(Box<str>),
    Neg(Box<Node>),
    /// A condition used as an operand of `=` / `<>` (yields TRUE, FALSE or NULL).
    Cond(Box<Cond>),
}

/// An expression that yields TRUE, FALSE or unknown (`None`).
#[derive(Debug, Clone, PartialEq)]
enum Cond {
    Const(Option<bool>),
    /// A bare property where a condition is expected: properties are
    /// strings, so this is FALSE when present and unknown when absent.
    Cast(Box<str>),
    Not(Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Eq(Node, Node),
    Order(Order, Node, Node),
    /// `IS NULL` (true) or `IS NOT NULL` (false).
    IsNull(Node, bool),
    In(Box<str>, Vec<Box<str>>, bool),
    Text(Text, Node, Box<str>, bool),
}

/// A value during evaluation, borrowing from the expression or the message.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value<'a> {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    Str(&'a str),
}

/// Evaluation failed (a conversion Java would have thrown on): the message
/// does not match.
struct Fail;

type Eval<T> = Result<T, Fail>;

/// A compiled SQL92 selector. Compile once per subscription; [`matches`]
/// allocates nothing.
///
/// [`matches`]: Expression::matches
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    sql: Box<str>,
    root: Cond,
}

impl Expression {
    /// Parses and checks `sql` as Apache's `SelectorParser` does.
    pub fn compile(sql: &str) -> Result<Expression, SqlError> {
        let raw = parse::parse(sql)?;
        let root = cond(&raw)?;
        Ok(Expression {
            sql: sql.into(),
            root,
        })
    }

    /// The text the expression was compiled from.
    pub fn as_str(&self) -> &str {
        &self.sql
    }

    /// Whether a message with these properties passes: the expression
    /// evaluates to TRUE (unknown and failed evaluations do not pass).
    pub fn matches<P: Properties + ?Sized>(&self, props: &P) -> bool {
        matches!(truth(&self.root, props), Ok(Some(true)))
    }
}

// ---- compile -------------------------------------------------------------

fn invalid(msg: String) -> SqlError {
    SqlError::Invalid(msg)
}

/// A short rendering of a syntax node for error messages.
fn describe(raw: &Raw) -> String {
    match raw {
        Raw::Lit(Lit::Null) => "NULL".into(),
        Raw::Lit(Lit::Bool(b)) => if *b { "TRUE" } else { "FALSE" }.into(),
        Raw::Lit(Lit::Int(v)) => v.to_string(),
        Raw::Lit(Lit::Long(v)) => v.to_string(),
        Raw::Lit(Lit::Double(v)) => v.to_string(),
        Raw::Lit(Lit::Str(s)) => format!("'{}'", s.replace('\'', "''")),
        Raw::BadNumber(s) => s.clone(),
        Raw::Prop(p) => p.clone(),
        Raw::Neg(x) => format!("-{}", describe(x)),
        _ => "a condition".into(),
    }
}

/// Apache's `BooleanExpression`s: everything that yields TRUE/FALSE/NULL.
fn is_condition(raw: &Raw) -> bool {
    !matches!(
        raw,
        Raw::Lit(Lit::Int(_) | Lit::Long(_) | Lit::Double(_) | Lit::Str(_))
            | Raw::BadNumber(_)
            | Raw::Prop(_)
            | Raw::Neg(_)
    )
}

fn constant(lit: &Lit) -> Result<Const, SqlError> {
    Ok(match lit {
        Lit::Null => Const::Null,
        Lit::Bool(b) => Const::Bool(*b),
        Lit::Int(v) => Const::Int(*v),
        Lit::Long(v) => Const::Long(*v),
        Lit::Double(v) => {
            // Apache refuses floats beyond Double.MAX_VALUE and below
            // Double.MIN_VALUE (the smallest positive double, so 0.0 too).
            if !v.is_finite() {
                return Err(invalid(format!("{v} is greater than {}", f64::MAX)));
            }
            if *v < f64::from_bits(1) {
                return Err(invalid(format!("{v} is less than 4.9E-324")));
            }
            Const::Double(*v)
        }
        Lit::Str(s) => Const::Str(s.as_str().into()),
    })
}

fn node(raw: &Raw) -> Result<Node, SqlError> {
    match raw {
        Raw::Lit(l) => Ok(Node::Const(constant(l)?)),
        Raw::BadNumber(s) => Err(invalid(format!("number {s} is out of range"))),
        Raw::Prop(p) => Ok(Node::Prop(p.as_str().into())),
        Raw::Neg(x) => Ok(Node::Neg(Box::new(node(x)?))),
        _ => Ok(Node::Cond(Box::new(cond(raw)?))),
    }
}

/// `=` / `<>` operands: the NULL literal cannot be compared.
fn check_equal_operand(raw: &Raw) -> Result<(), SqlError> {
    if matches!(raw, Raw::Lit(Lit::Null)) {
        return Err(invalid("'NULL' cannot be compared".into()));
    }
    Ok(())
}

/// Two constants where the left is TRUE/FALSE and the right is not.
fn check_equal_compatible(l: &Raw, r: &Raw) -> Result<(), SqlError> {
    let boolean = |x: &Raw| matches!(x, Raw::Lit(Lit::Bool(_) | Lit::Null));
    if matches!(l, Raw::Lit(_)) && matches!(r, Raw::Lit(_)) && boolean(l) && !boolean(r) {
        return Err(invalid(format!(
            "'{}' cannot be compared with '{}'",
            describe(l),
            describe(r)
        )));
    }
    Ok(())
}

/// `<`, `>`, `<=`, `>=` operands: numeric constants, properties, negations.
fn check_ordered_operand(raw: &Raw) -> Result<(), SqlError> {
    let ok = match raw {
        Raw::Lit(l) => matches!(l, Lit::Int(_) | Lit::Long(_) | Lit::Double(_)),
        other => !is_condition(other),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "value '{}' cannot be compared with '<', '>', '<=' or '>='",
            describe(raw)
        )))
    }
}

fn ordered(o: Order, l: &Raw, r: &Raw) -> Result<Cond, SqlError> {
    check_ordered_operand(l)?;
    check_ordered_operand(r)?;
    Ok(Cond::Order(o, node(l)?, node(r)?))
}

fn equal(l: &Raw, r: &Raw) -> Result<Cond, SqlError> {
    check_equal_operand(l)?;
    check_equal_operand(r)?;
    check_equal_compatible(l, r)?;
    Ok(Cond::Eq(node(l)?, node(r)?))
}

fn cond(raw: &Raw) -> Result<Cond, SqlError> {
    Ok(match raw {
        Raw::Lit(Lit::Null) => Cond::Const(None),
        Raw::Lit(Lit::Bool(b)) => Cond::Const(Some(*b)),
        Raw::Prop(p) => Cond::Cast(p.as_str().into()),
        Raw::Lit(_) | Raw::BadNumber(_) | Raw::Neg(_) => {
            // A bad number reports itself rather than its type.
            node(raw)?;
            return Err(invalid(format!(
                "expression will not result in a boolean value: {}",
                describe(raw)
            )));
        }
        Raw::Not(x) => Cond::Not(Box::new(cond(x)?)),
        Raw::And(l, r) => Cond::And(Box::new(cond(l)?), Box::new(cond(r)?)),
        Raw::Or(l, r) => Cond::Or(Box::new(cond(l)?), Box::new(cond(r)?)),
        Raw::Eq(l, r) => equal(l, r)?,
        Raw::Ne(l, r) => Cond::Not(Box::new(equal(l, r)?)),
        Raw::IsNull(x, is) => Cond::IsNull(node(x)?, *is),
        Raw::Cmp(o, l, r) => ordered(*o, l, r)?,
        Raw::Between(v, low, high, negated) => {
            if *negated {
                Cond::Or(
                    Box::new(ordered(Order::Lt, v, low)?),
                    Box::new(ordered(Order::Gt, v, high)?),
                )
            } else {
                check_between_bounds(low, high)?;
                Cond::And(
                    Box::new(ordered(Order::Ge, v, low)?),
                    Box::new(ordered(Order::Le, v, high)?),
                )
            }
        }
        Raw::In(x, list, negated) => {
            let Raw::Prop(p) = x.as_ref() else {
                return Err(invalid(format!(
                    "expected a property for IN, got: {}",
                    describe(x)
                )));
            };
            Cond::In(
                p.as_str().into(),
                list.iter().map(|s| s.as_str().into()).collect(),
                *negated,
            )
        }
        Raw::Text(t, x, s, negated) => Cond::Text(*t, node(x)?, s.as_str().into(), *negated),
    })
}

/// Constant `BETWEEN` bounds must be non-NULL, comparable, and ordered.
fn check_between_bounds(low: &Raw, high: &Raw) -> Result<(), SqlError> {
    let (Raw::Lit(lo), Raw::Lit(hi)) = (low, high) else {
        return Ok(());
    };
    let (lo, hi) = (constant(lo)?, constant(hi)?);
    if lo == Const::Null || hi == Const::Null {
        return Err(invalid(
            "illegal values of BETWEEN: the bounds can not be NULL".into(),
        ));
    }
    match java_compare(const_value(&hi), const_value(&lo)) {
        Ok(c) if c < 0 => Err(invalid(format!(
            "illegal values of BETWEEN: the lower bound {} must be less than or equal to the upper bound {}",
            describe(low),
            describe(high)
        ))),
        Ok(_) => Ok(()),
        Err(Fail) => Err(invalid(format!(
            "illegal values of BETWEEN: {} and {} cannot be compared",
            describe(low),
            describe(high)
        ))),
    }
}

// ---- evaluate ------------------------------------------------------------

fn const_value(c: &Const) -> Value<'_> {
    match c {
        Const::Null => Value::Null,
        Const::Bool(b) => Value::Bool(*b),
        Const::Int(v) => Value::Int(*v),
        Const::Long(v) => Value::Long(*v),
        Const::Double(v) => Value::Double(*v),
        Const::Str(s) => Value::Str(s),
    }
}

fn value<'a, P: Properties + ?Sized>(n: &'a Node, p: &'a P) -> Eval<Value<'a>> {
    Ok(match n {
        Node::Const(c) => const_value(c),
        Node::Prop(name) => p.get(name).map_or(Value::Null, Value::Str),
        Node::Neg(x) => match value(x, p)? {
            Value::Int(v) => Value::Int(v.wrapping_neg()),
            Value::Long(v) => Value::Long(v.wrapping_neg()),
            Value::Double(v) => Value::Double(-v),
            // Only numbers negate; anything else is NULL.
            _ => Value::Null,
        },
        Node::Cond(c) => truth(c, p)?.map_or(Value::Null, Value::Bool),
    })
}

fn truth<P: Properties + ?Sized>(c: &Cond, p: &P) -> Eval<Option<bool>> {
    Ok(match c {
        Cond::Const(b) => *b,
        Cond::Cast(name) => p.get(name).map(|_| false),
        Cond::Not(x) => truth(x, p)?.map(|b| !b),
        Cond::And(l, r) => {
            let lv = truth(l, p)?;
            if lv == Some(false) {
                return Ok(Some(false));
            }
            let rv = truth(r, p)?;
            if rv == Some(false) {
                return Ok(Some(false));
            }
            lv.and(rv)
        }
        Cond::Or(l, r) => {
            let lv = truth(l, p)?;
            if lv == Some(true) {
                return Ok(Some(true));
            }
            let rv = truth(r, p)?;
            if rv == Some(true) {
                return Ok(Some(true));
            }
            lv.and(rv)
        }
        Cond::Eq(l, r) => equals(value(l, p)?, value(r, p)?)?,
        Cond::Order(o, l, r) => {
            let lv = value(l, p)?;
            if lv == Value::Null {
                return Ok(None);
            }
            let rv = value(r, p)?;
            if rv == Value::Null {
                return Ok(None);
            }
            let c = match (lv, rv) {
                // Two strings are only ordered as numbers.
                (Value::Str(a), Value::Str(b)) => {
                    let a = java_parse_double(a).ok_or(Fail)?;
                    let b = java_parse_double(b).ok_or(Fail)?;
                    java_double_compare(a, b)
                }
                _ => java_compare(lv, rv)?,
            };
            Some(match o {
                Order::Gt => c > 0,
                Order::Ge => c >= 0,
                Order::Lt => c < 0,
                Order::Le => c <= 0,
            })
        }
        Cond::IsNull(x, is) => Some((value(x, p)? == Value::Null) == *is),
        Cond::In(name, list, negated) => p
            .get(name)
            .map(|v| list.iter().any(|s| **s == *v) != *negated),
        Cond::Text(kind, x, search, negated) => {
            if search.is_empty() {
                return Ok(Some(false));
            }
            match value(x, p)? {
                Value::Str(v) => {
                    let hit = match kind {
                        Text::Contains => v.contains(&**search),
                        Text::StartsWith => v.starts_with(&**search),
                        Text::EndsWith => v.ends_with(&**search),
                    };
                    Some(hit != *negated)
                }
                // Missing or not a string: FALSE, negated or not.
                _ => Some(false),
            }
        }
    })
}

/// Apache's equality: NULL = NULL is TRUE, NULL on the left is unknown,
/// NULL on the right is FALSE; otherwise Java `equals`, then the converting
/// comparison.
fn equals(l: Value<'_>, r: Value<'_>) -> Eval<Option<bool>> {
    match (l, r) {
        (Value::Null, Value::Null) => Ok(Some(true)),
        (Value::Null, _) => Ok(None),
        (_, Value::Null) => Ok(Some(false)),
        (Value::Double(a), Value::Double(b)) if java_double_bits(a) == java_double_bits(b) => {
            Ok(Some(true))
        }
        _ if l == r => Ok(Some(true)),
        _ => Ok(Some(java_compare(l, r)? == 0)),
    }
}

/// `ComparisonExpression.__compare` with string conversion on: the sign of
/// the comparison after converting the operands to a common type; -1 for
/// types it does not convert.
fn java_compare(l: Value<'_>, r: Value<'_>) -> Eval<i32> {
    use Value::*;
    let ord = |o: Ordering| o as i32;
    Ok(match (l, r) {
        (Bool(a), Bool(b)) => ord(a.cmp(&b)),
        (Int(a), Int(b)) => ord(a.cmp(&b)),
        (Long(a), Long(b)) => ord(a.cmp(&b)),
        (Double(a), Double(b)) => java_double_compare(a, b),
        (Str(a), Str(b)) => ord(a.cmp(b)),
        // Java casts the Boolean to String here and throws.
        (Bool(_), Str(_)) => return Err(Fail),
        (Int(a), Long(b)) => ord(i64::from(a).cmp(&b)),
        (Long(a), Int(b)) => ord(a.cmp(&i64::from(b))),
        (Int(a), Double(b)) => java_double_compare(f64::from(a), b),
        (Long(a), Double(b)) => java_double_compare(a as f64, b),
        (Double(a), Int(b)) => java_double_compare(a, f64::from(b)),
        (Double(a), Long(b)) => java_double_compare(a, b as f64),
        (Int(a), Str(b)) => ord(a.cmp(&b.parse::<i32>().map_err(|_| Fail)?)),
        (Long(a), Str(b)) => ord(a.cmp(&b.parse::<i64>().map_err(|_| Fail)?)),
        (Double(a), Str(b)) => java_double_compare(a, java_parse_double(b).ok_or(Fail)?),
        (Str(a), Bool(b)) => ord(a.eq_ignore_ascii_case("true").cmp(&b)),
        (Str(a), Int(b)) => ord(a.parse::<i32>().map_err(|_| Fail)?.cmp(&b)),
        (Str(a), Long(b)) => ord(a.parse::<i64>().map_err(|_| Fail)?.cmp(&b)),
        (Str(a), Double(b)) => java_double_compare(java_parse_double(a).ok_or(Fail)?, b),
        _ => -1,
    })
}

/// `Double.doubleToLongBits`: every NaN is the canonical one.
fn java_double_bits(v: f64) -> i64 {
    if v.is_nan() {
        0x7ff8_0000_0000_0000
    } else {
        v.to_bits() as i64
    }
}

/// `Double.compare`: -0.0 < 0.0, NaN equals itself and is above +∞.
fn java_double_compare(a: f64, b: f64) -> i32 {
    if a < b {
        -1
    } else if a > b {
        1
    } else {
        java_double_bits(a).cmp(&java_double_bits(b)) as i32
    }
}

/// `Double.valueOf(String)` for decimal text: surrounding control/space
/// characters are ignored, a trailing `d`/`f` type suffix is allowed,
/// `NaN` and `Infinity` are spelled exactly so.
fn java_parse_double(s: &str) -> Option<f64> {
    let t = s.trim_matches(|c: char| c <= ' ');
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    if unsigned == "NaN" || unsigned == "Infinity" {
        let v = if unsigned == "NaN" {
            f64::NAN
        } else {
            f64::INFINITY
        };
        return Some(if t.starts_with('-') { -v } else { v });
    }
    let body = t.strip_suffix(['d', 'D', 'f', 'F']).unwrap_or(t);
    // Rust also reads `inf` / `nan`; Java reads no other letters than e/E.
    if body
        .chars()
        .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
    {
        return None;
    }
    body.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_double_parsing() {
        assert_eq!(java_parse_double(" 1.5 "), Some(1.5));
        assert_eq!(java_parse_double("2d"), Some(2.0));
        assert_eq!(java_parse_double("-Infinity"), Some(f64::NEG_INFINITY));
        assert!(java_parse_double("NaN").is_some_and(f64::is_nan));
        assert_eq!(java_parse_double("inf"), None);
        assert_eq!(java_parse_double("abc"), None);
        assert_eq!(java_parse_double(""), None);
        assert_eq!(java_double_compare(-0.0, 0.0), -1);
        assert_eq!(java_double_compare(f64::NAN, f64::INFINITY), 1);
        assert_eq!(java_double_compare(f64::NAN, f64::NAN), 0);
    }
}
