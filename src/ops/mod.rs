//! Operations written once against [`crate::BlockDevice`], for every format.

pub mod compare;
pub mod convert;
pub mod info;
pub mod measure;
