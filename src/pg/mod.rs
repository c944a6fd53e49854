//! The few places that reach into PostgreSQL's internals, each with the invariant it keeps:
//!
//! - `privileged`: the extension's own SQL runs as the extension's owner with a search path no
//!   caller can write to, and nothing it sets outlives it;
//! - `subtransaction`: work whose failure must not become the caller's failure;
//! - `transaction_list`: values that live and die with the transaction and its savepoints;
//! - `bookkeeping`: writes on the side of a COMMIT that must never fail or block it;
//! - `jsonb`: jsonb values read token by token, so that no value a type admits is a parse error;
//! - `shared_memory`: the segments of a preloaded library, attached in one place;
//! - `clock`, `compat`: time, and the differences between PostgreSQL versions.

pub mod bookkeeping;
pub mod clock;
pub mod compat;
pub mod jsonb;
pub mod privileged;
pub mod shared_memory;
pub mod spi;
pub mod subtransaction;
pub mod transaction_list;

/// A datum handed to SPI as it is, typed by the oid it is passed with.
pub struct RawDatum(pub pgrx::pg_sys::Datum);

impl pgrx::IntoDatum for RawDatum {
    fn into_datum(self) -> Option<pgrx::pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pgrx::pg_sys::Oid {
        pgrx::pg_sys::InvalidOid
    }
}

/// Declares a newtype over an oid that SQL sees as a `reg*` type, so that callers may pass a
/// name (`'public.member'`) and PostgreSQL resolves it with their search path.
macro_rules! reg_type {
    ($name:ident, $sql:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name(pub pgrx::pg_sys::Oid);

        impl pgrx::FromDatum for $name {
            unsafe fn from_polymorphic_datum(
                datum: pgrx::pg_sys::Datum,
                is_null: bool,
                _: pgrx::pg_sys::Oid,
            ) -> Option<Self> {
                (!is_null).then(|| $name(pgrx::pg_sys::Oid::from(datum.value() as u32)))
            }
        }

        // SAFETY: the argument is declared with this SQL type, an oid passed by value.
        unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for $name {
            unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
                // SAFETY: called for non-null arguments only, which always convert.
                unsafe {
                    arg.unbox_arg_using_from_datum()
                        .expect("a non-null oid argument")
                }
            }

            unsafe fn unbox_nullable_arg(
                arg: pgrx::callconv::Arg<'_, 'fcx>,
            ) -> pgrx::nullable::Nullable<Self> {
                // SAFETY: FromDatum answers None for a null argument.
                unsafe { arg.unbox_arg_using_from_datum().into() }
            }
        }

        // SAFETY: maps to the named SQL type, whose values are oids.
        unsafe impl pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable for $name {
            const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!($name);
            const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
                pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin::External;
            const ARGUMENT_SQL: Result<
                pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef,
                pgrx::pgrx_sql_entity_graph::metadata::ArgumentError,
            > = Ok(pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal($sql));
            const RETURN_SQL: Result<
                pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef,
                pgrx::pgrx_sql_entity_graph::metadata::ReturnsError,
            > = Ok(pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef::One(
                pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal($sql),
            ));
        }
    };
}

reg_type!(
    RegClass,
    "regclass",
    "A relation named by the caller (`regclass`)."
);
reg_type!(
    RegProcedure,
    "regprocedure",
    "A function named with its argument types (`regprocedure`)."
);

/// Type oids of query arguments, to `use oids::*` without pulling in all of `pg_sys`.
pub mod oids {
    pub use pgrx::pg_sys::{
        BOOLOID, BYTEAOID, INT4OID, INT8ARRAYOID, INT8OID, INTERVALOID, JSONBOID, OIDOID,
        REGCLASSOID, REGPROCEDUREOID, TEXTARRAYOID, TEXTOID, TIMESTAMPTZARRAYOID, TIMESTAMPTZOID,
        UUIDARRAYOID, UUIDOID,
    };
}
