//! Chat templates: the model's own Jinja template rendered with minijinja (with
//! Python string methods, as HF templates expect).

use crate::{Error, Result};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<Self> {
        let t = ChatTemplate {
            source,
            bos_token,
            eos_token,
        };
        // Compile once now so a broken template is reported at load, not per request.
        t.env()?
            .template_from_str(&t.source)
            .map_err(|e| Error::Template(e.to_string()))?;
        Ok(t)
    }

    /// Reads `chat_template` from a HF `tokenizer_config.json` (string, or a list of
    /// named templates where `default` wins), or a `chat_template.jinja` beside it.
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<Option<Self>> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Error::model(cfg_path.display(), format!("not valid JSON: {e}")))?,
            Err(_) => serde_json::Value::Null,
        };
        let token = |k: &str| -> String {
            match cfg.get(k) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v
                    .get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or("")
                    .to_string(),
                None => String::new(),
            }
        };
        let source = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_owned),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        match source {
            Some(s) => Ok(Some(Self::new(s, token("bos_token"), token("eos_token"))?)),
            None => Ok(None),
        }
    }

    fn env(&self) -> Result<minijinja::Environment<'static>> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |_fmt: String| -> String { String::new() });
        Ok(env)
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let env = self.env()?;
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| Error::Template(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_with_python_methods() {
        let src = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'].strip() }}<|im_end|>\n{% endfor %}\
                   {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(src.into(), String::new(), "<|im_end|>".into()).unwrap();
        let out = t
            .render(
                &[ChatMessage {
                    role: "user".into(),
                    content: " hi ".into(),
                }],
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn broken_template_is_an_error_at_load() {
        assert!(ChatTemplate::new("{% for %}".into(), String::new(), String::new()).is_err());
    }
}
