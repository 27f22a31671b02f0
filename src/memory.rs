//! The process's one memory bound (README, "Memory"), and what requests may
//! use of it.
//!
//! ```text
//! memory limit = cache budget + baseline + request headroom
//! request headroom = run arena (ONNX Runtime, hard limit) + buffers (the router's own)
//! ```
//!
//! - The **cache budget** bounds loaded models (charged as measured by
//!   `engine::footprint`).
//! - The **baseline** is what the process holds with nothing loaded: code,
//!   ONNX Runtime, thread stacks; measured at start-up (VmRSS).
//! - Half the **request headroom** is ONNX Runtime's run arena
//!   (`Engine::limit_run_memory`): every tensor a run allocates (outputs and
//!   intermediates) comes from it, and an allocation past it fails the run
//!   cleanly. The other half is for the router's own buffers: request input
//!   tensors, output copies and response bodies. Each request reserves an
//!   estimate of those before it runs ([`RequestMemory::reserve`]) and tops it
//!   up once the run has told the real output sizes ([`Reservation::grow`]);
//!   what does not fit is refused with an error, never run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::{ElementType, OutputExtent, OutputValue};

/// Why a request's memory could not be reserved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MemoryError {
    /// More than the whole of the router's request buffers: it can never run.
    #[error(
        "this request needs about {need} bytes for its tensors and response, more than the {available} bytes \
         the memory limit leaves for one request (MEMORY_LIMIT_BYTES {limit}, minus the cache budget and the \
         process's baseline, half of it for ONNX Runtime); send a smaller batch"
    )]
    TooLarge {
        need: u64,
        available: u64,
        limit: u64,
    },
    /// It would fit, but other requests hold the headroom now.
    #[error(
        "this request needs about {need} bytes for its tensors and response; other requests hold the request \
         headroom ({available} bytes) now; retry"
    )]
    Busy { need: u64, available: u64 },
}

/// How the memory limit is split, for `status` and the start-up log.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemorySplit {
    /// The whole process's bound (MEMORY_LIMIT_BYTES), if known.
    pub limit_bytes: Option<u64>,
    /// Where the limit came from (see `Config::memory_limit_source`).
    pub limit_source: &'static str,
    pub cache_budget_bytes: u64,
    /// Resident memory at start-up, ONNX Runtime loaded, no model.
    pub baseline_bytes: u64,
    /// limit - cache budget - baseline (0 if the budget leaves none).
    pub request_headroom_bytes: u64,
    /// The part of the headroom ONNX Runtime's runs may allocate (hard limit).
    pub run_arena_bytes: u64,
    /// The part of the headroom for the router's request buffers.
    pub request_buffer_bytes: u64,
}

impl MemorySplit {
    /// Splits `limit`; `None` (no limit known) leaves requests unbounded.
    pub fn new(
        limit: Option<u64>,
        source: &'static str,
        cache_budget: u64,
        baseline: u64,
    ) -> MemorySplit {
        let headroom = limit
            .map(|limit| limit.saturating_sub(cache_budget).saturating_sub(baseline))
            .unwrap_or(0);
        let run_arena = headroom / 2;
        MemorySplit {
            limit_bytes: limit,
            limit_source: source,
            cache_budget_bytes: cache_budget,
            baseline_bytes: baseline,
            request_headroom_bytes: headroom,
            run_arena_bytes: run_arena,
            request_buffer_bytes: headroom - run_arena,
        }
    }
}

/// Reservations are counted in KiB so that a u32 of permits spans 4 TiB.
const UNIT: u64 = 1024;

/// The router's request buffers: a byte semaphore. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestMemory {
    /// `None`: no memory limit known, nothing is reserved.
    pool: Option<Arc<Semaphore>>,
    /// Bytes of buffers in all (see [`RequestMemory::resize`]); shared by clones.
    total: Arc<AtomicU64>,
    limit: u64,
    /// How long a request waits for others to give memory back before 503.
    wait: Duration,
}

/// Memory a request holds until it is dropped (its response is built).
#[derive(Debug)]
pub struct Reservation {
    memory: RequestMemory,
    /// One permit for all it holds: each growth is merged into it, so that
    /// reading what is held costs the same after thousands of growths (a
    /// ZipMap admits one per row).
    permits: Mutex<Option<OwnedSemaphorePermit>>,
    /// Why the post-check refused, kept so the error keeps its code.
    refused: Mutex<Option<MemoryError>>,
}

