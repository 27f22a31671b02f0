//! JSON request bodies parsed within a memory bound known before the parse
//! starts, and reserved before it (README, "Memory"; docs/memory.md).
//!
//! A `serde_json::Value` tree costs 32 to 80 bytes a value plus the slack of
//! every array's growth, and the list of leaves made from it on top: about 20
//! times the text of `[1,1,1,...]`. Here no tree is built. A body is read in
//! passes over its text, each allocating only what the bound says:
//!
//! 1. [`Census::of`]: one pass over the bytes, allocating nothing, that counts
//!    what the bound before the model needs (the longest string and key, the
//!    objects, the strings directly inside objects).
//! 2. [`validate`]: the whole body through serde with nothing kept: exactly the
//!    syntax and number checks a `Value` parse made (same parser, same paths),
//!    so invalid JSON is `invalid_json` before anything else is looked at.
//! 3. The protocol's structure, borrowed from the text: each input's data is a
//!    [`RawValue`] (a slice of the body), [`scan`]ned without allocating for
//!    its shape (ragged arrays are refused here, before the model is loaded),
//!    its element count and the heap its strings will take.
//! 4. Once the model is loaded and its element types known, [`fill`] reads
//!    each input's slice again straight into a `Vec` of its element type, of
//!    exactly the capacity the scan counted: no growth, no slack.
//!
//! # The bound
//!
//! Derived from what each step allocates; `tests` measures every adversarial
//! body below against it with jemalloc's per-thread peak.
//!
//! - **Allocations.** jemalloc rounds a request of `n` bytes up to its size
//!   class: 8, 16, then steps of 16 up to 128, then four classes per doubling,
//!   so above 128 a class exceeds the request by less than a quarter of it:
//!   [`allocation_bound`] (checked against jemalloc's own `nallocx`).
//! - **Typed buffers** ([`tensor_bound`], reserved once the model is known):
//!   `n` elements of a type of `w` bytes are one allocation of exactly `n * w`
//!   bytes. The least text an element takes is one byte and a separator
//!   (`1,`), so for the widest types (8 bytes: int64, uint64, float64) a
//!   buffer is at most 4 bytes per byte of text, 5 with the size class;
//!   `[[1],[1],...]` (4 bytes of text an element) half that; bool (`true,`)
//!   a fifth of a byte.
//! - **Strings** (string inputs): a 24-byte `String` per element, in one
//!   allocation of exactly `n * 24`, and each element's text allocated
//!   exactly (an empty string allocates nothing): the scan adds up
//!   `allocation_bound(len)` of every string, so this part is exact too. The
//!   worst per byte of text is `"",` (3 bytes for 24): 8, 10 with the class.
//! - **serde_json's scratch buffer** holds an escaped string while it is
//!   unescaped (unescaped strings are borrowed from the text), and the nesting
//!   stack of a skipped value (at most 128 bytes: serde_json refuses deeper
//!   JSON). It grows by doubling to at most twice the longest escaped string
//!   `L`, and while it grows the old and the new buffer both exist:
//!   [`scratch_bound`]`(L) = allocation_bound(L) + allocation_bound(2L)`. At
//!   most two deserializers hold a scratch at once: one reading an object's
//!   keys (at most the longest key `K`), one reading a value.
//! - **Structure.** Of the simple protocol: nothing per element or per input
//!   (a shape of at most 128 dimensions, the body's two keys). Of the Open
//!   Inference Protocol: at most `v2::object_bytes` per object of the body (an
//!   input's or an output's entry in the lists the request is read into,
//!   with those lists' growth), and at most twice the text of every string
//!   directly inside an object (an escaped name is unescaped into a copy, and
//!   a requested output's name is copied once more); shapes are reserved
//!   before they are read (`v2`), from their length.
//! - **Errors** show at most [`SHOWN_BYTES`] of anything the request sent
//!   ([`Shown`]); serde's "unknown field" names the key: at most
//!   [`error_bound`]`(K)`.
//! - **Everything else** (a shape, an error's boxes, the protocol's fixed
//!   fields) is within [`BASE_BYTES`].
//!
//! So before the model: [`bound_before_model`] `= BASE + scratch(L) +
//! scratch(K) + error(K) + object_bytes * objects + 2 * (5/4 * object string
//! bytes + 16 * object strings)`; after it, each input adds its exact
//! [`tensor_bound`]. What a body's census does not see (the typed elements)
//! is only allocated once the model has told their types and the reservation
//! has grown to hold them.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::json::{expectation, invalid};
use crate::engine::{ElementType, TensorData};
use crate::error::{Error, RequestError};

