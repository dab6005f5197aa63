//! FlowMason's safe Python expressions (`filter.condition`, `conditional.condition_expression`,
//! `router.value_expression`, `foreach.filter_expression`) evaluated over JSON, never by running code.
//!
//! The text is parsed with a Python grammar (`rustpython-parser`) and the tree is checked against a
//! whitelist before anything is evaluated: literals (numbers, strings, `True`/`False`/`None`, lists,
//! tuples, dicts), the variables the caller names (`data`, `item`, `value`), comparisons (chained too),
//! `and`/`or`/`not`, `in`/`not in`, `is`/`is not`, arithmetic, `x if c else y`, subscripts and slices,
//! attribute access on objects (`data.score` reads key `score`, our convenience), list comprehensions and
//! generator expressions, the functions in [`FUNCTIONS`] and the methods in [`METHODS`]. Anything else
//! (another name, a lambda, an f-string, a method we do not know) is a [`ExprError::Unsupported`], found
//! when the expression is parsed, so a typo fails validation rather than a run.
//!
//! Evaluation follows Python: truthiness (`[]`, `{}`, `""`, `0`, `None` are false), `1 == 1.0`, integer
//! arithmetic stays integral, a missing key or an index out of range is an [`ExprError::Eval`].
//!
//! No expression can take the process down. Before the text reaches the parser (which, like the checks and
//! the evaluator, recurses), a scan bounds how deeply it nests: brackets, unary operators (`not`, `-`),
//! chains of binary operators, attribute chains and `if`-`else` together may not exceed [`MAX_NESTING`]
//! ([`ExprError::TooDeep`], at validation time). Evaluation then spends from a budget of
//! [`MAX_UNITS`] units per evaluation: one per node evaluated, per element iterated or copied, per 16
//! bytes of a string built; `'z' * 10**8` or a comprehension over a comprehension ends in
//! [`ExprError::Limit`] instead of allocating gigabytes or running for hours.

use std::cmp::Ordering;

use rustpython_parser::ast::{self, BoolOp, CmpOp, Constant, Expr as Node, Operator, UnaryOp};
use serde_json::{Map, Number, Value};

use flowmason_actors::limits::{self, Syntax};
use tokio_util::sync::CancellationToken;

use super::abbreviate;

/// Functions an expression may call.
pub const FUNCTIONS: &[&str] = &[
    "abs", "all", "any", "bool", "float", "int", "len", "list", "max", "min", "round", "sorted",
    "str", "sum",
];

/// Methods an expression may call: on objects (`get`, `keys`, `values`, `items`), strings and lists.
pub const METHODS: &[&str] = &[
    "get",
    "keys",
    "values",
    "items",
    "lower",
    "upper",
    "strip",
    "lstrip",
    "rstrip",
    "startswith",
    "endswith",
    "split",
    "replace",
    "join",
    "isdigit",
    "isalpha",
    "count",
    "index",
];

/// How deeply an expression may nest (see the module docs). Python itself refuses 200 nested brackets.
pub const MAX_NESTING: usize = limits::MAX_NESTING;

/// What one evaluation may spend (see the module docs): enough for a comprehension over tens of
/// thousands of items, small enough that an evaluation ends in well under a second and its strings and
/// lists stay under 64 MiB.
pub const MAX_UNITS: u64 = 4_000_000;

/// Bytes of a built string that cost one unit.
const BYTES_PER_UNIT: u64 = 16;

/// Units spent between two looks at the cancellation token.
const CHECK_EVERY: u64 = 1 << 16;

/// Why an expression cannot be used or failed on its data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    #[error("expression {expression:?} is not valid Python: {reason}")]
    Syntax { expression: String, reason: String },
    #[error("expression {expression:?}: {what} is not allowed (allowed: {allowed})")]
    Unsupported {
        expression: String,
        what: String,
        allowed: String,
    },
    #[error(
        "expression {expression:?} nests deeper than the limit of {limit} (brackets, unary operators, operator and attribute chains count)"
    )]
    TooDeep { expression: String, limit: usize },
    #[error("{0}")]
    Eval(String),
    /// The evaluation ran out of its budget: the expression, not the data, is at fault.
    #[error("expression exceeded its evaluation limit: {0}")]
    Limit(String),
}

/// A parsed, whitelisted expression.
#[derive(Debug, Clone)]
pub struct Expr {
    source: String,
    node: Node,
}