impl RequestMemory {
    /// Buffers of `split.request_buffer_bytes` when a limit is known.
    pub fn new(split: &MemorySplit) -> RequestMemory {
        let units = (split.request_buffer_bytes / UNIT).min(u64::from(u32::MAX));
        RequestMemory {
            pool: split
                .limit_bytes
                .map(|_| Arc::new(Semaphore::new(units as usize))),
            total: Arc::new(AtomicU64::new(units * UNIT)),
            limit: split.limit_bytes.unwrap_or(0),
            wait: Duration::from_secs(2),
        }
    }

    /// Resizes the buffers to `split.request_buffer_bytes`: the service makes
    /// them at start-up from a provisional split, measured before ONNX Runtime
    /// had loaded, so that requests need not wait for it, and resizes them
    /// once ONNX Runtime has started and the baseline is known. Shrinking
    /// takes back only buffers no request holds (at start-up, nearly all).
    pub fn resize(&self, split: &MemorySplit) {
        let Some(pool) = &self.pool else { return };
        let wanted = (split.request_buffer_bytes / UNIT).min(u64::from(u32::MAX));
        let current = self.total.load(Ordering::Relaxed) / UNIT;
        if wanted > current {
            pool.add_permits((wanted - current) as usize);
            self.total.store(wanted * UNIT, Ordering::Relaxed);
        } else if wanted < current {
            let taken = pool.forget_permits((current - wanted) as usize) as u64;
            self.total.fetch_sub(taken * UNIT, Ordering::Relaxed);
        }
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Reserves `bytes`, waiting up to 2 s for other requests to release theirs.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation, MemoryError> {
        let reservation = Reservation {
            memory: self.clone(),
            permits: Mutex::new(None),
            refused: Mutex::new(None),
        };
        reservation.grow_waiting(bytes).await?;
        Ok(reservation)
    }

    /// Bytes reserved by requests now.
    pub fn reserved_bytes(&self) -> u64 {
        self.pool
            .as_ref()
            .map(|pool| {
                self.total()
                    .saturating_sub(pool.available_permits() as u64 * UNIT)
            })
            .unwrap_or(0)
    }

    fn units(&self, bytes: u64) -> Result<u32, MemoryError> {
        if bytes > self.total() {
            return Err(MemoryError::TooLarge {
                need: bytes,
                available: self.total(),
                limit: self.limit,
            });
        }
        Ok(bytes.div_ceil(UNIT) as u32)
    }
}

impl Reservation {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<OwnedSemaphorePermit>> {
        self.permits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes this reservation holds.
    pub fn bytes(&self) -> u64 {
        self.lock()
            .as_ref()
            .map_or(0, |p| p.num_permits() as u64 * UNIT)
    }

    /// Adds `permit` to what is held.
    fn hold(&self, permit: OwnedSemaphorePermit) {
        let mut held = self.lock();
        match held.as_mut() {
            Some(held) => held.merge(permit),
            None => *held = Some(permit),
        }
    }

    /// What growing to `bytes` in all takes: the pool and the units still
    /// missing, or `None` when nothing is (no limit, or enough held already);
    /// `TooLarge` when `bytes` can never fit.
    fn missing(&self, bytes: u64) -> Result<Option<(&Arc<Semaphore>, u32)>, MemoryError> {
        let Some(pool) = &self.memory.pool else {
            return Ok(None);
        };
        let held = self.bytes();
        if bytes <= held {
            return Ok(None);
        }
        self.memory.units(bytes)?;
        Ok(Some((pool, self.memory.units(bytes - held)?)))
    }

    /// Grows the reservation to `bytes` in all, waiting like
    /// [`RequestMemory::reserve`] for other requests to give memory back.
    pub async fn grow_waiting(&self, bytes: u64) -> Result<(), MemoryError> {
        let Some((pool, units)) = self.missing(bytes)? else {
            return Ok(());
        };
        let acquired =
            tokio::time::timeout(self.memory.wait, pool.clone().acquire_many_owned(units)).await;
        match acquired {
            Ok(Ok(permit)) => {
                self.hold(permit);
                Ok(())
            }
            _ => Err(MemoryError::Busy {
                need: bytes,
                available: self.memory.total(),
            }),
        }
    }

