//! A small pool of ONNX Runtime sessions per model, so one hot model can run
//! as many requests at once as there are sessions (ort's `Session::run` takes
//! `&mut self`, so one session runs one request at a time).
//!
//! Every session of a pool is made from the same verified bytes. For `.ort`
//! files the extra sessions read their weights from the one mapping the model
//! already keeps (zero-copy): each costs only its graph and kernel structures.
//! For `.onnx` each session holds its own copy of the weights. Either way the
//! extra sessions are measured when they are made (anonymous RSS growth under
//! the process-wide load lock) and reported by
//! [`LoadedModel::extra_session_bytes`](super::LoadedModel::extra_session_bytes),
//! which the cache charges on top of the first session's footprint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use ort::session::Session;

use super::{Engine, EngineError, LOAD_LOCK, ModelFormat, anon_rss_bytes};

/// The sessions of one model. Each is behind its own lock: a run takes the
/// first free one, starting after the one the previous run took (so runs
/// spread over the pool), and waits only when every session is busy.
pub(super) struct SessionPool {
    sessions: Vec<Mutex<Session>>,
    /// Where the next run starts looking: a hint, so `Relaxed` is enough.
    next: AtomicUsize,
}

impl SessionPool {
    pub(super) fn new(first: Session) -> SessionPool {
        SessionPool {
            sessions: vec![Mutex::new(first)],
            next: AtomicUsize::new(0),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// A session to run on, and how long this run waited for it (0 when one
    /// was free). A lock poisoned by a panic in an earlier run is taken
    /// anyway: ort's session holds no state of ours that a panic could break.
    pub(super) fn acquire(&self) -> (MutexGuard<'_, Session>, Duration) {
        let count = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        for offset in 0..count {
            match self.sessions[(start + offset) % count].try_lock() {
                Ok(session) => return (session, Duration::ZERO),
                Err(TryLockError::Poisoned(poisoned)) => {
                    return (poisoned.into_inner(), Duration::ZERO);
                }
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let waited = Instant::now();
        let session = self.sessions[start]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (session, waited.elapsed())
    }

    /// Adds sessions made from `model_bytes` until the pool holds `target`,
    /// or until the next would take the extra sessions' cost past `within`
    /// bytes (that session is dropped again: a pool smaller than asked beats a
    /// model refused as too large). Returns the anonymous memory the kept
    /// sessions added (see the module doc): for `.onnx`, at least the file's
    /// size per session, since each holds its own copy of the weights and a
    /// smaller growth only means the allocator reused memory freed earlier.
    pub(super) fn grow(
        &mut self,
        engine: &Engine,
        model_bytes: &[u8],
        format: ModelFormat,
        target: usize,
        within: u64,
    ) -> Result<u64, EngineError> {
        if self.sessions.len() >= target {
            return Ok(0);
        }
        let _serialised = LOAD_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let mut added = 0u64;
        while self.sessions.len() < target {
            let before = anon_rss_bytes();
            let session = engine.create_session(model_bytes, format)?;
            let grown = before
                .zip(anon_rss_bytes())
                .map(|(before, after)| after.saturating_sub(before))
                .unwrap_or(0);
            let cost = match format {
                ModelFormat::Ort => grown,
                ModelFormat::Onnx => grown.max(model_bytes.len() as u64),
            };
            if added.saturating_add(cost) > within {
                break;
            }
            added += cost;
            self.sessions.push(Mutex::new(session));
        }
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::{EngineConfig, LoadedModel, find_library};
    use super::*;

    fn load(file: &str) -> (Engine, LoadedModel, PathBuf) {
        let explicit = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
        let engine = Engine::init(&EngineConfig {
            dylib_path: find_library(explicit.as_deref()).unwrap(),
            intra_threads: 1,
        })
        .unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/models")
            .join(file);
        let format = ModelFormat::from_file_name(file).unwrap();
        let model = engine.load(&path, format).unwrap();
        (engine, model, path)
    }

    #[test]
    fn a_pool_of_two_runs_two_at_once_and_a_pool_of_one_makes_the_second_wait() {
        let (engine, mut model, _) = load("mlp.ort");
        let first = model.sessions.acquire().0;
        // With one session the second run must wait for the first.
        assert!(model.sessions.sessions[0].try_lock().is_err());
        drop(first);
        model.add_sessions(&engine, &[], 2, u64::MAX).unwrap();
        assert_eq!(model.sessions(), 2);
        // Two held at once, from one thread: a second, different session was free.
        let (a, waited_a) = model.sessions.acquire();
        let (b, waited_b) = model.sessions.acquire();
        assert!(!std::ptr::eq(&*a, &*b));
        assert_eq!((waited_a, waited_b), (Duration::ZERO, Duration::ZERO));
        drop((a, b));
        // Growing to fewer sessions than it has is a no-op and costs nothing more.
        let charged = model.extra_session_bytes();
        model.add_sessions(&engine, &[], 1, u64::MAX).unwrap();
        assert_eq!(
            (model.sessions(), model.extra_session_bytes()),
            (2, charged)
        );
    }

    #[test]
    fn extra_onnx_sessions_are_charged_their_own_copy_of_the_weights() {
        let (engine, mut model, path) = load("mlp.onnx");
        let bytes = std::fs::read(&path).unwrap();
        // No room beside the first session: the pool stays at one, uncharged.
        model.add_sessions(&engine, &bytes, 3, 0).unwrap();
        assert_eq!((model.sessions(), model.extra_session_bytes()), (1, 0));
        model.add_sessions(&engine, &bytes, 3, u64::MAX).unwrap();
        assert_eq!(model.sessions(), 3);
        assert!(model.extra_session_bytes() >= 2 * bytes.len() as u64);
        // Every session answers, and the same.
        let row = || {
            vec![(
                "features".to_string(),
                super::super::Tensor::new(
                    vec![1, 4],
                    super::super::TensorData::Fp32(vec![0.5, -1.25, 2.0, 0.75]),
                )
                .unwrap(),
            )]
        };
        let answers: Vec<String> = (0..3)
            .map(|_| format!("{:?}", model.run(row(), None).unwrap()))
            .collect();
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    }
}
