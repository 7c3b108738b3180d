//! Watchers that record every response, ask for progress, and resume when their stream
//! breaks: from the revision after the last one they saw, on the same member first and then
//! on the next ones (as a client with several endpoints would).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions, WatchResponse};
use tokio::sync::watch;

use crate::committed::Event;
use crate::history::KeyValue;
use crate::traffic::{connect, Clock};
use crate::watch::{Received, Session, SessionEnd, WatchSpec};

/// At most this many sessions per watcher (a stream that breaks again and again).
const MAX_SESSIONS: usize = 500;
const RESUME_BACKOFF: Duration = Duration::from_millis(100);
/// A stream silent for this long (no event, no progress) is considered stuck and reopened.
const SILENCE: Duration = Duration::from_secs(15);
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Whatever the run does, a watcher never outlives this.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

pub struct WatcherConfig {
    pub id: usize,
    pub spec: WatchSpec,
    /// 0: from the current revision; otherwise the first revision wanted.
    pub start_revision: i64,
    /// Send RequestProgress this often.
    pub request_progress: Option<Duration>,
    /// Client endpoints of every member; the watcher starts on `home`.
    pub endpoints: Vec<String>,
    pub home: usize,
}

/// What the run tells its watchers: stop once caught up to this revision, or at once when
/// `abort` is set.
pub struct Control {
    pub target: watch::Receiver<Option<i64>>,
    pub abort: Arc<AtomicBool>,
}

fn kv_of(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn received(response: &WatchResponse, at: u64) -> Received {
    let events = response
        .events()
        .iter()
        .filter_map(|e| {
            let kv = e.kv()?;
            Some(Event {
                put: matches!(e.event_type(), EventType::Put),
                kv: kv_of(kv),
                prev: e.prev_kv().map(kv_of),
            })
        })
        .collect();
    Received {
        at,
        header_revision: response.header().map_or(0, |h| h.revision()),
        created: response.created(),
        canceled: response.canceled(),
        compact_revision: response.compact_revision(),
        cancel_reason: response.cancel_reason().to_string(),
        events,
    }
}

fn options(spec: &WatchSpec, start: i64) -> WatchOptions {
    let mut options = WatchOptions::new();
    options = if spec.end == "\0" {
        options.with_from_key()
    } else {
        options.with_range(spec.end.clone())
    };
    if spec.prev_kv {
        options = options.with_prev_key();
    }
    if spec.progress_notify {
        options = options.with_progress_notify();
    }
    if start > 0 {
        options = options.with_start_revision(start);
    }
    options
}

/// Runs one watcher until told to stop; returns its sessions.
pub async fn run(config: WatcherConfig, clock: Clock, mut control: Control) -> Vec<Session> {
    let mut sessions = Vec::new();
    let mut start = config.start_revision;
    let mut member = config.home;
    let mut failures_here = 0;
    let born = Instant::now();
    for _ in 0..MAX_SESSIONS {
        if control.abort.load(Ordering::Relaxed) || born.elapsed() > MAX_LIFETIME {
            break;
        }
        let endpoint = config.endpoints[member % config.endpoints.len()].clone();
        let mut session = Session {
            watcher: config.id,
            member: member % config.endpoints.len(),
            spec: config.spec.clone(),
            start_revision: start,
            responses: Vec::new(),
            end: SessionEnd::Stopped,
        };
        let opened = async {
            let mut client = connect(&endpoint).await?;
            client
                .watch(config.spec.key.clone(), Some(options(&config.spec, start)))
                .await
                .map_err(|e| e.to_string())
        };
        let stream = match tokio::time::timeout(OPEN_TIMEOUT, opened).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                session.end = SessionEnd::Broken(e);
                failures_here += 1;
                if failures_here >= 3 {
                    member += 1;
                    failures_here = 0;
                }
                tokio::time::sleep(RESUME_BACKOFF).await;
                // Sessions that never opened are not kept: they delivered nothing.
                continue;
            }
            Err(_) => {
                member += 1;
                tokio::time::sleep(RESUME_BACKOFF).await;
                continue;
            }
        };
        let (mut sender, mut responses) = stream.split();
        let mut last_request = Instant::now();
        let mut last_heard = Instant::now();
        let done = loop {
            if control.abort.load(Ordering::Relaxed) || born.elapsed() > MAX_LIFETIME {
                break true;
            }
            let target = *control.target.borrow();
            let seen = session.last_revision();
            if let Some(target) = target {
                if seen >= target {
                    break true;
                }
            }
            let every = match target {
                // Catching up: ask often.
                Some(_) => Some(Duration::from_millis(200)),
                None => config.request_progress,
            };
            if let Some(every) = every {
                if last_request.elapsed() >= every {
                    // A failed send shows as a broken stream below.
                    let _ = sender.request_progress().await;
                    last_request = Instant::now();
                }
            }
            if last_heard.elapsed() > SILENCE {
                session.end = SessionEnd::Broken(format!("silent for {SILENCE:?}"));
                break false;
            }
            let wait = tokio::time::timeout(Duration::from_millis(100), responses.message());
            let message = tokio::select! {
                m = wait => m,
                _ = control.target.changed() => continue,
            };
            match message {
                Err(_) => continue,
                Ok(Ok(Some(response))) => {
                    last_heard = Instant::now();
                    let r = received(&response, clock.now());
                    let canceled = r.canceled;
                    let compact_revision = r.compact_revision;
                    let reason = r.cancel_reason.clone();
                    session.responses.push(r);
                    if canceled {
                        session.end = SessionEnd::Canceled {
                            compact_revision,
                            reason,
                        };
                        break false;
                    }
                }
                Ok(Ok(None)) => {
                    session.end = SessionEnd::Broken("the stream ended".into());
                    break false;
                }
                Ok(Err(e)) => {
                    session.end = SessionEnd::Broken(e.to_string());
                    break false;
                }
            }
        };
        // The next session starts after what this one vouched for.
        let last = session.last_revision();
        let created = session
            .responses
            .iter()
            .find(|r| r.created)
            .map(|r| r.header_revision);
        start = match (&session.end, last) {
            (
                SessionEnd::Canceled {
                    compact_revision, ..
                },
                _,
            ) if *compact_revision > 0 => *compact_revision,
            (_, last) if last > 0 => last + 1,
            _ if start > 0 => start,
            _ => created.map_or(0, |c| c + 1),
        };
        if matches!(session.end, SessionEnd::Broken(_)) {
            failures_here += 1;
            if failures_here >= 3 {
                member += 1;
                failures_here = 0;
            }
        } else {
            failures_here = 0;
        }
        sessions.push(session);
        if done {
            break;
        }
        tokio::time::sleep(RESUME_BACKOFF).await;
    }
    sessions
}
