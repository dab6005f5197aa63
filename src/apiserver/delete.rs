//! Deletion: finalizers and `deletionTimestamp` (an object with finalizers is only marked; it goes when
//! the last finalizer is removed), preconditions, and the three propagation policies for dependents
//! (objects whose `ownerReferences` name the deleted one):
//!
//! - `Background` (default): the owner goes now, then each dependent is deleted (a dependent that still
//!   has another existing owner only loses this ownerReference, as the garbage collector does);
//! - `Foreground`: the owner gets the `foregroundDeletion` finalizer, its dependents are deleted, and the
//!   owner goes once none is left (dependents held by their own finalizers keep it);
//! - `Orphan`: dependents lose their ownerReference to the owner and stay.
//!
//! Deleting a namespace deletes what it contains first. All of this runs synchronously in the request
//! (on a blocking thread), so when `DELETE` answers, the cascade has been carried out.

use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::objects::{deletion_complete, now_rfc3339};
use super::registry::ResourceType;
use super::store::{ChangeType, Mutation, ObjectKey, scan_prefix};

const FOREGROUND: &str = "foregroundDeletion";

/// How dependents are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        match text {
            "Background" => Ok(Propagation::Background),
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            other => Err(ApiError::BadRequest(format!(
                "propagationPolicy: unsupported value {other:?}: supported values: \"Background\", \"Foreground\", \"Orphan\""
            ))),
        }
    }
}

/// `DeleteOptions` (from the body and the query).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub propagation: Propagation,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl DeleteOptions {
    /// Reads a `DeleteOptions` body (may be empty) and the `propagationPolicy` query parameter.
    pub fn parse(body: &[u8], query_policy: Option<&str>) -> Result<Self, ApiError> {
        let mut opts = DeleteOptions::default();
        let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(body).map_err(|e| {
                ApiError::BadRequest(format!("DeleteOptions body is not valid JSON: {e}"))
            })?
        };
        if let Some(p) = body["propagationPolicy"].as_str().or(query_policy) {
            opts.propagation = Propagation::parse(p)?;
        } else if body["orphanDependents"] == json!(true) {
            opts.propagation = Propagation::Orphan;
        }
        opts.uid = body["preconditions"]["uid"].as_str().map(str::to_string);
        opts.resource_version = body["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        Ok(opts)
    }
}

/// The result of a delete request.
#[derive(Debug)]
pub enum Deleted {
    /// Removed; its last state.
    Gone(Value),
    /// Marked for deletion, waiting for finalizers; its current state.
    Pending(Value),
}

/// The resource type of a stored key (`group/version/plural`).
pub fn type_of(state: &ApiState, key: &ObjectKey) -> Option<std::sync::Arc<ResourceType>> {
    let mut parts = key.resource.splitn(3, '/');
    let (group, version, plural) = (parts.next()?, parts.next()?, parts.next()?);
    state.registry.lookup(group, version, plural)
}

fn key_of(rt: &ResourceType, object: &Value) -> ObjectKey {
    ObjectKey::new(
        &rt.store_key(),
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default(),
    )
}

/// Deletes one object (blocking).
pub fn delete_object(
    state: &ApiState,
    rt: &ResourceType,
    key: &ObjectKey,
    opts: &DeleteOptions,
) -> Result<Deleted, ApiError> {
    let store = &state.store;
    let current = store
        .get(key)?
        .ok_or_else(|| ApiError::not_found(&rt.plural, &rt.group, &key.name))?;
    let uid = current["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(want) = &opts.uid
        && *want != uid
    {
        return Err(ApiError::conflict(
            &rt.plural,
            &rt.group,
            &key.name,
            &format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
        ));
    }
    if let Some(want) = &opts.resource_version {
        let have = current["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if want != have {
            return Err(ApiError::conflict(
                &rt.plural,
                &rt.group,
                &key.name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {have}"
                ),
            ));
        }
    }
    if opts.propagation == Propagation::Orphan {
        for dep in store.dependents(&uid)? {
            drop_owner_ref(state, &dep, &uid)?;
        }
    }
    if rt.group.is_empty() && rt.plural == "namespaces" {
        delete_namespace_contents(state, &key.name)?;
    }
    let foreground =
        opts.propagation == Propagation::Foreground && !store.dependents(&uid)?.is_empty();
    let outcome = store.mutate(key, |cur| {
        let Some(mut obj) = cur else {
            return Err(ApiError::not_found(&rt.plural, &rt.group, &key.name));
        };
        let mut finalizers: Vec<Value> = obj["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut changed = false;
        if foreground && !finalizers.contains(&json!(FOREGROUND)) {
            finalizers.push(json!(FOREGROUND));
            obj["metadata"]["finalizers"] = Value::Array(finalizers.clone());
            changed = true;
        }
        if finalizers.is_empty() {
            return Ok(Mutation::Delete);
        }
        if obj["metadata"]["deletionTimestamp"].is_null() {
            obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            changed = true;
        }
        Ok(if changed {
            Mutation::Put(obj)
        } else {
            Mutation::Keep
        })
    })?;
    let object = outcome.object.unwrap_or(current);
    if outcome.change == Some(ChangeType::Deleted) {
        after_removed(state, &object)?;
        return Ok(Deleted::Gone(object));
    }
    if foreground {
        for dep in store.dependents(&uid)? {
            cascade_to(state, &dep, &uid)?;
        }
        if let Some(gone) = finish_foreground(state, key)? {
            return Ok(Deleted::Gone(gone));
        }
    }
    match store.get(key)? {
        Some(now) => Ok(Deleted::Pending(now)),
        None => Ok(Deleted::Gone(object)),
    }
}

/// Runs after any removal (a delete, or an update that removed the last finalizer): cascades to the
/// object's dependents and lets foreground-deleting owners finish.
pub fn after_removed(state: &ApiState, object: &Value) -> Result<(), ApiError> {
    let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
    if !uid.is_empty() {
        for dep in state.store.dependents(uid)? {
            cascade_to(state, &dep, uid)?;
        }
    }
    for owner in object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(owner_uid) = owner["uid"].as_str() else {
            continue;
        };
        if let Some(owner_key) = state.store.key_of_uid(owner_uid)? {
            finish_foreground(state, &owner_key)?;
        }
    }
    Ok(())
}

