//! Where the metrics handles of an observer are registered: the recorder (the global one or
//! one given), and the labels added to every series.

use std::sync::Arc;

use metrics::{Label, Recorder};

/// A recorder shared by an observer and everything it registers.
pub(crate) type SharedRecorder = Arc<dyn Recorder + Send + Sync>;

/// Where handles are registered, and the labels added to every series.
#[derive(Clone, Default)]
pub(crate) struct Registrar {
    /// `None`: the global recorder (`metrics::set_global_recorder`, or an exporter's install).
    pub(crate) recorder: Option<SharedRecorder>,
    pub(crate) labels: Vec<Label>,
}

impl Registrar {
    /// Run `f` with this registrar's recorder as the current one.
    pub(crate) fn scope<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.recorder {
            Some(r) => metrics::with_local_recorder(r.as_ref(), f),
            None => f(),
        }
    }

    /// `first` (the identifying label), then `rest`, then the extra labels.
    pub(crate) fn labels(
        &self,
        first: &Label,
        rest: &[(&'static str, &'static str)],
    ) -> Vec<Label> {
        let mut v = Vec::with_capacity(1 + rest.len() + self.labels.len());
        v.push(first.clone());
        v.extend(rest.iter().map(|(k, val)| Label::from_static_parts(k, val)));
        v.extend(self.labels.iter().cloned());
        v
    }
}