impl Expr {
    /// Parses `source` and checks it uses only what the module docs list, with `variables` as the only
    /// free names.
    pub fn parse(source: &str, variables: &[&str]) -> Result<Expr, ExprError> {
        if exceeds_nesting(source, MAX_NESTING) {
            return Err(ExprError::TooDeep {
                expression: abbreviate(source),
                limit: MAX_NESTING,
            });
        }
        let node = <Node as rustpython_parser::Parse>::parse(source.trim(), "<expression>")
            .map_err(|e| ExprError::Syntax {
                expression: source.to_string(),
                reason: e.error.to_string(),
            })?;
        let mut bound: Vec<String> = variables.iter().map(|v| v.to_string()).collect();
        check(&node, source, &mut bound)?;
        Ok(Expr {
            source: source.to_string(),
            node,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression with `variables` bound. A cancelled `cancel` (the stage's attempt ended)
    /// stops the evaluation within a few milliseconds with [`ExprError::Limit`].
    pub fn eval(
        &self,
        variables: &[(&str, Value)],
        cancel: &CancellationToken,
    ) -> Result<Value, ExprError> {
        let mut env = Env {
            vars: variables
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            units_left: MAX_UNITS,
            depth: 0,
            cancel: cancel.clone(),
            next_check: MAX_UNITS.saturating_sub(CHECK_EVERY),
        };
        eval(&self.node, &mut env)
    }

    /// Evaluates and takes Python's truthiness of the result.
    pub fn eval_bool(
        &self,
        variables: &[(&str, Value)],
        cancel: &CancellationToken,
    ) -> Result<bool, ExprError> {
        Ok(truthy(&self.eval(variables, cancel)?))
    }
}

/// Python as [`exceeds_nesting`](flowmason_actors::limits::exceeds_nesting) scans it.
const PYTHON: Syntax = Syntax {
    quotes: b"'\"",
    interpolation: false,
    hash_comments: true,
    words: &["not", "if", "for", "lambda", "and", "or", "in", "is"],
};

/// Whether `source` may nest deeper than `limit` (see the module docs).
pub fn exceeds_nesting(source: &str, limit: usize) -> bool {
    limits::exceeds_nesting(source, &PYTHON, limit)
}

fn unsupported(source: &str, what: impl Into<String>, allowed: &str) -> ExprError {
    ExprError::Unsupported {
        expression: source.to_string(),
        what: what.into(),
        allowed: allowed.to_string(),
    }
}

const NODES: &str = "literals, variables, comparisons, and/or/not, arithmetic, if-else, subscripts, \
                     attributes, list comprehensions, generator expressions, whitelisted calls";

/// Stack left below which the recursive walks continue on a new stack segment, and its size.
const RED_ZONE: usize = 128 * 1024;
const STACK_GROWTH: usize = 2 * 1024 * 1024;

/// The static whitelist walk.
fn check(node: &Node, src: &str, bound: &mut Vec<String>) -> Result<(), ExprError> {
    stacker::maybe_grow(RED_ZONE, STACK_GROWTH, || check_node(node, src, bound))
}

fn check_node(node: &Node, src: &str, bound: &mut Vec<String>) -> Result<(), ExprError> {
    match node {
        Node::Constant(c) => match &c.value {
            Constant::None
            | Constant::Bool(_)
            | Constant::Str(_)
            | Constant::Int(_)
            | Constant::Float(_) => Ok(()),
            Constant::Tuple(_) => Ok(()),
            other => Err(unsupported(src, format!("constant {other:?}"), NODES)),
        },
        Node::Name(n) => {
            if bound.iter().any(|b| b == n.id.as_str()) {
                Ok(())
            } else if FUNCTIONS.contains(&n.id.as_str()) {
                Err(unsupported(
                    src,
                    format!("function {:?} used as a value", n.id.as_str()),
                    "call it",
                ))
            } else {
                Err(unsupported(
                    src,
                    format!("name {:?}", n.id.as_str()),
                    &bound.join(", "),
                ))
            }
        }
        Node::BoolOp(b) => b.values.iter().try_for_each(|v| check(v, src, bound)),
        Node::UnaryOp(u) => {
            if matches!(u.op, UnaryOp::Invert) {
                return Err(unsupported(src, "operator ~", NODES));
            }
            check(&u.operand, src, bound)
        }
        Node::BinOp(b) => {
            if !matches!(
                b.op,
                Operator::Add
                    | Operator::Sub
                    | Operator::Mult
                    | Operator::Div
                    | Operator::FloorDiv
                    | Operator::Mod
                    | Operator::Pow
            ) {
                return Err(unsupported(
                    src,
                    format!("operator {:?}", b.op),
                    "+ - * / // % **",
                ));
            }
            check(&b.left, src, bound)?;
            check(&b.right, src, bound)
        }
        Node::Compare(c) => {
            check(&c.left, src, bound)?;
            c.comparators.iter().try_for_each(|v| check(v, src, bound))
        }
        Node::IfExp(i) => {
            check(&i.test, src, bound)?;
            check(&i.body, src, bound)?;
            check(&i.orelse, src, bound)
        }
        Node::List(l) => l.elts.iter().try_for_each(|v| check(v, src, bound)),
        Node::Tuple(t) => t.elts.iter().try_for_each(|v| check(v, src, bound)),
        Node::Dict(d) => {
            for key in &d.keys {
                match key {
                    Some(k) => check(k, src, bound)?,
                    None => return Err(unsupported(src, "** in a dict", NODES)),
                }
            }
            d.values.iter().try_for_each(|v| check(v, src, bound))
        }
        Node::Subscript(s) => {
            check(&s.value, src, bound)?;
            check(&s.slice, src, bound)
        }
        Node::Slice(s) => [&s.lower, &s.upper, &s.step]
            .into_iter()
            .flatten()
            .try_for_each(|v| check(v, src, bound)),
        Node::Attribute(a) => {
            if a.attr.as_str().starts_with('_') {
                return Err(unsupported(
                    src,
                    format!("attribute {:?}", a.attr.as_str()),
                    "attributes not starting with _",
                ));
            }
            check(&a.value, src, bound)
        }
        Node::Call(call) => {
            if !call.keywords.is_empty() {
                return Err(unsupported(
                    src,
                    "keyword arguments",
                    "positional arguments",
                ));
            }
            match call.func.as_ref() {
                Node::Name(n) if FUNCTIONS.contains(&n.id.as_str()) => {}
                Node::Name(n) => {
                    return Err(unsupported(
                        src,
                        format!("function {:?}", n.id.as_str()),
                        &FUNCTIONS.join(", "),
                    ));
                }
                Node::Attribute(a) => {
                    // The receiver first: an unknown name (`os.system`) is the more useful message.
                    check(&a.value, src, bound)?;
                    if !METHODS.contains(&a.attr.as_str()) {
                        return Err(unsupported(
                            src,
                            format!("method {:?}", a.attr.as_str()),
                            &METHODS.join(", "),
                        ));
                    }
                }
                _ => return Err(unsupported(src, "calling a computed value", NODES)),
            }
            call.args.iter().try_for_each(|v| check(v, src, bound))
        }
        Node::ListComp(l) => check_comprehension(&l.elt, &l.generators, src, bound),
        Node::GeneratorExp(g) => check_comprehension(&g.elt, &g.generators, src, bound),
        other => Err(unsupported(src, node_name(other), NODES)),
    }
}

fn check_comprehension(
    elt: &Node,
    generators: &[ast::Comprehension],
    src: &str,
    bound: &mut Vec<String>,
) -> Result<(), ExprError> {
    let depth = bound.len();
    for generator in generators {
        if generator.is_async {
            return Err(unsupported(src, "async comprehension", NODES));
        }
        check(&generator.iter, src, bound)?;
        bound.push(target_name(&generator.target, src)?.to_string());
        for cond in &generator.ifs {
            check(cond, src, bound)?;
        }
    }
    let result = check(elt, src, bound);
    bound.truncate(depth);
    result
}

fn target_name<'a>(target: &'a Node, src: &str) -> Result<&'a str, ExprError> {
    match target {
        Node::Name(n) => Ok(n.id.as_str()),
        _ => Err(unsupported(
            src,
            "a comprehension target that is not a plain name",
            "for x in ...",
        )),
    }
}

fn node_name(node: &Node) -> String {
    let debug = format!("{node:?}");
    let name = debug.split(['(', ' ', '{']).next().unwrap_or("expression");
    format!("{name} expression")
}

// ---------------------------------------------------------------------------------------------------
// Evaluation.

fn err<T>(message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError::Eval(message.into()))
}

/// The variables in scope and what the evaluation may still spend.
struct Env {
    vars: Vec<(String, Value)>,
    units_left: u64,
    depth: usize,
    /// The attempt's token: a stage that timed out or was cancelled stops computing.
    cancel: CancellationToken,
    /// `units_left` at which the token is looked at next.
    next_check: u64,
}

impl Env {
    /// Spends `units` of the budget, or fails when it is exhausted.
    fn charge(&mut self, units: u64) -> Result<(), ExprError> {
        match self.units_left.checked_sub(units) {
            Some(left) => {
                self.units_left = left;
                if left <= self.next_check {
                    self.next_check = left.saturating_sub(CHECK_EVERY);
                    if self.cancel.is_cancelled() {
                        return Err(ExprError::Limit(
                            "the stage's attempt ended (timed out or cancelled)".into(),
                        ));
                    }
                }
                Ok(())
            }
            None => {
                self.units_left = 0;
                Err(ExprError::Limit(format!(
                    "it needs more than {MAX_UNITS} units of work (one per step, element or {BYTES_PER_UNIT} bytes built)"
                )))
            }
        }
    }

