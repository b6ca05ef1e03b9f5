//! apogee-remoting (in progress).
