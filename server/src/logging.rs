//! Logging: readable lines by default, etcd's zap-style JSON lines with `--logger zap`.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

pub fn init(logger: &str, level: &str) {
    // etcd's "panic" and "fatal" levels only log what precedes an exit: treat them as errors.
    let level = match level {
        "panic" | "fatal" => "error",
        other => other,
    };
    let filter = EnvFilter::try_from_env("KEELSON_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},openraft=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if logger == "zap" {
        builder.event_format(ZapJson).init();
    } else {
        builder.init();
    }
}

/// One JSON object per line with zap's production keys, as etcd writes them: `level`
/// (lower case), `ts`, `caller`, `msg`, then the event's fields. Log shippers and the
/// tooling that greps etcd's logs key on these names.
struct ZapJson;

impl<S, N> FormatEvent<S, N> for ZapJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("level".into(), Value::from(zap_level(*meta.level())));
        line.insert("ts".into(), Value::from(ts));
        if let (Some(file), Some(number)) = (meta.file(), meta.line()) {
            line.insert("caller".into(), Value::from(format!("{file}:{number}")));
        }
        let mut fields = FieldsToJson::default();
        event.record(&mut fields);
        line.insert(
            "msg".into(),
            Value::from(fields.message.unwrap_or_default()),
        );
        for (key, value) in fields.fields {
            line.insert(key, value);
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

fn zap_level(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG | Level::TRACE => "debug",
    }
}

#[derive(Default)]
struct FieldsToJson {
    message: Option<String>,
    fields: Vec<(String, Value)>,
}

impl Visit for FieldsToJson {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
}

impl FieldsToJson {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.push((field.name().to_string(), value));
        }
    }
}
