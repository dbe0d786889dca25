//! Commands from the hub on `v1/agents/{id}/cmd`, parsed into what the agent can do.
//!
//! | name | args | effect |
//! | --- | --- | --- |
//! | `set` | `device` + quantity names to values, e.g. `{"dimming_level": 40}` | write through the profile, read back, answer with the read-back values |
//! | `reboot` | none | answer, flush the open batch, exit with [`crate::REBOOT_EXIT_CODE`] |
//! | `reload` | none | re-read agent.toml, restart the pollers, keep the queue and the session |
//! | `update` | `url`, `version`, `sha256` (of the bundle) | download (resumable), verify, install, restart |
//!
//! Anything else, and bad arguments, get an error result; a payload without an id cannot be
//! answered and is only logged.

use protocols::messages::{Command, CommandResult, Scalar};
use protocols::{Quantity, Value};

/// A command the agent understood.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentCommand {
    /// Write values to a device behind the agent.
    Set {
        /// The device id.
        device: String,
        /// Canonical values, by quantity, in the order given.
        values: Vec<(Quantity, Value)>,
    },
    /// Restart the agent.
    Reboot,
    /// Re-read agent.toml.
    Reload,
    /// Install a release bundle from a URL.
    Update(UpdateOffer),
}

/// An update offered by the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateOffer {
    /// `http://` or `https://` URL of the bundle.
    pub url: String,
    /// The version the bundle carries.
    pub version: String,
    /// SHA-256 of the whole bundle file.
    pub sha256: [u8; 32],
}

/// Why a command was refused before anything was done.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The payload is not a command object.
    #[error("not a command: {0}")]
    Malformed(String),
    /// The name is not one this agent knows.
    #[error("unknown command `{0}`; this agent knows set, reboot, reload, update")]
    Unknown(String),
    /// An argument is missing or wrong.
    #[error("{0}")]
    BadArgs(String),
}

/// Parses the raw payload; on failure returns the command id if one could be read, so the
/// error can still be answered.
pub fn parse_payload(
    payload: &[u8],
) -> Result<(Command, AgentCommand), (Option<String>, CommandError)> {
    let cmd: Command = match serde_json::from_slice(payload) {
        Ok(c) => c,
        Err(e) => {
            let id = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string));
            return Err((id, CommandError::Malformed(e.to_string())));
        }
    };
    match parse(&cmd) {
        Ok(a) => Ok((cmd, a)),
        Err(e) => Err((Some(cmd.id), e)),
    }
}

/// Interprets a command.
pub fn parse(cmd: &Command) -> Result<AgentCommand, CommandError> {
    let bad = |s: String| Err(CommandError::BadArgs(s));
    let no_args = |name: &str| {
        if cmd.args.is_empty() {
            Ok(())
        } else {
            Err(CommandError::BadArgs(format!(
                "`{name}` takes no arguments"
            )))
        }
    };
    match cmd.name.as_str() {
        "set" => {
            let Some(device) = cmd.device.clone().filter(|d| !d.is_empty()) else {
                return bad("`set` needs `device`".into());
            };
            if cmd.args.is_empty() {
                return bad("`set` needs at least one quantity in `args`".into());
            }
            let mut values = Vec::with_capacity(cmd.args.len());
            for (name, v) in &cmd.args {
                let Some(q) = Quantity::from_name(name) else {
                    return bad(format!("unknown quantity `{name}`"));
                };
                let scalar: Scalar = match serde_json::from_value(v.clone()) {
                    Ok(s) => s,
                    Err(_) => {
                        return bad(format!(
                            "`{name}`: value must be a number, boolean or state name"
                        ));
                    }
                };
                let Some(value) = scalar.to_value(q) else {
                    return bad(format!(
                        "`{name}`: {v} is not a valid value for {name} (unit {})",
                        q.unit()
                    ));
                };
                values.push((q, value));
            }
            Ok(AgentCommand::Set { device, values })
        }
        "reboot" => no_args("reboot").map(|()| AgentCommand::Reboot),
        "reload" => no_args("reload").map(|()| AgentCommand::Reload),
        "update" => {
            let text = |k: &str| {
                cmd.args
                    .get(k)
                    .and_then(|v| v.as_str())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        CommandError::BadArgs(format!("`update` needs `{k}` (a string)"))
                    })
            };
            let url = text("url")?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad(format!("`url` must be http:// or https://, got `{url}`"));
            }
            let version = text("version")?;
            crate::update::check_version_text(&version)
                .map_err(|e| CommandError::BadArgs(format!("`version`: {e}")))?;
            let sha = text("sha256")?;
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(&sha, &mut sha256)
                .map_err(|_| CommandError::BadArgs("`sha256` must be 64 hex digits".into()))?;
            Ok(AgentCommand::Update(UpdateOffer {
                url,
                version,
                sha256,
            }))
        }
        other => Err(CommandError::Unknown(other.to_string())),
    }
}

/// A failure result.
pub fn failure(id: &str, device: Option<String>, error: impl ToString) -> CommandResult {
    CommandResult {
        id: id.to_string(),
        ok: false,
        error: Some(error.to_string()),
        device,
        values: Default::default(),
        ts: protocols::time::now_ms(),
    }
}

