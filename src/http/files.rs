//! Section 10 files: signed upload URLs, the upload and read endpoints of the local store, and
//! my files. Uploads stream to disk with the size limit enforced as bytes arrive (an oversized
//! upload is cut off, never buffered whole); the first bytes must match the declared type;
//! pictures get a thumbnail of at most 256 px.

use std::collections::BTreeMap;

use actix_files::NamedFile;
use actix_web::http::StatusCode;
use actix_web::{get, post, put, web, HttpRequest, HttpResponse};
use chrono::Utc;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use talkamie_aggregates::user::FileRef;
use talkamie_projections::profiles::file_json;
use talkamie_projections::{with_pool, Db};
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ok, ApiError};
use super::validate::Problems;
use crate::auth::Authenticated;
use crate::providers::s3::object_name;
use crate::providers::storage::{
    is_safe_segment, magic_matches, thumbnail_png, FileStore, LocalFiles, ObjectType, SignedQuery,
};
use crate::state::AppState;

pub const MAX_ITEMS: usize = 10;
const THUMBNAIL_PX: u32 = 256;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedUrlItem {
    name: Option<String>,
    mime_type: Option<String>,
    /// `picture`, `video` or `certificate`
    object_type: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedUrlsBody {
    /// Must be your own directory (`users/<your id>`) when given
    file_dir_path: Option<String>,
    /// Always `user`
    #[serde(rename = "type")]
    kind: Option<String>,
    /// key -> what will be uploaded under that key
    items: Option<BTreeMap<String, SignedUrlItem>>,
}

fn dir_of(user_id: &str) -> String {
    format!("users/{user_id}")
}

fn check_dir(who: &Authenticated, dir: Option<&str>) -> Result<(), ApiError> {
    match dir {
        None | Some("") => Ok(()),
        Some(d) if d.trim_end_matches('/') == dir_of(&who.user_id) => Ok(()),
        Some(_) => Err(ApiError::forbidden()),
    }
}

/// Hands out upload URLs (15 minutes) and read URLs for the given keys.
#[utoipa::path(tag = "files", security(("bearer" = [])), request_body = SignedUrlsBody,
    responses((status = 200, description = "{fileDirPath, items:{key:{uploadUrl,fileUrl}}}"),
              (status = 400, description = "invalid items (mime type, object type, key)"),
              (status = 403, description = "fileDirPath is not yours"),
              (status = 409, description = "already_exists: a file was already uploaded under that key")))]
#[post("/v1/signed/urls")]
pub async fn signed_urls(
    state: web::Data<AppState>,
    who: Authenticated,
    body: web::Json<SignedUrlsBody>,
) -> Result<HttpResponse, ApiError> {
    check_dir(&who, body.file_dir_path.as_deref())?;
    let mut p = Problems::default();
    if body.kind.as_deref().unwrap_or("user") != "user" {
        p.add("type", "must be user");
    }
    let items = body.items.as_ref().filter(|i| !i.is_empty());
    match items {
        None => p.add("items", "is required (at least one file)"),
        Some(items) if items.len() > MAX_ITEMS => {
            p.add("items", format!("at most {MAX_ITEMS} files at once"))
        }
        _ => {}
    }
    let mut accepted = Vec::new();
    for (key, item) in items.into_iter().flatten() {
        let field = format!("items.{key}");
        if !is_safe_segment(key) {
            p.add(
                &field,
                "keys are 1-100 characters of letters, digits, '-', '_' and '.'",
            );
            continue;
        }
        let Some(object_type) = item.object_type.as_deref().and_then(ObjectType::parse) else {
            p.add(&field, "objectType must be picture, video or certificate");
            continue;
        };
        let mime = item.mime_type.as_deref().unwrap_or("").to_lowercase();
        if !object_type.accepts(&mime) {
            p.add(
                &field,
                format!(
                    "mimeType {mime:?} is not accepted for a {}",
                    object_type.as_str()
                ),
            );
            continue;
        }
        let name = item.name.as_deref().unwrap_or(key).trim().to_string();
        if name.is_empty() || name.chars().count() > 200 {
            p.add(&field, "name must be 1 to 200 characters");
            continue;
        }
        accepted.push((key.clone(), object_type, mime, name));
    }
    p.finish()?;
    let mut out = serde_json::Map::new();
    for (key, object_type, mime, name) in accepted {
        reserve(
            &state.store.db,
            &who.user_id,
            &key,
            object_type,
            &mime,
            &name,
        )
        .await?;
        out.insert(key.clone(), json!({
            "uploadUrl": state.files.upload_url(&who.user_id, &key, &mime, object_type.max_bytes()),
            "fileUrl": state.files.read_url(&who.user_id, &key, false),
        }));
    }
    Ok(ok(
        json!({"fileDirPath": dir_of(&who.user_id), "items": out}),
    ))
}

