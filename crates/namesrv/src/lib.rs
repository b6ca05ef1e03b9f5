//! apogee-namesrv (in progress).
