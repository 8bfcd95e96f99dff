//! Operations written once against [`crate::BlockDevice`], for every format.

pub mod amend;
pub mod bench;
pub mod bitmap;
pub mod chain_ops;
pub mod check;
pub mod commit;
pub mod compare;
pub mod convert;
pub mod create;
pub mod dd;
pub mod delta;
pub mod info;
pub mod map;
pub mod measure;
pub mod rebase;
pub mod resize;
pub mod snapshot;
