//! The adapters a server has loaded, by name: from `--adapter NAME=PATH[:SCALE]` at start and from
//! `POST /v1/adapters` (only files inside `--adapter-dir`) at run time. Removing one drops the server's
//! reference; requests that use it hold their own (`Arc`), so it stays alive until they end.
use super::http::Response;
use super::sched::UseAdapter;
use super::Server;
use edge_run::adapter::Adapter;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Entry {
    pub id: u64,
    pub name: String,
    pub path: PathBuf,
    pub scale: f32,
    pub adapter: Arc<Adapter>,
}

#[derive(Default)]
pub struct Registry {
    next_id: u64,
    pub list: Vec<Entry>,
}

impl Registry {
    pub fn insert(
        &mut self,
        name: String,
        path: PathBuf,
        scale: f32,
        adapter: Arc<Adapter>,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.list.push(Entry {
            id,
            name,
            path,
            scale,
            adapter,
        });
        id
    }
}

/// An adapter name must be usable in `BASE:NAME` and in a URL path.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "adapter name {name:?} must be 1-64 characters of A-Z, a-z, 0-9, '-', '_', '.'"
        ))
    }
}

/// `NAME=PATH[:SCALE]` of `--adapter`.
pub fn parse_spec(spec: &str) -> Result<(String, PathBuf, f32), String> {
    let (name, rest) = spec.split_once('=').ok_or_else(|| {
        format!("--adapter {spec}: expected NAME=PATH[:SCALE] (the server names every adapter)")
    })?;
    check_name(name).map_err(|e| format!("--adapter {spec}: {e}"))?;
    let (path, scale) = match rest.rsplit_once(':') {
        Some((p, s)) if s.parse::<f32>().is_ok() => (p, s.parse::<f32>().unwrap_or(1.0)),
        _ => (rest, 1.0),
    };
    if !scale.is_finite() {
        return Err(format!("--adapter {spec}: scale {scale} is not finite"));
    }
    Ok((name.to_string(), PathBuf::from(path), scale))
}

impl Server {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.adapters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads `path` and checks it against the model and the slots' capacities.
    pub fn load_adapter(&self, path: &Path) -> Result<Arc<Adapter>, String> {
        let a = Adapter::load(path, &self.model.base_info).map_err(|e| e.to_string())?;
        self.check.check(&a).map_err(|e| e.to_string())?;
        Ok(Arc::new(a))
    }

    pub fn adapter_by_name(&self, name: &str, scale: Option<f32>) -> Option<UseAdapter> {
        self.use_adapter(|e| e.name == name, scale)
    }

    pub fn adapter_by_id(&self, id: u64, scale: Option<f32>) -> Option<UseAdapter> {
        self.use_adapter(|e| e.id == id, scale)
    }

    /// The first loaded adapter `is_it` picks, at `scale` (default: its own).
    fn use_adapter(
        &self,
        is_it: impl Fn(&Entry) -> bool,
        scale: Option<f32>,
    ) -> Option<UseAdapter> {
        let r = self.registry();
        let e = r.list.iter().find(|e| is_it(e))?;
        Some(UseAdapter {
            name: e.name.clone(),
            adapter: e.adapter.clone(),
            scale: scale.unwrap_or(e.scale),
        })
    }

    pub fn adapter_names(&self) -> Vec<String> {
        self.registry()
            .list
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    pub fn add_adapter(
        &self,
        name: String,
        path: PathBuf,
        scale: f32,
        a: Arc<Adapter>,
    ) -> Result<u64, String> {
        let mut r = self.registry();
        if r.list.iter().any(|e| e.name == name) {
            return Err(format!("an adapter named {name:?} is already loaded"));
        }
        Ok(r.insert(name, path, scale, a))
    }

    /// `GET /v1/adapters`.
    pub fn list_adapters(&self) -> Response {
        let r = self.registry();
        let data: Vec<Value> = r.list.iter().map(entry_json).collect();
        Response::json(200, &json!({"object": "list", "data": data}))
    }

    /// `POST /v1/adapters` `{"name", "path", "scale"?}`: `path` (relative to `--adapter-dir`, or
    /// absolute) must resolve inside `--adapter-dir`.
    pub fn post_adapter(&self, req: &Map<String, Value>) -> Response {
        let Some(dir) = &self.adapter_dir else {
            return Response::error(
                403,
                None,
                "loading adapters at run time is off: start the server with --adapter-dir DIR",
            );
        };
        let name = match string_field(req, "name") {
            Ok(s) => s,
            Err(r) => return r,
        };
        if let Err(e) = check_name(&name) {
            return Response::error(400, Some("name"), e);
        }
        let path = match string_field(req, "path") {
            Ok(s) => s,
            Err(r) => return r,
        };
        let scale = match req.get("scale") {
            None | Some(Value::Null) => 1.0,
            Some(Value::Number(n))
                if n.as_f64().is_some_and(|s| s.is_finite() && s.abs() <= 1e4) =>
            {
                n.as_f64().unwrap_or(1.0) as f32
            }
            v => {
                return Response::error(
                    400,
                    Some("scale"),
                    format!("`scale` must be a finite number, got {}", shown(v)),
                )
            }
        };
        let inside = match dir.join(&path).canonicalize() {
            Ok(p) if p.starts_with(dir) => p,
            Ok(p) => {
                return Response::error(
                    403,
                    Some("path"),
                    format!(
                        "`path` {path:?} resolves to {} outside --adapter-dir {}",
                        p.display(),
                        dir.display()
                    ),
                )
            }
            Err(e) => return Response::error(400, Some("path"), format!("`path` {path:?}: {e}")),
        };
        let adapter = match self.load_adapter(&inside) {
            Ok(a) => a,
            Err(e) => return Response::error(400, Some("path"), e),
        };
        match self.add_adapter(name.clone(), inside.clone(), scale, adapter) {
            Ok(id) => Response::json(
                200,
                &json!({"id": id, "name": name, "path": inside.display().to_string(), "scale": scale,
                        "model": format!("{}:{name}", self.name)}),
            ),
            Err(e) => Response::error(409, Some("name"), e),
        }
    }

    /// `DELETE /v1/adapters/NAME`.
    pub fn delete_adapter(&self, name: &str) -> Response {
        let mut r = self.registry();
        match r.list.iter().position(|e| e.name == name) {
            Some(i) => {
                let e = r.list.remove(i);
                Response::json(200, &json!({"name": e.name, "id": e.id, "deleted": true}))
            }
            None => Response::error(
                404,
                Some("name"),
                format!("no adapter named {name:?} is loaded"),
            ),
        }
    }
}

/// The string at `key` of a request, or the 400 response that names it.
fn string_field(req: &Map<String, Value>, key: &str) -> Result<String, Response> {
    match req.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        v => Err(Response::error(
            400,
            Some(key),
            format!("`{key}` must be a string, got {}", shown(v)),
        )),
    }
}

fn shown(v: Option<&Value>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "nothing".into())
}

fn entry_json(e: &Entry) -> Value {
    json!({"id": e.id, "name": e.name, "path": e.path.display().to_string(), "scale": e.scale})
}
