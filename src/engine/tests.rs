//! Tests of the engine over the real fixtures in tests/data/models.
