//! jsonb values as PostgreSQL stores them, read token by token with PostgreSQL's own jsonb
//! iterator. pgrx's `JsonB` prints the value and parses the text with serde_json, which fails
//! (with a panic) on numbers beyond f64 such as `1e400` and on deep nesting; here every value
//! the type admits is a sequence of tokens, and a number is just a token.

use crate::permissions::{Permissions, Scalar, Token};
use pgrx::callconv::{Arg, ArgAbi};
use pgrx::pg_sys::{self, Datum};
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable,
};
use pgrx::{FromDatum, IntoDatum};

/// A detoasted jsonb value in the current memory context.
#[derive(Clone, Copy)]
pub struct Jsonb(Datum);

impl Jsonb {
    /// # Safety
    /// `datum` must be a non-null jsonb datum.
    pub unsafe fn from_raw(datum: Datum) -> Self {
        // SAFETY: pg_detoast_datum returns the datum itself when it is neither toasted nor
        // packed, else a palloc'd plain copy.
        Jsonb(Datum::from(unsafe {
            pg_sys::pg_detoast_datum(datum.cast_mut_ptr())
        }))
    }

    pub fn datum(self) -> Datum {
        self.0
    }

    fn root(self) -> *mut pg_sys::JsonbContainer {
        // SAFETY: a detoasted jsonb is a varlena whose body is the root container.
        unsafe { &raw mut (*self.0.cast_mut_ptr::<pg_sys::Jsonb>()).root }
    }

    /// Bytes the value occupies as stored (its varlena size), the measure of the bounds.
    pub fn stored_size(self) -> usize {
        // SAFETY: a detoasted varlena with a 4-byte header.
        unsafe { pgrx::varsize_any(self.0.cast_mut_ptr()) }
    }

    /// A JSON object at the top?
    pub fn is_object(self) -> bool {
        // SAFETY: reads the root container's header word.
        unsafe { (*self.root()).header & pg_sys::JB_FOBJECT != 0 }
    }

    /// The value's tokens, in jsonb's order (object keys sorted by length, then bytes).
    pub fn tokens(self) -> Tokens {
        // SAFETY: the iterator is palloc'd in the current memory context and reads the value,
        // which lives at least as long as that context.
        Tokens {
            iterator: unsafe { pg_sys::JsonbIteratorInit(self.root()) },
        }
    }
}

pub struct Tokens {
    iterator: *mut pg_sys::JsonbIterator,
}

fn text(bytes: *const std::ffi::c_char, len: i32) -> String {
    // SAFETY: a jsonb string is `len` bytes at `bytes` (not NUL-terminated); the database is
    // UTF-8 (checked at CREATE EXTENSION), lossy only as a last resort.
    let slice = unsafe { std::slice::from_raw_parts(bytes.cast::<u8>(), len.max(0) as usize) };
    String::from_utf8_lossy(slice).into_owned()
}

fn scalar(value: &pg_sys::JsonbValue) -> Scalar {
    // SAFETY: the union member read is the one `type_` names.
    unsafe {
        match value.type_ {
            pg_sys::jbvType::jbvString => {
                Scalar::String(text(value.val.string.val, value.val.string.len))
            }
            pg_sys::jbvType::jbvBool => Scalar::Bool(value.val.boolean),
            pg_sys::jbvType::jbvNumeric => {
                // numeric_out returns a C string, not text.
                let out = pgrx::direct_function_call::<&std::ffi::CStr>(
                    pg_sys::numeric_out,
                    &[Some(Datum::from(value.val.numeric))],
                );
                Scalar::Number(
                    out.map(|c| c.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                )
            }
            _ => Scalar::Null,
        }
    }
}

impl Iterator for Tokens {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        if self.iterator.is_null() {
            return None;
        }
        // SAFETY: JsonbValue is plain data; the iterator fills it for the token it returns and
        // sets itself to NULL (freed) after WJB_DONE.
        unsafe {
            let mut value: pg_sys::JsonbValue = std::mem::zeroed();
            let token = pg_sys::JsonbIteratorNext(&mut self.iterator, &mut value, false);
            use pg_sys::JsonbIteratorToken::*;
            Some(match token {
                WJB_BEGIN_OBJECT => Token::BeginObject,
                WJB_END_OBJECT => Token::EndObject,
                WJB_BEGIN_ARRAY => Token::BeginArray {
                    raw_scalar: value.val.array.rawScalar,
                },
                WJB_END_ARRAY => Token::EndArray,
                WJB_KEY => Token::Key(text(value.val.string.val, value.val.string.len)),
                WJB_VALUE | WJB_ELEM => Token::Scalar(scalar(&value)),
                _ => {
                    self.iterator = std::ptr::null_mut();
                    return None;
                }
            })
        }
    }
}

