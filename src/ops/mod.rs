//! Operations written once against [`crate::BlockDevice`], for every format.

pub mod convert;
pub mod info;
