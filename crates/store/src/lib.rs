//! apogee-store (in progress).