/// What every parse may take whatever the body's size: a shape of at most
/// 128 dimensions and its growth (3 KiB), error messages and serde's boxed
/// errors (a few KiB), the protocol's fixed fields.
pub const BASE_BYTES: u64 = 16 << 10;

/// The most of a request's own text an error message repeats.
pub const SHOWN_BYTES: usize = 256;

/// An upper bound of what jemalloc takes for an allocation of `n` bytes (its
/// size class: see the module doc).
///
/// ```
/// use model_router::http::parse::allocation_bound;
/// assert_eq!(allocation_bound(0), 0);
/// assert_eq!((allocation_bound(1), allocation_bound(17)), (8, 32));
/// assert!(allocation_bound(1 << 20 | 1) >= 1280 << 10);
/// ```
pub fn allocation_bound(n: u64) -> u64 {
    match n {
        0 => 0,
        1..=8 => 8,
        9..=128 => n.div_ceil(16) * 16,
        // Classes 2^k + i * 2^(k-2) for 2^k < n: the next is less than
        // 2^(k-2) < n/4 above n.
        _ => n + n / 4,
    }
}

/// What serde_json's scratch buffer may take while holding strings of up to
/// `longest` bytes (see the module doc).
pub fn scratch_bound(longest: u64) -> u64 {
    if longest == 0 {
        return 0;
    }
    allocation_bound(longest) + allocation_bound((2 * longest).max(8))
}

/// What an error naming a key of `key` bytes may take: serde's message (the
/// key and its list of expected fields), the string it is formatted into
/// while it grows, and the message that wraps it.
pub fn error_bound(key: u64) -> u64 {
    8 * (key + 1024)
}

/// What one pass over a body's bytes tells the bound, before any parse.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Bytes of text.
    pub bytes: u64,
    /// Bytes between the quotes of the longest string (escapes counted as
    /// written: at least what they unescape to).
    pub longest_string: u64,
    /// The same, of strings followed by `:` (object keys).
    pub longest_key: u64,
    /// `{` outside strings.
    pub objects: u64,
    /// Strings whose container is an object (keys and values).
    pub object_strings: u64,
    /// Their bytes, as `longest_string` counts them.
    pub object_string_bytes: u64,
}

