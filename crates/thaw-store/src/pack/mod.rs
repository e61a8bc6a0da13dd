//! Packs: many compressed chunks in one object plus an index object per pack. The
//! [`store::PackStore`] knows where every chunk lives and plans the GETs that fetch them;
//! the [`writer::PackWriter`] deduplicates, compresses, packs and uploads; [`keys`] names
//! every object of a store.

pub mod keys;
pub mod store;
pub mod writer;