    /// Spends what building a string of `bytes` bytes costs, before it is built.
    fn charge_bytes(&mut self, bytes: u64) -> Result<(), ExprError> {
        self.charge(bytes / BYTES_PER_UNIT)
    }

    /// Spends what copying `value` costs: one unit per element, key and 16 bytes of text. Counted
    /// without recursion, and only as far as the budget goes.
    fn charge_value(&mut self, value: &Value) -> Result<(), ExprError> {
        let mut stack = vec![value];
        let mut cost = 0u64;
        while let Some(v) = stack.pop() {
            cost += 1;
            match v {
                Value::String(s) => cost += s.len() as u64 / BYTES_PER_UNIT,
                Value::Array(items) => stack.extend(items),
                Value::Object(map) => {
                    cost += map.len() as u64;
                    stack.extend(map.values());
                }
                _ => {}
            }
            if cost > self.units_left {
                break;
            }
        }
        self.charge(cost)
    }

    /// A copy of `value`, paid for.
    fn copy(&mut self, value: &Value) -> Result<Value, ExprError> {
        self.charge_value(value)?;
        Ok(value.clone())
    }
}

fn eval(node: &Node, env: &mut Env) -> Result<Value, ExprError> {
    env.charge(1)?;
    env.depth += 1;
    // The parse-time scan bounds the tree; this bounds the recursion whatever built the tree.
    let result = if env.depth > MAX_NESTING * 2 {
        Err(ExprError::Limit(format!(
            "evaluation nests deeper than {}",
            MAX_NESTING * 2
        )))
    } else {
        // Frames are large in debug builds: the stack grows on the heap where a thread's is short.
        stacker::maybe_grow(RED_ZONE, STACK_GROWTH, || eval_node(node, env))
    };
    env.depth -= 1;
    result
}

fn eval_node(node: &Node, env: &mut Env) -> Result<Value, ExprError> {
    match node {
        Node::Constant(c) => constant(&c.value),
        Node::Name(n) => {
            let found = env.vars.iter().rposition(|(k, _)| k == n.id.as_str());
            match found {
                Some(at) => {
                    let value = std::mem::take(&mut env.vars[at].1);
                    let copy = env.copy(&value);
                    env.vars[at].1 = value;
                    copy
                }
                None => err(format!("name {:?} is not defined", n.id.as_str())),
            }
        }
        Node::BoolOp(b) => {
            let mut last = Value::Null;
            for value in &b.values {
                last = eval(value, env)?;
                let t = truthy(&last);
                match b.op {
                    BoolOp::And if !t => return Ok(last),
                    BoolOp::Or if t => return Ok(last),
                    _ => {}
                }
            }
            Ok(last)
        }
        Node::UnaryOp(u) => {
            let v = eval(&u.operand, env)?;
            match u.op {
                UnaryOp::Not => Ok(Value::Bool(!truthy(&v))),
                UnaryOp::UAdd => num(&v).map(|_| v.clone()),
                UnaryOp::USub => match as_int(&v) {
                    Some(i) => Ok(Value::from(-i)),
                    None => Ok(float(-num(&v)?)),
                },
                UnaryOp::Invert => err("operator ~ is not supported"),
            }
        }
        Node::BinOp(b) => {
            let l = eval(&b.left, env)?;
            let r = eval(&b.right, env)?;
            charge_binop(b.op, &l, &r, env)?;
            binop(b.op, &l, &r)
        }
        Node::Compare(c) => {
            let mut left = eval(&c.left, env)?;
            for (op, right) in c.ops.iter().zip(&c.comparators) {
                let right = eval(right, env)?;
                if !compare(*op, &left, &right)? {
                    return Ok(Value::Bool(false));
                }
                left = right;
            }
            Ok(Value::Bool(true))
        }
        Node::IfExp(i) => {
            if truthy(&eval(&i.test, env)?) {
                eval(&i.body, env)
            } else {
                eval(&i.orelse, env)
            }
        }
        Node::List(l) => l.elts.iter().map(|e| eval(e, env)).collect(),
        Node::Tuple(t) => t.elts.iter().map(|e| eval(e, env)).collect(),
        Node::Dict(d) => {
            let mut map = Map::new();
            for (k, v) in d.keys.iter().zip(&d.values) {
                let Some(k) = k else {
                    return err("** in a dict is not supported");
                };
                let key = match eval(k, env)? {
                    Value::String(s) => s,
                    other => to_str(&other),
                };
                map.insert(key, eval(v, env)?);
            }
            Ok(Value::Object(map))
        }
        Node::Subscript(s) => {
            let base = eval(&s.value, env)?;
            env.charge_value(&base)?;
            if let Node::Slice(sl) = s.slice.as_ref() {
                let bound = |b: &Option<Box<Node>>, env: &mut Env| match b {
                    Some(n) => eval(n, env).map(|v| as_int(&v)),
                    None => Ok(None),
                };
                let lower = bound(&sl.lower, env)?;
                let upper = bound(&sl.upper, env)?;
                if sl.step.is_some() {
                    return err("slice steps are not supported");
                }
                return slice(&base, lower, upper);
            }
            let key = eval(&s.slice, env)?;
            index(&base, &key)
        }
        Node::Attribute(a) => {
            let base = eval(&a.value, env)?;
            match &base {
                Value::Object(map) => match map.get(a.attr.as_str()) {
                    Some(v) => Ok(v.clone()),
                    None => err(format!("object has no key {:?}", a.attr.as_str())),
                },
                other => err(format!(
                    "{} has no attribute {:?}",
                    py_type(other),
                    a.attr.as_str()
                )),
            }
        }
        Node::Call(call) => {
            let args: Vec<Value> = call
                .args
                .iter()
                .map(|a| eval(a, env))
                .collect::<Result<_, _>>()?;
            match call.func.as_ref() {
                Node::Name(n) => function(n.id.as_str(), &args, env),
                Node::Attribute(a) => {
                    let target = eval(&a.value, env)?;
                    method(&target, a.attr.as_str(), &args, env)
                }
                _ => err("calling a computed value is not supported"),
            }
        }
        Node::ListComp(l) => comprehension(&l.elt, &l.generators, env),
        Node::GeneratorExp(g) => comprehension(&g.elt, &g.generators, env),
        other => err(format!("{} is not supported", node_name(other))),
    }
}

fn comprehension(
    elt: &Node,
    generators: &[ast::Comprehension],
    env: &mut Env,
) -> Result<Value, ExprError> {
    let mut out = Vec::new();
    comprehension_level(elt, generators, env, &mut out)?;
    Ok(Value::Array(out))
}

fn comprehension_level(
    elt: &Node,
    generators: &[ast::Comprehension],
    env: &mut Env,
    out: &mut Vec<Value>,
) -> Result<(), ExprError> {
    let Some((first, rest)) = generators.split_first() else {
        out.push(eval(elt, env)?);
        return Ok(());
    };
    let name = match &first.target {
        Node::Name(n) => n.id.to_string(),
        _ => return err("a comprehension target must be a plain name"),
    };
    let items = iterate(&eval(&first.iter, env)?, env)?;
    for item in items {
        env.vars.push((name.clone(), item));
        let mut keep = true;
        for cond in &first.ifs {
            match eval(cond, env) {
                Ok(v) if truthy(&v) => {}
                Ok(_) => {
                    keep = false;
                    break;
                }
                Err(e) => {
                    env.vars.pop();
                    return Err(e);
                }
            }
        }
        let result = if keep {
            comprehension_level(elt, rest, env, out)
        } else {
            Ok(())
        };
        env.vars.pop();
        result?;
    }
    Ok(())
}

fn constant(c: &Constant) -> Result<Value, ExprError> {
    Ok(match c {
        Constant::None => Value::Null,
        Constant::Bool(b) => Value::Bool(*b),
        Constant::Str(s) => Value::String(s.clone()),
        Constant::Int(i) => {
            let text = i.to_string();
            match text.parse::<i64>() {
                Ok(v) => Value::from(v),
                Err(_) => float(text.parse::<f64>().unwrap_or(f64::INFINITY)),
            }
        }
        Constant::Float(f) => float(*f),
        Constant::Tuple(items) => {
            Value::Array(items.iter().map(constant).collect::<Result<_, _>>()?)
        }
        other => return err(format!("constant {other:?} is not supported")),
    })
}

/// Python truthiness of a JSON value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn py_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        Value::Number(_) => "float",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

fn num(v: &Value) -> Result<f64, ExprError> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| ExprError::Eval("number out of range".into())),
        Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        other => err(format!("expected a number, got {}", py_type(other))),
    }
}

