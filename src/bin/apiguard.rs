//! `apiguard`: the native command line of the filter.
//!
//! - `apiguard check POLICY` validates a policy (JSON or YAML) exactly as the filter does.
//! - `apiguard token ...` mints demo tokens with the demo keys in `envoy/demo/`.

use std::process::ExitCode;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("check") => check(args.get(1..).unwrap_or(&[])),
        Some("token") => token(args.get(1..).unwrap_or(&[])),
        Some("to-json") => to_json(args.get(1..).unwrap_or(&[])),
        Some("openapi") => openapi(args.get(1..).unwrap_or(&[])),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn main() -> ExitCode {
    ExitCode::from(2)
}

const USAGE: &str = "usage:
  apiguard check POLICY.(json|yaml)      validate a policy as the filter does (exit 1 on errors)
  apiguard to-json POLICY.yaml           print the policy as the JSON Envoy's plugin configuration takes
  apiguard openapi SPEC [--overlay POLICY] [--json]
                                         a policy from an OpenAPI 3.0/3.1 description (JSON or YAML)
                                         on stdout (YAML, or JSON with --json); what it cannot
                                         enforce is listed on stderr
  apiguard token [options]               mint a token with a demo key
      --alg RS256|ES256|ES384|EdDSA|HS256   (default RS256)
      --key FILE        private key PEM, or HS256 secret file (default envoy/demo/<alg>.pem|key)
      --kid KID         (default demo-<alg in lowercase>)
      --iss ISS         (default https://issuer.demo.apiguard)
      --aud AUD         (default api.demo)
      --sub SUB         (default demo-user)
      --scope SCOPES    space-delimited scopes (default none)
      --ttl SECONDS     lifetime (default 3600; negative for an expired token)
      --claim K=V       extra claim; V is parsed as JSON when it parses, else a string (repeatable)";

#[cfg(not(target_arch = "wasm32"))]
fn load_policy(path: &str) -> Result<apiguard::policy::Policy, Vec<String>> {
    use apiguard::policy::Policy;
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{path}: {e}")])?;
    let is_json = path.ends_with(".json") || text.trim_start().starts_with('{');
    let parsed = if is_json {
        Policy::from_json(text.as_bytes())
    } else {
        Policy::from_yaml(&text)
    };
    parsed.map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

#[cfg(not(target_arch = "wasm32"))]
fn check(args: &[String]) -> ExitCode {
    let Some(path) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match load_policy(path) {
        Ok(p) => {
            println!("{path}: ok ({})", p.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{path}: {} error(s)", errors.len());
            ExitCode::from(1)
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn to_json(args: &[String]) -> ExitCode {
    let Some(path) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if let Err(errors) = load_policy(path) {
        for e in &errors {
            eprintln!("{e}");
        }
        return ExitCode::from(1);
    }
    let value: Result<serde_json::Value, String> = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| yaml_serde::from_str(&t).map_err(|e| e.to_string()));
    match value {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{path}: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn read_document(path: &str) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    apiguard::openapi::parse_document(&text).map_err(|e| format!("{path}: {e}"))
}

/// `apiguard openapi SPEC [--overlay POLICY] [--json]`: exit 0 with the policy on stdout,
/// 1 when the description cannot be imported or the result would not load.
#[cfg(not(target_arch = "wasm32"))]
fn openapi(args: &[String]) -> ExitCode {
    let mut spec_path = None;
    let mut overlay_path = None;
    let mut as_json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--overlay" => overlay_path = it.next(),
            "--json" => as_json = true,
            _ if spec_path.is_none() && !a.starts_with("--") => spec_path = Some(a),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(spec_path) = spec_path else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let loaded = read_document(spec_path).and_then(|spec| {
        let overlay = overlay_path.map(|p| read_document(p)).transpose()?;
        Ok((spec, overlay))
    });
    let (spec, overlay) = match loaded {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let import = match apiguard::openapi::import(&spec, overlay.as_ref()) {
        Ok(i) => i,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return ExitCode::from(1);
        }
    };
    for n in &import.notes {
        eprintln!("{n}");
    }
    // The generated policy must load exactly as the filter loads it.
    if let Err(errors) = apiguard::policy::Policy::try_from(import.policy.clone()) {
        for e in &errors {
            eprintln!("error: generated policy: {e}");
        }
        return ExitCode::from(1);
    }
    let text = if as_json {
        Ok(import.policy.to_string())
    } else {
        yaml_serde::to_string(&import.policy).map_err(|e| e.to_string())
    };
    match text {
        Ok(t) => {
            println!("{}", t.trim_end());
            eprintln!(
                "{spec_path}: {} operation(s) -> {} route(s); {} note(s) on what is not enforced",
                import.operations,
                import.routes,
                import.notes.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn token(args: &[String]) -> ExitCode {
    use apiguard::jwt::{mint, Alg};
    use serde_json::{json, Map, Value};

    let mut alg = "RS256".to_string();
    let mut key: Option<String> = None;
    let mut kid: Option<String> = None;
    let mut iss = "https://issuer.demo.apiguard".to_string();
    let mut aud = "api.demo".to_string();
    let mut sub = "demo-user".to_string();
    let mut scope: Option<String> = None;
    let mut ttl: i64 = 3600;
    let mut extra = Map::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            eprintln!("{flag} needs a value\n{USAGE}");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--alg" => alg = value.clone(),
            "--key" => key = Some(value.clone()),
            "--kid" => kid = Some(value.clone()),
            "--iss" => iss = value.clone(),
            "--aud" => aud = value.clone(),
            "--sub" => sub = value.clone(),
            "--scope" => scope = Some(value.clone()),
            "--ttl" => match value.parse() {
                Ok(v) => ttl = v,
                Err(_) => {
                    eprintln!("--ttl takes seconds");
                    return ExitCode::from(2);
                }
            },
            "--claim" => {
                let Some((k, v)) = value.split_once('=') else {
                    eprintln!("--claim takes K=V");
                    return ExitCode::from(2);
                };
                let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
                extra.insert(k.to_string(), v);
            }
            _ => {
                eprintln!("unknown option {flag}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(parsed_alg) = Alg::parse(&alg) else {
        eprintln!("unsupported --alg {alg}");
        return ExitCode::from(2);
    };
    let lower = alg.to_ascii_lowercase();
    let key_path = key.unwrap_or_else(|| {
        let base = std::env::var("APIGUARD_DEMO_DIR").unwrap_or_else(|_| "envoy/demo".into());
        if lower.starts_with("hs") {
            format!("{base}/hs256.key")
        } else if lower == "eddsa" {
            format!("{base}/ed25519.pem")
        } else {
            format!("{base}/{lower}.pem")
        }
    });
    let kid = kid.unwrap_or_else(|| {
        if lower == "eddsa" {
            "demo-ed25519".into()
        } else {
            format!("demo-{lower}")
        }
    });
    let key_bytes = match std::fs::read(&key_path) {
        Ok(b) if lower.starts_with("hs") => match mint::secret_from_key_file(&b) {
            Ok(secret) => secret,
            Err(e) => {
                eprintln!("{key_path}: {e}");
                return ExitCode::from(1);
            }
        },
        Ok(b) => b,
        Err(e) => {
            eprintln!("{key_path}: {e}");
            return ExitCode::from(1);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut claims = json!({ "iss": iss, "aud": aud, "sub": sub, "iat": now, "exp": now + ttl });
    if let (Some(s), Value::Object(m)) = (scope, &mut claims) {
        m.insert("scope".into(), Value::String(s));
    }
    if let Value::Object(m) = &mut claims {
        m.extend(extra);
    }
    match mint::mint(parsed_alg, &key_bytes, Some(&kid), &claims) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot mint: {e}");
            ExitCode::from(1)
        }
    }
}
