//! The two dialects of X2Go's broker protocol and the bodies that belong to the HTTP exchange
//! rather than to a task: the content type of each dialect, the connection test's answer, and the
//! error pages and 400 bodies clients show as x2gobroker (tornado) writes them.

/// Which dialect a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `/plain/`: X2Go Client.
    Plain,
    /// `/json/`: python3-x2go, pyhoca-cli.
    Json,
}

impl Dialect {
    /// The reply's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Dialect::Plain => "text/plain; charset=utf-8",
            Dialect::Json => "text/json; charset=utf-8",
        }
    }

    /// The answer to `task=testcon` (X2Go Client's connection test needs no credentials).
    pub fn testcon(self) -> &'static str {
        match self {
            Dialect::Plain => "Access granted\nOK\n",
            Dialect::Json => "",
        }
    }
}

/// `Content-Type` of error pages.
pub const HTML: &str = "text/html; charset=utf-8";
/// `Content-Type` of 400 bodies.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// An error page for `status` with its `reason` phrase, as tornado writes it (a 401 is the body
/// X2Go clients recognise as "wrong password").
pub fn error_page(status: u16, reason: &str) -> String {
    if status == 401 {
        return super::UNAUTHORIZED_BODY.to_owned();
    }
    let text = format!("{status}: {reason}");
    format!("<html><title>{text}</title><body>{text}</body></html>")
}

/// A 400 body with what is wrong with the request.
pub fn bad_request(message: &str) -> String {
    format!("400: Bad Request: {message}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_are_tornados() {
        assert_eq!(
            error_page(404, "Not Found"),
            "<html><title>404: Not Found</title><body>404: Not Found</body></html>"
        );
        assert_eq!(
            error_page(401, "Unauthorized"),
            super::super::UNAUTHORIZED_BODY
        );
        assert_eq!(
            bad_request("login is not a user name"),
            "400: Bad Request: login is not a user name\n"
        );
        assert_eq!(Dialect::Plain.testcon(), "Access granted\nOK\n");
        assert_eq!(Dialect::Json.content_type(), "text/json; charset=utf-8");
    }
}