impl Census {
    /// Counts `text` without allocating. Text that is not JSON gives counts
    /// that still bound what the parser reads before it refuses the text: up
    /// to the first error it sees strings exactly as the parser does.
    pub fn of(text: &[u8]) -> Census {
        let mut census = Census {
            bytes: text.len() as u64,
            ..Census::default()
        };
        // One bit per open container, 1 for an object; past 128 levels
        // (which serde_json refuses) every container counts as an object.
        let mut objects: u128 = 0;
        let mut depth = 0usize;
        let mut i = 0;
        while i < text.len() {
            match text[i] {
                b'"' => {
                    let start = i + 1;
                    let mut end = start;
                    while end < text.len() {
                        match text[end] {
                            b'\\' => end += 2,
                            b'"' => break,
                            _ => end += 1,
                        }
                    }
                    let end = end.min(text.len());
                    let len = (end - start) as u64;
                    census.longest_string = census.longest_string.max(len);
                    let in_object = depth > 0 && (depth > 128 || objects >> (depth - 1) & 1 == 1);
                    if in_object {
                        census.object_strings += 1;
                        census.object_string_bytes += len;
                    }
                    let mut next = end + 1;
                    while next < text.len() && matches!(text[next], b' ' | b'\t' | b'\n' | b'\r') {
                        next += 1;
                    }
                    if text.get(next) == Some(&b':') {
                        census.longest_key = census.longest_key.max(len);
                    }
                    i = end + 1;
                    continue;
                }
                open @ (b'{' | b'[') => {
                    if open == b'{' {
                        census.objects += 1;
                    }
                    if depth < 128 {
                        let bit = 1u128 << depth;
                        objects = if open == b'{' {
                            objects | bit
                        } else {
                            objects & !bit
                        };
                    }
                    depth += 1;
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
        }
        census
    }
}

/// What parsing a body with `census` may allocate before its model is known
/// (see the module doc); 0 for an empty body, which no route parses.
pub fn bound_before_model(census: &Census) -> u64 {
    if census.bytes == 0 {
        return 0;
    }
    let strings = 2
        * (census.object_string_bytes
            + census.object_string_bytes / 4
            + 16 * census.object_strings);
    BASE_BYTES
        + scratch_bound(census.longest_string)
        + scratch_bound(census.longest_key)
        + error_bound(census.longest_key)
        + super::v2::object_bytes() * census.objects
        + strings
}

/// What [`fill`] allocates for `scanned` read as `ty`: exactly one buffer of
/// its element count, and for strings each element's text (the scan added
/// those up).
pub fn tensor_bound(ty: ElementType, scanned: &Scanned) -> u64 {
    let buffer = allocation_bound(scanned.count as u64 * ty.size_bytes() as u64);
    match ty {
        ElementType::Bytes => buffer + scanned.string_heap,
        _ => buffer,
    }
}

/// Checks that `text` is one JSON value, exactly as parsing it into a
/// `serde_json::Value` would (syntax, numbers in range, UTF-8, nesting at most
/// 128 deep), keeping nothing: `invalid_json` otherwise.
pub fn validate(text: &[u8]) -> Result<(), Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    Skip.deserialize(&mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(|e| RequestError::InvalidJson(e.to_string()).into())
}

/// Visits a value through `deserialize_any` (so numbers are parsed, and
/// range-checked, as a `Value` parse does) and keeps nothing.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Skip)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

/// A request's own text in an error message: at most [`SHOWN_BYTES`] of it
/// (cut at a character boundary, `…` marking the cut), so that no message
/// repeats a body. `{:?}` quotes it as Rust does, `{}` as JSON does.
pub struct Shown<'a>(pub &'a str);

/// `text` cut to at most [`SHOWN_BYTES`] at a character boundary, and
/// whether it was cut.
fn cut_text(text: &str) -> (&str, bool) {
    if text.len() <= SHOWN_BYTES {
        return (text, false);
    }
    let mut end = SHOWN_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let (text, cut) = cut_text(self.0);
        fmt::Debug::fmt(text, f)?;
        if cut { f.write_str("…") } else { Ok(()) }
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let (text, cut) = cut_text(self.0);
        let quoted = serde_json::to_string(text).map_err(|_| fmt::Error)?;
        f.write_str(&quoted)?;
        if cut { f.write_str("…") } else { Ok(()) }
    }
}

/// A shape in a message, `[3, 3]`: its first 16 dimensions at most.
pub struct ShownDims<'s, T>(pub &'s [T]);

impl<T: fmt::Display> fmt::Display for ShownDims<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("[")?;
        for (i, dim) in self.0.iter().take(16).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{dim}")?;
        }
        if self.0.len() > 16 {
            f.write_str(", …")?;
        }
        f.write_str("]")
    }
}