/// Records a pending upload; an uploaded file is immutable (409).
async fn reserve(
    db: &Db,
    user_id: &str,
    key: &str,
    object_type: ObjectType,
    mime: &str,
    name: &str,
) -> Result<(), ApiError> {
    let existing: Option<String> = with_pool!(db, pool => {
        sqlx::query_scalar("SELECT status FROM files WHERE user_id = $1 AND key = $2")
            .bind(user_id)
            .bind(key)
            .fetch_optional(pool)
            .await?
    });
    if existing.as_deref() == Some("uploaded") {
        return Err(ApiError::conflict(
            "already_exists",
            format!("a file was already uploaded as {key}; use another key"),
        ));
    }
    with_pool!(db, pool => {
        sqlx::query(
            "INSERT INTO files (user_id, key, object_type, mime_type, name, status, created_at)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6)
             ON CONFLICT (user_id, key) DO UPDATE
                SET object_type = excluded.object_type, mime_type = excluded.mime_type,
                    name = excluded.name, created_at = excluded.created_at",
        )
        .bind(user_id)
        .bind(key)
        .bind(object_type.as_str())
        .bind(mime)
        .bind(name)
        .bind(Utc::now())
        .execute(pool)
        .await
        .map(|_| ())
    })?;
    Ok(())
}

/// An error answer that also closes the connection: the client may still be sending a body
/// we refuse to read, and an open connection would leave it blocked.
fn closing(error: ApiError) -> HttpResponse {
    use actix_web::ResponseError;
    let mut response = error.error_response();
    response
        .head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    response
}

fn refused(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "invalid_signature", message)
}

/// The upload itself (`uploadUrl`): the bytes of the file, with its mime type as Content-Type.
#[utoipa::path(tag = "files",
    params(("user" = String, Path), ("key" = String, Path)),
    responses((status = 200, description = "{key, size}"),
              (status = 403, description = "invalid_signature: forged or expired URL"),
              (status = 413, description = "larger than the object type allows"),
              (status = 415, description = "not the declared type")))]
#[put("/v1/files/{user}/{key}")]
pub async fn upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<SignedQuery>,
    payload: web::Payload,
) -> HttpResponse {
    // Any refusal may leave body bytes unread: answer and close the connection.
    receive(state, req, path, query, payload)
        .await
        .unwrap_or_else(closing)
}

/// The local store and a file's path segments, checked (404 otherwise, and with S3).
fn local_object(
    state: &AppState,
    path: web::Path<(String, String)>,
) -> Result<(&LocalFiles, String, String), ApiError> {
    let (user_id, key) = path.into_inner();
    if !is_safe_segment(&user_id) || !is_safe_segment(&key) {
        return Err(ApiError::not_found("file"));
    }
    let local = state
        .files
        .local()
        .ok_or_else(|| ApiError::not_found("route"))?;
    Ok((local, user_id, key))
}

async fn receive(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<SignedQuery>,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (local, user_id, key) = local_object(&state, path)?;
    let (mime, max) = local
        .verify_upload(&user_id, &key, &query)
        .map_err(refused)?;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the file is larger than {max} bytes"),
        )
    };
    let wrong_type = |m: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "wrong_mime_type",
            m.to_string(),
        )
    };
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_lowercase()
        != mime
    {
        return Err(wrong_type(&format!(
            "send the file as Content-Type: {mime}"
        )));
    }
    if let Some(length) = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        if length > max {
            return Err(too_large());
        }
    }
    let pending: Option<String> = with_pool!(&state.store.db, pool => {
        sqlx::query_scalar("SELECT object_type FROM files WHERE user_id = $1 AND key = $2 AND status = 'pending'")
            .bind(&user_id)
            .bind(&key)
            .fetch_optional(pool)
            .await?
    });
    let Some(object_type) = pending.as_deref().and_then(ObjectType::parse) else {
        return Err(ApiError::conflict(
            "already_exists",
            "this upload URL was already used",
        ));
    };

    let dir = local.user_dir(&user_id);
    let io = |e: std::io::Error| {
        tracing::error!(error = %e, "file store");
        ApiError::internal()
    };
    tokio::fs::create_dir_all(&dir).await.map_err(io)?;
    let final_path = local.path(&user_id, &key, false);
    let partial = dir.join(format!(".{key}.{}.part", uuid::Uuid::new_v4().simple()));
    let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
    let mut size: u64 = 0;
    let mut head: Vec<u8> = Vec::new();
    let outcome: Result<(), ApiError> = async {
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?;
            size += chunk.len() as u64;
            if size > max {
                return Err(too_large());
            }
            if head.len() < 16 {
                head.extend(chunk.iter().take(16 - head.len()));
                if head.len() >= 12 && !magic_matches(&mime, &head) {
                    return Err(wrong_type(&format!("the content is not {mime}")));
                }
            }
            file.write_all(&chunk).await.map_err(io)?;
        }
        if size == 0 || !magic_matches(&mime, &head) {
            return Err(wrong_type(&format!("the content is not {mime}")));
        }
        file.flush().await.map_err(io)
    }
    .await;
    drop(file);
    if let Err(error) = outcome {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(error);
    }
    tokio::fs::rename(&partial, &final_path).await.map_err(io)?;

    let mut thumbnail = false;
    if object_type == ObjectType::Picture {
        let source = final_path.clone();
        let target = local.path(&user_id, &key, true);
        let made = tokio::task::spawn_blocking(move || -> Result<(), image::ImageError> {
            image::open(&source)?
                .thumbnail(THUMBNAIL_PX, THUMBNAIL_PX)
                .save_with_format(&target, image::ImageFormat::Png)
        })
        .await
        .map_err(|_| ApiError::internal())?;
        if made.is_err() {
            let _ = tokio::fs::remove_file(&final_path).await;
            return Err(wrong_type("the picture cannot be decoded"));
        }
        thumbnail = true;
    }
    with_pool!(&state.store.db, pool => {
        sqlx::query(
            "UPDATE files SET status = 'uploaded', size_bytes = $3, has_thumbnail = $4, uploaded_at = $5
              WHERE user_id = $1 AND key = $2",
        )
        .bind(&user_id)
        .bind(&key)
        .bind(size as i64)
        .bind(thumbnail)
        .bind(Utc::now())
        .execute(pool)
        .await
        .map(|_| ())
    })?;
    Ok(ok(json!({"key": key, "size": size})))
}