    /// The post-check for `LoadedModel::run_admitted`: grows the reservation
    /// to `base` plus what the run's real outputs take ([`output_bytes`]),
    /// as the engine tells them (tensors at once, sequence and map items as
    /// they are read: each call adds to the earlier ones); a refusal is kept
    /// for [`Reservation::take_refusal`].
    pub fn post_check(
        &self,
        base: u64,
    ) -> impl Fn(&[OutputExtent]) -> Result<(), String> + Sync + '_ {
        let admitted = AtomicU64::new(0);
        move |extents| {
            let bytes = output_bytes(extents);
            let total = admitted
                .fetch_add(bytes, Ordering::Relaxed)
                .saturating_add(bytes);
            self.grow(base.saturating_add(total)).map_err(|e| {
                let message = e.to_string();
                *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                message
            })
        }
    }

    /// The post-check's refusal, if it refused.
    pub fn take_refusal(&self) -> Option<MemoryError> {
        self.refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Grows the reservation to `bytes` in all, without waiting (it is called
    /// with a session locked).
    pub fn grow(&self, bytes: u64) -> Result<(), MemoryError> {
        let Some((pool, units)) = self.missing(bytes)? else {
            return Ok(());
        };
        match pool.clone().try_acquire_many_owned(units) {
            Ok(permit) => {
                self.hold(permit);
                Ok(())
            }
            Err(_) => Err(MemoryError::Busy {
                need: bytes,
                available: self.memory.total(),
            }),
        }
    }
}

/// Bytes of the longest JSON text one element of `ty` is written as, with its
/// separator (f32: `-1.17549435e-38,`). Strings are not bounded by their type:
/// 32 is assumed, what short labels take.
pub fn json_text_bytes(ty: ElementType) -> u64 {
    match ty {
        ElementType::Bool => 6,
        ElementType::Int8 => 5,
        ElementType::Uint8 => 4,
        ElementType::Int16 => 7,
        ElementType::Uint16 => 6,
        ElementType::Int32 | ElementType::Uint32 => 12,
        ElementType::Int64 | ElementType::Uint64 => 21,
        ElementType::Fp16 | ElementType::Fp32 => 16,
        ElementType::Fp64 => 25,
        ElementType::Bytes => 32,
    }
}

/// What a request's outputs take in the router: their copy out of ONNX
/// Runtime, plus the response text written from it.
///
/// - A tensor: its elements, and their JSON text twice (the simple protocol
///   repeats the first output as `prediction`).
/// - A sequence: one [`OutputValue`] per item, and per item the `String` an
///   Open Inference Protocol answer holds its JSON text in.
/// - A map (a ZipMap's row): each entry copied as a key and a one-element
///   tensor, and its JSON text three times: the text of the map (a V2
///   answer's BYTES element), that text escaped inside the response (at most
///   twice as long), or written twice by the simple protocol. An entry's
///   text is at most its key (an integer's 20 digits, or a string key
///   escaped: 6 bytes a byte at worst) and quotes, a colon, the value's
///   longest text and a comma.
pub fn output_bytes(extents: &[OutputExtent]) -> u64 {
    use crate::http::parse::allocation_bound;
    extents
        .iter()
        .map(|extent| match *extent {
            OutputExtent::Tensor {
                element_type,
                count,
            } => (count as u64).saturating_mul(
                element_type.size_bytes() as u64 + 2 * json_text_bytes(element_type),
            ),
            OutputExtent::Sequence { items } => (items as u64).saturating_mul(
                allocation_bound(std::mem::size_of::<OutputValue>() as u64)
                    + allocation_bound(std::mem::size_of::<String>() as u64)
                    + 16,
            ),
            OutputExtent::Map {
                entries,
                string_keys,
                key_bytes,
                value,
            } => {
                let entries = entries as u64;
                let copy = allocation_bound(
                    entries
                        * std::mem::size_of::<(crate::engine::MapKey, crate::engine::Tensor)>()
                            as u64,
                ) + entries * allocation_bound(value.size_bytes() as u64)
                    + if string_keys {
                        key_bytes as u64 + key_bytes as u64 / 4 + 16 * entries
                    } else {
                        0
                    };
                let keys_text = if string_keys {
                    6 * key_bytes as u64
                } else {
                    20 * entries
                };
                let text = 2 + keys_text + entries * (4 + json_text_bytes(value));
                copy.saturating_add(3 * allocation_bound(text))
            }
        })
        .fold(0u64, u64::saturating_add)
}

/// Bytes a request's input tensors take.
pub fn input_bytes(inputs: &[(String, crate::engine::Tensor)]) -> u64 {
    inputs
        .iter()
        .map(|(_, tensor)| match tensor.data() {
            crate::engine::TensorData::Bytes(strings) => strings
                .iter()
                .map(|s| (s.len() + std::mem::size_of::<String>()) as u64)
                .sum(),
            data => (data.len() * tensor.element_type().size_bytes()) as u64,
        })
        .sum()
}

/// The tensor outputs `signature` declares, sized from `inputs`: fixed
/// dimensions as declared, named ones as the input that shares the name
/// (`batch`), any other as 1 (only the run can tell; the post-check sees it).
pub fn expected_outputs(
    signature: &crate::engine::Signature,
    inputs: &[(String, crate::engine::Tensor)],
) -> Vec<OutputExtent> {
    use crate::engine::{Dim, ValueKind};
    let symbol_size = |symbol: &str| {
        signature.inputs.iter().find_map(|info| {
            let ValueKind::Tensor { shape, .. } = &info.kind else {
                return None;
            };
            let (_, tensor) = inputs.iter().find(|(name, _)| *name == info.name)?;
            shape.iter().zip(tensor.shape()).find_map(|(dim, &size)| {
                matches!(dim, Dim::Dynamic(Some(s)) if s == symbol).then_some(size)
            })
        })
    };
    signature
        .outputs
        .iter()
        .filter_map(|info| {
            let ValueKind::Tensor {
                element_type,
                shape,
            } = &info.kind
            else {
                return None;
            };
            let count = shape
                .iter()
                .map(|dim| match dim {
                    Dim::Fixed(n) => *n,
                    Dim::Dynamic(Some(symbol)) => symbol_size(symbol).unwrap_or(1),
                    Dim::Dynamic(None) => 1,
                })
                .fold(1usize, usize::saturating_mul);
            Some(OutputExtent::Tensor {
                element_type: *element_type,
                count,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_splits_into_cache_baseline_and_two_halves_of_headroom() {
        let mib = 1u64 << 20;
        let split = MemorySplit::new(Some(512 * mib), "cgroup", 300 * mib, 40 * mib);
        assert_eq!(split.request_headroom_bytes, 172 * mib);
        assert_eq!(split.run_arena_bytes, 86 * mib);
        assert_eq!(split.request_buffer_bytes, 86 * mib);
        // A budget past the limit leaves nothing for requests (and says so in status).
        let split = MemorySplit::new(Some(512 * mib), "flag", 600 * mib, 40 * mib);
        assert_eq!(split.request_headroom_bytes, 0);
    }

    #[tokio::test]
    async fn reservations_refuse_what_never_fits_and_wait_for_what_does() {
        let split = MemorySplit::new(Some(100 * UNIT), "flag", 0, 0);
        let memory = RequestMemory {
            wait: Duration::from_millis(50),
            ..RequestMemory::new(&split)
        };
        assert!(matches!(
            memory.reserve(51 * UNIT).await,
            Err(MemoryError::TooLarge { .. })
        ));
        let first = memory.reserve(30 * UNIT).await.unwrap();
        assert_eq!(memory.reserved_bytes(), 30 * UNIT);
        assert!(matches!(
            memory.reserve(30 * UNIT).await,
            Err(MemoryError::Busy { .. })
        ));
        first.grow(40 * UNIT).unwrap();
        assert_eq!(first.bytes(), 40 * UNIT);
        assert!(matches!(
            first.grow(60 * UNIT),
            Err(MemoryError::TooLarge { .. })
        ));
        drop(first);
        assert_eq!(memory.reserved_bytes(), 0);
        // No limit known: nothing is reserved, nothing refused.
        let open = RequestMemory::new(&MemorySplit::new(None, "none", 0, 0));
        assert_eq!(open.reserve(u64::MAX).await.unwrap().bytes(), 0);
    }

    #[test]
    fn a_zipmap_takes_no_more_than_its_extents_say() {
        use crate::engine::{MapKey, Tensor, TensorData, ThreadMeter, ThreadPeak};
        use crate::http::json::{FlatJson, OutputJson};
        // 20,000 rows of a three-class classifier's probabilities, copied as
        // the engine copies them, then written as both protocols write them:
        // the simple one twice (`prediction`), V2 as the JSON text of each
        // row in a BYTES tensor, that tensor's JSON after.
        let rows = 20_000;
        let extents: Vec<OutputExtent> = std::iter::once(OutputExtent::Sequence { items: rows })
            .chain((0..rows).map(|_| OutputExtent::Map {
                entries: 3,
                string_keys: false,
                key_bytes: 0,
                value: ElementType::Fp32,
            }))
            .collect();
        let meter = ThreadMeter::start();
        let peak = ThreadPeak::start();
        let mut items = Vec::with_capacity(rows);
        for row in 0..rows {
            let mut map = Vec::with_capacity(3);
            for class in 0..3 {
                let p = (row * 3 + class) as f32 / (3 * rows) as f32 - 1.1754944e-38;
                map.push((
                    MapKey::Int(class as i64),
                    Tensor::new(vec![], TensorData::Fp32(vec![p])).unwrap(),
                ));
            }
            items.push(OutputValue::Map(map));
        }
        let value = OutputValue::Sequence(items);
        let simple = serde_json::to_vec(&(OutputJson(&value), OutputJson(&value))).unwrap();
        let OutputValue::Sequence(items) = &value else {
            unreachable!()
        };
        let texts: Vec<String> = items
            .iter()
            .map(|item| serde_json::to_string(&OutputJson(item)).unwrap())
            .collect();
        let texts = TensorData::Bytes(texts);
        let v2 = serde_json::to_vec(&FlatJson(&texts)).unwrap();
        let held = (peak.peak_bytes() + ThreadPeak::SAMPLING_BYTES).min(meter.allocated_bytes());
        let counted = output_bytes(&extents);
        eprintln!(
            "{rows} rows: held at most {held}, counted {counted}; texts {} and {} bytes",
            simple.len(),
            v2.len()
        );
        assert!(held <= counted, "held {held} > counted {counted}");
        // String keys count their text.
        let named = |key_bytes| {
            output_bytes(&[OutputExtent::Map {
                entries: 2,
                string_keys: true,
                key_bytes,
                value: ElementType::Fp32,
            }])
        };
        assert!(named(1000) > named(10) + 6000);
    }

    #[tokio::test]
    async fn post_checks_add_up_what_each_call_admits() {
        let split = MemorySplit::new(Some(100 * UNIT), "flag", 0, 0);
        let memory = RequestMemory::new(&split);
        let reservation = memory.reserve(10 * UNIT).await.unwrap();
        let check = reservation.post_check(10 * UNIT);
        let item = [OutputExtent::Tensor {
            element_type: ElementType::Uint8,
            // 9 bytes each: the byte, and its text ("255,") twice.
            count: 10 * 1024 / 9,
        }];
        // Each call adds about 10 KiB to the 10 the request held: four fit
        // in the 50 KiB of buffers, the fifth does not.
        for _ in 0..4 {
            check(&item).unwrap();
        }
        assert!(reservation.bytes() >= 49 * UNIT, "{}", reservation.bytes());
        assert!(check(&item).is_err());
        assert!(matches!(
            reservation.take_refusal(),
            Some(MemoryError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn buffers_made_from_the_provisional_split_resize_to_the_final_one() {
        // 100 units of headroom before ONNX Runtime loaded; its 40 units of
        // baseline leave 60 once it has. Half of headroom is request buffers.
        let memory = RequestMemory::new(&MemorySplit::new(Some(100 * UNIT), "flag", 0, 0));
        let held = memory.reserve(20 * UNIT).await.unwrap();
        memory.resize(&MemorySplit::new(Some(100 * UNIT), "flag", 0, 40 * UNIT));
        assert_eq!(memory.total(), 30 * UNIT);
        assert_eq!(memory.reserved_bytes(), 20 * UNIT);
        assert!(matches!(
            memory.reserve(31 * UNIT).await,
            Err(MemoryError::TooLarge { .. })
        ));
        drop(held);
        assert_eq!(memory.reserved_bytes(), 0);
        // Growing back gives the buffers back.
        memory.resize(&MemorySplit::new(Some(100 * UNIT), "flag", 0, 0));
        assert_eq!(memory.total(), 50 * UNIT);
    }
}
