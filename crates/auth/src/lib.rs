//! Switchboard's authenticators: an `Authenticator` trait with PAM, LDAP, password-file and token
//! implementations.
//!
//! Nothing is here yet; the X2Go frontend issue fills it.
