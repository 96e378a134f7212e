//! The store conformance suite (`exactly_core::testing::conformance`) on `PgStore`,
//! against the real PostgreSQL scripts/services.sh starts.

mod common;

use common::PgSubject;
use exactly_core::store_conformance_tests;

store_conformance_tests!(postgres, PgSubject::new());
