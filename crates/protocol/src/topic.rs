//! Topic and group name validation and the reserved system topic names.