fn is_num(v: &Value) -> bool {
    matches!(v, Value::Number(_) | Value::Bool(_))
}

/// Pays for what a string or list operation builds, before it is built.
fn charge_binop(op: Operator, l: &Value, r: &Value, env: &mut Env) -> Result<(), ExprError> {
    match (op, l, r) {
        (Operator::Add, Value::String(a), Value::String(b)) => {
            env.charge_bytes(a.len() as u64 + b.len() as u64)
        }
        (Operator::Add, Value::Array(_), Value::Array(_)) => {
            env.charge_value(l)?;
            env.charge_value(r)
        }
        (Operator::Mult, Value::String(s), n) | (Operator::Mult, n, Value::String(s)) => {
            let times = as_int(n).unwrap_or(0).max(0) as u64;
            env.charge_bytes((s.len() as u64).saturating_mul(times))
        }
        _ => Ok(()),
    }
}

fn binop(op: Operator, l: &Value, r: &Value) -> Result<Value, ExprError> {
    match (op, l, r) {
        (Operator::Add, Value::String(a), Value::String(b)) => {
            return Ok(Value::String(format!("{a}{b}")));
        }
        (Operator::Add, Value::Array(a), Value::Array(b)) => {
            return Ok(Value::Array(a.iter().chain(b).cloned().collect()));
        }
        (Operator::Mult, Value::String(s), n) | (Operator::Mult, n, Value::String(s))
            if as_int(n).is_some() =>
        {
            let times = as_int(n).unwrap_or(0).max(0) as usize;
            return Ok(Value::String(s.repeat(times)));
        }
        _ => {}
    }
    if !is_num(l) || !is_num(r) {
        return err(format!(
            "unsupported operand types for {op:?}: {} and {}",
            py_type(l),
            py_type(r)
        ));
    }
    let ints = as_int(l).zip(as_int(r));
    match op {
        Operator::Add | Operator::Sub | Operator::Mult => {
            if let Some((a, b)) = ints {
                let v = match op {
                    Operator::Add => a.checked_add(b),
                    Operator::Sub => a.checked_sub(b),
                    _ => a.checked_mul(b),
                };
                if let Some(v) = v {
                    return Ok(Value::from(v));
                }
            }
            let (a, b) = (num(l)?, num(r)?);
            Ok(float(match op {
                Operator::Add => a + b,
                Operator::Sub => a - b,
                _ => a * b,
            }))
        }
        Operator::Div => {
            let b = num(r)?;
            if b == 0.0 {
                return err("division by zero");
            }
            Ok(float(num(l)? / b))
        }
        Operator::FloorDiv | Operator::Mod => {
            if let Some((a, b)) = ints {
                if b == 0 {
                    return err("integer division or modulo by zero");
                }
                return Ok(Value::from(if op == Operator::FloorDiv {
                    a.div_euclid(b) - i64::from(b < 0 && a.rem_euclid(b) != 0)
                } else {
                    a - b * (a.div_euclid(b) - i64::from(b < 0 && a.rem_euclid(b) != 0))
                }));
            }
            let (a, b) = (num(l)?, num(r)?);
            if b == 0.0 {
                return err("float division or modulo by zero");
            }
            let q = (a / b).floor();
            Ok(float(if op == Operator::FloorDiv {
                q
            } else {
                a - b * q
            }))
        }
        Operator::Pow => {
            if let Some((a, b)) = ints
                && let Ok(e) = u32::try_from(b)
                && let Some(v) = a.checked_pow(e)
            {
                return Ok(Value::from(v));
            }
            Ok(float(num(l)?.powf(num(r)?)))
        }
        other => err(format!("operator {other:?} is not supported")),
    }
}

