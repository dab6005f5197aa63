//! `foreach`: runs its loop stages once per item, inside this stage, as FlowMason's executor does.
//!
//! Input: `items` (a list), `loop_stages` (stage ids of this pipeline), `item_variable` (default `item`),
//! `index_variable` (default `index`), `collect_results` (default true), `parallel` (default false),
//! `max_parallel` (default 5), `break_on_error` (default true), `filter_expression` (optional FlowMason
//! Python expression over `item`; items it is false for, or fails on, are left out).
//!
//! Loop stages see the current item as FlowMason's loop stages do, through this stage's id:
//! `{{upstream.<foreach>.current_item}}`, `{{upstream.<foreach>.current_index}}`,
//! `{{upstream.<foreach>.<item_variable>}}`, `{{upstream.<foreach>.<index_variable>}}` and
//! `{{upstream.<foreach>.loop_total}}`; and the outputs of earlier loop stages of the same iteration. The
//! loop stages run in the pipeline's dependency order (see `flowmason_actors::nested`); an iteration's
//! result is the output of its last stage. The loop stages are returned as this stage's `skip`, so the
//! engine ends them `Skipped` (`BranchNotTaken`) rather than running them again as ordinary stages;
//! stages after the loop should depend on the foreach stage and read `results`.
//!
//! A triggered `break_loop` among an iteration's stages ends the loop after that iteration; a triggered
//! `continue_loop` leaves the iteration out of `results` (see `loop_signals`).
//!
//! Output: `{total_items, processed_items, skipped_items, items_to_process, results, errors,
//! is_complete, broken, break_result, break_message, continued_items}`; `results` in item order (empty
//! unless `collect_results`; a failed iteration's is `null`), `errors` lists the failed iterations
//! `{index, stage, error}` when `break_on_error` is false, `continued_items` the indexes of continued
//! iterations. Errors: with `break_on_error` the
//! first failing iteration fails the stage, with that stage's class; `config` for bad fields; `cancelled`
//! when the attempt is cancelled (the loop stops at once).

use std::collections::BTreeMap;

use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value};

use flowmason_actors::nested;
use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};
use flowmason_store::ErrorClass;

use super::expr::{Expr, ExprError};
use super::loop_signals::{self, Signal};
use super::{input_object, opt_bool, opt_str, opt_str_list, static_config, type_name};

/// The component type name.
pub const NAME: &str = "foreach";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForEach;

struct Settings {
    loop_stages: Vec<String>,
    item_variable: String,
    index_variable: String,
    collect_results: bool,
    parallel: bool,
    max_parallel: usize,
    break_on_error: bool,
    filter: Option<Expr>,
}

fn settings(map: &Map<String, Value>) -> Result<Settings, ComponentError> {
    let max_parallel = match map.get("max_parallel") {
        None | Some(Value::Null) => 5,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => n as usize,
            _ => {
                return Err(ComponentError::config(format!(
                    "{NAME}: `max_parallel` must be an integer of at least 1, got {v}"
                )));
            }
        },
    };
    let filter = match opt_str(NAME, map, "filter_expression")? {
        Some(src) if !src.trim().is_empty() => Some(
            Expr::parse(src, &["item"])
                .map_err(|e| ComponentError::config(format!("{NAME}: `filter_expression`: {e}")))?,
        ),
        _ => None,
    };
    Ok(Settings {
        loop_stages: opt_str_list(NAME, map, "loop_stages")?,
        item_variable: opt_str(NAME, map, "item_variable")?
            .unwrap_or("item")
            .to_string(),
        index_variable: opt_str(NAME, map, "index_variable")?
            .unwrap_or("index")
            .to_string(),
        collect_results: opt_bool(NAME, map, "collect_results", true)?,
        parallel: opt_bool(NAME, map, "parallel", false)?,
        max_parallel,
        break_on_error: opt_bool(NAME, map, "break_on_error", true)?,
        filter,
    })
}

