//! The REST API: one module per resource group of the contract, the envelope, and the routing
//! rules every request shares (JSON limits, 404/405/413 in the envelope, OpenAPI).

pub mod admin;
pub mod alerts;
pub mod auth;
pub mod availability;
pub mod calls;
pub mod catalogs;
pub mod chats;
pub mod connections;
pub mod discovery;
pub mod envelope;
pub mod files;
pub mod finance;
pub mod guard;
pub mod health;
pub mod otp;
pub mod pagination;
pub mod payments;
pub mod profile;
pub mod push;
pub mod reviews;
pub mod schedules;
pub mod slow_clients;
pub mod spec;
pub mod support;
pub mod users;
pub mod validate;

use actix_web::dev::ResourceDef;
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::service_config::ServiceConfig;

use envelope::ApiError;

/// Largest JSON body accepted (413 beyond).
pub const JSON_LIMIT_BYTES: usize = 256 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Talkamie API",
        version = "1",
        description = "Seniors and verified companions: calls, chat and coins. \
                       Every answer uses the envelope of CONTRACT.md section 1."
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every documented route. Routes registered here appear in `/openapi.json` automatically.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(health::healthz)
        .service(health::readyz)
        .service(health::metrics)
        .service(auth::sign_up)
        .service(auth::sign_in)
        .service(auth::me)
        .service(auth::refresh)
        .service(auth::sign_out)
        .service(auth::reset_password)
        .service(catalogs::interests)
        .service(catalogs::specializations)
        .service(catalogs::faqs)
        .service(catalogs::faqs_by_type)
        .service(catalogs::coins)
        .service(otp::request_code)
        .service(otp::verify_code)
        .service(admin::users_list)
        .service(admin::set_user_verification)
        .service(admin::submit_background_check)
        .service(discovery::list_users)
        .service(files::signed_urls)
        .service(files::my_files)
        .service(files::upload)
        .service(files::read)
        .service(users::get_user)
        .service(users::put_user)
        .service(users::delete_user)
        .service(users::change_password)
        .service(connections::send_request)
        .service(connections::cancel_request)
        .service(connections::accept_request)
        .service(connections::reject_request)
        .service(connections::disconnect)
        .service(connections::pending)
        .service(connections::connected_users)
        .service(connections::send_message_request)
        .service(connections::cancel_message_request)
        .service(connections::accept_message_request)
        .service(connections::reject_message_request)
        .service(chats::list_chats)
        .service(chats::unread_chats)
        .service(chats::pending_chats)
        .service(chats::frequent_chats)
        .service(chats::get_chat)
        .service(chats::chat_messages)
        .service(alerts::list_alerts)
        .service(finance::top_up_session)
        .service(finance::withdraw)
        .service(finance::transactions)
        .service(finance::purchases)
        .service(finance::earnings)
        .service(finance::withdrawals)
        .service(finance::transaction)
        .service(payments::payment_webhook)
        .service(payments::checkout_page)
        .service(payments::checkout_pay)
        .service(payments::checkout_cancel)
        .service(admin::ledger_audit)
        .service(admin::advance_clock)
        .service(availability::get_weekly)
        .service(availability::set_weekly)
        .service(availability::get_custom)
        .service(availability::set_custom)
        .service(schedules::schedule_call)
        .service(schedules::list_schedules)
        .service(schedules::upcoming_schedules)
        .service(schedules::past_schedules)
        .service(schedules::get_schedule)
        .service(schedules::update_schedule)
        .service(schedules::cancel_schedule)
        .service(schedules::clear_schedules)
        .service(calls::get_call)
        .service(calls::call_histories)
        .service(reviews::my_reviews)
        .service(reviews::user_reviews)
        .service(reviews::create_review)
        .service(reviews::update_review)
        .service(reviews::delete_review)
        .service(support::open_ticket)
        .service(support::ticket_messages)
        .service(support::close_ticket)
        .service(support::admin_tickets)
        .service(push::register_device)
        .service(push::remove_device)
        .service(catalogs::add_faq)
        .service(catalogs::add_interest);
}

/// The OpenAPI document of [`routes`], with the answers every operation shares ([`spec`]).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa_actix_web::AppExt;
    let mut api = actix_web::App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .configure(routes)
        .split_for_parts()
        .1;
    spec::document_common_answers(&mut api);
    api
}

/// Paths the server knows, to tell "wrong method" (405) from "no such route" (404).
pub struct KnownPaths(pub Vec<ResourceDef>);

impl KnownPaths {
    pub fn from_openapi(api: &utoipa::openapi::OpenApi, extra: &[&str]) -> Self {
        let mut defs: Vec<ResourceDef> = api
            .paths
            .paths
            .keys()
            .map(|p| ResourceDef::new(p.as_str()))
            .collect();
        defs.extend(extra.iter().map(|p| ResourceDef::new(*p)));
        KnownPaths(defs)
    }
}

/// Fallback for unmatched requests: 405 when the path exists with other methods, else 404.
pub async fn fallback(
    req: HttpRequest,
    known: web::Data<KnownPaths>,
) -> Result<HttpResponse, ApiError> {
    let path = req.path();
    Err(if known.0.iter().any(|def| def.is_match(path)) {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {path}", req.method()),
        )
    } else {
        ApiError::not_found("route")
    })
}

pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(JSON_LIMIT_BYTES)
        .content_type_required(false)
        .error_handler(|error, _req| {
            let api_error = match &error {
                JsonPayloadError::OverflowKnownLength { .. }
                | JsonPayloadError::Overflow { .. } => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the body is larger than {JSON_LIMIT_BYTES} bytes"),
                ),
                JsonPayloadError::ContentType => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send JSON (Content-Type: application/json)",
                ),
                JsonPayloadError::Deserialize(e) if e.is_data() => {
                    ApiError::invalid(json!({ "body": e.to_string() }))
                }
                JsonPayloadError::Deserialize(e) => ApiError {
                    details: Some(json!({ "body": e.to_string() })),
                    ..ApiError::bad_request("the body is not valid JSON")
                },
                other => ApiError::bad_request(other.to_string()),
            };
            api_error.into()
        })
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|error: PathError, _req| {
        ApiError::invalid(json!({ "path": error.to_string() })).into()
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|error: QueryPayloadError, _req| {
        ApiError::invalid(json!({ "query": error.to_string() })).into()
    })
}

/// `/openapi.json`
pub async fn openapi_json(api: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    HttpResponse::Ok().json(api.get_ref())
}