/// Python `==` over JSON: numbers by value (`1 == 1.0`, `True == 1`), containers element-wise.
fn py_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (x, y) if is_num(x) && is_num(y) => match (as_int(x), as_int(y)) {
            (Some(i), Some(j)) => i == j,
            _ => num(x).ok() == num(y).ok(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| py_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => a == b,
    }
}

fn py_cmp(a: &Value, b: &Value) -> Result<Ordering, ExprError> {
    match (a, b) {
        (x, y) if is_num(x) && is_num(y) => match (as_int(x), as_int(y)) {
            (Some(i), Some(j)) => Ok(i.cmp(&j)),
            _ => num(x)?
                .partial_cmp(&num(y)?)
                .ok_or_else(|| ExprError::Eval("cannot order NaN".into())),
        },
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        (Value::Array(x), Value::Array(y)) => {
            for (a, b) in x.iter().zip(y) {
                match py_cmp(a, b)? {
                    Ordering::Equal => {}
                    other => return Ok(other),
                }
            }
            Ok(x.len().cmp(&y.len()))
        }
        _ => err(format!(
            "'<' not supported between instances of {} and {}",
            py_type(a),
            py_type(b)
        )),
    }
}

fn contains(container: &Value, item: &Value) -> Result<bool, ExprError> {
    match container {
        Value::String(s) => match item {
            Value::String(sub) => Ok(s.contains(sub.as_str())),
            other => err(format!(
                "'in <string>' requires string as left operand, not {}",
                py_type(other)
            )),
        },
        Value::Array(items) => Ok(items.iter().any(|v| py_eq(v, item))),
        Value::Object(map) => Ok(match item {
            Value::String(k) => map.contains_key(k),
            _ => false,
        }),
        other => err(format!(
            "argument of type {} is not iterable",
            py_type(other)
        )),
    }
}

fn compare(op: CmpOp, l: &Value, r: &Value) -> Result<bool, ExprError> {
    Ok(match op {
        CmpOp::Eq => py_eq(l, r),
        CmpOp::NotEq => !py_eq(l, r),
        // Identity is only meaningful for None, True and False in JSON data.
        CmpOp::Is => l == r && matches!(l, Value::Null | Value::Bool(_)),
        CmpOp::IsNot => !(l == r && matches!(l, Value::Null | Value::Bool(_))),
        CmpOp::Lt => py_cmp(l, r)? == Ordering::Less,
        CmpOp::LtE => py_cmp(l, r)? != Ordering::Greater,
        CmpOp::Gt => py_cmp(l, r)? == Ordering::Greater,
        CmpOp::GtE => py_cmp(l, r)? != Ordering::Less,
        CmpOp::In => contains(r, l)?,
        CmpOp::NotIn => !contains(r, l)?,
    })
}

fn normalize_index(i: i64, len: usize) -> Option<usize> {
    let len = len as i64;
    let i = if i < 0 { i + len } else { i };
    (0..len).contains(&i).then_some(i as usize)
}

fn index(base: &Value, key: &Value) -> Result<Value, ExprError> {
    match base {
        Value::Object(map) => {
            let k = match key {
                Value::String(s) => s.clone(),
                other => to_str(other),
            };
            map.get(&k)
                .cloned()
                .ok_or_else(|| ExprError::Eval(format!("KeyError: {k:?}")))
        }
        Value::Array(items) => {
            let Some(i) = as_int(key) else {
                return err(format!(
                    "list indices must be integers, not {}",
                    py_type(key)
                ));
            };
            normalize_index(i, items.len())
                .map(|i| items[i].clone())
                .ok_or_else(|| ExprError::Eval(format!("IndexError: list index {i} out of range")))
        }
        Value::String(s) => {
            let Some(i) = as_int(key) else {
                return err(format!(
                    "string indices must be integers, not {}",
                    py_type(key)
                ));
            };
            let chars: Vec<char> = s.chars().collect();
            normalize_index(i, chars.len())
                .map(|i| Value::String(chars[i].to_string()))
                .ok_or_else(|| {
                    ExprError::Eval(format!("IndexError: string index {i} out of range"))
                })
        }
        other => err(format!("{} is not subscriptable", py_type(other))),
    }
}

fn slice(base: &Value, lower: Option<i64>, upper: Option<i64>) -> Result<Value, ExprError> {
    let clamp = |i: i64, len: usize| -> usize {
        let len = len as i64;
        (if i < 0 { i + len } else { i }).clamp(0, len) as usize
    };
    match base {
        Value::Array(items) => {
            let (a, b) = (
                clamp(lower.unwrap_or(0), items.len()),
                clamp(upper.unwrap_or(items.len() as i64), items.len()),
            );
            Ok(Value::Array(if a < b {
                items[a..b].to_vec()
            } else {
                vec![]
            }))
        }
        Value::String(s) => {
            let chars: Vec<char> = s.chars().collect();
            let (a, b) = (
                clamp(lower.unwrap_or(0), chars.len()),
                clamp(upper.unwrap_or(chars.len() as i64), chars.len()),
            );
            Ok(Value::String(if a < b {
                chars[a..b].iter().collect()
            } else {
                String::new()
            }))
        }
        other => err(format!("{} cannot be sliced", py_type(other))),
    }
}

