//! Two declarative macros shared by the ABI modules: `abi_enum!` defines an enum of
//! numbers taken from a Xen header together with its decoder, and `assert_layout!` pins a
//! `#[repr(C)]` struct's size and field offsets at compile time.
//!
//! Every other module uses them; they must never generate code with side effects or
//! `unsafe`.

/// Defines a fieldless enum whose variants carry the numbers a Xen header gives, plus:
/// `ALL` (every variant in declaration order), `from_raw(raw) -> Option<Self>` (the decoder:
/// `None` for a number the header does not define) and `raw(self)` (the number).
macro_rules! abi_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $raw:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr($raw)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// Decodes a raw number; `None` when the header defines no such value.
            pub const fn from_raw(raw: $raw) -> Option<Self> {
                match raw {
                    $( $value => Some(Self::$variant), )+
                    _ => None,
                }
            }

            /// The raw number, as it travels in a register or in guest memory.
            pub const fn raw(self) -> $raw {
                self as $raw
            }
        }
    };
}

/// Asserts at compile time that `$ty` is `$size` bytes long and that each named field sits
/// at the given offset (the numbers come from the Xen header the type mirrors).
macro_rules! assert_layout {
    ($ty:ty, size = $size:expr, { $($field:ident @ $offset:expr),* $(,)? }) => {
        const _: () = {
            assert!(::core::mem::size_of::<$ty>() == $size);
            $( assert!(::core::mem::offset_of!($ty, $field) == $offset); )*
        };
    };
}

pub(crate) use abi_enum;
pub(crate) use assert_layout;
