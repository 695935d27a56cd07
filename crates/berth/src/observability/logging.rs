//! JSON logs, one object per line, correlated by job.
//!
//! `tracing-subscriber`'s JSON formatter nests span fields under `span` and
//! `spans`; log pipelines (Loki, Fluentd, jq) want the correlation fields at
//! the top level of every line. So this layer flattens: every line carries
//! `timestamp`, `level`, `target`, `message`, the event's fields, and the
//! fields of every span it happened in. Job-scoped work runs inside a
//! [`job_span`], which is how `repository`, `workflow`, `run_id`, `job_id`
//! and `berth_job_id` reach each of its lines.
//!
//! The level filter sits behind a reload handle so operators can change it at
//! run time without a restart.

use std::fmt::Debug;
use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;

/// Where log lines go; stderr in production, a buffer in tests.
pub type LogSink = Arc<Mutex<dyn Write + Send>>;

/// Changes the active log filter at run time.
#[derive(Clone)]
pub struct LogLevelHandle {
    handle: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    current: Arc<Mutex<String>>,
}

impl LogLevelHandle {
    /// Replaces the filter, e.g. `debug` or `berth::dispatch=trace,info`.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let parsed = EnvFilter::try_new(filter).map_err(|e| format!("invalid log filter: {e}"))?;
        self.handle
            .reload(parsed)
            .map_err(|e| format!("cannot change the log filter: {e}"))?;
        *self.current.lock().expect("log level lock") = filter.to_string();
        Ok(())
    }

    pub fn get(&self) -> String {
        self.current.lock().expect("log level lock").clone()
    }
}

/// Installs the global JSON subscriber writing to stderr. Returns the handle
/// that changes the level later. Calling it twice keeps the first subscriber.
pub fn init(filter: &str) -> LogLevelHandle {
    let sink: LogSink = Arc::new(Mutex::new(std::io::stderr()));
    let (subscriber, handle) = subscriber(filter, sink);
    let _ = tracing::subscriber::set_global_default(subscriber);
    handle
}

/// A subscriber writing JSON lines to `sink`, for `init` and for tests.
pub fn subscriber(
    filter: &str,
    sink: LogSink,
) -> (impl Subscriber + Send + Sync + 'static, LogLevelHandle) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let current = Arc::new(Mutex::new(filter.to_string()));
    let (filter, handle) = reload::Layer::new(filter);
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(JsonLayer { sink });
    (subscriber, LogLevelHandle { handle, current })
}

/// The span every job-scoped piece of work runs in. Fields not yet known are
/// recorded later with `span.record(...)`.
#[macro_export]
macro_rules! job_span {
    ($job:expr) => {
        tracing::info_span!(
            "job",
            berth_job_id = %$job.id,
            repository = %$job.repository,
            workflow = $job.workflow.as_deref().unwrap_or(""),
            run_id = $job.run_id,
            job_id = $job.github_job_id,
            pool = %$job.pool,
            container_id = tracing::field::Empty,
            runner_name = tracing::field::Empty,
        )
    };
}
pub use job_span;

struct JsonLayer {
    sink: LogSink,
}

/// Span fields kept in the span's extensions.
struct SpanFields(Map<String, Value>);

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:#}")));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

impl<S> Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Map::new();
        attrs.record(&mut JsonVisitor(&mut fields));
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(SpanFields(fields)) = ext.get_mut::<SpanFields>() {
            values.record(&mut JsonVisitor(fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = Map::new();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        line.insert("timestamp".into(), Value::from(now));
        line.insert("level".into(), Value::from(meta.level().as_str()));
        line.insert("target".into(), Value::from(meta.target()));
        // Outer spans first so inner spans and the event itself win on clashes.
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                    for (k, v) in fields {
                        line.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        let mut bytes = serde_json::to_vec(&Value::Object(line)).unwrap_or_default();
        bytes.push(b'\n');
        if let Ok(mut sink) = self.sink.lock() {
            let _ = sink.write_all(&bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buf: &Buffer) -> Vec<Value> {
        String::from_utf8(buf.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn span_fields_are_flattened_onto_each_line() {
        let buf = Buffer::default();
        let (subscriber, _) = subscriber("info", Arc::new(Mutex::new(buf.clone())));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "job",
                repository = "acme/widgets",
                run_id = 7u64,
                container_id = tracing::field::Empty
            );
            let _g = span.enter();
            span.record("container_id", "abc123");
            tracing::info!(step = "start", "container started");
        });
        let lines = lines(&buf);
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(l["message"], "container started");
        assert_eq!(l["repository"], "acme/widgets");
        assert_eq!(l["run_id"], 7);
        assert_eq!(l["container_id"], "abc123");
        assert_eq!(l["step"], "start");
        assert_eq!(l["level"], "INFO");
        assert!(l["timestamp"].as_str().unwrap().contains('T'));
    }

    #[test]
    fn level_changes_at_run_time() {
        let buf = Buffer::default();
        let (subscriber, handle) = subscriber("info", Arc::new(Mutex::new(buf.clone())));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("hidden");
            handle.set("debug").unwrap();
            tracing::debug!("shown");
            assert!(handle.set("not a [filter").is_err());
        });
        let lines = lines(&buf);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["message"], "shown");
        assert_eq!(handle.get(), "debug");
    }
}
