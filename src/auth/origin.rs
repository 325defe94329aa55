//! Where a browser request comes from. A browser attaches the `swapcast_token` cookie whatever
//! page makes the request — a page on a sibling subdomain or another port of the same host too,
//! which SameSite does not stop — so what a cookie authenticates must also come from this
//! server's own origin or one in `SWAPCAST_ALLOWED_ORIGINS` (CONTRACT §3, §3.1).

use actix_web::http::Method;
use actix_web::HttpRequest;

/// Whether `origin` (`scheme://host[:port]`) is this server's own or an allowed one.
/// The host is the request's own `Host` header — never `X-Forwarded-Host` or `Forwarded`, which a
/// client could set: behind a proxy that rewrites `Host`, list the public origin in
/// `SWAPCAST_ALLOWED_ORIGINS`.
fn is_trusted(req: &HttpRequest, origin: &str, allowed: &[String]) -> bool {
    let origin = origin.trim_end_matches('/');
    let host = req.headers().get("host").and_then(|h| h.to_str().ok());
    let own = host.is_some_and(|host| origin == format!("http://{host}") || origin == format!("https://{host}"));
    own || allowed.iter().any(|a| a.trim_end_matches('/') == origin)
}

/// A browser request from an untrusted page: it says where it comes from (`Origin`, or lacking
/// one `Referer`), and that is neither this server nor an allowed origin. Requests that say
/// nothing (scripts, command-line clients) are not cross-site.
pub fn from_another_site(req: &HttpRequest, allowed: &[String]) -> bool {
    let says = req.headers().contains_key("origin") || req.headers().contains_key("referer");
    says && !write_allowed(req, allowed)
}

/// A cookie-authenticated WebSocket: without an `Origin` it is not a browser, and nothing could
/// have attached the cookie behind the user's back.
pub fn websocket_allowed(req: &HttpRequest, allowed: &[String]) -> bool {
    match req.headers().get("origin") {
        None => true,
        Some(origin) => origin.to_str().is_ok_and(|o| is_trusted(req, o, allowed)),
    }
}

/// A cookie-authenticated REST request: safe methods always; any other needs an `Origin` (or,
/// lacking one, a `Referer`) that is trusted. Browsers send `Origin` on every cross-origin and
/// every non-GET same-origin `fetch`, so a request with neither is refused too.
pub fn write_allowed(req: &HttpRequest, allowed: &[String]) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    if let Some(origin) = req.headers().get("origin") {
        return origin.to_str().is_ok_and(|o| is_trusted(req, o, allowed));
    }
    let Some(referer) = req.headers().get("referer").and_then(|r| r.to_str().ok()) else {
        return false;
    };
    referer_origin(referer).is_some_and(|o| is_trusted(req, o, allowed))
}

/// `https://host:port` of `https://host:port/path?query`.
fn referer_origin(referer: &str) -> Option<&str> {
    let scheme_end = referer.find("://")? + 3;
    let host_end = referer[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(referer.len(), |i| scheme_end + i);
    (host_end > scheme_end).then(|| &referer[..host_end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;
    use actix_web::test::TestRequest;

    fn with(method: Method, headers: &[(&'static str, HeaderValue)]) -> HttpRequest {
        let mut req = TestRequest::default()
            .method(method)
            .insert_header(("host", "swap.example"));
        for (name, value) in headers {
            req = req.insert_header((*name, value.clone()));
        }
        req.to_http_request()
    }

    #[test]
    fn cookie_websockets_must_come_from_this_server_or_an_allowed_origin() {
        let allowed = vec!["https://dash.example/".to_owned()];
        let origin = |o: &'static [u8]| with(Method::GET, &[("origin", HeaderValue::from_bytes(o).unwrap())]);
        assert!(websocket_allowed(&with(Method::GET, &[]), &allowed));
        assert!(websocket_allowed(&origin(b"http://swap.example"), &allowed));
        assert!(websocket_allowed(&origin(b"https://dash.example"), &allowed));
        assert!(!websocket_allowed(&origin(b"https://evil.example"), &allowed));
        assert!(!websocket_allowed(&origin(b"http://swap.example\xff"), &allowed));
    }

    #[test]
    fn cookie_writes_need_a_trusted_origin_or_referer() {
        let allowed = vec!["https://dash.example".to_owned()];
        let h = |v: &'static str| HeaderValue::from_static(v);
        assert!(write_allowed(&with(Method::GET, &[]), &allowed), "reads are free");
        assert!(!write_allowed(&with(Method::POST, &[]), &allowed), "neither header");
        assert!(write_allowed(
            &with(Method::POST, &[("origin", h("http://swap.example"))]),
            &allowed
        ));
        assert!(write_allowed(
            &with(Method::PATCH, &[("origin", h("https://dash.example"))]),
            &allowed
        ));
        assert!(!write_allowed(
            &with(Method::POST, &[("origin", h("http://evil.example"))]),
            &allowed
        ));
        // A sibling port or subdomain is another origin.
        assert!(!write_allowed(
            &with(Method::POST, &[("origin", h("http://swap.example:8080"))]),
            &allowed
        ));
        assert!(!write_allowed(
            &with(Method::POST, &[("origin", h("http://a.swap.example"))]),
            &allowed
        ));
        assert!(!write_allowed(&with(Method::POST, &[("origin", h("null"))]), &allowed));
        assert!(write_allowed(
            &with(Method::POST, &[("referer", h("http://swap.example/dash?x=1"))]),
            &allowed
        ));
        assert!(!write_allowed(
            &with(Method::POST, &[("referer", h("http://swap.example.evil.example/"))]),
            &allowed
        ));
        assert!(!write_allowed(
            &with(Method::DELETE, &[("referer", h("not a url"))]),
            &allowed
        ));
        // Forwarding headers a client can set do not make another origin this server's.
        let forwarded = [
            ("origin", h("http://evil.example")),
            ("x-forwarded-host", h("evil.example")),
        ];
        assert!(!write_allowed(&with(Method::POST, &forwarded), &allowed));
        let forwarded = [
            ("origin", h("http://evil.example")),
            ("forwarded", h("host=evil.example")),
        ];
        assert!(!write_allowed(&with(Method::POST, &forwarded), &allowed));
        // Sign-in and sign-out from another site; a script that says nothing is not one.
        assert!(from_another_site(
            &with(Method::POST, &[("origin", h("http://evil.example"))]),
            &allowed
        ));
        assert!(!from_another_site(&with(Method::POST, &[]), &allowed));
        assert!(!from_another_site(
            &with(Method::POST, &[("origin", h("http://swap.example"))]),
            &allowed
        ));
    }
}
