//! Expression × properties → match, following Apache RocketMQ's evaluator;
//! plus refusals, and arbitrary input never panicking.

use apogee_filter::{Expression, SqlError};
use proptest::prelude::*;

const MSG: &[(&str, &str)] = &[
    ("a", "5"),
    ("b", "2.5"),
    ("big", "3000000000"),
    ("s", "hello world"),
    ("flag", "true"),
    ("TAGS", "TagA"),
    ("word", "abc"),
    ("neg", "-3"),
];

fn check(sql: &str, props: &[(&str, &str)], want: bool) {
    let e = Expression::compile(sql).unwrap_or_else(|err| panic!("{sql:?} refused: {err}"));
    assert_eq!(e.matches(props), want, "{sql:?} over {props:?}");
}

#[test]
fn comparisons() {
    let table: &[(&str, bool)] = &[
        ("a = 5", true),
        ("a = 6", false),
        ("a <> 6", true),
        ("a > 4", true),
        ("a >= 5", true),
        ("a < 5", false),
        ("a <= 5", true),
        ("a > 4.5", true),
        ("a = 5.0", true),
        ("a = '5'", true),
        ("5 = a", true),
        ("-3 = neg", true),
        ("neg < -2", true),
        ("neg = - 3", true),
        ("+a = 5", true),
        // 2147483647 is an int literal, and "3000000000" is no int.
        ("big > 2147483647", false),
        ("big > 2147483648", true),
        ("big = 3000000000", true),
        // A string that is not an int fails against an int literal...
        ("b > 2", false),
        ("b < 3", false),
        // ...but reads as a double against a double literal.
        ("b > 2.0", true),
        ("b < 3.0", true),
        // Two strings are only ordered as numbers.
        ("a > neg", true),
        ("s > a", false),
        ("s = 'hello world'", true),
        ("s <> 'hello'", true),
        ("TAGS = 'TagA'", true),
        ("flag = TRUE", true),
        ("flag = FALSE", false),
        ("flag <> FALSE", true),
        ("TRUE", true),
        ("FALSE", false),
        ("NULL", false),
        ("(a = 5) = TRUE", true),
        ("NOT (a = 5)", false),
        ("NOT a = 5", false),
        ("1 = 1", true),
        ("1 = 1.0", true),
        ("'x' = 'x'", true),
        ("1 = 'x'", false),
    ];
    for (sql, want) in table {
        check(sql, MSG, *want);
    }
}

#[test]
fn missing_properties_are_unknown() {
    let table: &[(&str, bool)] = &[
        ("zz = 1", false),
        ("zz <> 1", false),
        ("NOT (zz = 1)", false),
        ("zz > 1", false),
        ("zz BETWEEN 1 AND 2", false),
        ("zz NOT BETWEEN 1 AND 2", false),
        ("zz IN ('x')", false),
        ("zz NOT IN ('x')", false),
        ("zz IS NULL", true),
        ("a IS NULL", false),
        ("zz IS NOT NULL", false),
        ("a IS NOT NULL", true),
        ("zz = 1 OR a = 5", true),
        ("zz = 1 AND a = 5", false),
        ("NOT (zz = 1 AND a = 6)", true),
        ("NOT (zz = 1 OR a = 6)", false),
        // Both sides missing: NULL = NULL is TRUE in Apache's evaluator.
        ("zz = yy", true),
        ("a = zz", false),
        ("zz = a", false),
        ("zz CONTAINS 'x'", false),
        ("zz NOT CONTAINS 'x'", false),
    ];
    for (sql, want) in table {
        check(sql, MSG, *want);
    }
}

#[test]
fn between_in_and_text() {
    let table: &[(&str, bool)] = &[
        ("a BETWEEN 1 AND 5", true),
        ("a BETWEEN 5 AND 5", true),
        ("a BETWEEN 6 AND 9", false),
        ("a NOT BETWEEN 6 AND 9", true),
        ("a NOT BETWEEN 1 AND 9", false),
        ("b BETWEEN 2.0 AND 3.0", true),
        ("TAGS IN ('TagA', 'TagB')", true),
        ("TAGS IN ('taga')", false),
        ("TAGS NOT IN ('TagB')", true),
        ("TAGS NOT IN ('TagA')", false),
        ("a IN ('5')", true),
        ("s CONTAINS 'lo w'", true),
        ("s NOT CONTAINS 'lo w'", false),
        ("s STARTSWITH 'hell'", true),
        ("s NOT STARTSWITH 'hell'", false),
        ("s ENDSWITH 'world'", true),
        ("s NOT ENDSWITH 'x'", true),
        ("s CONTAINS ''", false),
        ("s NOT CONTAINS ''", false),
        (
            "s contains 'hello' and a between 1 and 9 or word = 'x'",
            true,
        ),
    ];
    for (sql, want) in table {
        check(sql, MSG, *want);
    }
}

#[test]
fn failed_conversions_reject_the_message() {
    // Apache throws while evaluating these; the message does not match even
    // where the rest of the expression would have been TRUE.
    let table: &[&str] = &[
        "word = 5",
        "word > 1",
        "word > 1.0",
        "word = 5 OR a = 5",
        "a = 5 AND word > 1",
        "s > a",
        "big = 1",
        "flag = TRUE AND (a = 5) = 'x'",
    ];
    for sql in table {
        check(sql, MSG, false);
    }
    // Short-circuit: the failing operand is never evaluated.
    check("a = 5 OR word = 5", MSG, true);
    check("a = 6 AND word = 5", MSG, false);
}

