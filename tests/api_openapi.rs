//! `docs/openapi.yaml` tells the truth: its paths and methods are exactly the routes the server
//! answers (`interopd::api::ROUTES`, which the router's own unit test checks), and it is valid
//! OpenAPI 3.1 according to `openapi-spec-validator` (Python; installed on first use into the
//! target dir, `python_support`).

mod openapi_support;
mod python_support;

use openapi_support::{assert_valid_openapi_3_1, doc_path, route_set, spec_routes};

#[test]
fn spec_paths_match_the_served_routes() {
    let text = std::fs::read_to_string(doc_path("openapi.yaml")).unwrap();
    assert_eq!(spec_routes(&text), route_set(interopd::api::ROUTES));
}

#[test]
fn spec_is_valid_openapi_3_1() {
    assert_valid_openapi_3_1(&doc_path("openapi.yaml"));
}
