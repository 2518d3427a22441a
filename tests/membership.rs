//! Multi-process tests of the membership manager (being written).