/// At most [`SHOWN_BYTES`] of `text`, cut at a character boundary.
pub fn cut(text: &str) -> &str {
    cut_text(text).0
}

/// A raw JSON value's text in an error message, cut like [`Shown`].
pub fn shown_raw(raw: &RawValue) -> impl fmt::Display + '_ {
    struct Raw<'a>(&'a str);
    impl fmt::Display for Raw<'_> {
        fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
            let (text, cut) = cut_text(self.0);
            f.write_str(text)?;
            if cut { f.write_str("…") } else { Ok(()) }
        }
    }
    Raw(raw.get())
}

/// What kind of JSON value a raw value is, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

impl Kind {
    /// The kind of `raw` (serde_json has checked it is JSON, and a raw
    /// value's text starts at its first byte).
    pub fn of(raw: &RawValue) -> Kind {
        Kind::of_text(raw.get().as_bytes())
    }

    /// The kind of the value `text` holds, skipping leading whitespace.
    pub fn of_text(text: &[u8]) -> Kind {
        match text
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b'"') => Kind::String,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'n') | None => Kind::Null,
            Some(_) => Kind::Number,
        }
    }

    /// `an object`, `a string`...: for messages.
    pub fn article(self) -> &'static str {
        match self {
            Kind::Object => "an object",
            Kind::Array => "an array",
            Kind::String => "a string",
            Kind::Number => "a number",
            Kind::Bool => "a boolean",
            Kind::Null => "null",
        }
    }
}

/// An object key, borrowed from the text unless it had escapes.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// Calls `each` with every entry of the JSON object `text` (its key, and its
/// value as raw text), in order, allocating nothing but keys that had
/// escapes. `text` must be an object that [`validate`] accepted.
pub fn entries<'a>(
    text: &'a [u8],
    mut each: impl FnMut(Cow<'a, str>, &'a RawValue) -> Result<(), Error>,
) -> Result<(), Error> {
    struct Entries<'f, F> {
        each: &'f mut F,
        error: &'f mut Option<Error>,
    }
    impl<'de, F: FnMut(Cow<'de, str>, &'de RawValue) -> Result<(), Error>> Visitor<'de>
        for Entries<'_, F>
    {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key_seed(Name)? {
                let value: &'de RawValue = map.next_value()?;
                if let Err(error) = (self.each)(key, value) {
                    *self.error = Some(error);
                    return Err(de::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    let mut error = None;
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let result = deserializer.deserialize_map(Entries {
        each: &mut each,
        error: &mut error,
    });
    match error {
        Some(error) => Err(error),
        None => result.map_err(|e| RequestError::InvalidJson(e.to_string()).into()),
    }
}

/// A JSON string borrowed from the text, or unescaped into a copy when it
/// had escapes; `None` when `raw` is not a string.
pub fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    if Kind::of(raw) != Kind::String {
        return None;
    }
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    Name.deserialize(&mut deserializer).ok()
}

/// A JSON object read into `T` (a derived struct, read in place: its fields
/// may borrow the text); any other kind of value is refused with a message
/// that names its kind, never its text (which may be a whole body).
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Expect<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Expect<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<T, E> {
                Err(E::invalid_type(de::Unexpected::Other("string"), &self))
            }
        }
        deserializer
            .deserialize_any(Expect(PhantomData))
            .map(Object)
    }
}

/// A JSON array read into a `Vec` (growing as serde's own does: at most
/// twice its length, and three times while it grows); any other kind of
/// value is refused naming its kind, as [`Object`] does.
pub struct List<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Expect<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Expect<T> {
            type Value = Vec<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(items)
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<Vec<T>, E> {
                Err(E::invalid_type(de::Unexpected::Other("string"), &self))
            }
        }
        deserializer.deserialize_any(Expect(PhantomData)).map(List)
    }
}

