//! apogee-client (in progress).
