//! `when:` expressions in CEL (`event == "level_up" && level == 3`), compiled once per rule
//! version and evaluated on each event with the event's top-level fields as variables.
//!
//! Only the variables the expression references are converted from the event, so an expression
//! costs what it reads, not the size of the event. An expression that errors on an event (a
//! missing field, a type mismatch) does not hold for it: a rule never fails an event.

use std::sync::Arc;

use serde_json::Value;

/// A compiled expression.
pub(crate) struct Expr {
    source: String,
    program: cel::Program,
    env: Arc<cel::Env>,
    variables: Vec<String>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl Expr {
    /// Compiles an expression; the error gives the line and column of the problem, as CEL does.
    pub(crate) fn compile(source: &str) -> Result<Expr, String> {
        let env = Arc::new(cel::Env::stdlib());
        let program = env.compile(source).map_err(|e| {
            e.errors
                .iter()
                .map(|e| format!("line {} column {}: {}", e.pos.0, e.pos.1 + 1, e.msg))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let mut variables: Vec<String> = program
            .references()
            .variables()
            .into_iter()
            .map(str::to_owned)
            .collect();
        variables.sort();
        variables.dedup();
        Ok(Expr {
            source: source.to_owned(),
            program,
            env,
            variables,
        })
    }

    /// The event fields the expression reads (top-level names).
    pub(crate) fn variables(&self) -> &[String] {
        &self.variables
    }

    /// Whether the expression is true for the event.
    pub(crate) fn holds(&self, event: &Value) -> bool {
        let mut context = cel::Context::with_env(self.env.clone());
        for name in &self.variables {
            if let Some(value) = event.get(name).filter(|v| !v.is_null()) {
                match cel::to_value(value) {
                    Ok(value) => context.add_variable_from_value(name.as_str(), value),
                    Err(_) => return false,
                }
            }
        }
        matches!(self.program.execute(&context), Ok(cel::Value::Bool(true)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn expressions_read_the_events_fields() {
        let level_3 = json!({"game_id": "kingdom", "event": "level_up", "level": 3, "tags": ["a"]});
        let level_4 = json!({"game_id": "kingdom", "event": "level_up", "level": 4});
        let table = [
            (
                r#"game_id == "kingdom" && event == "level_up" && level == 3"#,
                true,
                false,
            ),
            (r#"level >= 3 && level < 4"#, true, false),
            (r#"event in ["level_up", "login"]"#, true, true),
            (r#"size(tags) == 1"#, true, false),
            // A missing field makes the expression false for that event, not an error.
            (r#"missing == 1"#, false, false),
            (r#"level == "3""#, false, false),
        ];
        for (source, on_3, on_4) in table {
            let expr = Expr::compile(source).unwrap();
            assert_eq!(expr.holds(&level_3), on_3, "{source} on level 3");
            assert_eq!(expr.holds(&level_4), on_4, "{source} on level 4");
        }
    }

    #[test]
    fn variables_are_listed_once() {
        let expr = Expr::compile(r#"event == "x" && level > 2 && level < 9"#).unwrap();
        assert_eq!(expr.variables(), ["event", "level"]);
    }

    #[test]
    fn syntax_errors_give_the_position() {
        let err = Expr::compile(r#"event == "level_up" &&"#).unwrap_err();
        assert!(err.contains("line 1 column"), "{err}");
    }
}