/// Reads the JSON array of integers `raw` (an Open Inference Protocol
/// shape) without allocating: its length, and its elements pushed to `into`
/// when given (reserve the length first). `Err` says why it is not one, in
/// serde's words, naming kinds, never text.
pub fn integers(raw: &RawValue, into: Option<&mut Vec<i64>>) -> Result<usize, String> {
    struct Integers<'v>(Option<&'v mut Vec<i64>>);
    impl<'de> Visitor<'de> for Integers<'_> {
        type Value = usize;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of integers")
        }

        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<usize, A::Error> {
            let mut len = 0;
            while let Some(value) = seq.next_element_seed(Integer)? {
                if let Some(into) = self.0.as_mut() {
                    into.push(value);
                }
                len += 1;
            }
            Ok(len)
        }

        fn visit_str<E: de::Error>(self, _: &str) -> Result<usize, E> {
            Err(E::invalid_type(de::Unexpected::Other("string"), &self))
        }
    }
    struct Integer;
    impl<'de> DeserializeSeed<'de> for Integer {
        type Value = i64;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<i64, D::Error> {
            deserializer.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Integer {
        type Value = i64;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer")
        }

        fn visit_i64<E>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }

        fn visit_str<E: de::Error>(self, _: &str) -> Result<i64, E> {
            Err(E::invalid_type(de::Unexpected::Other("string"), &self))
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    deserializer
        .deserialize_any(Integers(into))
        .map_err(|e| e.to_string())
}

/// What [`scan`] learned of an input's data without keeping any of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// The nested arrays' shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// Leaves, row-major: the product of `shape`.
    pub count: usize,
    /// What the string leaves take once copied out (each
    /// `allocation_bound(len)`; 0 when there are none).
    pub string_heap: u64,
}

/// Reads nested JSON arrays (the data of input `input`) for their shape,
/// checking that they are rectangular, allocating nothing but the shape. A
/// scalar has shape `[]`; an object stands where a scalar may (its elements'
/// type check refuses it once the model is known).
///
/// ```
/// use model_router::http::parse::scan;
/// let raw = serde_json::from_str::<&serde_json::value::RawValue>("[[1, 2, 3], [4, 5, 6]]").unwrap();
/// let scanned = scan("x", raw).unwrap();
/// assert_eq!((scanned.shape, scanned.count), (vec![2, 3], 6));
/// let ragged = serde_json::from_str::<&serde_json::value::RawValue>("[[1, 2], [3]]").unwrap();
/// assert!(scan("x", ragged).unwrap_err().to_string().contains("ragged"));
/// ```
pub fn scan(input: &str, raw: &RawValue) -> Result<Scanned, Error> {
    let mut state = ScanState {
        input,
        shape: Vec::new(),
        rank: None,
        count: 0,
        string_heap: 0,
        error: None,
    };
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    let result = ScanSeed {
        state: &mut state,
        depth: 0,
    }
    .deserialize(&mut deserializer);
    if let Some(error) = state.error {
        return Err(error);
    }
    result.map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    Ok(Scanned {
        shape: state.shape,
        count: state.count,
        string_heap: state.string_heap,
    })
}

struct ScanState<'n> {
    input: &'n str,
    /// Sizes of the first path's arrays; final once each has closed, which is
    /// before any other array at its depth starts.
    shape: Vec<usize>,
    /// The depth of the leaves, once the first path has reached one (or an
    /// empty array).
    rank: Option<usize>,
    count: usize,
    string_heap: u64,
    error: Option<Error>,
}

impl ScanState<'_> {
    fn ragged<E: de::Error>(&mut self, why: String) -> E {
        self.error = Some(invalid(format!(
            "input {:?} is ragged: {why}",
            Shown(self.input)
        )));
        E::custom("ragged")
    }

    fn leaf<E: de::Error>(&mut self, depth: usize, string_bytes: Option<usize>) -> Result<(), E> {
        match self.rank {
            None => self.rank = Some(depth),
            Some(rank) if depth < rank => {
                return Err(self.ragged(format!(
                    "a scalar stands where an array was expected at depth {depth}"
                )));
            }
            Some(_) => {}
        }
        self.count += 1;
        if let Some(bytes) = string_bytes {
            self.string_heap += allocation_bound(bytes as u64);
        }
        Ok(())
    }
}