impl Component for ForEach {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(statics) = static_config(NAME, config)? else {
            return Ok(());
        };
        settings(&statics).map(|_| ())
    }

    fn runs_stages(&self) -> bool {
        true
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let mut map = input_object(NAME, input)?;
            let s = settings(&map)?;
            let items = match map.remove("items") {
                Some(Value::Array(items)) => items,
                None | Some(Value::Null) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `items` is required"
                    )));
                }
                Some(other) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `items` must be a list, got {}",
                        type_name(&other)
                    )));
                }
            };
            let view = ctx.run_view().cloned().ok_or_else(|| {
                ComponentError::internal(format!(
                    "{NAME}: the engine gave this stage no view of its run"
                ))
            })?;
            let total = items.len();
            let items: Vec<Value> = match &s.filter {
                Some(expr) => {
                    let mut kept = Vec::with_capacity(items.len());
                    for item in items {
                        // An item the expression fails on is left out, as in FlowMason; an
                        // expression over its limits fails the stage.
                        match expr.eval_bool(&[("item", item.clone())], &ctx.cancel) {
                            Ok(true) => kept.push(item),
                            Ok(false) | Err(ExprError::Eval(_)) => {}
                            Err(other) => {
                                return Err(ComponentError::config(format!(
                                    "{NAME}: `filter_expression`: {other}"
                                )));
                            }
                        }
                    }
                    kept
                }
                None => items,
            };
            let count = items.len();
            let iteration = |index: usize, item: Value| {
                let mut vars = Map::new();
                vars.insert("current_item".into(), item.clone());
                vars.insert("current_index".into(), Value::from(index));
                vars.insert("loop_total".into(), Value::from(count));
                vars.insert(s.item_variable.clone(), item);
                vars.insert(s.index_variable.clone(), Value::from(index));
                let overlay = BTreeMap::from([(ctx.stage_id.clone(), Value::Object(vars))]);
                let (ctx, view, stages) = (&ctx, &view, &s.loop_stages);
                async move {
                    let label = index.to_string();
                    (
                        index,
                        nested::run_stages(ctx, view, stages, &label, overlay).await,
                    )
                }
            };
            // `None`: a continued iteration, or one after a break, left out of `results`.
            let mut results: Vec<Option<Value>> = vec![None; count];
            let mut errors = Vec::new();
            let mut continued = Vec::new();
            let mut broken: Option<(Value, Value)> = None;
            let width = if s.parallel { s.max_parallel } else { 1 };
            let mut stream = futures::stream::iter(items.iter().cloned().enumerate())
                .map(|(i, item)| iteration(i, item))
                .buffered(width);
            while let Some((index, outcome)) = stream.next().await {
                if ctx.cancel.is_cancelled() {
                    return Err(ComponentError::new(
                        ErrorClass::Cancelled,
                        format!("{NAME}: cancelled"),
                    ));
                }
                match outcome {
                    Ok(o) => match loop_signals::signal(&view.plan, &o.outputs) {
                        // A break starts no further iteration (in parallel, those under way are
                        // dropped).
                        Some(Signal::Break { result, message }) => {
                            broken = Some((result, message));
                            break;
                        }
                        Some(Signal::Continue) => continued.push(index),
                        None => results[index] = Some(o.last.unwrap_or(Value::Null)),
                    },
                    Err(e) if s.break_on_error || e.error.class == ErrorClass::Cancelled => {
                        return Err(e.into_component_error(&format!("{NAME}: iteration {index}")));
                    }
                    Err(e) => {
                        results[index] = Some(Value::Null);
                        errors.push(serde_json::json!({
                            "index": index, "stage": e.stage, "error": e.error.message,
                        }));
                    }
                }
            }
            drop(stream);
            let results: Vec<Value> = results.into_iter().flatten().collect();
            let (break_result, break_message) = broken.clone().unwrap_or_default();
            let output = serde_json::json!({
                "total_items": total,
                "processed_items": count,
                "skipped_items": total - count,
                "items_to_process": items,
                "results": if s.collect_results { results } else { Vec::new() },
                "errors": errors,
                "is_complete": true,
                "broken": broken.is_some(),
                "break_result": break_result,
                "break_message": break_message,
                "continued_items": continued,
            });
            Ok(ComponentOutput {
                output,
                skip: s.loop_stages,
            })
        })
    }
}