/// The elements of `v`, paid for.
fn iterate(v: &Value, env: &mut Env) -> Result<Vec<Value>, ExprError> {
    match v {
        Value::String(s) => env.charge(s.len() as u64)?,
        other => env.charge_value(other)?,
    }
    match v {
        Value::Array(items) => Ok(items.clone()),
        Value::Object(map) => Ok(map.keys().cloned().map(Value::String).collect()),
        Value::String(s) => Ok(s.chars().map(|c| Value::String(c.to_string())).collect()),
        other => err(format!("{} is not iterable", py_type(other))),
    }
}

/// Python's `str()` of a JSON value; containers render as JSON.
fn to_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

fn arity(name: &str, args: &[Value], min: usize, max: usize) -> Result<(), ExprError> {
    if args.len() < min || args.len() > max {
        return err(format!(
            "{name}() takes {min}..{max} arguments, got {}",
            args.len()
        ));
    }
    Ok(())
}

fn function(name: &str, args: &[Value], env: &mut Env) -> Result<Value, ExprError> {
    match name {
        "len" => {
            arity(name, args, 1, 1)?;
            Ok(Value::from(match &args[0] {
                Value::String(s) => s.chars().count(),
                Value::Array(a) => a.len(),
                Value::Object(o) => o.len(),
                other => return err(format!("object of type {} has no len()", py_type(other))),
            }))
        }
        "str" => {
            arity(name, args, 1, 1)?;
            env.charge_value(&args[0])?;
            Ok(Value::String(to_str(&args[0])))
        }
        "bool" => {
            arity(name, args, 1, 1)?;
            Ok(Value::Bool(truthy(&args[0])))
        }
        "int" => {
            arity(name, args, 1, 1)?;
            match &args[0] {
                Value::String(s) => s
                    .trim()
                    .parse::<i64>()
                    .map(Value::from)
                    .map_err(|_| ExprError::Eval(format!("invalid literal for int(): {s:?}"))),
                v if is_num(v) => match as_int(v) {
                    Some(i) => Ok(Value::from(i)),
                    None => Ok(Value::from(num(v)?.trunc() as i64)),
                },
                other => err(format!(
                    "int() argument must be a string or a number, not {}",
                    py_type(other)
                )),
            }
        }
        "float" => {
            arity(name, args, 1, 1)?;
            match &args[0] {
                Value::String(s) => s.trim().parse::<f64>().map(float).map_err(|_| {
                    ExprError::Eval(format!("could not convert string to float: {s:?}"))
                }),
                v => Ok(float(num(v)?)),
            }
        }
        "abs" => {
            arity(name, args, 1, 1)?;
            match as_int(&args[0]) {
                Some(i) => Ok(Value::from(i.abs())),
                None => Ok(float(num(&args[0])?.abs())),
            }
        }
        "round" => {
            arity(name, args, 1, 2)?;
            let x = num(&args[0])?;
            match args.get(1).and_then(as_int) {
                None => Ok(Value::from(x.round_ties_even() as i64)),
                Some(d) => {
                    let f = 10f64.powi(d as i32);
                    Ok(float((x * f).round_ties_even() / f))
                }
            }
        }
        "min" | "max" => {
            let items = if args.len() == 1 {
                iterate(&args[0], env)?
            } else {
                args.to_vec()
            };
            let mut best: Option<Value> = None;
            for item in items {
                best = Some(match best {
                    None => item,
                    Some(b) => {
                        let ord = py_cmp(&item, &b)?;
                        let better = if name == "min" {
                            ord == Ordering::Less
                        } else {
                            ord == Ordering::Greater
                        };
                        if better { item } else { b }
                    }
                });
            }
            best.ok_or_else(|| ExprError::Eval(format!("{name}() arg is an empty sequence")))
        }
        "sum" => {
            arity(name, args, 1, 2)?;
            let mut total = args.get(1).cloned().unwrap_or(Value::from(0));
            for item in iterate(&args[0], env)? {
                total = binop(Operator::Add, &total, &item)?;
            }
            Ok(total)
        }
        "any" | "all" => {
            arity(name, args, 1, 1)?;
            let items = iterate(&args[0], env)?;
            Ok(Value::Bool(if name == "any" {
                items.iter().any(truthy)
            } else {
                items.iter().all(truthy)
            }))
        }
        "list" => {
            arity(name, args, 0, 1)?;
            match args.first() {
                None => Ok(Value::Array(vec![])),
                Some(v) => iterate(v, env).map(Value::Array),
            }
        }
        "sorted" => {
            arity(name, args, 1, 1)?;
            let mut items = iterate(&args[0], env)?;
            let mut failure = None;
            items.sort_by(|a, b| {
                py_cmp(a, b).unwrap_or_else(|e| {
                    failure.get_or_insert(e);
                    Ordering::Equal
                })
            });
            match failure {
                Some(e) => Err(e),
                None => Ok(Value::Array(items)),
            }
        }
        other => err(format!("function {other:?} is not allowed")),
    }
}

fn str_arg<'a>(method: &str, args: &'a [Value], i: usize) -> Result<&'a str, ExprError> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => err(format!(
            "{method}() argument must be str, not {}",
            py_type(other)
        )),
        None => err(format!("{method}() missing argument {}", i + 1)),
    }
}

