// `cache.rs` again, against an HTTP/2 hub: the `_h2` suffix of this test target selects it
// (`hub_protocol` in tests/common/mod.rs). Its module docs are plain comments so that it can be
// included here.

include!("cache.rs");
