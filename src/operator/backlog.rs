//! A controller's queue depth, `flowmason_controller_queue_depth{controller}`: the objects whose change
//! has been seen and whose reconcile has not started yet.
//!
//! kube-runtime's `Controller` keeps its queue (a debouncing scheduler) to itself, so the controllers
//! count it at its two ends: every object reference their input streams hand to the controller is
//! `requested`, and each reconcile marks its object `started` when it begins (a reference the
//! controller drops because the object is gone is `dropped`). Like the scheduler, the backlog holds a
//! reference once however often it is requested. Requeues waiting for their timer are not counted
//! until the timer fires and the reconcile begins: they are scheduled work, not a queue.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::metrics::Metrics;

/// The namespace and name of an object waiting in one controller's queue.
type Key = (Option<String>, String);

/// Objects waiting for a reconcile in one controller, published to the queue-depth gauge on change.
pub struct Backlog {
    controller: &'static str,
    pending: Mutex<HashSet<Key>>,
    metrics: Option<Arc<Metrics>>,
}

impl Backlog {
    /// An empty backlog for `controller` (the gauge's label), published to `metrics` if any.
    pub fn new(controller: &'static str, metrics: Option<Arc<Metrics>>) -> Backlog {
        let backlog = Backlog {
            controller,
            pending: Mutex::new(HashSet::new()),
            metrics,
        };
        backlog.publish(0);
        backlog
    }

    /// The controller was asked to reconcile this object.
    pub fn requested(&self, namespace: Option<&str>, name: &str) {
        self.update(|pending| {
            pending.insert((namespace.map(str::to_owned), name.to_owned()));
        });
    }

    /// A reconcile of this object has begun.
    pub fn started(&self, namespace: Option<&str>, name: &str) {
        self.forget(namespace, name);
    }

    /// The controller dropped a request for this object (it is no longer in its cache).
    pub fn dropped(&self, namespace: Option<&str>, name: &str) {
        self.forget(namespace, name);
    }

    /// The controller stopped: nothing waits in its queue any more.
    pub fn clear(&self) {
        self.update(HashSet::clear);
    }

    fn forget(&self, namespace: Option<&str>, name: &str) {
        self.update(|pending| {
            pending.remove(&(namespace.map(str::to_owned), name.to_owned()));
        });
    }

    fn update(&self, change: impl FnOnce(&mut HashSet<Key>)) {
        // The set stays consistent whatever a panicking holder was doing: each change is one call.
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut pending);
        // Published under the lock, so that two updates cannot leave the gauge on the older count.
        self.publish(pending.len());
    }

    fn publish(&self, depth: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.set_queue_depth(self.controller, depth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(metrics: &Metrics, controller: &str) -> Option<f64> {
        let text = metrics.render().expect("render metrics");
        let prefix = format!("flowmason_controller_queue_depth{{controller=\"{controller}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().expect("gauge value"))
    }

    #[test]
    fn a_new_backlog_publishes_zero() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let _backlog = Backlog::new("pipelinerun", Some(metrics.clone()));
        assert_eq!(gauge(&metrics, "pipelinerun"), Some(0.0));
    }

    #[test]
    fn repeated_requests_for_one_object_count_once_until_its_reconcile_starts() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let backlog = Backlog::new("pipelinerun", Some(metrics.clone()));
        backlog.requested(Some("default"), "a");
        backlog.requested(Some("default"), "a");
        backlog.requested(Some("default"), "b");
        backlog.requested(Some("other"), "a");
        assert_eq!(gauge(&metrics, "pipelinerun"), Some(3.0));
        backlog.started(Some("default"), "a");
        assert_eq!(gauge(&metrics, "pipelinerun"), Some(2.0));
        // A change seen while the reconcile runs waits for the next reconcile.
        backlog.requested(Some("default"), "a");
        assert_eq!(gauge(&metrics, "pipelinerun"), Some(3.0));
    }

    #[test]
    fn dropped_and_unknown_objects_leave_the_count_right() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let backlog = Backlog::new("pipeline", Some(metrics.clone()));
        backlog.requested(Some("default"), "gone");
        backlog.requested(None, "cluster-scoped");
        backlog.dropped(Some("default"), "gone");
        // A requeue fired by its timer was never requested through an input stream.
        backlog.started(Some("default"), "requeued");
        assert_eq!(gauge(&metrics, "pipeline"), Some(1.0));
        backlog.started(None, "cluster-scoped");
        assert_eq!(gauge(&metrics, "pipeline"), Some(0.0));
    }

    #[test]
    fn clearing_empties_the_gauge_of_that_controller_only() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let runs = Backlog::new("pipelinerun", Some(metrics.clone()));
        let pipelines = Backlog::new("pipeline", Some(metrics.clone()));
        runs.requested(Some("default"), "a");
        pipelines.requested(Some("default"), "p");
        runs.clear();
        assert_eq!(gauge(&metrics, "pipelinerun"), Some(0.0));
        assert_eq!(gauge(&metrics, "pipeline"), Some(1.0));
    }
}