struct ScanSeed<'s, 'n> {
    state: &'s mut ScanState<'n>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ScanSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScanSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("nested arrays")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.state.leaf(self.depth, None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.state.leaf(self.depth, None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.state.leaf(self.depth, None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.state.leaf(self.depth, None)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.state.leaf(self.depth, Some(v.len()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.state.leaf(self.depth, None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.state.leaf(self.depth, None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        let state = self.state;
        let Some(rank) = state.rank else {
            // Still on the first path: this array's size is the shape's.
            state.shape.push(0);
            let mut len = 0;
            while seq
                .next_element_seed(ScanSeed {
                    state: &mut *state,
                    depth: depth + 1,
                })?
                .is_some()
            {
                len += 1;
            }
            if state.rank.is_none() {
                state.rank = Some(depth + 1);
            }
            state.shape[depth] = len;
            return Ok(());
        };
        if depth >= rank {
            return Err(state.ragged(format!("arrays nest deeper than {depth} levels in places")));
        }
        let expected = state.shape[depth];
        let mut len = 0;
        while len < expected {
            match seq.next_element_seed(ScanSeed {
                state: &mut *state,
                depth: depth + 1,
            })? {
                Some(()) => len += 1,
                None => break,
            }
        }
        if len == expected {
            while seq.next_element::<IgnoredAny>()?.is_some() {
                len += 1;
            }
        }
        if len != expected {
            return Err(state.ragged(format!(
                "an array at depth {depth} has {len} elements where the first had {expected}"
            )));
        }
        Ok(())
    }
}

/// Reads the data of input `input` (nested arrays, already [`scan`]ned to
/// `count` leaves) as elements of `ty`, straight into one buffer of exactly
/// `count`, refusing any element that does not fit exactly: 300 for uint8,
/// 1e40 for float32, 1.5 for int64, a string for a number; no silent
/// wrapping or rounding. Floats may round to the nearest value of their type
/// (`0.1`), but never to an infinity.
pub fn fill(
    input: &str,
    raw: &RawValue,
    count: usize,
    ty: ElementType,
) -> Result<TensorData, Error> {
    Ok(match ty {
        ElementType::Bool => TensorData::Bool(fill_as(input, raw, count, ty)?),
        ElementType::Int8 => TensorData::Int8(fill_as(input, raw, count, ty)?),
        ElementType::Int16 => TensorData::Int16(fill_as(input, raw, count, ty)?),
        ElementType::Int32 => TensorData::Int32(fill_as(input, raw, count, ty)?),
        ElementType::Int64 => TensorData::Int64(fill_as(input, raw, count, ty)?),
        ElementType::Uint8 => TensorData::Uint8(fill_as(input, raw, count, ty)?),
        ElementType::Uint16 => TensorData::Uint16(fill_as(input, raw, count, ty)?),
        ElementType::Uint32 => TensorData::Uint32(fill_as(input, raw, count, ty)?),
        ElementType::Uint64 => TensorData::Uint64(fill_as(input, raw, count, ty)?),
        ElementType::Fp16 => TensorData::Fp16(fill_as(input, raw, count, ty)?),
        ElementType::Fp32 => TensorData::Fp32(fill_as(input, raw, count, ty)?),
        ElementType::Fp64 => TensorData::Fp64(fill_as(input, raw, count, ty)?),
        ElementType::Bytes => TensorData::Bytes(fill_as(input, raw, count, ty)?),
    })
}

/// A JSON leaf as one element type: `None` where the value does not fit it.
trait Element: Sized {
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

impl Element for bool {
    fn from_bool(b: bool) -> Option<bool> {
        Some(b)
    }
}

macro_rules! integer_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            fn from_i64(v: i64) -> Option<$t> {
                <$t>::try_from(v).ok()
            }
            fn from_u64(v: u64) -> Option<$t> {
                <$t>::try_from(v).ok()
            }
        }
    )*};
}
integer_element!(i8, i16, i32, i64, u8, u16, u32, u64);

/// A JSON number read as a double (as `Value::as_f64` reads integers too),
/// then rounded to the nearest value of the narrower type, refused when that
/// is infinite. Bounding by the type's largest value instead would refuse the
/// shortest decimal form of that value (`3.4028235e38` is a hair above
/// `f32::MAX` as a double, yet is `f32::MAX`), which this server prints.
macro_rules! float_element {
    ($t:ty, $narrow:expr) => {
        impl Element for $t {
            fn from_i64(v: i64) -> Option<$t> {
                <$t as Element>::from_f64(v as f64)
            }
            fn from_u64(v: u64) -> Option<$t> {
                <$t as Element>::from_f64(v as f64)
            }
            fn from_f64(v: f64) -> Option<$t> {
                let narrowed: $t = $narrow(v);
                narrowed.is_finite().then_some(narrowed)
            }
        }
    };
}
float_element!(f32, |v: f64| v as f32);
float_element!(half::f16, half::f16::from_f64);
float_element!(f64, |v: f64| v);

impl Element for String {
    fn from_str(s: &str) -> Option<String> {
        Some(s.to_owned())
    }
}

struct FillState<'n, T> {
    input: &'n str,
    ty: ElementType,
    count: usize,
    out: Vec<T>,
    error: Option<Error>,
}

impl<T> FillState<'_, T> {
    fn leaf<E: de::Error>(
        &mut self,
        value: Option<T>,
        shown: impl FnOnce() -> String,
    ) -> Result<(), E> {
        match value {
            Some(value) if self.out.len() < self.count => {
                self.out.push(value);
                Ok(())
            }
            Some(_) => {
                self.error = Some(invalid(format!(
                    "input {:?} has more elements than its shape holds",
                    Shown(self.input)
                )));
                Err(E::custom("overflow"))
            }
            None => {
                self.error = Some(invalid(format!(
                    "input {:?} element {}: {} is not valid for {}; expected {}",
                    Shown(self.input),
                    self.out.len(),
                    shown(),
                    self.ty,
                    expectation(self.ty)
                )));
                Err(E::custom("invalid element"))
            }
        }
    }
}

fn fill_as<T: Element>(
    input: &str,
    raw: &RawValue,
    count: usize,
    ty: ElementType,
) -> Result<Vec<T>, Error> {
    let mut state = FillState {
        input,
        ty,
        count,
        out: Vec::with_capacity(count),
        error: None,
    };
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    let result = FillSeed(&mut state).deserialize(&mut deserializer);
    if let Some(error) = state.error {
        return Err(error);
    }
    result.map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    if state.out.len() != count {
        return Err(invalid(format!(
            "input {:?} has {} elements where its shape holds {count}",
            Shown(input),
            state.out.len()
        )));
    }
    Ok(state.out)
}

struct FillSeed<'s, 'n, T>(&'s mut FillState<'n, T>);

impl<'de, T: Element> DeserializeSeed<'de> for FillSeed<'_, '_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for FillSeed<'_, '_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("nested arrays")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.leaf(T::from_bool(v), || v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.leaf(T::from_i64(v), || v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.leaf(T::from_u64(v), || v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // As a `Value` prints it (`1e40`, `2.5`, `1.0`).
        self.0
            .leaf(T::from_f64(v), || serde_json::Value::from(v).to_string())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.leaf(T::from_str(v), || Shown(v).to_string())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.leaf(None, || "null".to_string())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.0.leaf(None, || "an object".to_string())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(FillSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
