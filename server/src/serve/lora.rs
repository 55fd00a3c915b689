//! LoRA adapters over HTTP: the `model` field picks one, and with
//! `--allow-runtime-lora` `POST /v1/load_lora_adapter` and
//! `/v1/unload_lora_adapter` (vLLM's names and fields) add and remove them at
//! run time. Runtime paths must resolve, symlinks followed, inside
//! `--lora-dir`: a client can name adapters the operator put there and
//! nothing else on the machine.

use super::body::Body;
use super::error::ApiError;
use super::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Checks an adapter name: it becomes a `model` value and a metrics label,
/// so no path pieces, no control characters, and not the base model's name.
pub fn check_name(name: &str, base: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!("adapter name {name:?} must be 1 to 128 characters"));
    }
    if name.contains(['/', '\\']) || name == "." || name == ".." || name.contains("..") {
        return Err(format!(
            "adapter name {name:?} must not contain '/', '\\\\' or '..'"
        ));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "adapter name {name:?} must not contain spaces or control characters"
        ));
    }
    if name == base {
        return Err(format!(
            "adapter name {name:?} is the base model's name; pick another"
        ));
    }
    Ok(())
}

/// `path` (absolute, or relative to `root`) resolved with every symlink
/// followed; refused unless it is a folder inside `root` (already canonical).
pub fn confine(root: &Path, path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("lora_path is empty".into());
    }
    let given = Path::new(path);
    if given.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "lora_path {path:?} contains '..'; give a folder inside --lora-dir"
        ));
    }
    let joined = if given.is_absolute() {
        given.to_path_buf()
    } else {
        root.join(given)
    };
    let real = joined.canonicalize().map_err(|e| {
        format!("lora_path {path:?} cannot be opened ({e}); give a folder inside --lora-dir")
    })?;
    if !real.starts_with(root) {
        return Err(format!(
            "lora_path {path:?} is outside --lora-dir (it resolves to a folder elsewhere)"
        ));
    }
    if !real.is_dir() {
        return Err(format!(
            "lora_path {path:?} is not a folder; give the PEFT adapter's folder"
        ));
    }
    Ok(real)
}

/// The `lora_name` field, which both endpoints require.
fn lora_name(b: &Body) -> Result<String, ApiError> {
    b.string("lora_name")?
        .map(str::to_string)
        .ok_or_else(|| ApiError::field("lora_name", "lora_name is required"))
}

fn runtime_dir(s: &AppState) -> Result<&Path, ApiError> {
    s.lora_dir.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "loading and unloading adapters at run time is off; start the server with \
             --allow-runtime-lora --lora-dir DIR",
        )
    })
}

pub async fn load(State(s): State<Arc<AppState>>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let root = runtime_dir(&s)?;
    let b = Body::parse(&bytes)?;
    let name = lora_name(&b)?;
    check_name(&name, &s.model_name).map_err(|m| ApiError::field("lora_name", m))?;
    let path = b
        .string("lora_path")?
        .ok_or_else(|| ApiError::field("lora_path", "lora_path is required"))?;
    let dir = confine(root, path).map_err(|m| ApiError::field("lora_path", m))?;
    // Everything the engine refuses here is the adapter's fault.
    s.engine
        .load_lora(&name, dir)
        .await
        .map_err(|e| ApiError::field("lora_path", e.to_string()))?;
    Ok(Json(json!({
        "object": "lora_adapter",
        "id": name,
        "status": "loaded",
    })))
}

pub async fn unload(State(s): State<Arc<AppState>>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    runtime_dir(&s)?;
    let b = Body::parse(&bytes)?;
    let name = lora_name(&b)?;
    if !s.engine.lora_names().contains(&name) {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no adapter named {name:?} is loaded"),
            param: Some("lora_name".into()),
        });
    }
    s.engine
        .unload_lora(&name)
        .await
        .map_err(|e| ApiError::field("lora_name", e.to_string()))?;
    Ok(Json(json!({
        "object": "lora_adapter",
        "id": name,
        "status": "unloaded",
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_path_pieces_are_refused() {
        for bad in [
            "", "../x", "a/b", "a\\b", "..", "a..b", "sp ace", "tab\t", "base",
        ] {
            assert!(check_name(bad, "base").is_err(), "{bad:?} accepted");
        }
        assert!(check_name("sql-adapter_v2.1", "base").is_ok());
    }

    #[test]
    fn paths_stay_inside_the_root() {
        let top = std::env::temp_dir().join(format!("tessera-confine-{}", std::process::id()));
        let root = top.join("root");
        let outside = top.join("outside");
        std::fs::create_dir_all(root.join("ok")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("file"), b"x").unwrap();
        let root = root.canonicalize().unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        assert_eq!(confine(&root, "ok").unwrap(), root.join("ok"));
        let abs = root.join("ok");
        assert!(confine(&root, abs.to_str().unwrap()).is_ok());
        for (bad, word) in [
            ("../outside", ".."),
            ("ok/../../outside", ".."),
            (outside.to_str().unwrap(), "outside --lora-dir"),
            ("missing", "cannot be opened"),
            ("file", "not a folder"),
            ("", "empty"),
        ] {
            let e = confine(&root, bad).unwrap_err();
            assert!(e.contains(word), "{bad:?}: {e}");
        }
        #[cfg(unix)]
        {
            let e = confine(&root, "escape").unwrap_err();
            assert!(e.contains("outside --lora-dir"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&top);
    }
}
