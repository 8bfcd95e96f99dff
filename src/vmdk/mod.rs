//! VMDK images (issue 6). Not implemented yet.