/// Reads a file (`fileUrl`, or the `sm` thumbnail), with range requests for video.
#[utoipa::path(tag = "files",
    params(("user" = String, Path), ("key" = String, Path)),
    responses((status = 200, description = "the file"),
              (status = 403, description = "invalid_signature: forged or expired URL"),
              (status = 404, description = "no such file")))]
#[get("/v1/files/{user}/{key}")]
pub async fn read(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<SignedQuery>,
) -> Result<HttpResponse, ApiError> {
    let (local, user_id, key) = local_object(&state, path)?;
    let small = local.verify_read(&user_id, &key, &query).map_err(refused)?;
    let mime: Option<String> = with_pool!(&state.store.db, pool => {
        sqlx::query_scalar("SELECT mime_type FROM files WHERE user_id = $1 AND key = $2 AND status = 'uploaded'")
            .bind(&user_id)
            .bind(&key)
            .fetch_optional(pool)
            .await?
    });
    let mime = mime.ok_or_else(|| ApiError::not_found("file"))?;
    let mime = if small { "image/png".to_string() } else { mime };
    let file = NamedFile::open_async(local.path(&user_id, &key, small))
        .await
        .map_err(|_| ApiError::not_found("file"))?;
    let content_type = mime.parse().map_err(|_| ApiError::internal())?;
    Ok(file.set_content_type(content_type).into_response(&req))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct FilesQuery {
    /// Your own directory (the default)
    file_dir_path: Option<String>,
}

/// An uploaded file of `user_id`, as a profile references it (`None`: no such upload).
pub async fn uploaded_file(
    db: &Db,
    user_id: &str,
    key: &str,
) -> Result<Option<(String, FileRef)>, ApiError> {
    let row: Option<(String, String, bool)> = with_pool!(db, pool => {
        sqlx::query_as("SELECT object_type, mime_type, has_thumbnail FROM files
                         WHERE user_id = $1 AND key = $2 AND status = 'uploaded'")
            .bind(user_id)
            .bind(key)
            .fetch_optional(pool)
            .await?
    });
    Ok(row.map(|(object_type, mime_type, thumbnail)| {
        (
            object_type,
            FileRef {
                key: key.to_string(),
                mime_type,
                thumbnail,
            },
        )
    }))
}

/// My uploaded files.
#[utoipa::path(tag = "files", security(("bearer" = [])), params(FilesQuery),
    responses((status = 200, description = "[{key, objectType, file:{sm?,org}}]"),
              (status = 403, description = "fileDirPath is not yours")))]
