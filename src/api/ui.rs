//! The web console at `/ui/`: one page and its script and style, built into the binary
//! (`include_str!`), so it works offline and fetches nothing from anywhere. The page uses only
//! the node's public HTTP APIs (see `src/ui/app.js`).

use actix_web::{HttpResponse, web};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// The console's routes, for `App::configure`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/ui",
        web::get().to(|| async { HttpResponse::PermanentRedirect().insert_header(("location", "/ui/")).finish() }),
    )
    .route("/ui/", web::get().to(|| async { asset("text/html; charset=utf-8", INDEX) }))
    .route("/ui/app.js", web::get().to(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
    .route("/ui/style.css", web::get().to(|| async { asset("text/css; charset=utf-8", STYLE) }));
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        // The page may run only what the node itself serves, in no other site's frame.
        .insert_header((
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'; base-uri 'none'; object-src 'none'",
        ))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("cache-control", "no-cache"))
        .body(body)
}
