//! A small pool of ONNX Runtime sessions per model, so one hot model can run
//! as many requests at once as there are sessions (ort's `Session::run` takes
//! `&mut self`, so one session runs one request at a time).
//!
//! Every session of a pool is made from the same verified bytes. For `.ort`
//! files the extra sessions read their weights from the one mapping the model
//! already keeps (zero-copy): each costs only its graph and kernel structures.
//! For `.onnx` each session holds its own copy of the weights. Either way the
//! extra sessions are measured when they are made (what the loading thread
//! allocated and kept, counted by the allocator: src/engine/footprint.rs) and
//! reported by
//! [`LoadedModel::extra_session_bytes`](super::LoadedModel::extra_session_bytes),
//! which the cache charges on top of the first session's footprint.

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ort::session::Session;

use super::{Engine, EngineError, ModelFormat, ThreadMeter};

/// The sessions of one model. A run takes a free one, and waits only when
/// every session is busy, for whichever is given back first.
pub(super) struct SessionPool {
    /// Each behind its own lock, only ever taken by the run that holds its
    /// index from `free`: uncontended, it is there because `run` needs `&mut`.
    sessions: Vec<Mutex<Session>>,
    /// Indices of the sessions no run holds. Locked only to take or give back
    /// an index (never during a run).
    free: Mutex<Vec<usize>>,
    /// Signalled each time an index is given back.
    given_back: Condvar,
}

/// A session taken from the pool for one run; given back when dropped.
pub(super) struct PooledSession<'a> {
    pool: &'a SessionPool,
    index: usize,
    /// Released just after the index is given back (fields drop after
    /// `Drop::drop`): a run that takes that index at once waits only that long.
    session: MutexGuard<'a, Session>,
}

impl Deref for PooledSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl DerefMut for PooledSession<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        self.pool.lock_free().push(self.index);
        self.pool.given_back.notify_one();
    }
}

impl SessionPool {
    pub(super) fn new(first: Session) -> SessionPool {
        SessionPool {
            sessions: vec![Mutex::new(first)],
            free: Mutex::new(vec![0]),
            given_back: Condvar::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// A poisoned lock is taken anyway: the list of indices stays whole
    /// whatever panicked, and ort's session holds no state of ours.
    fn lock_free(&self) -> MutexGuard<'_, Vec<usize>> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A free session to run on, and how long this run waited for one (0
    /// when one was free).
    pub(super) fn acquire(&self) -> (PooledSession<'_>, Duration) {
        let mut free = self.lock_free();
        let mut waited = None;
        let index = loop {
            if let Some(index) = free.pop() {
                break index;
            }
            waited.get_or_insert_with(Instant::now);
            free = self
                .given_back
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        };
        drop(free);
        let session = self.sessions[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let pooled = PooledSession {
            pool: self,
            index,
            session,
        };
        (pooled, waited.map(|t| t.elapsed()).unwrap_or_default())
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
        let mut added = 0u64;
        while self.sessions.len() < target {
            // What this thread allocates and keeps while making the session
            // (src/engine/footprint.rs): other threads' work is not in it.
            let meter = ThreadMeter::start();
            let session = engine.create_session(model_bytes, format)?;
            let grown = meter.kept_bytes();
            let cost = match format {
                ModelFormat::Ort => grown,
                ModelFormat::Onnx => grown.max(model_bytes.len() as u64),
            };
            if added.saturating_add(cost) > within {
                break;
            }
            added += cost;
            self.sessions.push(Mutex::new(session));
            let index = self.sessions.len() - 1;
            self.lock_free().push(index);
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
        // With one session none is free while a run holds it: the next waits.
        assert!(model.sessions.lock_free().is_empty());
        drop(first);
        assert_eq!(*model.sessions.lock_free(), [0]);
        model.add_sessions(&engine, &[], 2, u64::MAX).unwrap();
        assert_eq!(model.sessions(), 2);
        // Two held at once, from one thread: a second, different session was free.
        let (a, waited_a) = model.sessions.acquire();
        let (b, waited_b) = model.sessions.acquire();
        assert_ne!(a.index, b.index);
        assert_eq!((waited_a, waited_b), (Duration::ZERO, Duration::ZERO));
        // A third run waits for whichever is given back first: here, b.
        std::thread::scope(|scope| {
            let third = scope.spawn(|| model.sessions.acquire().0.index);
            let b_index = b.index;
            drop(b);
            assert_eq!(third.join().unwrap(), b_index);
        });
        drop(a);
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