#[get("/v1/signed/urls/files")]
pub async fn my_files(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<FilesQuery>,
) -> Result<HttpResponse, ApiError> {
    check_dir(&who, query.file_dir_path.as_deref())?;
    confirm_uploads(&state, &who.user_id).await?;
    let rows: Vec<(String, String, String, bool)> = with_pool!(&state.store.db, pool => {
        sqlx::query_as("SELECT key, object_type, mime_type, has_thumbnail FROM files
                         WHERE user_id = $1 AND status = 'uploaded' ORDER BY uploaded_at, key")
            .bind(&who.user_id)
            .fetch_all(pool)
            .await?
    });
    let mut data: Value = rows
        .into_iter()
        .map(|(key, object_type, mime_type, thumbnail)| {
            let file = json!({"key": key, "mimeType": mime_type, "thumbnail": thumbnail});
            json!({"key": key, "objectType": object_type,
                   "file": file_json(&who.user_id, &Some(sqlx::types::Json(file)))})
        })
        .collect();
    state.files.sign_urls(&mut data);
    Ok(ok(data))
}

/// Upload URLs live 15 minutes: reservations never used within a day are dropped.
pub async fn forget_unused_reservations(db: &Db) -> Result<u64, sqlx::Error> {
    let cutoff = Utc::now() - chrono::Duration::days(1);
    with_pool!(db, pool => {
        sqlx::query("DELETE FROM files WHERE status = 'pending' AND created_at < $1")
            .bind(cutoff)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })
}

/// Deletes every file of a user (account deletion).
pub async fn delete_all(state: &AppState, user_id: &str) -> Result<(), ApiError> {
    let keys: Vec<String> = with_pool!(&state.store.db, pool => {
        sqlx::query_scalar("SELECT key FROM files WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(pool)
            .await?
    });
    match &state.files {
        FileStore::Local(local) => match tokio::fs::remove_dir_all(local.user_dir(user_id)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::error!(%error, "deleting a user's files");
                return Err(ApiError::internal());
            }
        },
        FileStore::S3(s3) => {
            for key in &keys {
                for small in [false, true] {
                    s3.delete(&object_name(user_id, key, small))
                        .await
                        .map_err(|error| {
                            tracing::error!(%error, "deleting a user's files from S3");
                            ApiError::unavailable("the file store is unavailable; try again")
                        })?;
                }
            }
        }
    }
    with_pool!(&state.store.db, pool => {
        sqlx::query("DELETE FROM files WHERE user_id = $1").bind(user_id).execute(pool).await.map(|_| ())
    })?;
    Ok(())
}

/// S3 only: uploads go straight to the bucket, so a pending file is checked the first time it
/// is used: there, within its size limit, of its declared type (Content-Type and first bytes);
/// pictures then get their thumbnail. A file that breaks a rule is deleted.
pub async fn confirm_uploads(state: &AppState, user_id: &str) -> Result<(), ApiError> {
    let FileStore::S3(s3) = &state.files else {
        return Ok(());
    };
    let pending: Vec<(String, String, String)> = with_pool!(&state.store.db, pool => {
        sqlx::query_as("SELECT key, object_type, mime_type FROM files WHERE user_id = $1 AND status = 'pending'")
            .bind(user_id)
            .fetch_all(pool)
            .await?
    });
    let unavailable = |error: anyhow::Error| {
        tracing::warn!(%error, "S3 check failed");
        ApiError::unavailable("the file store is unavailable; try again")
    };
    for (key, object_type, mime) in pending {
        let Some(object_type) = ObjectType::parse(&object_type) else {
            continue;
        };
        let name = object_name(user_id, &key, false);
        let Some((size, content_type)) = s3.head(&name).await.map_err(unavailable)? else {
            continue; // not uploaded (yet)
        };
        let mut thumbnail = None;
        let mut ok = size > 0 && size <= object_type.max_bytes() && content_type == mime;
        if ok && !mime.starts_with("video/") {
            let bytes = s3.get(&name).await.map_err(unavailable)?;
            ok = magic_matches(&mime, &bytes);
            if ok && object_type == ObjectType::Picture {
                match tokio::task::spawn_blocking(move || thumbnail_png(&bytes, THUMBNAIL_PX)).await
                {
                    Ok(Ok(png)) => thumbnail = Some(png),
                    _ => ok = false,
                }
            }
        }
        if !ok {
            s3.delete(&name).await.map_err(unavailable)?;
            with_pool!(&state.store.db, pool => {
                sqlx::query("DELETE FROM files WHERE user_id = $1 AND key = $2")
                    .bind(user_id)
                    .bind(&key)
                    .execute(pool)
                    .await
                    .map(|_| ())
            })?;
            continue;
        }
        let has_thumbnail = thumbnail.is_some();
        if let Some(png) = thumbnail {
            s3.put(&object_name(user_id, &key, true), png, "image/png")
                .await
                .map_err(unavailable)?;
        }
        with_pool!(&state.store.db, pool => {
            sqlx::query(
                "UPDATE files SET status = 'uploaded', size_bytes = $3, has_thumbnail = $4, uploaded_at = $5
                  WHERE user_id = $1 AND key = $2",
            )
            .bind(user_id)
            .bind(&key)
            .bind(size as i64)
            .bind(has_thumbnail)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|_| ())
        })?;
    }
    Ok(())
}