/// A success result with the values read back.
pub fn success(id: &str, device: Option<String>, values: &[(Quantity, Value)]) -> CommandResult {
    CommandResult {
        id: id.to_string(),
        ok: true,
        error: None,
        device,
        values: values
            .iter()
            .map(|&(q, v)| (q.name().to_string(), Scalar::from_value(q, v)))
            .collect(),
        ts: protocols::time::now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<AgentCommand, (Option<String>, CommandError)> {
        parse_payload(s.as_bytes()).map(|(_, a)| a)
    }

    #[test]
    fn set_from_the_contract_example() {
        let a = p(r#"{"id":"c1","name":"set","device":"SL-0001","args":{"dimming_level":40}}"#)
            .unwrap();
        assert_eq!(
            a,
            AgentCommand::Set {
                device: "SL-0001".into(),
                values: vec![(Quantity::DimmingLevel, Value::Number(40.0))]
            }
        );
    }

    #[test]
    fn set_with_bools_and_states() {
        let a = p(
            r#"{"id":"c","name":"set","device":"D","args":{"cover_open":true,"lamp_status":"ok"}}"#,
        )
        .unwrap();
        let AgentCommand::Set { values, .. } = a else {
            panic!()
        };
        assert!(values.contains(&(Quantity::CoverOpen, Value::Bool(true))));
        assert!(values.contains(&(Quantity::LampStatus, Value::State(0))));
    }

    #[test]
    fn bad_set_arguments_name_the_problem_and_keep_the_id() {
        let cases = [
            (
                r#"{"id":"c2","name":"set","args":{"dimming_level":40}}"#,
                "needs `device`",
            ),
            (
                r#"{"id":"c3","name":"set","device":"D","args":{}}"#,
                "at least one quantity",
            ),
            (
                r#"{"id":"c4","name":"set","device":"D","args":{"brightness":4}}"#,
                "unknown quantity `brightness`",
            ),
            (
                r#"{"id":"c5","name":"set","device":"D","args":{"dimming_level":"high"}}"#,
                "not a valid value",
            ),
            (
                r#"{"id":"c6","name":"set","device":"D","args":{"dimming_level":[1]}}"#,
                "must be a number",
            ),
            (
                r#"{"id":"c7","name":"reboot","args":{"now":true}}"#,
                "takes no arguments",
            ),
        ];
        for (text, want) in cases {
            let (id, e) = p(text).unwrap_err();
            assert!(id.is_some(), "{text}");
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_and_malformed() {
        let (id, e) = p(r#"{"id":"c8","name":"selfdestruct"}"#).unwrap_err();
        assert_eq!(id.as_deref(), Some("c8"));
        assert_eq!(e, CommandError::Unknown("selfdestruct".into()));
        let (id, e) = p(r#"{"id":"c9","args":{}}"#).unwrap_err();
        assert_eq!(
            id.as_deref(),
            Some("c9"),
            "missing name still answers by id"
        );
        assert!(matches!(e, CommandError::Malformed(_)));
        let (id, _) = p("not json").unwrap_err();
        assert_eq!(id, None);
    }

    #[test]
    fn reboot_reload_update() {
        assert_eq!(
            p(r#"{"id":"a","name":"reboot"}"#).unwrap(),
            AgentCommand::Reboot
        );
        assert_eq!(
            p(r#"{"id":"a","name":"reload","args":{}}"#).unwrap(),
            AgentCommand::Reload
        );
        let sha = "ab".repeat(32);
        let a = p(&format!(
            r#"{{"id":"u","name":"update","args":{{"url":"http://h/b.bin","version":"0.2.0","sha256":"{sha}"}}}}"#
        ))
        .unwrap();
        assert_eq!(
            a,
            AgentCommand::Update(UpdateOffer {
                url: "http://h/b.bin".into(),
                version: "0.2.0".into(),
                sha256: [0xab; 32]
            })
        );
        for (args, want) in [
            (r#"{"version":"1","sha256":"00"}"#, "needs `url`"),
            (
                r#"{"url":"ftp://x","version":"1","sha256":"00"}"#,
                "http://",
            ),
            (
                r#"{"url":"http://x","version":"1.x","sha256":"00"}"#,
                "`version`",
            ),
            (
                r#"{"url":"http://x","version":"1.0","sha256":"zz"}"#,
                "64 hex digits",
            ),
        ] {
            let (_, e) = p(&format!(r#"{{"id":"u","name":"update","args":{args}}}"#)).unwrap_err();
            assert!(e.to_string().contains(want), "{args}: {e}");
        }
    }

    #[test]
    fn the_shared_offer_type_parses() {
        let offer = protocols::messages::UpdateOffer {
            url: "https://hub.example/b/edge-agent-0.3.1.bundle".into(),
            version: "0.3.1".into(),
            sha256: "0f".repeat(32),
        };
        let cmd = Command {
            id: "u9".into(),
            name: "update".into(),
            device: None,
            args: match serde_json::to_value(&offer).unwrap() {
                serde_json::Value::Object(m) => m,
                _ => unreachable!(),
            },
        };
        let AgentCommand::Update(o) = parse(&cmd).unwrap() else {
            panic!()
        };
        assert_eq!(
            (o.url.as_str(), o.version.as_str(), o.sha256),
            (offer.url.as_str(), "0.3.1", [0x0f; 32])
        );
    }

    #[test]
    fn results_serialize_as_the_contract_says() {
        let r = success(
            "c1",
            Some("SL-0001".into()),
            &[(Quantity::DimmingLevel, Value::Number(40.0))],
        );
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["id"], "c1");
        assert_eq!(v["ok"], true);
        assert_eq!(v["values"]["dimming_level"], 40.0);
        let f = failure("c2", None, "nope");
        let v: serde_json::Value = serde_json::to_value(&f).unwrap();
        assert_eq!(
            (v["ok"].as_bool(), v["error"].as_str()),
            (Some(false), Some("nope"))
        );
    }
}
