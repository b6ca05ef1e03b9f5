//! apogee-broker (in progress).
