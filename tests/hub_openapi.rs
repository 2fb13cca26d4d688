//! `docs/hub-control-openapi.yaml` tells the truth about the hub's control API: its paths and
//! methods are exactly the routes the hub answers (`interop_hub::server::CONTROL_ROUTES`,
//! which the control module's own unit test checks against its router), and it is valid
//! OpenAPI 3.1 according to `openapi-spec-validator`.

mod openapi_support;
mod python_support;

use openapi_support::{assert_valid_openapi_3_1, doc_path, route_set, spec_routes};

#[test]
fn hub_control_spec_paths_match_the_served_routes() {
    let text = std::fs::read_to_string(doc_path("hub-control-openapi.yaml")).unwrap();
    assert_eq!(
        spec_routes(&text),
        route_set(interop_hub::server::CONTROL_ROUTES)
    );
}

#[test]
fn hub_control_spec_is_valid_openapi_3_1() {
    assert_valid_openapi_3_1(&doc_path("hub-control-openapi.yaml"));
}
