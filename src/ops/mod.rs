//! Operations written once against [`crate::BlockDevice`], for every format.

pub mod chain_ops;
pub mod compare;
pub mod convert;
pub mod info;
pub mod map;
pub mod measure;
