//! The hard limit on what ONNX Runtime may allocate while running: one CPU
//! arena for the whole environment, registered with a `max_mem`, which every
//! session uses for its tensors (`session.use_env_allocators`). An allocation
//! past the limit fails inside ONNX Runtime, and the run with it, cleanly;
//! nothing else is disturbed. This is the one bound that holds for a model
//! whose output size comes from an input's values (an `Expand` to a shape it
//! is sent), which no check of shapes before the run can see.
//!
//! Initializers (the weights of `.onnx` models; `.ort` models use theirs in
//! place) are allocated beside the arena, not in it
//! (`session.use_device_allocator_for_initializers`): they are charged to the
//! cache, and must not eat into what requests may use. After each run the arena
//! gives back the regions the run freed (`memory.enable_memory_arena_shrinkage`),
//! so an idle process holds no request memory.

use ort::AsPointer as _;
use ort::environment::Environment;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};

use super::EngineError;

/// Registers the limited arena on `env`. Once per environment.
pub(super) fn register(env: &Environment, max_bytes: usize) -> Result<(), EngineError> {
    let failed = |what: &str, detail: String| {
        EngineError::Load(format!(
            "cannot set ONNX Runtime's memory limit ({what}): {detail}"
        ))
    };
    let memory = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Arena,
        MemoryType::Default,
    )
    .map_err(|e| failed("memory info", e.to_string()))?;
    let api = ort::api();
    // kSameAsRequested (1): each extension is the size asked for, so the arena
    // never holds more than its largest live set plus small-chunk slack.
    let keys = [
        c"max_mem",
        c"arena_extend_strategy",
        c"initial_chunk_size_bytes",
    ];
    // A small first chunk: a region is then about what a run asked for, so
    // a load's probe run (src/engine/mod.rs) keeps little of it.
    let values: [usize; 3] = [max_bytes, 1, 4096];
    let key_pointers = keys.map(|k| k.as_ptr());
    let mut config: *mut ort::sys::OrtArenaCfg = std::ptr::null_mut();
    // SAFETY: `key_pointers` and `values` hold `keys.len()` valid entries (the
    // keys NUL-terminated statics) for the duration of the call; `config` is
    // an out-pointer ONNX Runtime writes.
    let status = unsafe {
        (api.CreateArenaCfgV2)(
            key_pointers.as_ptr(),
            values.as_ptr(),
            keys.len(),
            &mut config,
        )
    };
    check(status).map_err(|e| failed("arena config", e))?;
    // SAFETY: `env` and `memory` are live ONNX Runtime objects for the call,
    // `config` was just created; ONNX Runtime copies what it needs from both
    // (the documented contract of CreateAndRegisterAllocator), so `config` is
    // released right after.
    let status =
        unsafe { (api.CreateAndRegisterAllocator)(env.ptr().cast_mut(), memory.ptr(), config) };
    // SAFETY: `config` came from CreateArenaCfgV2 and is released once.
    unsafe { (api.ReleaseArenaCfg)(config) };
    check(status).map_err(|e| failed("register allocator", e))
}

/// An ONNX Runtime status: Ok when null, else its message (the status freed).
fn check(status: ort::sys::OrtStatusPtr) -> Result<(), String> {
    let pointer = status.0;
    if pointer.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from the API owns a NUL-terminated message,
    // valid until the status is released, which happens right after the copy.
    let message = unsafe {
        let text = std::ffi::CStr::from_ptr((api.GetErrorMessage)(pointer))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(pointer);
        text
    };
    Err(message)
}

/// Whether an ONNX Runtime error says an allocation hit the limit.
pub(super) fn is_out_of_memory(message: &str) -> bool {
    message.contains("Failed to allocate memory")
        || message.contains("Available memory of")
        || message.contains("bad_alloc")
}
