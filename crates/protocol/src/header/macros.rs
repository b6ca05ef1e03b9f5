//! `command_header!`: declares a header struct and its `CommandHeader` impl
//! from one field list, so key names, optionality and defaults live in one
//! place instead of three hand-written functions per header.
//!
//! Field kinds:
//! * `req name: T => "key"`: required; missing gives `MissingField("key")`.
//! * `opt name: T => "key"`: `Option<T>`; `None` is not emitted.
//! * `def name: T = expr => "key"`: a Java primitive with a default; missing
//!   takes the default, always emitted.
//!
//! Writing `pub struct Name : rpc { .. }` embeds the inherited optional
//! `RpcFields` (`bname`, `ns`, `nsd`, `oway`, `lo`) as a field named `rpc`.

macro_rules! command_header {
    (
        $(#[$meta:meta])*
        pub struct $name:ident $(: $rpc:ident)? {
            $(
                $(#[$fmeta:meta])*
                $kind:ident $field:ident : $ty:ty $(= $default:expr)? => $key:literal
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                pub $field: command_header!(@ty $kind $ty),
            )*
            $(
                /// Optional fields inherited from Java's `RpcRequestHeader`.
                pub $rpc: $crate::header::RpcFields,
            )?
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $( $field: command_header!(@default $kind $(, $default)?), )*
                    $( $rpc: $crate::header::RpcFields::default(), )?
                }
            }
        }

        impl $crate::header::CommandHeader for $name {
            #[allow(unused_variables)]
            fn write_ext(&self, ext: &mut $crate::ext_fields::ExtFields) {
                $( command_header!(@write $kind self, ext, $field, $key); )*
                $( $crate::header::CommandHeader::write_ext(&self.$rpc, ext); )?
            }

            #[allow(unused_variables)]
            fn read_ext(
                ext: &$crate::ext_fields::ExtFields,
            ) -> ::std::result::Result<Self, $crate::error::ProtocolError> {
                Ok($name {
                    $( $field: command_header!(@read $kind ext, $key $(, $default)?), )*
                    $( $rpc: $crate::header::CommandHeader::read_ext(ext)?, )?
                })
            }
        }
    };

    (@ty req $ty:ty) => { $ty };
    (@ty opt $ty:ty) => { Option<$ty> };
    (@ty def $ty:ty) => { $ty };

    (@default req) => { Default::default() };
    (@default opt) => { None };
    (@default def, $d:expr) => { $d };

    (@read req $ext:ident, $key:literal) => {
        $crate::header::required($ext, $key)?
    };
    (@read opt $ext:ident, $key:literal) => {
        $crate::header::optional($ext, $key)?
    };
    (@read def $ext:ident, $key:literal, $d:expr) => {
        $crate::header::optional($ext, $key)?.unwrap_or($d)
    };

    (@write req $self:ident, $ext:ident, $field:ident, $key:literal) => {
        $crate::header::put($ext, $key, &$self.$field)
    };
    (@write opt $self:ident, $ext:ident, $field:ident, $key:literal) => {
        if let Some(v) = &$self.$field {
            $crate::header::put($ext, $key, v)
        }
    };
    (@write def $self:ident, $ext:ident, $field:ident, $key:literal) => {
        $crate::header::put($ext, $key, &$self.$field)
    };
}