fn method(target: &Value, name: &str, args: &[Value], env: &mut Env) -> Result<Value, ExprError> {
    // What the method builds is at most the receiver's size, except for `replace` (paid for below).
    env.charge_value(target)?;
    match (target, name) {
        (Value::Object(map), "get") => {
            arity(name, args, 1, 2)?;
            let key = match &args[0] {
                Value::String(s) => s.clone(),
                other => to_str(other),
            };
            Ok(map
                .get(&key)
                .cloned()
                .unwrap_or_else(|| args.get(1).cloned().unwrap_or(Value::Null)))
        }
        (Value::Object(map), "keys") => Ok(Value::Array(
            map.keys().cloned().map(Value::String).collect(),
        )),
        (Value::Object(map), "values") => Ok(Value::Array(map.values().cloned().collect())),
        (Value::Object(map), "items") => Ok(Value::Array(
            map.iter()
                .map(|(k, v)| Value::Array(vec![Value::String(k.clone()), v.clone()]))
                .collect(),
        )),
        (Value::String(s), "lower") => Ok(Value::String(s.to_lowercase())),
        (Value::String(s), "upper") => Ok(Value::String(s.to_uppercase())),
        (Value::String(s), "strip") => Ok(Value::String(s.trim().to_string())),
        (Value::String(s), "lstrip") => Ok(Value::String(s.trim_start().to_string())),
        (Value::String(s), "rstrip") => Ok(Value::String(s.trim_end().to_string())),
        (Value::String(s), "startswith") => Ok(Value::Bool(s.starts_with(str_arg(name, args, 0)?))),
        (Value::String(s), "endswith") => Ok(Value::Bool(s.ends_with(str_arg(name, args, 0)?))),
        (Value::String(s), "isdigit") => Ok(Value::Bool(
            !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()),
        )),
        (Value::String(s), "isalpha") => Ok(Value::Bool(
            !s.is_empty() && s.chars().all(char::is_alphabetic),
        )),
        (Value::String(s), "split") => {
            let parts: Vec<Value> = match args.first() {
                None | Some(Value::Null) => s
                    .split_whitespace()
                    .map(|p| Value::String(p.into()))
                    .collect(),
                Some(_) => s
                    .split(str_arg(name, args, 0)?)
                    .map(|p| Value::String(p.into()))
                    .collect(),
            };
            Ok(Value::Array(parts))
        }
        (Value::String(s), "replace") => {
            let (from, to) = (str_arg(name, args, 0)?, str_arg(name, args, 1)?);
            let hits = if from.is_empty() {
                s.chars().count() as u64 + 1
            } else {
                s.matches(from).count() as u64
            };
            env.charge_bytes(hits.saturating_mul(to.len() as u64))?;
            Ok(Value::String(s.replace(from, to)))
        }
        (Value::String(s), "count") => Ok(Value::from(s.matches(str_arg(name, args, 0)?).count())),
        (Value::String(sep), "join") => {
            arity(name, args, 1, 1)?;
            let items = iterate(&args[0], env)?;
            env.charge_bytes((sep.len() as u64).saturating_mul(items.len() as u64))?;
            let parts: Result<Vec<String>, ExprError> = items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => err(format!("join() expects strings, got {}", py_type(&other))),
                })
                .collect();
            Ok(Value::String(parts?.join(sep)))
        }
        (Value::Array(items), "count") => {
            arity(name, args, 1, 1)?;
            Ok(Value::from(
                items.iter().filter(|v| py_eq(v, &args[0])).count(),
            ))
        }
        (Value::Array(items), "index") => {
            arity(name, args, 1, 1)?;
            items
                .iter()
                .position(|v| py_eq(v, &args[0]))
                .map(Value::from)
                .ok_or_else(|| ExprError::Eval("list.index(x): x not in list".into()))
        }
        (other, _) => err(format!("{} has no method {name:?}", py_type(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(src: &str, data: Value) -> Result<Value, ExprError> {
        Expr::parse(src, &["data"])?.eval(&[("data", data)], &CancellationToken::new())
    }

    #[test]
    fn comparisons_logic_and_membership() {
        let d = json!({"score": 0.9, "status": "Active", "tags": ["a", "b"], "n": null, "age": 30});
        for (src, want) in [
            ("data['score'] > 0.8", true),
            (
                "data.score > 0.8 and data['status'].lower() == 'active'",
                true,
            ),
            ("18 <= data['age'] < 65", true),
            ("1 < data['age'] < 20", false),
            ("'a' in data['tags'] and 'z' not in data['tags']", true),
            ("data['n'] is None", true),
            ("data.get('missing') is not None", false),
            ("data.get('missing', 3) == 3.0", true),
            ("not data['tags']", false),
            (
                "len(data['tags']) == 2 and data['status'].startswith('Act')",
                true,
            ),
            ("any(t == 'b' for t in data['tags'])", true),
            ("all([x > 1 for x in [2, 3]])", true),
            (
                "sum([1, 2, 3]) == 6 and max(1, 5) == 5 and min([4, 2]) == 2 and abs(-3) == 3",
                true,
            ),
            (
                "int('42') + 1 == 43 and float('1.5') == 1.5 and str(7) == '7' and bool(0) == False",
                true,
            ),
            (
                "data['tags'][-1] == 'b' and data['tags'][0:1] == ['a']",
                true,
            ),
            ("'x' if data['age'] > 10 else 'y'", true),
            ("{'a': 1}['a'] == 1 and (1, 2) == [1, 2]", true),
            (
                "7 // 2 == 3 and -7 // 2 == -4 and 7 % 3 == 1 and 2 ** 10 == 1024 and 7 / 2 == 3.5",
                true,
            ),
        ] {
            let got = Expr::parse(src, &["data"])
                .unwrap()
                .eval_bool(&[("data", d.clone())], &CancellationToken::new());
            assert_eq!(got, Ok(want), "{src}");
        }
        assert_eq!(ev("data['a'] + 1", json!({"a": 2})), Ok(json!(3)));
        assert_eq!(ev("data or 'default'", json!("")), Ok(json!("default")));
    }

    #[test]
    fn unknown_names_functions_and_nodes_are_rejected_when_parsed() {
        let cases = [
            ("__import__('os')", "function \"__import__\""),
            ("open('/etc/passwd')", "function \"open\""),
            ("x > 1", "name \"x\""),
            ("data.__class__", "attribute \"__class__\""),
            ("lambda: 1", "Lambda"),
            ("data.pop()", "method \"pop\""),
            ("f'{data}'", "JoinedStr"),
            ("len(data, key=1)", "keyword arguments"),
        ];
        for (src, want) in cases {
            let e = Expr::parse(src, &["data"]).unwrap_err();
            assert!(matches!(e, ExprError::Unsupported { .. }), "{src}: {e}");
            assert!(e.to_string().contains(want), "{src}: {e}");
        }
        let e = Expr::parse("data ==", &["data"]).unwrap_err();
        assert!(matches!(e, ExprError::Syntax { .. }), "{e}");
    }

    #[test]
    fn runtime_errors_name_the_problem() {
        assert_eq!(
            ev("data['missing']", json!({})),
            Err(ExprError::Eval("KeyError: \"missing\"".into()))
        );
        assert!(
            ev("data[5]", json!([1]))
                .unwrap_err()
                .to_string()
                .contains("out of range")
        );
        assert!(
            ev("data < 1", json!("s"))
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(
            ev("1 / 0", json!(null))
                .unwrap_err()
                .to_string()
                .contains("division by zero")
        );
    }

    #[test]
    fn deep_nesting_is_rejected_before_parsing() {
        let hostile = [
            "not ".repeat(100_000) + "data",
            "-".repeat(100_000) + "1",
            "[".repeat(50_000) + &"]".repeat(50_000),
            vec!["1"; 50_000].join("+"),
            "data".to_string() + &".a".repeat(10_000),
            "(".repeat(300) + "data" + &")".repeat(300),
        ];
        for src in &hostile {
            let e = Expr::parse(src, &["data"]).unwrap_err();
            assert!(
                matches!(
                    e,
                    ExprError::TooDeep {
                        limit: MAX_NESTING,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains("limit of 256"), "{e}");
            assert!(
                e.to_string().len() < 300,
                "the message quotes only the start: {e}"
            );
        }
    }

    #[test]
    fn nesting_inside_strings_and_flat_chains_are_fine() {
        let quoted = format!("data == '{}'", "(((".repeat(1000));
        assert_eq!(ev(&quoted, json!("x")), Ok(json!(false)));
        let long_and = vec!["data > 0"; 40].join(" and ");
        assert_eq!(ev(&long_and, json!(1)), Ok(json!(true)));
    }

    #[test]
    fn the_deepest_accepted_expression_evaluates_on_a_small_stack() {
        // As deep as the scan lets through, on a 2 MiB stack (what tokio gives its worker threads).
        let mut depth = 0;
        while !exceeds_nesting(
            &format!("{}1{}", "-(".repeat(depth + 1), ")".repeat(depth + 1)),
            MAX_NESTING,
        ) {
            depth += 1;
        }
        let src = format!("{}1{}", "-(".repeat(depth), ")".repeat(depth));
        let result = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || ev(&src, json!(null)))
            .expect("thread")
            .join()
            .expect("no overflow");
        assert!(result.is_ok(), "{result:?}");
        let nots = format!("{}data", "not ".repeat(MAX_NESTING - limits::LEVEL_COST));
        let result = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || ev(&nots, json!(true)))
            .expect("thread")
            .join()
            .expect("no overflow");
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn runaway_evaluations_end_in_a_limit_error() {
        for src in [
            "sorted(list('z' * 10**8))",
            "'z' * 10**8",
            "len([x for x in data for y in data for z in data])",
            "len(('ab' * 1000000).replace('a', 'a' * 1000))",
            "('x' * 100000).join(data)",
        ] {
            let data = json!((0..1000).map(|i| i.to_string()).collect::<Vec<_>>());
            let e = ev(src, data).unwrap_err();
            assert!(matches!(e, ExprError::Limit(_)), "{src}: {e}");
        }
        assert_eq!(ev("len('z' * 1000)", json!(null)), Ok(json!(1000)));
    }

    #[test]
    fn a_cancelled_attempt_stops_the_evaluation() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let data = json!((0..100).collect::<Vec<_>>());
        let e = Expr::parse(
            "len([x for x in data for y in data for z in data])",
            &["data"],
        )
        .unwrap()
        .eval(&[("data", data)], &cancel)
        .unwrap_err();
        assert!(e.to_string().contains("timed out or cancelled"), "{e}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Tokens of the language and of what it refuses; random sequences of them are hostile sources.
        const TOKENS: &[&str] = &[
            "data",
            "x",
            "1",
            "0",
            "-1",
            "2.5",
            "1e308",
            "10",
            "'z'",
            "\"s\"",
            "True",
            "None",
            " + ",
            " - ",
            " * ",
            " / ",
            " // ",
            " % ",
            " ** ",
            "-",
            "not ",
            " and ",
            " or ",
            " if ",
            " else ",
            " for x in ",
            " in ",
            " is ",
            "==",
            "<",
            ">=",
            "(",
            ")",
            "[",
            "]",
            "{",
            "}",
            ",",
            ":",
            ".",
            "['a']",
            "[0]",
            "[1:]",
            "len(",
            "sorted(",
            "list(",
            "range(",
            "str(",
            "int(",
            "lower()",
            "lambda",
            "import",
            "__class__",
            "#",
            "\\",
            "'",
            "\"",
            "\n",
            " ",
        ];

        fn source() -> impl Strategy<Value = String> {
            proptest::collection::vec(proptest::sample::select(TOKENS), 0..20)
                .prop_map(|tokens| tokens.concat())
        }

        fn parse_and_eval(src: &str) {
            if let Ok(expr) = Expr::parse(src, &["data"]) {
                let data = json!({"a": [1, "b", null], "s": "Zz", "n": 2});
                let _ = expr.eval(&[("data", data)], &CancellationToken::new());
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_strings_parse_or_fail_without_panicking(src in any::<String>()) {
                parse_and_eval(&src);
            }

            #[test]
            fn token_soup_parses_and_evaluates_or_fails_without_panicking(src in source()) {
                parse_and_eval(&src);
            }

            #[test]
            fn nesting_beyond_the_limit_is_refused_before_parsing(
                opener in proptest::sample::select(&["not ", "-", "(", "[", "+", "~"][..]),
                depth in (MAX_NESTING + 1)..(4 * MAX_NESTING),
            ) {
                let closer = match opener {
                    "(" => ")",
                    "[" => "]",
                    _ => "",
                };
                let src = format!("{}data{}", opener.repeat(depth), closer.repeat(depth));
                prop_assert!(exceeds_nesting(&src, MAX_NESTING));
                let refused = matches!(
                    Expr::parse(&src, &["data"]),
                    Err(ExprError::TooDeep { limit: MAX_NESTING, .. })
                );
                prop_assert!(refused, "{} x {:?} was not refused", depth, opener);
            }

            #[test]
            fn nesting_within_the_limit_never_overflows_the_stack(
                openers in proptest::collection::vec(
                    proptest::sample::select(&["not ", "-", "(", "[", "data + ", "1 if data else "][..]),
                    0..MAX_NESTING,
                ),
            ) {
                let mut src: String = openers.concat();
                src.push_str("data");
                for opener in openers.iter().rev() {
                    match *opener {
                        "(" => src.push(')'),
                        "[" => src.push(']'),
                        _ => {}
                    }
                }
                parse_and_eval(&src);
            }
        }
    }
}