/// Deletes a dependent whose owner `owner_uid` is going, unless another of its owners still exists
/// (then it only loses the reference).
fn cascade_to(state: &ApiState, dep: &ObjectKey, owner_uid: &str) -> Result<(), ApiError> {
    let Some(obj) = state.store.get(dep)? else {
        return Ok(());
    };
    let other_owner_alive = obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
        .filter(|u| *u != owner_uid)
        .map(|u| state.store.key_of_uid(u))
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .any(Option::is_some);
    if other_owner_alive {
        return drop_owner_ref(state, dep, owner_uid);
    }
    let Some(rt) = type_of(state, dep) else {
        return Ok(());
    };
    match delete_object(state, &rt, dep, &DeleteOptions::default()) {
        Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the ownerReference to `owner_uid` from `dep`.
fn drop_owner_ref(state: &ApiState, dep: &ObjectKey, owner_uid: &str) -> Result<(), ApiError> {
    state.store.mutate(dep, |cur| {
        let Some(mut obj) = cur else {
            return Ok::<_, ApiError>(Mutation::Keep);
        };
        let Some(refs) = obj["metadata"]["ownerReferences"].as_array() else {
            return Ok(Mutation::Keep);
        };
        let kept: Vec<Value> = refs
            .iter()
            .filter(|r| r["uid"].as_str() != Some(owner_uid))
            .cloned()
            .collect();
        if kept.len() == refs.len() {
            return Ok(Mutation::Keep);
        }
        if let Some(meta) = obj["metadata"].as_object_mut() {
            if kept.is_empty() {
                meta.remove("ownerReferences");
            } else {
                meta.insert("ownerReferences".into(), Value::Array(kept));
            }
        }
        Ok(Mutation::Put(obj))
    })?;
    Ok(())
}

/// A foreground-deleting owner with no dependents left loses its `foregroundDeletion` finalizer (and
/// goes, when it was the last). Returns its last state when it went.
fn finish_foreground(state: &ApiState, key: &ObjectKey) -> Result<Option<Value>, ApiError> {
    let Some(owner) = state.store.get(key)? else {
        return Ok(None);
    };
    let waiting = !owner["metadata"]["deletionTimestamp"].is_null()
        && owner["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.contains(&json!(FOREGROUND)));
    let uid = owner["metadata"]["uid"].as_str().unwrap_or_default();
    if !waiting || !state.store.dependents(uid)?.is_empty() {
        return Ok(None);
    }
    let outcome = state.store.mutate(key, |cur| {
        let Some(mut obj) = cur else {
            return Ok::<_, ApiError>(Mutation::Keep);
        };
        if let Some(f) = obj["metadata"]["finalizers"].as_array_mut() {
            f.retain(|x| x != FOREGROUND);
        }
        Ok(if deletion_complete(&obj) {
            Mutation::Delete
        } else {
            Mutation::Put(obj)
        })
    })?;
    if outcome.change == Some(ChangeType::Deleted)
        && let Some(obj) = outcome.object
    {
        after_removed(state, &obj)?;
        return Ok(Some(obj));
    }
    Ok(None)
}

/// Deletes every namespaced object in namespace `ns`.
fn delete_namespace_contents(state: &ApiState, ns: &str) -> Result<(), ApiError> {
    for rt in state.registry.all_types() {
        if !rt.namespaced {
            continue;
        }
        let page = state
            .store
            .list(&scan_prefix(&rt.store_key(), Some(ns)), None, 0, &|_| true)?;
        for obj in page.items {
            match delete_object(state, &rt, &key_of(&rt, &obj), &DeleteOptions::default()) {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