#[test]
fn bare_properties_are_not_booleans() {
    check("flag", MSG, false);
    check("NOT flag", MSG, true);
    check("zz", MSG, false);
    check("NOT zz", MSG, false);
}

#[test]
fn case_and_syntax() {
    check("a = 5 and TAGS in ('TagA') OR false", MSG, true);
    check("a=5", MSG, true);
    check("  (a = 5)  ", MSG, true);
    check("a = 5 -- comment\n", MSG, true);
    check("/* c */ a = 5", MSG, true);
    check("s = 'it''s'", &[("s", "it's")], true);
    // Property names are case-sensitive.
    check("A = 5", MSG, false);
    check("a = 5L", MSG, true);
    check("_x$1 = 'y'", &[("_x$1", "y")], true);
    // Apache's start rule stops at the first token that cannot continue the
    // expression: `a LIKE 'x%'` is the bare property `a` (never TRUE).
    check("a LIKE 'x%'", MSG, false);
    check("a = 5 whatever", MSG, true);
}

#[test]
fn refused_expressions() {
    let refused: &[&str] = &[
        "",
        "   ",
        "a =",
        "a = = 1",
        "(a = 1",
        "a IS 5",
        "a IN ()",
        "a IN (1, 2)",
        "a BETWEEN 1",
        "a = 'open",
        "a.b = 1",
        "a == 1",
        "a != 1",
        "5",
        "'x'",
        "-a",
        "a = NULL",
        "NULL = a",
        "TRUE = 'x'",
        "a > 'x'",
        "a > TRUE",
        "a > NULL",
        "a > (b = 1)",
        "(b = 1) < 3",
        "NOT a > 1",
        "a BETWEEN 5 AND 1",
        "a BETWEEN 'a' AND 'b'",
        "a BETWEEN NULL AND 1",
        "a BETWEEN 'x' AND 5",
        "'x' IN ('x')",
        "a = 99999999999999999999",
        "a = 0.0",
        "a = 1e999",
        "a AND 5",
        "NOT 5",
        "a = 1 /",
        "-- a comment without its line end",
    ];
    for sql in refused {
        let r = Expression::compile(sql);
        assert!(r.is_err(), "{sql:?} should be refused, got {r:?}");
        let msg = r.unwrap_err().to_string();
        assert!(msg.starts_with("Invalid MessageSelector"), "{msg}");
    }
    assert!(matches!(
        Expression::compile("a > 'x'"),
        Err(SqlError::Invalid(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
        if let Ok(e) = Expression::compile(&s) {
            let _ = e.matches(MSG);
        }
    }

    #[test]
    fn token_soup_never_panics(tokens in proptest::collection::vec(prop_oneof![
        Just("a"), Just("b"), Just("word"), Just("("), Just(")"), Just("="), Just("<>"),
        Just("<"), Just(">="), Just("AND"), Just("OR"), Just("NOT"), Just("IS"), Just("NULL"),
        Just("BETWEEN"), Just("IN"), Just("'x'"), Just("5"), Just("2.5"), Just("-"), Just(","),
        Just("TRUE"), Just("CONTAINS"), Just("/*"), Just("*/"), Just("--"), Just("\n"),
    ], 0..40)) {
        let s = tokens.join(" ");
        if let Ok(e) = Expression::compile(&s) {
            let _ = e.matches(MSG);
        }
    }

    #[test]
    fn integer_comparisons_agree_with_rust(v in any::<i32>(), lit in any::<i32>()) {
        let text = v.to_string();
        let props = [("v", text.as_str())];
        let lit_text = if lit < 0 { format!("-{}", lit.unsigned_abs()) } else { lit.to_string() };
        for (op, want) in [("=", v == lit), ("<>", v != lit), ("<", v < lit), (">", v > lit),
                           ("<=", v <= lit), (">=", v >= lit)] {
            let e = Expression::compile(&format!("v {op} {lit_text}")).unwrap();
            prop_assert_eq!(e.matches(&props[..]), want, "v={} {} {}", v, op, lit_text);
        }
    }
}

/// The largest expressions the limits admit compile, evaluate and drop on
/// half a tokio worker's stack (with a debug build's larger frames), and
/// more is refused: a client's selector cannot overflow the broker's stack.
#[test]
fn largest_chains_fit_a_small_stack() {
    use apogee_filter::{MAX_DEPTH, MAX_OPERATORS};
    let chains = [
        format!("a{}", " = 5".repeat(MAX_OPERATORS)),
        format!("a > 1{}", " = TRUE".repeat(MAX_OPERATORS - 1)),
        // Each link adds two operators.
        format!("a = 5{}", " AND a = 5".repeat((MAX_OPERATORS - 1) / 2)),
        format!("a = 5{}", " OR a = 5".repeat((MAX_OPERATORS - 1) / 2)),
        format!(
            "{}a = 5 AND a{}{}",
            "(".repeat(MAX_DEPTH - 2),
            " = 5".repeat(MAX_OPERATORS - 2),
            ")".repeat(MAX_DEPTH - 2)
        ),
    ];
    let worker = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || {
            for sql in &chains {
                let e = Expression::compile(sql)
                    .unwrap_or_else(|err| panic!("{} chars refused: {err}", sql.len()));
                let _ = e.matches(MSG);
                drop(e);
                let longer = format!("{sql} AND a = 5");
                assert!(
                    matches!(Expression::compile(&longer), Err(SqlError::TooComplex)),
                    "one operator past the limit must be refused"
                );
            }
        })
        .expect("spawn");
    worker
        .join()
        .expect("a chain at the limit overflowed or was refused");
}
