//! What `/openapi.json` says about every operation besides its own statuses, added once here
//! instead of on each route (CONTRACT.md section 1):
//!
//! - the statuses any operation can answer: 400 `invalid_input` when it takes parameters or a
//!   body, 404 when it has path parameters, 401 when it needs a token, 413 / 415 for bodies,
//!   503 `unavailable`;
//! - the shape of the answers: the error envelope (`Error`) on every error, the success
//!   envelope (`Envelope`) on every JSON success, HTML on the sandbox checkout pages,
//!   `Retry-After` on 429.
//!
//! Schemathesis (scripts/schemathesis.sh) checks the server against exactly this text.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response};

const ERROR: &str = "Error";
const ENVELOPE: &str = "Envelope";

pub fn document_common_answers(api: &mut OpenApi) {
    let components = api.components.get_or_insert_with(Default::default);
    components
        .schemas
        .insert(ERROR.into(), error_schema().into());
    components
        .schemas
        .insert(ENVELOPE.into(), envelope_schema().into());

    for (path, item) in api.paths.paths.iter_mut() {
        let operations = [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation {
                document(path, method, operation);
            }
        }
    }
}

fn document(path: &str, method: &str, op: &mut Operation) {
    // The sandbox checkout is a browser page: HTML for every answer.
    if path.starts_with("/v1/sandbox/") {
        for response in op.responses.responses.values_mut() {
            if let RefOr::T(response) = response {
                if response.content.is_empty() {
                    response.content.insert(
                        "text/html".into(),
                        ContentBuilder::new()
                            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                            .build(),
                    );
                }
            }
        }
        return;
    }

    if path.starts_with("/v1/") {
        let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
        let has_body = op.request_body.is_some();
        let secured = op
            .security
            .as_ref()
            .is_some_and(|s| !s.is_empty() && !s.iter().any(is_empty_requirement));
        let mut add = |status: &str, description: &str| {
            op.responses
                .responses
                .entry(status.into())
                .or_insert_with(|| ResponseBuilder::new().description(description).into());
        };
        if has_params || has_body {
            add(
                "400",
                "invalid input (`invalid_input`, problems per field in `details`); also any \
                 NUL character (U+0000) in the query or the body",
            );
        }
        let has_path_params = op.parameters.as_ref().is_some_and(|ps| {
            ps.iter()
                .any(|p| matches!(p.parameter_in, ParameterIn::Path))
        });
        if has_path_params {
            add(
                "404",
                "no such resource (`not_found`); also any path holding a NUL character",
            );
        }
        if secured {
            add(
                "401",
                "missing, invalid or expired access token, or an ended session \
                 (`unauthenticated`)",
            );
        }
        if has_body {
            add(
                "413",
                "the body is larger than 256 KiB (`payload_too_large`)",
            );
            add("415", "the body is not JSON (`unsupported_media_type`)");
        }
        add(
            "503",
            "the database is unavailable or the server is overloaded (`unavailable`, \
             sometimes with `Retry-After`); try again",
        );
    }

    // A file's bytes are whatever was uploaded; every other success is the JSON envelope.
    let raw_success = path.starts_with("/v1/files/") && method == "get";
    for (status, response) in op.responses.responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        let error = !status.starts_with('2');
        if response.content.is_empty() && (error || !raw_success) {
            let schema = if error { ERROR } else { ENVELOPE };
            response.content.insert(
                "application/json".into(),
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(schema)))
                    .build(),
            );
        }
        if status == "429" {
            retry_after(response);
        }
    }
}

fn is_empty_requirement(requirement: &utoipa::openapi::security::SecurityRequirement) -> bool {
    serde_json::to_value(requirement).is_ok_and(|v| v.as_object().is_some_and(|m| m.is_empty()))
}

fn retry_after(response: &mut Response) {
    response
        .headers
        .entry("Retry-After".into())
        .or_insert_with(|| {
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some("seconds to wait before trying again"))
                .build()
        });
}

fn any_value() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::AnyValue)
}

/// `{"success":false,"statusCode":4xx|5xx,"message":...,"error":"machine_code","details"?}`
fn error_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .description(Some("The error envelope (CONTRACT.md section 1)"))
        .property(
            "success",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .enum_values(Some([false])),
        )
        .property(
            "statusCode",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(400))
                .maximum(Some(599)),
        )
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .property(
            "error",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("machine code: invalid_input, unauthenticated, ...")),
        )
        .property(
            "details",
            any_value().description(Some("per-field problems, when there are any")),
        )
        .required("success")
        .required("statusCode")
        .required("message")
        .required("error")
}

/// `{"success":true,"statusCode":2xx,"message":"OK","data":...,"pagination"?}`
fn envelope_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .description(Some("The success envelope (CONTRACT.md section 1)"))
        .property(
            "success",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .enum_values(Some([true])),
        )
        .property(
            "statusCode",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(200))
                .maximum(Some(299)),
        )
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .property(
            "data",
            any_value().description(Some("the operation's answer (may be null)")),
        )
        .property(
            "pagination",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(
                    "lists: totalItems, and lastEvaluatedKey unless this is the last page",
                )),
        )
        .required("success")
        .required("statusCode")
        .required("message")
        .required("data")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_operation_documents_its_errors_as_the_envelope() {
        let api = serde_json::to_value(super::super::openapi()).expect("serializes");
        let paths = api["paths"].as_object().expect("paths");
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("path item") {
                let responses = op["responses"].as_object().expect("responses");
                if path.starts_with("/v1/") && !path.starts_with("/v1/sandbox/") {
                    assert!(responses.contains_key("503"), "{method} {path}");
                    if op.get("security").is_some() {
                        assert!(responses.contains_key("401"), "{method} {path}");
                    }
                    for (status, response) in responses {
                        if !status.starts_with('2') {
                            assert_eq!(
                                response["content"]["application/json"]["schema"]["$ref"],
                                "#/components/schemas/Error",
                                "{method} {path} {status}"
                            );
                        }
                    }
                }
            }
        }
        assert_eq!(
            api["paths"]["/v1/auth/sign-in"]["post"]["responses"]["429"]["headers"]["Retry-After"]
                ["schema"]["type"],
            "integer"
        );
    }
}