impl FromDatum for Jsonb {
    unsafe fn from_polymorphic_datum(datum: Datum, is_null: bool, _: pg_sys::Oid) -> Option<Self> {
        // SAFETY: the caller passes a jsonb datum.
        (!is_null && !datum.is_null()).then(|| unsafe { Jsonb::from_raw(datum) })
    }

    /// A copy in `memory_context` (SPI results are freed when SPI finishes).
    unsafe fn from_datum_in_memory_context(
        mut memory_context: pgrx::PgMemoryContexts,
        datum: Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null || datum.is_null() {
            return None;
        }
        // SAFETY: pg_detoast_datum_copy always returns a fresh plain copy.
        memory_context.switch_to(|_| unsafe {
            Some(Jsonb(Datum::from(pg_sys::pg_detoast_datum_copy(
                datum.cast_mut_ptr(),
            ))))
        })
    }
}

/// Largest permissions or metadata value accepted, as stored (bytes).
pub const MAX_STORED_BYTES: usize = 16 * 1024;

/// A caller's permissions value, checked: shape and bounds (`permissions.rs`), and size.
pub fn permissions(value: Jsonb) -> Result<Permissions, String> {
    if value.stored_size() > MAX_STORED_BYTES {
        return Err(format!("must be at most {} KiB", MAX_STORED_BYTES / 1024));
    }
    Permissions::parse(value.tokens()).map_err(|p| p.to_string())
}

/// What a stored key's permissions grant (nothing for NULL).
pub fn held_permissions(value: Option<Jsonb>) -> Permissions {
    value.map_or_else(Permissions::default, |v| Permissions::read_held(v.tokens()))
}

/// A caller's metadata value, checked: a JSON object, within the size bound.
pub fn metadata_problem(value: Jsonb) -> Option<String> {
    if !value.is_object() {
        let mut tokens = value.tokens();
        let kind = match (tokens.next(), tokens.next()) {
            (Some(Token::BeginArray { raw_scalar: true }), Some(Token::Scalar(s))) => s.kind(),
            _ => "an array",
        };
        return Some(format!("must be a JSON object or NULL, not {kind}"));
    }
    if value.stored_size() > MAX_STORED_BYTES {
        return Some(format!("must be at most {} KiB", MAX_STORED_BYTES / 1024));
    }
    None
}

impl IntoDatum for Jsonb {
    fn into_datum(self) -> Option<Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: the argument is declared jsonb (below), so its datum is a jsonb.
unsafe impl<'fcx> ArgAbi<'fcx> for Jsonb {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        // SAFETY: called for non-null arguments only.
        unsafe {
            arg.unbox_arg_using_from_datum()
                .expect("a non-null jsonb argument")
        }
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> pgrx::nullable::Nullable<Self> {
        // SAFETY: FromDatum answers None for a null argument.
        unsafe { arg.unbox_arg_using_from_datum().into() }
    }
}

// SAFETY: maps to SQL jsonb both ways, like pgrx's own JsonB.
unsafe impl SqlTranslatable for Jsonb {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(Jsonb);
    const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
        pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
        Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}
